package faults

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/test/harness"
	"github.com/layermesh/layermesh/tokenizer"
)

// singleNode is one meshnode process serving the add model on its own.
type singleNode struct {
	proc    *harness.Proc
	addr    string
	dataDir string
	token   string
}

func startSingleNode(t *testing.T) *singleNode {
	t.Helper()
	modelDir, dataDir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(modelDir, "add.onnx"), addModel(t), 0o644); err != nil {
		t.Fatal(err)
	}
	writeGenerativeModel(t, modelDir)
	p := harness.StartProc(t, harness.ProcSpec{Name: "meshnode", Path: harness.MeshnodeBinary(t), Args: []string{
		"--data-dir", dataDir, "--name", "bad-input", "--http", "127.0.0.1:0", "--model-dir", modelDir,
		"--accel", "cpu", "--threads", "1", "--no-mdns", "--log-format", "json",
	}})
	addr, err := harness.ReadAddrFile(p, filepath.Join(dataDir, harness.HTTPAddrFile), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := harness.WaitHTTPReady(ctx, addr, p); err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(filepath.Join(dataDir, harness.AdminTokenFile))
	if err != nil {
		t.Fatalf("single node wrote no admin token: %v", err)
	}
	return &singleNode{proc: p, addr: addr, dataDir: dataDir, token: strings.TrimSpace(string(tok))}
}

// genModel is a small with-past GPT the single node serves beside add, with GPT-2's
// tokenizer, so that generation's refusals have a model that can generate.
const genModel = "gen"

var genGPT = modelgen.GPTConfig{Layers: 1, Dim: 32, Heads: 2, Vocab: 50257, Context: 32, Seed: 3, Name: genModel, WithPast: true}

