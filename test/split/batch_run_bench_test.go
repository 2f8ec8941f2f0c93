package split

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition"
)

// BenchmarkDecodeBatchRun: what ONNX Runtime alone takes for one decode step of the
// whole with-past 12 x 768 GPT at a past of 96 positions, in this process with 1
// intra-op thread, for batches of 1 to 4 sessions (the inputs of one session
// repeated; the past is given as tensors, the new state kept in ONNX Runtime as a
// stage keeps it). It is the floor
// under a batching stage's step, which also stacks and cuts the state: the gain
// decode batching can give at most.
func BenchmarkDecodeBatchRun(b *testing.B) {
	path, _, _ := gpt2SmallWithPast(b)
	m, err := partition.Load(path)
	if err != nil {
		b.Fatal(err)
	}
	g, err := partition.AnalyzeWith(m, partition.AnalyzeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	one, err := g.DecodeInputs(96, partition.VerifySeed)
	if err != nil {
		b.Fatal(err)
	}
	be, err := ort.New(ort.Config{IntraOpThreads: 1, Provider: accel.ProviderCPU})
	if err != nil {
		b.Fatal(err)
	}
	s, err := be.Open(context.Background(), path, accel.SessionOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	hr := s.(accel.HeldRunner)
	var keep []string
	for _, o := range s.Outputs() {
		if o.Name != "logits" {
			keep = append(keep, o.Name)
		}
	}
	repeat := func(t tensor.Tensor, n int) tensor.Tensor {
		out := tensor.Tensor{Name: t.Name, DType: t.DType, Shape: slices.Clone(t.Shape)}
		out.Shape[0] = int64(n)
		for range n {
			out.Data = append(out.Data, t.Data...)
		}
		return out
	}
	runs := max(b.N, 12)
	b.ResetTimer()
	for n := 1; n <= 4; n++ {
		var in []tensor.Tensor
		for _, t := range one {
			in = append(in, repeat(t, n))
		}
		var times []time.Duration
		for i := range runs + 3 {
			start := time.Now()
			_, kept, err := hr.RunHeld(context.Background(), in, nil, nil, keep)
			if err != nil {
				b.Fatal(err)
			}
			if i >= 3 { // the first runs warm the session
				times = append(times, time.Since(start))
			}
			for _, k := range kept {
				k.Release()
			}
		}
		slices.Sort(times)
		med := times[len(times)/2]
		b.ReportMetric(float64(med.Microseconds())/1000, fmt.Sprintf("batch%d-ms", n))
		b.Logf("batch of %d: median %.2f ms a run, %.2f ms a session's step (%d runs)", n, ms(med), ms(med)/float64(n), runs)
	}
}
