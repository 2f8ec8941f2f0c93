package compress

import (
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
)

// peakHeap runs f while sampling the Go heap every few milliseconds, and
// returns the largest heap in use above what it was before f.
func peakHeap(f func()) uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak uint64
	var mu sync.Mutex
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			var s runtime.MemStats
			runtime.ReadMemStats(&s)
			mu.Lock()
			peak = max(peak, s.HeapInuse)
			mu.Unlock()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	f()
	close(done)
	<-stopped
	if peak < base {
		return 0
	}
	return peak - base
}

// compressed is a model compressed once for a benchmark, with the figures
// reported next to its latency.
type compressed struct {
	path    string
	metrics map[string]float64
}

// BenchmarkGPT2Small compresses the 12x768 GPT (GPT-2 small's shape, about
// 500 MB) to int8, int4 and dynamic int8, and measures, side by side with
// float32 on one intra-op thread: the size ratio, the time and Go heap peak of
// compressing (relative to the model's size), the latency of one 1x128 forward
// pass, and next-token top-1 agreement with float32 on 256 random 8-token
// prompts. The compression and the agreement run once, before the timings.
//
//	go test -run '^$' -bench GPT2Small -benchtime 5x -timeout 30m ./compress
func BenchmarkGPT2Small(b *testing.B) {
	src := gptModel(b, modelgen.GPT2Small)
	in128 := prompts(1, 128, modelgen.GPT2Small.Vocab, 1)
	agreeIn := prompts(256, 8, modelgen.GPT2Small.Vocab, 2)
	want := run(b, src, agreeIn)
	models := map[string]compressed{}
	variants := []struct {
		name string
		opts Options
	}{
		{QuantInt8, Options{Quantize: QuantInt8}},
		{QuantInt4, Options{Quantize: QuantInt4}},
		// accuracy_level 4 lets MatMulNBits quantize activations to int8 too.
		{"int8-acc4", Options{Quantize: QuantInt8, AccuracyLevel: 4}},
		{"int4-acc4", Options{Quantize: QuantInt4, AccuracyLevel: 4}},
		{QuantDynamic, Options{Quantize: QuantDynamic}},
	}
	for _, v := range variants {
		dst := filepath.Join(b.TempDir(), v.name+".onnx")
		var rep *Report
		var err error
		peak := peakHeap(func() { rep, err = Compress(b.Context(), src, dst, v.opts) })
		if err != nil {
			b.Fatal(err)
		}
		models[v.name] = compressed{path: dst, metrics: map[string]float64{
			"size-ratio":      rep.Ratio(),
			"compress-s":      rep.Elapsed.Seconds(),
			"peak-heap/model": float64(peak) / float64(rep.SizeBefore),
			"top1-agree":      lastTokenAgreement(b, want, run(b, dst, agreeIn)),
		}}
	}
	b.Run("fp32", func(b *testing.B) { benchLatency(b, src, nil, in128) })
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) { benchLatency(b, models[v.name].path, models[v.name].metrics, in128) })
	}
}

// BenchmarkFashionCNN runs the Fashion-MNIST CNN on a batch of 32 images on one
// intra-op thread: float32, static int8, and 30% and 50% filter pruning
// (prune-30 and prune-50 are fashionPrune, the pruning
// TestFashionMNISTAccuracyAfterCompression holds to two points at 30%; the
// global variant ranks channels by output error over the whole model, and
// leaves channel counts that are no multiple of 16).
//
//	go test -run '^$' -bench FashionCNN -benchtime 200x ./compress
func BenchmarkFashionCNN(b *testing.B) {
	img, _ := fashionImages(b, "t10k", 0, 32)
	calib := writeCalibration(b, 8, 64)
	cases := []struct {
		name string
		opts Options
	}{
		{"static-int8", Options{Quantize: QuantStatic}},
		{"prune-30", fashionPrune(0.3, calib)},
		{"prune-50", fashionPrune(0.5, calib)},
		{"prune-30-output-global", Options{Prune: 0.3, PruneGlobal: true, PruneCriterion: CriterionOutput}},
		{"prune-30+static-int8", Options{Prune: 0.3, Quantize: QuantStatic}},
	}
	models := map[string]compressed{"fp32": {path: fashionModel}}
	for _, tc := range cases {
		dst := filepath.Join(b.TempDir(), "c.onnx")
		tc.opts.Backend, tc.opts.CalibrationDir = backend(b), calib
		rep, err := Compress(b.Context(), fashionModel, dst, tc.opts)
		if err != nil {
			b.Fatal(err)
		}
		models[tc.name] = compressed{path: dst, metrics: map[string]float64{"size-ratio": rep.Ratio()}}
	}
	b.Run("fp32", func(b *testing.B) { benchLatency(b, fashionModel, nil, img) })
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) { benchLatency(b, models[tc.name].path, models[tc.name].metrics, img) })
	}
}

// benchLatency times one Run of the model at path on inputs per iteration,
// and reports metrics beside the time.
func benchLatency(b *testing.B, path string, metrics map[string]float64, inputs ...tensor.Tensor) {
	ctx := b.Context()
	s, err := backend(b).Open(ctx, path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Run(ctx, inputs, nil); err != nil { // warm-up
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if _, err := s.Run(ctx, inputs, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	for unit, v := range metrics {
		b.ReportMetric(v, unit)
	}
}
