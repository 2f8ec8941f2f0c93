// Package singlenode_test runs the real binaries: meshctl generates a model,
// meshnode serves it from --model-dir, and both api/client and meshctl query it. The
// answer is held against modelgen's plain-Go reference forward pass, which shares no
// code with ONNX Runtime or the HTTP path.
package singlenode_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/partition/onnxpb"
	"github.com/layermesh/layermesh/test/harness"
	"google.golang.org/protobuf/proto"
)

type cli struct {
	t    *testing.T
	path string
	env  []string
}

// run executes meshctl and returns stdout, stderr and the exit code.
func (c cli) run(args ...string) (string, string, int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.path, args...)
	cmd.Env = append(os.Environ(), c.env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		c.t.Fatalf("meshctl %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func (c cli) mustRun(args ...string) string {
	c.t.Helper()
	out, errOut, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("meshctl %v: exit %d\n%s", args, code, errOut)
	}
	return out
}

// waitReady polls the node's readiness until every layer is ready; it fails the test
// at once if the process exits.
func waitReady(ctx context.Context, t *testing.T, c *client.Client, p *harness.Proc) {
	t.Helper()
	exited, waitErr := p.Exited()
	for {
		r, err := c.Ready(ctx)
		if err == nil && r.Ready {
			return
		}
		select {
		case <-exited:
			t.Fatalf("meshnode exited before ready: %v", waitErr())
		case <-ctx.Done():
			t.Fatalf("meshnode not ready: %+v %v", r, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestSingleNode walks one meshnode process through its life: serve a generated model,
// answer over HTTP and through meshctl, admin commands, deploy and undeploy, usage
// errors, and a clean stop on SIGTERM.
func TestSingleNode(t *testing.T) {
	s := startSoloNode(t)
	logits := s.checkBinaryInference(t)
	s.checkMeshctlInference(t, logits)
	s.checkAdminCommands(t)
	s.checkDeployAndUndeploy(t)
	s.checkUsageErrors(t)
	s.checkCleanStop(t)
}

// soloNode is one running meshnode serving the generated gpt-tiny, and the clients
// that talk to it.
type soloNode struct {
	meshctl   cli
	node      *harness.Proc
	dir       string
	dataDir   string
	tokenFile string
	ctx       context.Context
	open      *client.Client // no token
	admin     *client.Client
	gen       struct {
		Params int64 `json:"params"`
		Bytes  int64 `json:"bytes"`
	}
	gpt   *onnxpb.ModelProto // the model the node serves, rebuilt in-process
	input tensor.Tensor      // token ids the inference checks send
}

// startSoloNode: meshctl writes the model, and the node serves it from --model-dir.
func startSoloNode(t *testing.T) *soloNode {
	meshnode := harness.BuildBinary(t, "./cmd/meshnode")
	s := &soloNode{meshctl: cli{t: t, path: harness.BuildBinary(t, "./cmd/meshctl")}, dir: t.TempDir()}
	modelDir := filepath.Join(s.dir, "models")
	s.dataDir = filepath.Join(s.dir, "data")
	if err := os.MkdirAll(modelDir, 0o755); err != nil {
		t.Fatal(err)
	}

	// meshctl writes the model the node will serve.
	gptFile := filepath.Join(modelDir, "gpt.onnx")
	if err := json.Unmarshal([]byte(s.meshctl.mustRun("gen-model", "gpt-tiny", "-o", gptFile, "--json")), &s.gen); err != nil || s.gen.Params == 0 {
		t.Fatalf("gen-model --json: %+v %v", s.gen, err)
	}

	// The node serves it.
	s.node = harness.StartProc(t, harness.ProcSpec{
		Name: "meshnode",
		Path: meshnode,
		Args: []string{"--data-dir", s.dataDir, "--model-dir", modelDir, "--http", "127.0.0.1:0", "--name", "solo",
			"--accel", "cpu", "--threads", "1", "--log-format", "json"},
	})
	addr, err := harness.ReadAddrFile(s.node, filepath.Join(s.dataDir, "http.addr"), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	s.ctx = ctx
	if s.open, err = client.New(addr); err != nil {
		t.Fatal(err)
	}
	waitReady(ctx, t, s.open, s.node)
	s.tokenFile = filepath.Join(s.dataDir, "admin.token")
	tok, err := os.ReadFile(s.tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	s.meshctl.env = []string{"LAYERMESH_ADDR=" + addr}
	if s.admin, err = client.New(addr, client.WithToken(string(tok))); err != nil {
		t.Fatal(err)
	}
	return s
}

// checkBinaryInference: api/client, binary extension: the logits equal the reference
// forward pass. It returns them for the meshctl checks.
func (s *soloNode) checkBinaryInference(t *testing.T) []float32 {
	ids := [][]int64{{5, 17, 3, 96, 0, 42}}
	m, err := modelgen.GPT(modelgen.GPTTiny)
	if err != nil {
		t.Fatal(err)
	}
	s.gpt = m
	want, err := modelgen.ReferenceGPT(m, modelgen.GPTTiny, ids)
	if err != nil {
		t.Fatal(err)
	}
	s.input = tensor.FromInt64(modelgen.GPTInput, []int64{1, 6}, ids[0])
	resp, err := s.open.Infer(s.ctx, "gpt", &wire.Request{Inputs: []tensor.Tensor{s.input}, BinaryOutputs: true}, client.InferOptions{BinaryInputs: true})
	if err != nil {
		t.Fatal(err)
	}
	logits, ok := resp.Output(modelgen.GPTOutput)
	if !ok {
		t.Fatalf("no %s in response", modelgen.GPTOutput)
	}
	got, err := logits.Float32s()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d logits, want %d", len(got), len(want))
	}
	var maxDiff float64
	for i := range got {
		maxDiff = math.Max(maxDiff, math.Abs(float64(got[i]-want[i])))
	}
	if maxDiff > 1e-4 {
		t.Errorf("logits differ from the reference by %g (> 1e-4)", maxDiff)
	}
	t.Logf("gpt-tiny over HTTP vs plain-Go reference: max |diff| = %.2g over %d logits", maxDiff, len(got))
	return got
}

// checkMeshctlInference: meshctl infer --json gives the same numbers as the client
// through the JSON rendering, its table names the output, and meshctl bench reports
// what it sent.
func (s *soloNode) checkMeshctlInference(t *testing.T, got []float32) {
	var jr wire.ResponseHeader
	out := s.meshctl.mustRun("infer", "gpt", "--input", "input_ids=5,17,3,96,0,42", "--shape", "input_ids=1x6", "--json")
	if err := json.Unmarshal([]byte(out), &jr); err != nil || len(jr.Outputs) != 1 {
		t.Fatalf("infer --json: %v\n%s", err, out)
	}
	var vals []float32
	if err := json.Unmarshal(jr.Outputs[0].Data, &vals); err != nil || len(vals) != len(got) {
		t.Fatalf("infer --json data: %v (%d values)", err, len(vals))
	}
	for i := range vals {
		if vals[i] != got[i] {
			t.Fatalf("meshctl value %d = %v, client got %v", i, vals[i], got[i])
		}
	}
	// The human form names the output and its shape.
	if out := s.meshctl.mustRun("infer", "gpt", "--input", "input_ids=5,17,3,96,0,42", "--shape", "input_ids=1x6"); !strings.Contains(out, "logits FP32 [1 6 97]") {
		t.Errorf("infer table: %s", out)
	}

	var br struct {
		Requests int     `json:"requests"`
		Failed   int     `json:"failed"`
		P50      float64 `json:"p50_ms"`
	}
	if err := json.Unmarshal([]byte(s.meshctl.mustRun("bench", "gpt", "--input", "input_ids=1,2,3", "--shape", "input_ids=1x3", "--requests", "12", "--concurrency", "3", "--json")), &br); err != nil ||
		br.Requests != 12 || br.Failed != 0 || br.P50 <= 0 {
		t.Errorf("bench --json = %+v, %v", br, err)
	}
}

// checkAdminCommands: admin through meshctl: without a token exit 1 and the code;
// with it the JSON.
func (s *soloNode) checkAdminCommands(t *testing.T) {
	if _, errOut, code := s.meshctl.run("models"); code != 1 || !strings.Contains(errOut, "unauthorized") {
		t.Errorf("models without token: exit %d, %s", code, errOut)
	}
	var list wire.ModelList
	if err := json.Unmarshal([]byte(s.meshctl.mustRun("models", "--token-file", s.tokenFile, "--json")), &list); err != nil ||
		len(list.Models) != 1 || list.Models[0].Name != "gpt" || !list.Models[0].Ready || list.Models[0].Source != "model-dir" || list.Models[0].Size != s.gen.Bytes {
		t.Errorf("models --json = %+v, %v", list, err)
	}
	var st struct {
		Readiness wire.Readiness      `json:"readiness"`
		Cluster   *wire.ClusterStatus `json:"cluster"`
	}
	if err := json.Unmarshal([]byte(s.meshctl.mustRun("status", "--token-file", s.tokenFile, "--json")), &st); err != nil ||
		!st.Readiness.Ready || st.Cluster == nil || st.Cluster.Mode != "single-node" || st.Cluster.Self != "solo" {
		t.Errorf("status --json = %+v, %v", st, err)
	}
}

// checkDeployAndUndeploy: deploy a second model with meshctl, run it, refuse a
// corrupt one (the model it would replace keeps serving), undeploy.
func (s *soloNode) checkDeployAndUndeploy(t *testing.T) {
	lstmFile := filepath.Join(s.dir, "lstm.onnx")
	s.meshctl.mustRun("gen-model", "lstm-tiny", "-o", lstmFile)
	var dep wire.ModelStatus
	if err := json.Unmarshal([]byte(s.meshctl.mustRun("deploy", lstmFile, "--name", "lstm", "--token-file", s.tokenFile, "--json")), &dep); err != nil || !dep.Ready || dep.Source != "upload" {
		t.Fatalf("deploy --json = %+v, %v", dep, err)
	}
	lstmCfg, _ := modelgen.Lookup("lstm-tiny", nil)
	lstmIn, err := lstmCfg.ExampleInputs(2, 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.open.Infer(s.ctx, "lstm", &wire.Request{Inputs: lstmIn}, client.InferOptions{}); err != nil {
		t.Errorf("infer on the deployed model: %v", err)
	}
	corrupt := filepath.Join(s.dir, "corrupt.onnx")
	good, _ := proto.Marshal(s.gpt)
	if err := os.WriteFile(corrupt, good[:len(good)/3], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := s.meshctl.run("deploy", corrupt, "--name", "gpt", "--token-file", s.tokenFile, "--quiet"); code != 1 || !strings.Contains(errOut, "invalid_model") {
		t.Errorf("corrupt deploy: exit %d, %s", code, errOut)
	}
	if _, err := s.open.Infer(s.ctx, "gpt", &wire.Request{Inputs: []tensor.Tensor{s.input}}, client.InferOptions{}); err != nil {
		t.Errorf("gpt stopped serving after a corrupt upload over it: %v", err)
	}
	s.meshctl.mustRun("undeploy", "lstm", "--token-file", s.tokenFile)
	if _, err := s.admin.Model(s.ctx, "lstm"); !client.IsCode(err, "model_not_found") {
		t.Errorf("after undeploy: %v", err)
	}
}

// checkUsageErrors: exit code 2 for a wrong command line.
func (s *soloNode) checkUsageErrors(t *testing.T) {
	if _, _, code := s.meshctl.run("infer"); code != 2 {
		t.Errorf("meshctl infer without a model: exit %d, want 2", code)
	}
	if _, _, code := s.meshctl.run("no-such-command"); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
}

// checkCleanStop: SIGTERM stops the node cleanly and promptly; it removes http.addr.
func (s *soloNode) checkCleanStop(t *testing.T) {
	if err := s.node.Stop(20 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, waitErr := s.node.Exited(); waitErr() != nil {
		t.Errorf("meshnode exit after SIGTERM: %v", waitErr())
	}
	if _, err := os.Stat(filepath.Join(s.dataDir, "http.addr")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("http.addr left behind: %v", err)
	}
}
