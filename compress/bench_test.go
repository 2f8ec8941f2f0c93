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

// BenchmarkGPT2Small compresses the 12x768 GPT (GPT-2 small's shape, about
// 500 MB) to int8, int4 and dynamic int8, and measures, side by side with
// float32 on one intra-op thread: the size ratio, the time and Go heap peak of
// compressing, the latency of one 1x128 forward pass, and next-token top-1
// agreement with float32 on 256 random 8-token prompts.
//
//	go test -run '^$' -bench GPT2Small -benchtime 5x ./compress
func BenchmarkGPT2Small(b *testing.B) {
	src := gptModel(b, modelgen.GPT2Small)
	in128 := prompts(1, 128, modelgen.GPT2Small.Vocab, 1)
	agreeIn := prompts(256, 8, modelgen.GPT2Small.Vocab, 2)
	want := run(b, src, agreeIn)
	b.Run("fp32", func(b *testing.B) { benchLatency(b, src, in128) })
	for _, mode := range []string{QuantInt8, QuantInt4, QuantDynamic} {
		b.Run(mode, func(b *testing.B) {
			dst := filepath.Join(b.TempDir(), "q.onnx")
			var rep *Report
			var err error
			peak := peakHeap(func() { rep, err = Compress(b.Context(), src, dst, Options{Quantize: mode}) })
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(rep.Ratio(), "size-ratio")
			b.ReportMetric(rep.Elapsed.Seconds(), "compress-s")
			b.ReportMetric(float64(peak)/float64(rep.SizeBefore), "peak-heap/model")
			b.ReportMetric(lastTokenAgreement(b, want, run(b, dst, agreeIn)), "top1-agree")
			benchLatency(b, dst, in128)
		})
	}
}

// BenchmarkFashionCNN runs the Fashion-MNIST CNN on a batch of 32 images on one
// intra-op thread: float32, static int8 and 30% / 50% filter pruning.
//
//	go test -run '^$' -bench FashionCNN -benchtime 200x ./compress
func BenchmarkFashionCNN(b *testing.B) {
	img, _ := fashionImages(b, "t10k", 0, 32)
	calib := writeCalibration(b, 8, 64)
	b.Run("fp32", func(b *testing.B) { benchLatency(b, fashionModel, img) })
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"static-int8", Options{Quantize: QuantStatic, CalibrationDir: calib}},
		{"prune-30", Options{Prune: 0.3}},
		{"prune-50", Options{Prune: 0.5}},
		{"prune-30+static-int8", Options{Prune: 0.3, Quantize: QuantStatic, CalibrationDir: calib}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			dst := filepath.Join(b.TempDir(), "c.onnx")
			tc.opts.Backend = backend(b)
			rep, err := Compress(b.Context(), fashionModel, dst, tc.opts)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(rep.Ratio(), "size-ratio")
			benchLatency(b, dst, img)
		})
	}
}

// benchLatency times one Run of the model at path on inputs per iteration.
func benchLatency(b *testing.B, path string, inputs ...tensor.Tensor) {
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
}
