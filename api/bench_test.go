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
//   - BinaryCost: what the HTTP path adds for the same 25.7 MB answer, measured on a
//     model that computes almost nothing (logitsModel, on the same node), as a share
//     of the GPT's own latency measured in the same iterations.
//
// The HTTP sub-benchmarks pair a direct call with every HTTP call, back to back in
// alternating order, and report the medians of both and the median of the paired
// differences (added-ms, added-%), so that the load other processes put on the
// machine hits both sides alike. On a shared machine a 1-thread forward pass of the
// GPT varies by tens of milliseconds from one run to the next, more than the HTTP
// path adds; BinaryCost measures the added time where that noise is absent.
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
	if err := os.WriteFile(filepath.Join(dir, "logits.onnx"), logitsModel(b), 0o644); err != nil {
		b.Fatal(err)
	}
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
	b.Logf("intra-op threads %d; models loaded in %s", threads, time.Since(start).Round(time.Millisecond))
	gpt := newInferPaths(b, n, "gpt", inputs)
	gpt.run(b)
	logits := newInferPaths(b, n, "logits", logitsInputs())
	logits.direct()
	logits.overHTTP(true)
	b.Run("BinaryCost", func(b *testing.B) {
		var model, diffs []time.Duration
		for i := 0; b.Loop(); i++ {
			model = append(model, gpt.direct())
			d, h := logits.pair(i, true)
			diffs = append(diffs, h-d)
		}
		mm, added := median(model), median(diffs)
		b.ReportMetric(float64(mm.Microseconds())/1e3, "model-ms")
		b.ReportMetric(float64(added.Microseconds())/1e3, "added-ms")
		b.ReportMetric(100*float64(added)/float64(mm), "added-%")
	})
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
	newInferPaths(b, n, "logits", logitsInputs()).run(b)
}

// logitsInputs is logitsModel's input: token ids 0..127.
func logitsInputs() []tensor.Tensor {
	ids := make([]int64, 128)
	for i := range ids {
		ids[i] = int64(i)
	}
	return []tensor.Tensor{tensor.FromInt64("input_ids", []int64{1, 128}, ids)}
}

// inferPaths calls one model directly and over HTTP.
type inferPaths struct {
	b      *testing.B
	n      *testNode
	c      *client.Client
	model  string
	inputs []tensor.Tensor
	// buf is the one response buffer for all HTTP calls, as a serving client would
	// keep: the binary logits land in it directly.
	buf []byte
}

func newInferPaths(b *testing.B, n *testNode, model string, inputs []tensor.Tensor) *inferPaths {
	return &inferPaths{b: b, n: n, c: n.client(b, ""), model: model, inputs: inputs}
}

func (p *inferPaths) direct() time.Duration {
	t0 := time.Now()
	res, err := p.n.Infer(context.Background(), api.InferRequest{Model: p.model, Inputs: p.inputs})
	if err != nil {
		p.b.Fatal(err)
	}
	d := time.Since(t0)
	checkLogits(p.b, res.Outputs)
	return d
}

func (p *inferPaths) overHTTP(binary bool) time.Duration {
	req := &wire.Request{Inputs: p.inputs, BinaryOutputs: binary}
	t0 := time.Now()
	resp, err := p.c.Infer(context.Background(), p.model, req, client.InferOptions{BinaryInputs: binary, Buffer: p.buf})
	if err != nil {
		p.b.Fatal(err)
	}
	d := time.Since(t0)
	checkLogits(p.b, resp.Outputs)
	if binary && p.buf == nil {
		p.buf = make([]byte, 0, 2*len(resp.Outputs[0].Data))
	}
	return d
}

// pair runs a direct call and an HTTP call back to back, the direct one first when i
// is even, and returns both times. Alternating the order keeps either side from
// always running right after the other's garbage.
func (p *inferPaths) pair(i int, binary bool) (direct, http time.Duration) {
	if i%2 == 0 {
		direct = p.direct()
		return direct, p.overHTTP(binary)
	}
	http = p.overHTTP(binary)
	return p.direct(), http
}

// run runs the Direct, HTTPBinary and HTTPJSON sub-benchmarks.
func (p *inferPaths) run(b *testing.B) {
	p.direct() // the first run pays ORT's one-time allocations
	b.Run("Direct", func(b *testing.B) {
		for b.Loop() {
			p.direct()
		}
	})
	for _, mode := range []struct {
		name   string
		binary bool
	}{{"HTTPBinary", true}, {"HTTPJSON", false}} {
		b.Run(mode.name, func(b *testing.B) {
			var dd, hd, diffs []time.Duration
			for i := 0; b.Loop(); i++ {
				d, h := p.pair(i, mode.binary)
				dd, hd, diffs = append(dd, d), append(hd, h), append(diffs, h-d)
			}
			// The added cost is the median of the paired differences: each pair ran
			// back to back, so drift in the machine's load cancels within a pair.
			md, mh, added := median(dd), median(hd), median(diffs)
			b.ReportMetric(float64(md.Microseconds())/1e3, "direct-ms")
			b.ReportMetric(float64(mh.Microseconds())/1e3, "http-ms")
			b.ReportMetric(float64(added.Microseconds())/1e3, "added-ms")
			b.ReportMetric(100*float64(added)/float64(md), "added-%")
		})
	}
}