// writeGenerativeModel writes gen.onnx and gen.tokenizer.json into dir.
func writeGenerativeModel(t *testing.T, dir string) {
	t.Helper()
	m, err := modelgen.GPTWithPast(genGPT)
	if err != nil {
		t.Fatal(err)
	}
	if err := modelgen.WriteFile(m, filepath.Join(dir, genModel+".onnx")); err != nil {
		t.Fatal(err)
	}
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(filepath.Join(root, "third_party", "tokenizers", "gpt2"))
	if err != nil {
		t.Fatalf("GPT-2's tokenizer files (make setup fetches them): %v", err)
	}
	raw, err := tok.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, genModel+".tokenizer.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// deployWithTokenizer is a multipart deploy body: a tokenizer part, then the model.
func deployWithTokenizer(t *testing.T, tokenizerJSON, model []byte) (map[string]string, []byte) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for _, part := range []struct {
		name string
		data []byte
	}{{"tokenizer", tokenizerJSON}, {"model", model}} {
		w, err := mw.CreateFormFile(part.name, part.name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(part.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return map[string]string{"Content-Type": mw.FormDataContentType()}, body.Bytes()
}

// badRequest is one hostile request and the refusal it must get.
type badRequest struct {
	name   string
	method string
	path   string
	header map[string]string
	// admin sends the node's admin token.
	admin  bool
	body   []byte
	status int
	code   api.Code
}

// notExercised lists the catalogue codes no request of a client to one healthy node
// can provoke, with the reason; every other code must have a row below. A new code in
// the catalogue fails this test until it gets a row or a reason.
var notExercised = map[api.Code]string{
	api.CodeUnsupportedType:      "needs a model with an input type the backend cannot carry; the upload is refused first (api tests)",
	api.CodeNodeNotFound:         "needs cluster mode; a single node answers node calls with not_cluster_mode (row below)",
	api.CodeForbidden:            "needs an infer-scoped token; a single node has only its admin token",
	api.CodeNotReady:             "a loading model; a timing fault, not an input (scenarios with restarts cover it)",
	api.CodeNoReplica:            "a stage without a live replica; cluster scenarios 2 and 4 cover it",
	api.CodeUnavailable:          "a model unloaded mid-request; a timing fault, not an input",
	api.CodeTimeout:              "a deadline passed inside the node; scenarios 3 and 5 cover it",
	api.CodeInternal:             "must never answer any input: every row asserts its own code instead",
	api.CodeTokenNotFound:        "token calls need cluster mode; TestFaultHostilePeers sends this row to a cluster node",
	api.CodeConflict:             "undrain and token calls need cluster mode; TestFaultHostilePeers sends this row to a cluster node",
	api.CodeInsufficientCapacity: "placement over memory budgets needs cluster mode; TestFaultHostilePeers sends this row to a cluster node",
	api.CodeKVExhausted:          "needs the stages' session memory spent by other sessions: a load condition, not an input (pipeline's session tests cover it)",
	api.CodeCompressionFailed:    "needs a cluster deploy of a model with weights to quantize that misses its verify thresholds; test/split's compressed-deploy test sends it",
}

func badRequests(t *testing.T) []badRequest {
	const infer = "/v2/models/add/infer"
	in := func(shape, dtype, data string) []byte {
		return []byte(fmt.Sprintf(`{"inputs":[{"name":"x","shape":%s,"datatype":%q,"data":%s}]}`, shape, dtype, data))
	}
	// binIn builds a binary-extension body: its JSON header declares binSize bytes of
	// x with shape, and dataLen raw bytes follow.
	binIn := func(shape string, binSize, dataLen int) (map[string]string, []byte) {
		h := fmt.Sprintf(`{"inputs":[{"name":"x","shape":%s,"datatype":"FP32","parameters":{"binary_data_size":%d}}]}`, shape, binSize)
		return map[string]string{wire.HeaderContentLength: strconv.Itoa(len(h)), "Content-Type": wire.ContentTypeBinary},
			append([]byte(h), make([]byte, dataLen)...)
	}
	rank17 := "[" + strings.TrimSuffix(strings.Repeat("1,", 17), ",") + "]"
	oversize := append(append([]byte(`{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[`),
		bytes.Repeat([]byte(" "), api.DefaultMaxBodyBytes)...), []byte(`1,2,3]}]}`)...)
	rows := []badRequest{
		{name: "malformed JSON", method: "POST", path: infer, body: []byte(`{"inputs":[{"name":"x",`), status: 400, code: api.CodeBadJSON},
		{name: "JSON of the wrong shape", method: "POST", path: infer, body: []byte(`{"inputs":{"name":"x"}}`), status: 400, code: api.CodeBadJSON},
		{name: "not JSON at all", method: "POST", path: infer, body: []byte("\x00\xff\xfe garbage"), status: 400, code: api.CodeBadJSON},
		{name: "unknown datatype", method: "POST", path: infer, body: in("[1,3]", "FP33", "[1,2,3]"), status: 400, code: api.CodeUnknownDatatype},
		{name: "data shorter than shape", method: "POST", path: infer, body: in("[1,3]", "FP32", "[1,2]"), status: 400, code: api.CodeDataLengthMismatch},
		{name: "data longer than shape", method: "POST", path: infer, body: in("[1,3]", "FP32", "[1,2,3,4]"), status: 400, code: api.CodeDataLengthMismatch},
		{name: "wrong rank", method: "POST", path: infer, body: in("[3]", "FP32", "[1,2,3]"), status: 400, code: api.CodeShapeMismatch},
		{name: "wrong fixed dim", method: "POST", path: infer, body: in("[1,4]", "FP32", "[1,2,3,4]"), status: 400, code: api.CodeShapeMismatch},
		{name: "wrong dtype", method: "POST", path: infer, body: in("[1,3]", "INT64", "[1,2,3]"), status: 400, code: api.CodeDTypeMismatch},
		{name: "negative dim", method: "POST", path: infer, body: in("[-1,3]", "FP32", "[1,2,3]"), status: 400, code: api.CodeNegativeDim},
		{name: "rank above 16", method: "POST", path: infer, body: in(rank17, "FP32", "[1]"), status: 400, code: api.CodeInvalidShape},
		{name: "huge shape, tiny data", method: "POST", path: infer, body: in("[1000000000,3]", "FP32", "[1,2,3]"), status: 400, code: api.CodeDataLengthMismatch},
		{name: "shape whose size overflows", method: "POST", path: infer, body: in("[4611686018427387904,3]", "FP32", "[1,2,3]"), status: 400, code: api.CodeTensorTooLarge},
		{name: "string in FP32 data", method: "POST", path: infer, body: in("[1,3]", "FP32", `["a","b","c"]`), status: 400, code: api.CodeInvalidData},
		{name: "NaN literal in data", method: "POST", path: infer, body: in("[1,3]", "FP32", `[NaN,1,2]`), status: 400, code: api.CodeBadJSON},
		{name: "unknown input", method: "POST", path: infer, body: []byte(`{"inputs":[{"name":"nope","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`), status: 400, code: api.CodeInputMismatch},
		{name: "missing input", method: "POST", path: infer, body: []byte(`{"inputs":[]}`), status: 400, code: api.CodeInputMismatch},
		{name: "input given twice", method: "POST", path: infer, body: []byte(`{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]},{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`), status: 400, code: api.CodeInputMismatch},
		{name: "unknown output", method: "POST", path: infer, body: []byte(`{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"outputs":[{"name":"zz"}]}`), status: 400, code: api.CodeInputMismatch},
		{name: "unknown model", method: "POST", path: "/v2/models/nope/infer", body: in("[1,3]", "FP32", "[1,2,3]"), status: 404, code: api.CodeModelNotFound},
		{name: "unknown version", method: "POST", path: "/v2/models/add/versions/9/infer", body: in("[1,3]", "FP32", "[1,2,3]"), status: 404, code: api.CodeModelNotFound},
		{name: "wrong method", method: "GET", path: infer, status: 405, code: api.CodeMethodNotAllowed},
		{name: "no such route", method: "GET", path: "/v3/anything", status: 404, code: api.CodeRouteNotFound},
		{name: "body over the limit", method: "POST", path: infer, body: oversize, status: 413, code: api.CodeBodyTooLarge},
		{name: "header length beyond body", method: "POST", path: infer, header: map[string]string{wire.HeaderContentLength: "99"}, body: []byte(`{}`), status: 400, code: api.CodeBadHeaderLength},
		{name: "header length not a number", method: "POST", path: infer, header: map[string]string{wire.HeaderContentLength: "x"}, body: []byte(`{}`), status: 400, code: api.CodeBadHeaderLength},
		{name: "header length negative", method: "POST", path: infer, header: map[string]string{wire.HeaderContentLength: "-5"}, body: []byte(`{}`), status: 400, code: api.CodeBadHeaderLength},
		{name: "admin call without a token", method: "GET", path: "/v1/models/add", status: 401, code: api.CodeUnauthorized},
		{name: "admin call with a forged token", method: "GET", path: "/v1/models/add", header: map[string]string{"Authorization": "Bearer forged-token-0123456789"}, status: 401, code: api.CodeUnauthorized},
		{name: "upload of a corrupt model", method: "PUT", path: "/v1/models/corrupt", admin: true, body: []byte("this is not an onnx model"), status: 422, code: api.CodeInvalidModel},
		{name: "upload under a bad name", method: "PUT", path: "/v1/models/bad$name", admin: true, body: addModel(t), status: 400, code: api.CodeInvalidName},
		{name: "upload with a bad query", method: "PUT", path: "/v1/models/add2?stages=abc", admin: true, body: addModel(t), status: 400, code: api.CodeBadRequest},
		{name: "drain on a single node", method: "POST", path: "/v1/nodes/bad-input/drain", admin: true, status: 501, code: api.CodeNotClusterMode},
		{name: "generation on a model that cannot generate", method: "POST", path: "/v2/models/add/generate", body: []byte(`{"text_input":"hi","parameters":{"max_tokens":4}}`), status: 400, code: api.CodeNotGenerative},
		{name: "generation of 0 tokens", method: "POST", path: "/v2/models/add/generate", body: []byte(`{"text_input":"hi","parameters":{"max_tokens":0}}`), status: 400, code: api.CodeInvalidMaxTokens},
		{name: "generation at temperature 9", method: "POST", path: "/v2/models/add/generate", body: []byte(`{"text_input":"hi","parameters":{"max_tokens":4,"temperature":9}}`), status: 400, code: api.CodeInvalidParameter},
		{name: "prompt longer than the context", method: "POST", path: "/v2/models/gen/generate", body: []byte(`{"text_input":"` + strings.Repeat("the mesh ", 40) + `","parameters":{"max_tokens":4}}`), status: 400, code: api.CodeContextExceeded},
		{name: "chat message of an unknown role", method: "POST", path: "/openai/v1/chat/completions", body: []byte(`{"model":"gen","messages":[{"role":"wizard","content":"x"}]}`), status: 400, code: api.CodeInvalidMessages},
	}
	tokHeader, tokBody := deployWithTokenizer(t, []byte(`{"model":{"type":"WordPiece"}}`), addModel(t))
	rows = append(rows, badRequest{name: "deploy with a tokenizer that is not byte-level BPE", method: "PUT", path: "/v1/models/badtok", admin: true,
		header: tokHeader, body: tokBody, status: 400, code: api.CodeTokenizerInvalid})
	bin := func(name, shape string, binSize, dataLen int, code api.Code) badRequest {
		h, b := binIn(shape, binSize, dataLen)
		return badRequest{name: name, method: "POST", path: infer, header: h, body: b, status: 400, code: code}
	}
	return append(rows,
		bin("binary size not matching shape", "[1,3]", 8, 8, api.CodeDataLengthMismatch),
		bin("binary size beyond body", "[1,3]", 12, 4, api.CodeInvalidData),
		bin("bytes after the binary inputs", "[1,3]", 12, 16, api.CodeInvalidData),
		bin("huge shape, tiny binary data", "[1000000000,3]", 12, 12, api.CodeDataLengthMismatch),
	)
}

// send sends one bad request and returns what was wrong with the refusal, nil if it
// was the right one.
func (n *singleNode) send(ctx context.Context, client *http.Client, r badRequest) error {
	req, err := http.NewRequestWithContext(ctx, r.method, "http://"+n.addr+r.path, bytes.NewReader(r.body))
	if err != nil {
		return err
	}
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	if r.admin {
		req.Header.Set("Authorization", "Bearer "+n.token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("no answer: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	eb, ok := errorBody(raw)
	if !ok {
		return fmt.Errorf("status %d with a body that is not an error body: %.200q", resp.StatusCode, raw)
	}
	if resp.StatusCode != r.status || eb.Code != string(r.code) {
		return fmt.Errorf("got %d %s (%s), want %d %s", resp.StatusCode, eb.Code, eb.Error, r.status, r.code)
	}
	return nil
}

// errorBody reads an error answer: the API's own body, or the OpenAI envelope the
// /openai/v1 routes answer with, which carries the same code.
func errorBody(raw []byte) (wire.ErrorBody, bool) {
	var eb wire.ErrorBody
	if err := json.Unmarshal(raw, &eb); err == nil && eb.Error != "" {
		return eb, true
	}
	var oa struct {
		Error struct {
			Message string `json:"message"`
			Code    string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &oa); err != nil || oa.Error.Message == "" {
		return wire.ErrorBody{}, false
	}
	return wire.ErrorBody{Error: oa.Error.Message, Code: oa.Error.Code}, true
}

// goodInput is request seq of the undisturbed stream: x = [seq, 1, -1].
func goodInput(seq int) (harness.InferBody, error) {
	x := tensor.FromFloat32("x", []int64{1, 3}, []float32{float32(seq), 1, -1})
	return harness.EncodeInfer(&wire.Request{Inputs: []tensor.Tensor{x}, BinaryOutputs: seq%2 == 0}, seq%2 == 0)
}

func checkAdd(seq int, resp *wire.Response) error {
	y, ok := resp.Output("y")
	if !ok {
		return errors.New("no output y")
	}
	got, err := y.Float32s()
	if err != nil {
		return err
	}
	want := []float32{float32(seq) + addBias[0], 1 + addBias[1], -1 + addBias[2]}
	for i := range want {
		if len(got) != len(want) || math.Abs(float64(got[i]-want[i])) > 1e-6 {
			return fmt.Errorf("y = %v, want %v", got, want)
		}
	}
	return nil
}

// TestFaultBadInput is scenario 7's client part: every bad input in the API catalogue,
// and malformed HTTP on the raw connection, sent to a real meshnode while a stream of
// good requests runs. Each must get its own refusal, the good stream no error, and the
// node must stay up.
func TestFaultBadInput(t *testing.T) {
	requireFaults(t)
	rows := badRequests(t)
	covered := map[api.Code]bool{}
	for _, r := range rows {
		covered[r.code] = true
	}
	for _, e := range api.Catalogue() {
		_, excused := notExercised[e.Code]
		if covered[e.Code] == excused {
			t.Errorf("catalogue code %s: covered by a row=%v, excused=%v; want exactly one", e.Code, covered[e.Code], excused)
		}
	}
	catalogued := map[api.Code]bool{}
	for _, e := range api.Catalogue() {
		catalogued[e.Code] = true
	}
	for c := range notExercised {
		if !catalogued[c] {
			t.Errorf("notExercised names %s, which the catalogue no longer has", c)
		}
	}

	n := startSingleNode(t)
	result := harness.Result{Scenario: "bad-input", Trial: 1, Started: time.Now()}
	// The node's goroutines before the barrage, after a little good traffic: every
	// refused request and abandoned connection must give its goroutines back.
	warm, err := harness.RunLoad(context.Background(), harness.LoadConfig{Targets: []string{n.addr}, Model: "add", Body: goodInput, Check: checkAdd, Requests: 20})
	if err != nil || warm.Failures != 0 {
		t.Fatalf("warm-up: %v %v", warm, err)
	}
	baseline, err := harness.Metric(context.Background(), n.addr, "go_goroutines")
	if err != nil {
		t.Fatal(err)
	}

	ctx, stopGood := context.WithCancel(context.Background())
	defer stopGood()
	type loadResult struct {
		st  *harness.LoadStats
		err error
	}
	good := make(chan loadResult, 1)
	go func() {
		st, err := harness.RunLoad(ctx, harness.LoadConfig{Targets: []string{n.addr}, Model: "add", Body: goodInput, Check: checkAdd,
			Concurrency: 2, Duration: 10 * time.Minute, Deadline: 10 * time.Second, Pace: 2 * time.Millisecond})
		good <- loadResult{st, err}
	}()

	client := &http.Client{Timeout: 30 * time.Second}
	const rounds = 3
	for round := 0; round < rounds; round++ {
		for _, r := range rows {
			if err := n.send(context.Background(), client, r); err != nil {
				result.Violations++
				t.Errorf("%s: %v", r.name, err)
			}
			result.Requests++
		}
	}
	rawAbuse(t, n.addr, &result)

	stopGood()
	g := <-good
	if g.err != nil {
		t.Fatal(g.err)
	}
	t.Logf("good stream during the barrage: %v", g.st)
	result.Requests += g.st.Requests
	result.ClientErrors = g.st.Failures
	result.Notef("good stream: %v", g.st)
	if g.st.Failures != 0 || g.st.Successes == 0 {
		t.Errorf("the good stream was disturbed: %v", g.st)
	}
	if !n.proc.Running() {
		t.Errorf("meshnode exited during the barrage")
	}
	if err := harness.WaitHTTPReady(context.Background(), n.addr, n.proc); err != nil {
		t.Errorf("not ready after the barrage: %v", err)
	}
	client.CloseIdleConnections()
	var after float64
	err = harness.Poll(20*time.Second, 200*time.Millisecond, func() error {
		var err error
		if after, err = harness.Metric(context.Background(), n.addr, "go_goroutines"); err != nil {
			return err
		}
		// The scrape's own connection and a few runtime goroutines come and go.
		if after > baseline+8 {
			return fmt.Errorf("%v goroutines, %v before the barrage", after, baseline)
		}
		return nil
	})
	result.Notef("node goroutines: %v before the barrage, %v after", baseline, after)
	if err != nil {
		result.Violations++
		t.Errorf("goroutines leaked by refused requests: %v", err)
	}
	if log := n.proc.LogTail(1 << 20); strings.Contains(log, "panic") || strings.Contains(log, `"code":"internal"`) {
		t.Errorf("node log shows a panic or an internal error")
	}
	result.Finished = time.Now()
	result.Passed = !t.Failed()
	harness.RecordResult(t, result)
}

// rawAbuse speaks broken HTTP on raw connections: garbage bytes, a request line that
// never finishes its headers, a body cut short, a crowd of idle connections. The node
// must refuse or close each, and never hang on them.
func rawAbuse(t *testing.T, addr string, result *harness.Result) {
	t.Helper()
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		return c
	}
	// endsWithin reads until the node closes the connection or answers; an answer must
	// be a 4xx.
	endsWithin := func(name string, c net.Conn, d time.Duration) {
		result.Requests++
		_ = c.SetReadDeadline(time.Now().Add(d))
		line, err := bufio.NewReader(c).ReadString('\n')
		switch {
		case err != nil && errors.Is(err, os.ErrDeadlineExceeded):
			result.Violations++
			t.Errorf("%s: the node held the connection open for %v", name, d)
		case err == nil && !strings.HasPrefix(line, "HTTP/1.1 4"):
			result.Violations++
			t.Errorf("%s: answered %q, want a 4xx or a close", name, line)
		}
	}

	result.Requests++
	verdict, answer, err := harness.GarbageTCP(context.Background(), nil, addr, 8192, 7, 10*time.Second)
	if err != nil || verdict != harness.GarbageClosed || (len(answer) > 0 && !bytes.HasPrefix(answer, []byte("HTTP/1.1 4"))) {
		result.Violations++
		t.Errorf("random bytes: %v, answered %.80q (err %v); want a 4xx or a close", verdict, answer, err)
	}

	c := dial()
	_, _ = c.Write([]byte("POST /v2/models/add/infer HTTP/1.1\r\nHost: x\r\nX-Slow: "))
	// The node's header read timeout (10 s) must cut this client off.
	endsWithin("headers never finished", c, 20*time.Second)
	c.Close()

	c = dial()
	_, _ = c.Write([]byte("POST /v2/models/add/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"inputs\":["))
	_ = c.(*net.TCPConn).CloseWrite()
	endsWithin("body cut short", c, 10*time.Second)
	c.Close()

	var crowd []net.Conn
	for i := 0; i < 200; i++ {
		crowd = append(crowd, dial())
	}
	for _, c := range crowd {
		c.Close()
	}

	c = dial()
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], math.MaxUint64)
	_, _ = c.Write(append([]byte("POST /v2/models/add/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n"), hdr[:]...))
	endsWithin("absurd Content-Length", c, 10*time.Second)
	c.Close()
}
