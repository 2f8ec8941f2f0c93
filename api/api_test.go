package api_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/node"
)

const testMaxBody = 64 << 10

func withMaxBody(n int64) nodeOption { return func(c *node.Config) { c.MaxBodyBytes = n } }

// errorCode decodes an error body and fails the test when it is not one.
func errorCode(t *testing.T, b []byte) string {
	t.Helper()
	var eb wire.ErrorBody
	if err := json.Unmarshal(b, &eb); err == nil && eb.Code != "" && eb.Error != "" {
		return eb.Code
	}
	// The /openai/v1 routes answer in OpenAI's envelope.
	var oe struct {
		Error struct{ Message, Code string }
	}
	if err := json.Unmarshal(b, &oe); err != nil || oe.Error.Code == "" || oe.Error.Message == "" {
		t.Fatalf("not an error body: %q", b)
	}
	return oe.Error.Code
}

func TestInferJSONAndBinary(t *testing.T) {
	n := startNode(t)
	c := n.client(t, "")
	x := []float32{0.5, -1, 2, 10, 20, 30}
	want := make([]float32, len(x))
	for i, v := range x {
		want[i] = v + addBias[i%3]
	}
	for _, tc := range []struct {
		name         string
		binaryIn     bool
		binaryOut    bool
		wantBinaryCT bool
	}{
		{"json", false, false, false},
		{"binary-in", true, false, false},
		{"binary-out", false, true, true},
		{"binary-both", true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &wire.Request{ID: "req-7", Inputs: []tensor.Tensor{tensor.FromFloat32("x", []int64{2, 3}, x)},
				Outputs: []wire.OutputRequest{{Name: "y", Binary: tc.binaryOut}}}
			resp, err := c.Infer(context.Background(), "add", req, client.InferOptions{BinaryInputs: tc.binaryIn})
			if err != nil {
				t.Fatal(err)
			}
			if resp.ModelName != "add" || resp.ModelVersion != "1" || resp.ID != "req-7" {
				t.Errorf("response header = %+v", resp)
			}
			y, ok := resp.Output("y")
			if !ok {
				t.Fatalf("no output y in %+v", resp)
			}
			got, err := y.Float32s()
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(y.Shape) != "[2 3]" || fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("y = %v %v, want [2 3] %v", y.Shape, got, want)
			}
		})
	}
}

// TestInferRawTriton sends bodies as Triton's clients write them, nested data
// included, and checks the raw answer, header length and all.
func TestInferRawTriton(t *testing.T) {
	n := startNode(t)
	status, _, b := n.do(t, "POST", "/v2/models/scale/infer", "", strings.NewReader(`{"inputs":[{"name":"p","shape":[2],"datatype":"INT64","data":[[3],[-4]]}]}`), nil)
	if status != 200 || !strings.Contains(string(b), `"data":[6,-8]`) {
		t.Fatalf("nested JSON: %d %s", status, b)
	}

	// Binary in and out: header JSON, then 24 bytes of x; output y requested binary.
	hdr := `{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","parameters":{"binary_data_size":24}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}`
	x := tensor.FromFloat32("x", []int64{2, 3}, []float32{1, 1, 1, 2, 2, 2})
	body := append([]byte(hdr), x.Data...)
	status, h, b := n.do(t, "POST", "/v2/models/add/infer", "", bytes.NewReader(body), map[string]string{wire.HeaderContentLength: strconv.Itoa(len(hdr))})
	if status != 200 {
		t.Fatalf("binary: %d %s", status, b)
	}
	hl, err := strconv.Atoi(h.Get(wire.HeaderContentLength))
	if err != nil || hl+24 != len(b) {
		t.Fatalf("response %s = %q, body %d bytes", wire.HeaderContentLength, h.Get(wire.HeaderContentLength), len(b))
	}
	if !strings.Contains(string(b[:hl]), `"binary_data_size":24`) {
		t.Errorf("response header %s", b[:hl])
	}
	var got []float32
	for i := 0; i < 6; i++ {
		got = append(got, math.Float32frombits(binary.LittleEndian.Uint32(b[hl+4*i:])))
	}
	if fmt.Sprint(got) != "[2 3 4 3 4 5]" {
		t.Errorf("binary y = %v", got)
	}
}

