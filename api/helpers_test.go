package api_test

import (
	"net"

	"context"
	"go.uber.org/goleak"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/node"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// Tiny ONNX models, built here so every expected value is computed by hand:
//
//	add:   y = x + [1 2 3], x float32 [N 3]
//	scale: q = p * 2,       p int64 [2]
var addBias = []float32{1, 2, 3}

func valueInfo(name string, d tensor.DType, shape ...int64) *onnxpb.ValueInfoProto {
	dims := make([]*onnxpb.TensorShapeProto_Dimension, len(shape))
	for i, s := range shape {
		if s < 0 {
			dims[i] = &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: "N"}}
		} else {
			dims[i] = &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: s}}
		}
	}
	return &onnxpb.ValueInfoProto{
		Name: proto.String(name),
		Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{
			ElemType: proto.Int32(int32(d)),
			Shape:    &onnxpb.TensorShapeProto{Dim: dims},
		}}},
	}
}

func modelBytes(t testing.TB, g *onnxpb.GraphProto) []byte {
	t.Helper()
	g.Name = proto.String("test")
	m := &onnxpb.ModelProto{
		IrVersion:   proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}},
		Graph:       g,
	}
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func addModel(t testing.TB) []byte {
	bias := tensor.FromFloat32("bias", []int64{3}, addBias)
	return modelBytes(t, &onnxpb.GraphProto{
		Node:        []*onnxpb.NodeProto{{OpType: proto.String("Add"), Input: []string{"x", "bias"}, Output: []string{"y"}}},
		Initializer: []*onnxpb.TensorProto{{Name: proto.String("bias"), DataType: proto.Int32(int32(tensor.Float32)), Dims: []int64{3}, RawData: bias.Data}},
		Input:       []*onnxpb.ValueInfoProto{valueInfo("x", tensor.Float32, -1, 3)},
		Output:      []*onnxpb.ValueInfoProto{valueInfo("y", tensor.Float32, -1, 3)},
	})
}

func scaleModel(t testing.TB) []byte {
	two := tensor.FromInt64("two", []int64{}, []int64{2})
	return modelBytes(t, &onnxpb.GraphProto{
		Node:        []*onnxpb.NodeProto{{OpType: proto.String("Mul"), Input: []string{"p", "two"}, Output: []string{"q"}}},
		Initializer: []*onnxpb.TensorProto{{Name: proto.String("two"), DataType: proto.Int32(int32(tensor.Int64)), RawData: two.Data}},
		Input:       []*onnxpb.ValueInfoProto{valueInfo("p", tensor.Int64, 2)},
		Output:      []*onnxpb.ValueInfoProto{valueInfo("q", tensor.Int64, 2)},
	})
}

// testNode is a real node (real ONNX Runtime, real HTTP on 127.0.0.1) serving the
// tiny models from a model dir.
type testNode struct {
	*node.Node
	dataDir string
	token   string
	url     string
	hc      *http.Client
}

type nodeOption func(*node.Config)

func startNode(t testing.TB, opts ...nodeOption) *testNode {
	t.Helper()
	return startNodeWith(t, nil, opts...)
}

// startNodeWith starts a node whose clients use hc (nil: http.DefaultClient), for a
// node behind TLS.
func startNodeWith(t testing.TB, hc *http.Client, opts ...nodeOption) *testNode {
	t.Helper()
	backend, err := ort.New(ort.Config{Provider: accel.ProviderCPU, IntraOpThreads: 1, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("ort.New (is ORT_LIB set or third_party/onnxruntime installed? run make setup): %v", err)
	}
	modelDir := t.TempDir()
	for name, b := range map[string][]byte{"add": addModel(t), "scale": scaleModel(t)} {
		if err := os.WriteFile(filepath.Join(modelDir, name+".onnx"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := node.Config{
		Name: "test-node", DataDir: t.TempDir(), ModelDir: modelDir, HTTPAddr: "127.0.0.1:0",
		Backend: backend, IntraOpThreads: 1, Logger: quietLogger(),
	}
	for _, o := range opts {
		o(&cfg)
	}
	n, err := node.New(cfg)
	if err != nil {
		t.Fatalf("node.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("node.Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("node did not stop within 30s")
		}
		backend.Close()
	})
	tok, err := os.ReadFile(filepath.Join(cfg.DataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	tn := &testNode{Node: n, dataDir: cfg.DataDir, token: strings.TrimSpace(string(tok)), url: n.URL(), hc: hc}
	waitReady(t, tn.client(t, ""))
	return tn
}

func waitReady(t testing.TB, c *client.Client) {
	t.Helper()
	// Generous: a GPT-2-small session takes seconds to load, many more on a busy machine.
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		r, err := c.Ready(context.Background())
		if err == nil && r.Ready {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("node not ready within 3 minutes")
}

func (n *testNode) client(t testing.TB, token string) *client.Client {
	t.Helper()
	opts := []client.Option{client.WithToken(token)}
	if n.hc != nil {
		opts = append(opts, client.WithHTTPClient(n.hc))
	}
	c, err := client.New(n.url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// do sends a raw request and returns status, headers and body.
func (n *testNode) do(t testing.TB, method, path, token string, body io.Reader, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, n.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, b
}

func quietLogger() *slog.Logger {
	if os.Getenv("LAYERMESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func mustListen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Keep-alive connections of http.DefaultClient outlive a test by design.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}
