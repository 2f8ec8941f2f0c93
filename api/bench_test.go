package api_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/node"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/partition/onnxpb"
	"google.golang.org/protobuf/proto"
)

// benchThreads is the intra-op thread count of the benchmark's session, set
// explicitly so figures are comparable: LAYERMESH_BENCH_THREADS, default 2.
func benchThreads(b *testing.B) int {
	if v := os.Getenv("LAYERMESH_BENCH_THREADS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("LAYERMESH_BENCH_THREADS=%q", v)
		}
		return n
	}
	return 2
}

// BenchmarkInfer holds the HTTP inference path against a direct call on the same
// loaded model: GPT-2-small shape (12 x 768), input 1x128 int64 token ids, output
// 1x128x50257 float32 logits (25.7 MB).
//
//   - Direct: node.Infer, which is accel.Session.Run behind a map lookup; no HTTP.
//   - HTTPBinary / HTTPJSON: api/client over loopback TCP to the node's API, with the
//     binary tensor extension or JSON tensors both ways.
//
// The HTTP sub-benchmarks interleave a direct call with every HTTP call and report
// the medians of both and their difference (added-ms, added-%), so that the load
// other processes put on the machine hits both sides alike.
//
//	go test -run '^$' -bench BenchmarkInfer -benchtime 5x -timeout 30m ./api/
func BenchmarkInfer(b *testing.B) {
	dir := b.TempDir()
	start := time.Now()
	m, cfg, err := modelgen.Generate("gpt2-small", nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := modelgen.WriteFile(m, filepath.Join(dir, "gpt.onnx")); err != nil {
		b.Fatal(err)
	}
	m = nil
	b.Logf("built gpt2-small (%d params) in %s", cfg.Params(), time.Since(start).Round(time.Millisecond))
	threads := benchThreads(b)
	n := startNode(b, func(c *node.Config) {
		c.ModelDir = dir
		c.IntraOpThreads = threads
		c.MaxBodyBytes = 1 << 20
	})
	inputs, err := cfg.ExampleInputs(1, 128, 1)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("intra-op threads %d; model loaded in %s", threads, time.Since(start).Round(time.Millisecond))
	runInterleaved(b, n, "gpt", inputs)
}

func checkLogits(b *testing.B, outs []tensor.Tensor) {
	if len(outs) != 1 || len(outs[0].Data) != 128*50257*4 {
		b.Fatalf("unexpected outputs: %d tensors", len(outs))
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// logitsModel produces GPT-2-small's output shape from its input shape with almost no
// compute: logits[0,i,j] = float(input_ids[0,i]), 1x128 int64 in, 1x128x50257 float32
// (25.7 MB) out. It isolates what the HTTP path costs for those bytes.
func logitsModel(b *testing.B) []byte {
	axes := tensor.FromInt64("axes", []int64{1}, []int64{2})
	shape := tensor.FromInt64("shape", []int64{3}, []int64{1, 128, 50257})
	init := func(t tensor.Tensor) *onnxpb.TensorProto {
		return &onnxpb.TensorProto{Name: proto.String(t.Name), DataType: proto.Int32(int32(t.DType)), Dims: t.Shape, RawData: t.Data}
	}
	return modelBytes(b, &onnxpb.GraphProto{
		Node: []*onnxpb.NodeProto{
			{OpType: proto.String("Cast"), Input: []string{"input_ids"}, Output: []string{"f"},
				Attribute: []*onnxpb.AttributeProto{{Name: proto.String("to"), Type: onnxpb.AttributeProto_INT.Enum(), I: proto.Int64(int64(tensor.Float32))}}},
			{OpType: proto.String("Unsqueeze"), Input: []string{"f", "axes"}, Output: []string{"u"}},
			{OpType: proto.String("Expand"), Input: []string{"u", "shape"}, Output: []string{"logits"}},
		},
		Initializer: []*onnxpb.TensorProto{init(axes), init(shape)},
		Input:       []*onnxpb.ValueInfoProto{valueInfo("input_ids", tensor.Int64, 1, 128)},
		Output:      []*onnxpb.ValueInfoProto{valueInfo("logits", tensor.Float32, 1, 128, 50257)},
	})
}

// BenchmarkInferLogitsTransport measures the HTTP path's own cost for a GPT-2-small
// sized answer (1x128 int64 in, 25.7 MB of float32 logits out) on a model that
// computes almost nothing, so the difference to a direct call is not lost in the
// noise of a 250 ms forward pass on a shared machine. Same interleaving and metrics
// as BenchmarkInfer.
//
//	go test -run '^$' -bench BenchmarkInferLogitsTransport -benchtime 20x ./api/
func BenchmarkInferLogitsTransport(b *testing.B) {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "logits.onnx"), logitsModel(b), 0o644); err != nil {
		b.Fatal(err)
	}
	n := startNode(b, func(c *node.Config) {
		c.ModelDir = dir
		c.IntraOpThreads = benchThreads(b)
	})
	ids := make([]int64, 128)
	for i := range ids {
		ids[i] = int64(i)
	}
	inputs := []tensor.Tensor{tensor.FromInt64("input_ids", []int64{1, 128}, ids)}
	runInterleaved(b, n, "logits", inputs)
}

// runInterleaved runs the Direct, HTTPBinary and HTTPJSON sub-benchmarks on model.
func runInterleaved(b *testing.B, n *testNode, model string, inputs []tensor.Tensor) {
	ctx := context.Background()
	direct := func() time.Duration {
		t0 := time.Now()
		res, err := n.Infer(ctx, api.InferRequest{Model: model, Inputs: inputs})
		if err != nil {
			b.Fatal(err)
		}
		d := time.Since(t0)
		checkLogits(b, res.Outputs)
		return d
	}
	c := n.client(b, "")
	// One response buffer for all calls, as a serving client would keep: the
	// binary logits land in it directly.
	var buf []byte
	overHTTP := func(binary bool) time.Duration {
		req := &wire.Request{Inputs: inputs, BinaryOutputs: binary}
		t0 := time.Now()
		resp, err := c.Infer(ctx, model, req, client.InferOptions{BinaryInputs: binary, Buffer: buf})
		if err != nil {
			b.Fatal(err)
		}
		d := time.Since(t0)
		checkLogits(b, resp.Outputs)
		if binary && buf == nil {
			buf = make([]byte, 0, 2*len(resp.Outputs[0].Data))
		}
		return d
	}
	direct() // the first run pays ORT's one-time allocations
	b.Run("Direct", func(b *testing.B) {
		for b.Loop() {
			direct()
		}
	})
	for _, mode := range []struct {
		name   string
		binary bool
	}{{"HTTPBinary", true}, {"HTTPJSON", false}} {
		b.Run(mode.name, func(b *testing.B) {
			var dd, hd []time.Duration
			for b.Loop() {
				b.StopTimer()
				dd = append(dd, direct())
				b.StartTimer()
				hd = append(hd, overHTTP(mode.binary))
			}
			md, mh := median(dd), median(hd)
			added := mh - md
			b.ReportMetric(float64(md.Microseconds())/1e3, "direct-ms")
			b.ReportMetric(float64(mh.Microseconds())/1e3, "http-ms")
			b.ReportMetric(float64(added.Microseconds())/1e3, "added-ms")
			b.ReportMetric(100*float64(added)/float64(md), "added-%")
		})
	}
}