// TestBadInputs: each bad request of the catalogue gets its status and code, and the
// node keeps answering good requests afterwards.
func TestBadInputs(t *testing.T) {
	n := startNode(t, withMaxBody(testMaxBody))
	type row struct {
		name   string
		method string
		path   string
		body   string
		header map[string]string
		status int
		code   api.Code
	}
	in := func(shape, datatype, data string) string {
		return `{"inputs":[{"name":"x","shape":` + shape + `,"datatype":"` + datatype + `","data":` + data + `}]}`
	}
	binHeader := func(shape string, size int) string {
		return `{"inputs":[{"name":"x","shape":` + shape + `,"datatype":"FP32","parameters":{"binary_data_size":` + strconv.Itoa(size) + `}}]}`
	}
	withBinary := func(hdr string, data int) (string, map[string]string) {
		return hdr + strings.Repeat("\x00", data), map[string]string{wire.HeaderContentLength: strconv.Itoa(len(hdr))}
	}
	const infer = "/v2/models/add/infer"
	rows := []row{
		{"malformed JSON", "POST", infer, `{"inputs":[{"name":"x",`, nil, 400, api.CodeBadJSON},
		{"JSON of the wrong shape", "POST", infer, `{"inputs":{"name":"x"}}`, nil, 400, api.CodeBadJSON},
		{"unknown datatype", "POST", infer, in("[1,3]", "FP33", "[1,2,3]"), nil, 400, api.CodeUnknownDatatype},
		{"data shorter than shape", "POST", infer, in("[1,3]", "FP32", "[1,2]"), nil, 400, api.CodeDataLengthMismatch},
		{"data longer than shape", "POST", infer, in("[1,3]", "FP32", "[1,2,3,4]"), nil, 400, api.CodeDataLengthMismatch},
		{"wrong rank", "POST", infer, in("[3]", "FP32", "[1,2,3]"), nil, 400, api.CodeShapeMismatch},
		{"wrong fixed dim", "POST", infer, in("[1,4]", "FP32", "[1,2,3,4]"), nil, 400, api.CodeShapeMismatch},
		{"wrong dtype", "POST", infer, in("[1,3]", "INT64", "[1,2,3]"), nil, 400, api.CodeDTypeMismatch},
		{"negative dim", "POST", infer, in("[-1,3]", "FP32", "[1,2,3]"), nil, 400, api.CodeNegativeDim},
		{"huge shape, tiny data", "POST", infer, in("[1000000000,3]", "FP32", "[1,2,3]"), nil, 400, api.CodeDataLengthMismatch},
		{"shape whose size overflows", "POST", infer, in("[4611686018427387904,3]", "FP32", "[1,2,3]"), nil, 400, api.CodeTensorTooLarge},
		{"string in FP32 data", "POST", infer, in("[1,3]", "FP32", `["a","b","c"]`), nil, 400, api.CodeInvalidData},
		{"fraction in INT64 data", "POST", "/v2/models/scale/infer", `{"inputs":[{"name":"p","shape":[2],"datatype":"INT64","data":[1.5,2]}]}`, nil, 400, api.CodeInvalidData},
		{"unknown input", "POST", infer, `{"inputs":[{"name":"nope","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`, nil, 400, api.CodeInputMismatch},
		{"missing input", "POST", infer, `{"inputs":[]}`, nil, 400, api.CodeInputMismatch},
		{"unknown output", "POST", infer, `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"outputs":[{"name":"zz"}]}`, nil, 400, api.CodeInputMismatch},
		{"unknown model", "POST", "/v2/models/nope/infer", in("[1,3]", "FP32", "[1,2,3]"), nil, 404, api.CodeModelNotFound},
		{"unknown version", "POST", "/v2/models/add/versions/9/infer", in("[1,3]", "FP32", "[1,2,3]"), nil, 404, api.CodeModelNotFound},
		{"wrong method", "GET", infer, "", nil, 405, api.CodeMethodNotAllowed},
		{"body over the limit", "POST", infer, in("[1,3]", "FP32", "["+strings.Repeat(" ", testMaxBody)+"1,2,3]"), nil, 413, api.CodeBodyTooLarge},
	}
	bin := func(name, hdr string, data int, status int, code api.Code) row {
		b, h := withBinary(hdr, data)
		return row{name, "POST", infer, b, h, status, code}
	}
	rows = append(rows,
		bin("binary size not matching shape", binHeader("[1,3]", 8), 8, 400, api.CodeDataLengthMismatch),
		bin("binary size beyond body", binHeader("[1,3]", 12), 4, 400, api.CodeInvalidData),
		bin("bytes after the binary inputs", binHeader("[1,3]", 12), 16, 400, api.CodeInvalidData),
		bin("huge shape, tiny binary data", binHeader("[1000000000,3]", 12), 12, 400, api.CodeDataLengthMismatch),
		row{"header length beyond body", "POST", infer, `{}`, map[string]string{wire.HeaderContentLength: "99"}, 400, api.CodeBadHeaderLength},
		row{"header length not a number", "POST", infer, `{}`, map[string]string{wire.HeaderContentLength: "x"}, 400, api.CodeBadHeaderLength},
	)
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			var body io.Reader
			if r.body != "" {
				body = strings.NewReader(r.body)
			}
			status, _, b := n.do(t, r.method, r.path, "", body, r.header)
			if status != r.status {
				t.Fatalf("status %d, want %d (body %s)", status, r.status, b)
			}
			if got := errorCode(t, b); got != string(r.code) {
				t.Errorf("code %q, want %q (body %s)", got, r.code, b)
			}
		})
	}
	// A body over the limit without Content-Length is cut off while being read.
	t.Run("chunked body over the limit", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			pw.Write([]byte(`{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[`))
			pw.Write(bytes.Repeat([]byte(" "), 2*testMaxBody))
			pw.Close()
		}()
		status, _, b := n.do(t, "POST", infer, "", pr, nil)
		if status != 413 || errorCode(t, b) != string(api.CodeBodyTooLarge) {
			t.Errorf("got %d %s, want 413 body_too_large", status, b)
		}
	})
	// After all that, the node still serves.
	status, _, b := n.do(t, "POST", infer, "", strings.NewReader(in("[1,3]", "FP32", "[0,0,0]")), nil)
	if status != 200 || !strings.Contains(string(b), `"data":[1,2,3]`) {
		t.Errorf("good request after bad ones: %d %s", status, b)
	}
}

