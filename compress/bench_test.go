package compress

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
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

// procStatusBytes reads a "kB" field of /proc/self/status (VmRSS, VmHWM) in bytes.
func procStatusBytes(field string) (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), field+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		return kb << 10, err
	}
	return 0, fmt.Errorf("/proc/self/status has no %s", field)
}

// peakRSS runs f and returns how far the process's resident set rose above
// where it was before f: the memory f needed, whoever allocated it (the Go
// heap, and ONNX Runtime's C allocations when f opens a session), counted the
// way the kernel counts it. The freed Go heap is handed back to the OS first,
// or f could reuse pages already resident and the rise would understate what
// it needs; the peak (VmHWM) is then reset to the current resident set
// (clear_refs 5, Linux 4.0+) so that an earlier, larger peak does not hide f's.
func peakRSS(f func()) (uint64, error) {
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return 0, fmt.Errorf("reset the peak resident set: %w", err)
	}
	before, err := procStatusBytes("VmRSS")
	if err != nil {
		return 0, err
	}
	f()
	peak, err := procStatusBytes("VmHWM")
	if err != nil {
		return 0, err
	}
	return peak - min(peak, before), nil
}

// compressMeasured compresses src to dst and returns the report with the time
// and the memory it took, relative to the model's size: the process's peak
// resident set (peak-rss/model, the figure held against the target) and, beside
// it, the Go heap's peak (peak-heap/model). The error says why the resident set
// could not be measured.
func compressMeasured(b *testing.B, src, dst string, opts Options) (*Report, map[string]float64, error) {
	b.Helper()
	var rep *Report
	var err error
	var heap uint64
	rss, rssErr := peakRSS(func() {
		heap = peakHeap(func() { rep, err = Compress(b.Context(), src, dst, opts) })
	})
	if err != nil {
		b.Fatal(err)
	}
	model := float64(rep.SizeBefore)
	metrics := map[string]float64{
		"size-ratio":      rep.Ratio(),
		"compress-s":      rep.Elapsed.Seconds(),
		"peak-heap/model": float64(heap) / model,
	}
	// Where the kernel does not let the peak be reset, the figure is left out
	// (the report then says it was not measured) rather than the other
	// figures lost with it.
	if rssErr == nil {
		metrics["peak-rss/model"] = float64(rss) / model
	}
	return rep, metrics, rssErr
}

// compressed is a model compressed once for a benchmark, with the figures
// reported next to its latency.
type compressed struct {
	path    string
	metrics map[string]float64
	log     string // what compressing did, for the benchmark's log
}