// TestUploads covers the streamed upload: a good model is served at once; a corrupt
// or truncated one is refused with invalid_model while the others keep serving; an
// upload over the limit is 413; delete unloads it.
func TestUploads(t *testing.T) {
	n := startNode(t, func(c *node.Config) { c.MaxModelBytes = 1 << 20 })
	admin := n.client(t, n.token)
	ctx := context.Background()
	good := scaleModel(t)

	var progress []int64
	st, err := admin.UploadModel(ctx, "scale2", bytes.NewReader(good), int64(len(good)), client.UploadOptions{Progress: func(sent, total int64) {
		if total != int64(len(good)) {
			t.Errorf("progress total %d, want %d", total, len(good))
		}
		progress = append(progress, sent)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || st.Size != int64(len(good)) || len(st.SHA256) != 64 || st.Source != "upload" {
		t.Errorf("upload status %+v", st)
	}
	if len(progress) == 0 || progress[len(progress)-1] != int64(len(good)) {
		t.Errorf("progress %v does not end at %d", progress, len(good))
	}
	assertScale(t, n, "scale2")

	for _, tc := range []struct {
		name   string
		body   []byte
		status int
		code   api.Code
	}{
		{"corrupt", []byte("this is not an onnx model at all, just text"), 422, api.CodeInvalidModel},
		{"truncated", good[:len(good)/2], 422, api.CodeInvalidModel},
		{"empty", nil, 422, api.CodeInvalidModel},
		{"over the limit", make([]byte, 2<<20), 413, api.CodeBodyTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Replacing a serving model with a bad one must leave the old one serving.
			_, err := admin.UploadModel(ctx, "scale2", bytes.NewReader(tc.body), int64(len(tc.body)), client.UploadOptions{})
			var e *client.Error
			if !errors.As(err, &e) || e.Status != tc.status || e.Code != string(tc.code) {
				t.Fatalf("upload %s: %v, want %d %s", tc.name, err, tc.status, tc.code)
			}
			assertScale(t, n, "scale2")
			assertScale(t, n, "scale")
		})
	}
	if _, err := admin.UploadModel(ctx, "../evil", bytes.NewReader(good), int64(len(good)), client.UploadOptions{}); !client.IsCode(err, string(api.CodeInvalidName)) {
		t.Errorf("upload with a path in the name: %v, want invalid_name", err)
	}
	if err := admin.DeleteModel(ctx, "scale2"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Model(ctx, "scale2"); !client.IsCode(err, string(api.CodeModelNotFound)) {
		t.Errorf("after delete: %v, want model_not_found", err)
	}
	if err := admin.DeleteModel(ctx, "scale2"); !client.IsCode(err, string(api.CodeModelNotFound)) {
		t.Errorf("second delete: %v, want model_not_found", err)
	}
}

func assertScale(t *testing.T, n *testNode, model string) {
	t.Helper()
	resp, err := n.client(t, "").Infer(context.Background(), model, &wire.Request{Inputs: []tensor.Tensor{tensor.FromInt64("p", []int64{2}, []int64{21, -5})}}, client.InferOptions{})
	if err != nil {
		t.Fatalf("infer %s: %v", model, err)
	}
	q, _ := resp.Output("q")
	got, err := q.Int64s()
	if err != nil || fmt.Sprint(got) != "[42 -10]" {
		t.Fatalf("infer %s: q = %v (%v), want [42 -10]", model, got, err)
	}
}

// TestRoutes walks every endpoint: status and code for the documented cases.
func TestRoutes(t *testing.T) {
	n := startNode(t)
	for _, r := range routeCases(n.token) {
		t.Run(r.method+" "+r.path, func(t *testing.T) {
			status, h, b := n.do(t, r.method, r.path, r.token, nil, nil)
			if status != r.status {
				t.Fatalf("status %d, want %d (body %s)", status, r.status, b)
			}
			if r.code == "" {
				return
			}
			if got := errorCode(t, b); got != string(r.code) {
				t.Errorf("code %q, want %q", got, r.code)
			}
			if status == 405 && h.Get("Allow") == "" {
				t.Errorf("405 without Allow")
			}
		})
	}
	t.Run("token request body", func(t *testing.T) { checkTokenRequestBodies(t, n) })
	t.Run("request id", func(t *testing.T) { checkRequestIDs(t, n) })
	t.Run("response bodies", func(t *testing.T) { checkResponseBodies(t, n) })
}

// routeCase is one request of TestRoutes and the answer it must get.
type routeCase struct {
	method, path, token string
	status              int
	code                api.Code // "" for a success body
}

// routeCases lists every endpoint's documented cases; admin is the admin token.
func routeCases(admin string) []routeCase {
	return []routeCase{
		{"GET", "/v2/health/live", "", 200, ""},
		{"GET", "/v2/health/ready", "", 200, ""},
		{"GET", "/v2", "", 200, ""},
		{"GET", "/v2/models/add", "", 200, ""},
		{"GET", "/v2/models/add/versions/1", "", 200, ""},
		{"GET", "/v2/models/add/ready", "", 200, ""},
		{"GET", "/v2/models/add/versions/1/ready", "", 200, ""},
		{"GET", "/metrics", "", 200, ""},
		{"GET", "/v2//health/live", "", 200, ""}, // the mux's redirect to the clean path passes through
		{"GET", "/v1/cluster", admin, 200, ""},
		{"GET", "/v1/nodes", admin, 200, ""},
		{"GET", "/v1/models", admin, 200, ""},
		{"GET", "/v1/models/add", admin, 200, ""},
		// 404s
		{"GET", "/", "", 404, api.CodeRouteNotFound},
		{"GET", "/v3", "", 404, api.CodeRouteNotFound},
		{"GET", "/v2/models", "", 404, api.CodeRouteNotFound},
		{"GET", "/v2/models/add/versions", "", 404, api.CodeRouteNotFound},
		{"GET", "/v2/models/nope", "", 404, api.CodeModelNotFound},
		{"GET", "/v2/models/add/versions/2", "", 404, api.CodeModelNotFound},
		{"GET", "/v2/models/nope/ready", "", 404, api.CodeModelNotFound},
		{"GET", "/v1/models/nope", admin, 404, api.CodeModelNotFound},
		{"DELETE", "/v1/models/nope", admin, 404, api.CodeModelNotFound},
		// 405s
		{"POST", "/v2/health/live", "", 405, api.CodeMethodNotAllowed},
		{"DELETE", "/v2/health/ready", "", 405, api.CodeMethodNotAllowed},
		{"POST", "/v2", "", 405, api.CodeMethodNotAllowed},
		{"POST", "/v2/models/add", "", 405, api.CodeMethodNotAllowed},
		{"PUT", "/v2/models/add/infer", "", 405, api.CodeMethodNotAllowed},
		{"POST", "/v1/cluster", admin, 405, api.CodeMethodNotAllowed},
		{"PUT", "/v1/nodes", admin, 405, api.CodeMethodNotAllowed},
		{"GET", "/v1/nodes/x/drain", admin, 405, api.CodeMethodNotAllowed},
		{"POST", "/v1/models/add", admin, 405, api.CodeMethodNotAllowed},
		{"POST", "/metrics", "", 405, api.CodeMethodNotAllowed},
		// 401s: admin routes without a token or with an unknown one
		{"GET", "/v1/cluster", "", 401, api.CodeUnauthorized},
		{"GET", "/v1/nodes", "wrong", 401, api.CodeUnauthorized},
		{"POST", "/v1/nodes/test-node/drain", "", 401, api.CodeUnauthorized},
		{"DELETE", "/v1/nodes/test-node", "", 401, api.CodeUnauthorized},
		{"GET", "/v1/models", "", 401, api.CodeUnauthorized},
		{"PUT", "/v1/models/x", "", 401, api.CodeUnauthorized},
		{"GET", "/v1/models/add", "wrong", 401, api.CodeUnauthorized},
		{"DELETE", "/v1/models/add", "", 401, api.CodeUnauthorized},
		// 501: cluster calls on a single node
		{"POST", "/v1/nodes/test-node/drain", admin, 501, api.CodeNotClusterMode},
		{"DELETE", "/v1/nodes/test-node", admin, 501, api.CodeNotClusterMode},
		{"PUT", "/v1/models/x?stages=2", admin, 501, api.CodeNotClusterMode},
		{"PUT", "/v1/models/x?compress=int8", admin, 501, api.CodeNotClusterMode},
		{"PUT", "/v1/models/x?plan=measured", admin, 501, api.CodeNotClusterMode},
		// 400: bad query
		{"PUT", "/v1/models/x?replicas=-1", admin, 400, api.CodeBadRequest},
		{"PUT", "/v1/models/x?compress=int8&prune=-0.5", admin, 400, api.CodeBadRequest},
		{"PUT", "/v1/models/x?plan=fastest", admin, 400, api.CodeBadRequest},
		{"PUT", "/v1/models/x?plan_past=8", admin, 400, api.CodeBadRequest},
		{"PUT", "/v1/models/x?plan=measured&plan_past=-1", admin, 400, api.CodeBadRequest},
		{"PUT", "/v1/models/x?plan=measured&plan_past=2000000", admin, 400, api.CodeBadRequest},
		// Operations endpoints: admin only, cluster-only on a single node.
		{"POST", "/v1/nodes/test-node/undrain", "", 401, api.CodeUnauthorized},
		{"POST", "/v1/nodes/test-node/undrain", admin, 501, api.CodeNotClusterMode},
		{"GET", "/v1/nodes/test-node/undrain", admin, 405, api.CodeMethodNotAllowed},
		{"GET", "/v1/doctor", "", 401, api.CodeUnauthorized},
		{"GET", "/v1/doctor", admin, 501, api.CodeNotClusterMode},
		{"POST", "/v1/doctor", admin, 405, api.CodeMethodNotAllowed},
		{"GET", "/v1/join-token", "wrong", 401, api.CodeUnauthorized},
		{"GET", "/v1/join-token", admin, 501, api.CodeNotClusterMode},
		{"DELETE", "/v1/join-token", admin, 405, api.CodeMethodNotAllowed},
		{"GET", "/v1/tokens", "", 401, api.CodeUnauthorized},
		{"GET", "/v1/tokens", admin, 501, api.CodeNotClusterMode},
		{"PUT", "/v1/tokens", admin, 405, api.CodeMethodNotAllowed},
		{"POST", "/v1/tokens", "", 401, api.CodeUnauthorized},
		{"DELETE", "/v1/tokens/x", "", 401, api.CodeUnauthorized},
		{"DELETE", "/v1/tokens/x", admin, 501, api.CodeNotClusterMode},
		{"GET", "/v1/tokens/x", admin, 405, api.CodeMethodNotAllowed},
		// Generation: this node has no Generator; errors on /openai/v1 use OpenAI's envelope.
		{"GET", "/openai/v1/models", "", 200, ""},
		{"GET", "/openai/v1/models/add", "", 400, api.CodeNotGenerative},
		{"GET", "/openai/v1/models/nope", "", 404, api.CodeModelNotFound},
		{"GET", "/openai/v1/completions", "", 405, api.CodeMethodNotAllowed},
		{"PUT", "/openai/v1/chat/completions", "", 405, api.CodeMethodNotAllowed},
		{"GET", "/openai/v1/nope", "", 404, api.CodeRouteNotFound},
		{"POST", "/openai/v1/completions", "", 400, api.CodeBadJSON},
		{"GET", "/v2/models/add/generate", "", 405, api.CodeMethodNotAllowed},
		{"POST", "/v2/models/add/generate_stream", "", 400, api.CodeBadJSON},
		{"POST", "/v2/models/add/versions/1/generate", "", 400, api.CodeBadJSON},
	}
}

// checkTokenRequestBodies: POST /v1/tokens checks its body before anything else.
func checkTokenRequestBodies(t *testing.T, n *testNode) {
	admin := n.token
	for _, r := range []struct {
		body   string
		status int
		code   api.Code
	}{
		{`{`, 400, api.CodeBadJSON},
		{`{"scope":"root"}`, 400, api.CodeBadRequest},
		{`{"scope":"infer","name":"a b"}`, 400, api.CodeInvalidName},
		{`{"scope":"infer","name":"` + strings.Repeat("x", 70<<10) + `"}`, 413, api.CodeBodyTooLarge},
		{`{"scope":"infer","name":"ci"}`, 501, api.CodeNotClusterMode},
	} {
		status, _, b := n.do(t, "POST", "/v1/tokens", admin, strings.NewReader(r.body), nil)
		if status != r.status || errorCode(t, b) != string(r.code) {
			t.Errorf("POST /v1/tokens %.40q: %d %s, want %d %s", r.body, status, b, r.status, r.code)
		}
	}
}

// checkRequestIDs: every answer carries a request id; a client's own id is echoed.
func checkRequestIDs(t *testing.T, n *testNode) {
	if _, h, _ := n.do(t, "GET", "/v2/health/live", "", nil, nil); len(h.Get(api.HeaderRequestID)) != 16 {
		t.Errorf("request id %q, want 16 hex characters", h.Get(api.HeaderRequestID))
	}
	if _, h, _ := n.do(t, "GET", "/v2", "", nil, map[string]string{api.HeaderRequestID: "trace-42"}); h.Get(api.HeaderRequestID) != "trace-42" {
		t.Errorf("request id %q, want the client's trace-42", h.Get(api.HeaderRequestID))
	}

}

// checkResponseBodies: the bodies say what they should.
func checkResponseBodies(t *testing.T, n *testNode) {
	admin := n.token
	c := n.client(t, admin)
	ctx := context.Background()
	cl, err := c.Cluster(ctx)
	if err != nil || cl.Mode != "single-node" || cl.Self != "test-node" || len(cl.Nodes) != 1 {
		t.Errorf("cluster = %+v, %v", cl, err)
	}
	md, err := c.ModelMetadata(ctx, "add", "")
	if err != nil || md.Platform != "onnxruntime_onnx" || fmt.Sprint(md.Versions) != "[1]" ||
		len(md.Inputs) != 1 || md.Inputs[0].Datatype != "FP32" || fmt.Sprint(md.Inputs[0].Shape) != "[-1 3]" {
		t.Errorf("metadata = %+v, %v", md, err)
	}
	sm, err := c.ServerMetadata(ctx)
	if err != nil || sm.Name != "layermesh" || fmt.Sprint(sm.Extensions) != "[binary_tensor_data generate]" {
		t.Errorf("server metadata = %+v, %v", sm, err)
	}
	ready, err := c.Ready(ctx)
	if err != nil || !ready.Ready || len(ready.Checks) != 3 {
		t.Errorf("ready = %+v, %v", ready, err)
	}
}

// scopedNode is a real node whose token check also knows an infer-scoped token, for
// the 403 rows until the Raft token store provides such tokens.
type scopedNode struct{ *node.Node }

func (s scopedNode) VerifyToken(ctx context.Context, tok string) (api.Scope, error) {
	if tok == "infer-only" {
		return api.ScopeInfer, nil
	}
	return s.Node.VerifyToken(ctx, tok)
}

// panicky panics inside Infer for model "boom", to prove a handler panic is a 500.
type panicky struct{ *node.Node }

func (p panicky) Infer(ctx context.Context, req api.InferRequest) (api.InferResult, error) {
	if req.Model == "boom" {
		panic("boom")
	}
	return p.Node.Infer(ctx, req)
}

// TestScopesAndPanics runs the API in front of a real node with two swapped parts:
// an infer-scoped token (403 on admin routes, 200 on inference when tokens are
// required) and a model service that panics (500, and the server keeps serving).
func TestScopesAndPanics(t *testing.T) {
	n := startNode(t)
	srv, err := api.New(api.Config{
		Models: panicky{n.Node}, Health: n.Node, Cluster: n.Node, Tokens: scopedNode{n.Node},
		RequireInferToken: true, Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := srv.HTTPServer(nil)
	ln := mustListen(t)
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	base := "http://" + ln.Addr().String()
	good := `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`
	for _, r := range []struct {
		method, path, token, body string
		status                    int
		code                      api.Code
	}{
		{"GET", "/v1/cluster", "infer-only", "", 403, api.CodeForbidden},
		{"PUT", "/v1/models/x", "infer-only", "", 403, api.CodeForbidden},
		{"GET", "/v1/tokens", "infer-only", "", 403, api.CodeForbidden},
		{"POST", "/v1/tokens", "infer-only", `{"scope":"admin"}`, 403, api.CodeForbidden},
		{"DELETE", "/v1/tokens/x", "infer-only", "", 403, api.CodeForbidden},
		{"POST", "/v1/nodes/x/drain", "infer-only", "", 403, api.CodeForbidden},
		{"POST", "/v1/nodes/x/undrain", "infer-only", "", 403, api.CodeForbidden},
		{"DELETE", "/v1/nodes/x", "infer-only", "", 403, api.CodeForbidden},
		{"GET", "/v1/doctor", "infer-only", "", 403, api.CodeForbidden},
		{"GET", "/v1/join-token", "infer-only", "", 403, api.CodeForbidden},
		{"GET", "/v1/nodes", "infer-only", "", 403, api.CodeForbidden},
		{"GET", "/v1/models", "infer-only", "", 403, api.CodeForbidden},
		{"DELETE", "/v1/models/add", "infer-only", "", 403, api.CodeForbidden},
		{"POST", "/v2/models/add/infer", "", good, 401, api.CodeUnauthorized},
		{"GET", "/v2/models/add", "", "", 401, api.CodeUnauthorized},
		{"POST", "/v2/models/add/infer", "infer-only", good, 200, ""},
		{"POST", "/v2/models/add/infer", n.token, good, 200, ""},
		{"GET", "/v2/health/ready", "", "", 200, ""},
		{"POST", "/v2/models/boom/infer", "infer-only", good, 500, api.CodeInternal},
		{"POST", "/v2/models/add/infer", "infer-only", good, 200, ""},
	} {
		req, _ := http.NewRequest(r.method, base+r.path, strings.NewReader(r.body))
		if r.token != "" {
			req.Header.Set("Authorization", "Bearer "+r.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", r.method, r.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != r.status {
			t.Errorf("%s %s token=%q: %d, want %d (%s)", r.method, r.path, r.token, resp.StatusCode, r.status, b)
			continue
		}
		if r.code != "" {
			if got := errorCode(t, b); got != string(r.code) {
				t.Errorf("%s %s: code %q, want %q", r.method, r.path, got, r.code)
			}
		}
	}
}

// TestMetricsCountTraffic sends a known number of requests and reads the counters.
func TestMetricsCountTraffic(t *testing.T) {
	n := startNode(t)
	c := n.client(t, "")
	const good, bad = 7, 3
	var wg sync.WaitGroup
	for i := 0; i < good; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Infer(context.Background(), "add", &wire.Request{Inputs: []tensor.Tensor{tensor.FromFloat32("x", []int64{1, 3}, []float32{1, 2, 3})}}, client.InferOptions{BinaryInputs: true}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for i := 0; i < bad; i++ {
		n.do(t, "POST", "/v2/models/add/infer", "", strings.NewReader(`{`), nil)
	}
	_, _, b := n.do(t, "GET", "/metrics", "", nil, nil)
	for _, want := range []string{
		`layermesh_infer_requests_total{code="200",model="add"} 7`,
		`layermesh_infer_requests_total{code="400",model="add"} 3`,
		`layermesh_infer_duration_seconds_count{model="add"} 10`,
		`layermesh_http_requests_total{code="200",route="/v2/models/{name}/infer"} 7`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestRedeployUnderLoad re-uploads a model over and over while clients infer on it:
// no request may fail, each answer is right, and the replaced sessions are closed
// only after their last run.
func TestRedeployUnderLoad(t *testing.T) {
	n := startNode(t)
	admin := n.client(t, n.token)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	model := scaleModel(t)
	var wg sync.WaitGroup
	var runs sync.Map
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := n.client(t, "")
			for i := 0; ctx.Err() == nil; i++ {
				resp, err := c.Infer(ctx, "scale", &wire.Request{Inputs: []tensor.Tensor{tensor.FromInt64("p", []int64{2}, []int64{int64(i), 1})}}, client.InferOptions{BinaryInputs: true})
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					t.Errorf("infer during redeploy: %v", err)
					return
				}
				q, _ := resp.Output("q")
				if got, _ := q.Int64s(); len(got) != 2 || got[0] != int64(2*i) || got[1] != 2 {
					t.Errorf("q = %v for p = [%d 1]", got, i)
					return
				}
				runs.Store(w*1_000_000+i, true)
			}
		}()
	}
	for i := 0; i < 8; i++ {
		if _, err := admin.UploadModel(context.Background(), "scale", bytes.NewReader(model), int64(len(model)), client.UploadOptions{}); err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
	}
	cancel()
	wg.Wait()
	count := 0
	runs.Range(func(any, any) bool { count++; return true })
	if count == 0 {
		t.Errorf("no inference ran during the redeploys")
	}
	t.Logf("%d inferences during 8 redeploys", count)
}

// TestFailedModelAtStart: a corrupt file in --model-dir does not stop the node; the
// other models serve, the bad one is listed as not ready with its reason, and calls
// on it get 503 not_ready with Retry-After.
func TestFailedModelAtStart(t *testing.T) {
	n := startNode(t, func(c *node.Config) {
		if err := os.WriteFile(filepath.Join(c.ModelDir, "broken.onnx"), []byte("not a model"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	assertScale(t, n, "scale")
	for _, path := range []string{"/v2/models/broken/ready", "/v2/models/broken"} {
		status, h, b := n.do(t, "GET", path, "", nil, nil)
		if status != 503 || h.Get("Retry-After") == "" {
			t.Errorf("GET %s: %d, Retry-After %q (%s)", path, status, h.Get("Retry-After"), b)
		}
	}
	status, h, b := n.do(t, "POST", "/v2/models/broken/infer", "", strings.NewReader(`{"inputs":[]}`), nil)
	if status != 503 || errorCode(t, b) != string(api.CodeNotReady) || h.Get("Retry-After") == "" {
		t.Errorf("infer on a broken model: %d %s", status, b)
	}
	models, err := n.client(t, n.token).Models(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var broken *wire.ModelStatus
	for i := range models {
		if models[i].Name == "broken" {
			broken = &models[i]
		}
	}
	if broken == nil || broken.Ready || broken.Reason == "" {
		t.Errorf("models lists broken as %+v", broken)
	}
	ready, err := n.client(t, "").Ready(context.Background())
	if err != nil || !ready.Ready || !strings.Contains(fmt.Sprint(ready.Checks), "1 failed to load") {
		t.Errorf("readiness = %+v, %v", ready, err)
	}
}

// notReadyHealth reports a layer that is not ready, as a node that lost its cluster
// would.
type notReadyHealth struct{}

func (notReadyHealth) Ready(context.Context) []wire.ReadyCheck {
	return []wire.ReadyCheck{{Layer: "backend", Ready: true}, {Layer: "cluster", Ready: false, Reason: "no leader"}}
}

// TestReadinessSaysWhichLayer: /v2/health/ready answers 503 with Retry-After and names
// the layer that is not ready; liveness stays 200.
func TestReadinessSaysWhichLayer(t *testing.T) {
	n := startNode(t)
	srv, err := api.New(api.Config{Models: n.Node, Health: notReadyHealth{}, Cluster: n.Node, Tokens: n.Node, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	hs := srv.HTTPServer(nil)
	ln := mustListen(t)
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	c, err := client.New(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Ready(context.Background())
	if err != nil || r.Ready || len(r.Checks) != 2 || r.Checks[1].Layer != "cluster" || r.Checks[1].Reason != "no leader" {
		t.Errorf("ready = %+v, %v", r, err)
	}
	resp, err := http.Get("http://" + ln.Addr().String() + "/v2/health/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("ready: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if err := c.Live(context.Background()); err != nil {
		t.Errorf("live: %v", err)
	}
}