// sideBySide times a float32 session and a compressed one on the same inputs,
// alternating, and reports the medians and their ratio. Each iteration runs
// pairs pairs, the order flipping from one pair to the next (fp32 first, then
// the compressed model first), so that a change in the shared machine's speed,
// or a cache one run leaves warm for the next, falls on both sides alike. The
// ratio is the median of the per-pair ratios compressed/fp32 (speedup is its
// inverse): a pair's two runs are a few hundred milliseconds apart, two
// separately timed benchmarks minutes apart.
func sideBySide(b *testing.B, fp32, variant accel.Session, pairs int, inputs []tensor.Tensor, metrics map[string]float64) {
	ctx := b.Context()
	timed := func(s accel.Session) float64 {
		t0 := time.Now()
		if _, err := s.Run(ctx, inputs, nil); err != nil {
			b.Fatal(err)
		}
		return float64(time.Since(t0)) / float64(time.Millisecond)
	}
	timed(fp32) // warm-up: first-run allocations and lazily prepacked weights
	timed(variant)
	var base, comp, ratios []float64
	b.ResetTimer()
	for i := range b.N * pairs {
		var f, v float64
		if i%2 == 0 {
			f, v = timed(fp32), timed(variant)
		} else {
			v, f = timed(variant), timed(fp32)
		}
		base, comp, ratios = append(base, f), append(comp, v), append(ratios, v/f)
	}
	b.StopTimer()
	r := median(ratios)
	b.ReportMetric(median(base), "fp32-ms")
	b.ReportMetric(median(comp), "ms")
	b.ReportMetric(r, "ratio")
	b.ReportMetric(1/r, "speedup")
	for unit, v := range metrics {
		b.ReportMetric(v, unit)
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// gptVariant is one compression of the 12x768 GPT the benchmark measures; with
// decode, the with-past layout is compressed the same way for the decode step.
type gptVariant struct {
	name   string
	opts   Options
	decode bool
}

// decodePast is the decode step's past length: the step makes the context 128.
const decodePast = 127

// BenchmarkGPT2Small compresses the 12x768 GPT (GPT-2 small's shape, about
// 500 MB) as a deploy does (weight-only int8 and int4, each also at the other
// MatMulNBits accuracy_level, and dynamic int8; the backend given, so the
// compressed model is loaded once through ONNX Runtime before it is written),
// and measures against float32, on one intra-op thread:
//
//   - compressing: the size ratio, the time, and the peak memory relative to
//     the model (the process's resident set, and the Go heap beside it);
//   - next-token top-1 agreement with float32 on 256 random 8-token prompts;
//   - 1x128/<variant>: one 1x128 forward pass, interleaved with float32's;
//   - decode/<variant>: one decode step of the with-past layout
//     (modelgen.GPTWithPast, same weights), 1 token after 127 past positions,
//     interleaved with float32's, 10 pairs per iteration.
//
// Every compression runs before any session is opened, so that memory an
// earlier session freed does not flatter the peak of the next.
//
//	go test -run '^$' -bench '^BenchmarkGPT2Small$' -benchtime 10x -timeout 60m ./compress
func BenchmarkGPT2Small(b *testing.B) {
	cfg := modelgen.GPT2Small
	src := gptModel(b, cfg)
	pastCfg := cfg
	pastCfg.WithPast = true
	pastModel, err := pastCfg.Build()
	if err != nil {
		b.Fatal(err)
	}
	pastSrc := writeModel(b, pastModel, "gpt-past.onnx")
	variants := []gptVariant{
		// The deploy's defaults: int8 computes in int8 (accuracy_level 4), int4
		// in float32.
		{QuantInt8, Options{Quantize: QuantInt8}, true},
		{QuantInt4, Options{Quantize: QuantInt4}, true},
		// The other accuracy level of each, for comparison: int8 weights with
		// float32 compute, which ONNX Runtime dequantizes on every run, and int4
		// weights with int8 compute.
		{"int8-acc1", Options{Quantize: QuantInt8, AccuracyLevel: 1}, false},
		{"int4-acc4", Options{Quantize: QuantInt4, AccuracyLevel: 4}, true},
		{QuantDynamic, Options{Quantize: QuantDynamic}, false},
	}
	models := map[string]compressed{}
	decodeModels := map[string]string{}
	for _, v := range variants {
		v.opts.Backend = backend(b)
		dst := filepath.Join(b.TempDir(), v.name+".onnx")
		rep, metrics, rssErr := compressMeasured(b, src, dst, v.opts)
		log := rewriteSummary(rep)
		if rssErr != nil {
			log += "; peak resident set not measured: " + rssErr.Error()
		}
		models[v.name] = compressed{path: dst, metrics: metrics, log: log}
		if v.decode {
			decodeModels[v.name] = filepath.Join(b.TempDir(), v.name+"-past.onnx")
			if _, err := Compress(b.Context(), pastSrc, decodeModels[v.name], v.opts); err != nil {
				b.Fatal(err)
			}
		}
	}
	agreeIn := prompts(256, 8, cfg.Vocab, 2)
	want := run(b, src, agreeIn)
	for _, v := range variants {
		models[v.name].metrics["top1-agree"] = lastTokenAgreement(b, want, run(b, models[v.name].path, agreeIn))
	}
	in128 := []tensor.Tensor{prompts(1, 128, cfg.Vocab, 1)}
	withSession(b, src, func(fp32 accel.Session) {
		for _, v := range variants {
			logged := false // go test runs a sub-benchmark at N=1 first, then at -benchtime
			b.Run("1x128/"+v.name, func(b *testing.B) {
				if !logged {
					b.Log(models[v.name].log)
					logged = true
				}
				withSession(b, models[v.name].path, func(s accel.Session) { sideBySide(b, fp32, s, 1, in128, models[v.name].metrics) })
			})
		}
	})
	withSession(b, pastSrc, func(fp32 accel.Session) {
		step := decodeInputs(b, fp32, pastCfg, decodePast)
		for _, v := range variants {
			if !v.decode {
				continue
			}
			b.Run("decode/"+v.name, func(b *testing.B) {
				withSession(b, decodeModels[v.name], func(s accel.Session) { sideBySide(b, fp32, s, 10, step, nil) })
			})
		}
	})
}

// withSession opens the model at path on one intra-op thread for f, and
// closes it after.
func withSession(b *testing.B, path string, f func(accel.Session)) {
	b.Helper()
	s, err := backend(b).Open(b.Context(), path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		b.Fatalf("open %s: %v", filepath.Base(path), err)
	}
	defer s.Close()
	f(s)
}

// rewriteSummary says which ops the compressed model runs in place of the
// float32 ones ("73 MatMul -> MatMulNBits"), and how many nodes stayed float32.
func rewriteSummary(rep *Report) string {
	counts := map[string]int{}
	for _, c := range rep.Rewritten {
		counts[c.Op+" -> "+c.As]++
	}
	var parts []string
	for k, n := range counts {
		parts = append(parts, fmt.Sprintf("%d %s", n, k))
	}
	slices.Sort(parts)
	return fmt.Sprintf("%s, %d kept float32", strings.Join(parts, ", "), len(rep.Kept))
}

// decodeInputs runs a prefill of past random tokens through the with-past
// model s and returns the inputs of the next decode step: one token at
// position past, attending to past+1 positions, with the prefill's keys and
// values as its past.
func decodeInputs(b *testing.B, s accel.Session, cfg modelgen.GPTConfig, past int) []tensor.Tensor {
	b.Helper()
	prefill, err := cfg.ExampleInputs(1, past, 3)
	if err != nil {
		b.Fatal(err)
	}
	var names []string
	for i := range cfg.Layers {
		names = append(names, modelgen.GPTPresentKey(i), modelgen.GPTPresentValue(i))
	}
	present, err := s.Run(b.Context(), prefill, names)
	if err != nil {
		b.Fatal(err)
	}
	mask := make([]int64, past+1)
	for i := range mask {
		mask[i] = 1
	}
	step := []tensor.Tensor{
		tensor.FromInt64(modelgen.GPTInput, []int64{1, 1}, []int64{int64(cfg.Vocab / 3)}),
		tensor.FromInt64(modelgen.GPTAttentionMask, []int64{1, int64(past + 1)}, mask),
		tensor.FromInt64(modelgen.GPTPositionIDs, []int64{1, 1}, []int64{int64(past)}),
	}
	for i, t := range present {
		if i%2 == 0 {
			t.Name = modelgen.GPTPastKey(i / 2)
		} else {
			t.Name = modelgen.GPTPastValue(i / 2)
		}
		step = append(step, t)
	}
	return step
}

// BenchmarkFashionCNN runs the Fashion-MNIST CNN on a batch of 32 images on one
// intra-op thread, each compressed variant interleaved with float32 (speedup
// is float32's time over the variant's, the median of the pairs): static int8,
// and 30% and 50% filter pruning (prune-30 and prune-50 are fashionPrune, the
// pruning TestFashionMNISTAccuracyAfterCompression holds to two points at 30%;
// the global variant ranks channels by output error over the whole model, and
// leaves channel counts that are no multiple of 16).
//
//	go test -run '^$' -bench '^BenchmarkFashionCNN$' -benchtime 200x ./compress
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
	models := map[string]compressed{}
	for _, tc := range cases {
		dst := filepath.Join(b.TempDir(), "c.onnx")
		tc.opts.Backend, tc.opts.CalibrationDir = backend(b), calib
		rep, err := Compress(b.Context(), fashionModel, dst, tc.opts)
		if err != nil {
			b.Fatal(err)
		}
		models[tc.name] = compressed{path: dst, metrics: map[string]float64{"size-ratio": rep.Ratio()}}
	}
	withSession(b, fashionModel, func(fp32 accel.Session) {
		for _, tc := range cases {
			b.Run(tc.name, func(b *testing.B) {
				withSession(b, models[tc.name].path, func(s accel.Session) {
					sideBySide(b, fp32, s, 1, []tensor.Tensor{img}, models[tc.name].metrics)
				})
			})
		}
	})
}
