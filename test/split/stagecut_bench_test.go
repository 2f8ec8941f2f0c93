package split

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition"
	"github.com/layermesh/layermesh/partition/modelgen"
)

// pastCache holds the made-up keys and values of each past length, built once: a
// stage keeps its sessions' KV cache in ONNX Runtime's memory, so a timed step must
// not make megabytes of it anew in Go memory.
var pastCache sync.Map // "model/name/past" -> tensor.Tensor

// decodeStepInputs are the inputs of one decode step of a stage at past positions:
// the tensors named in from (the previous stage's outputs), else a token, the mask
// and positions of past+1 tokens, and keys and values of past positions.
func decodeStepInputs(infos []accel.TensorInfo, cfg modelgen.GPTConfig, past int, from map[string]tensor.Tensor) []tensor.Tensor {
	hd := int64(cfg.Dim / cfg.Heads)
	var out []tensor.Tensor
	for _, in := range infos {
		if t, ok := from[in.Name]; ok {
			t.Name = in.Name
			out = append(out, t)
			continue
		}
		switch {
		case in.Name == modelgen.GPTInput:
			out = append(out, tensor.FromInt64(in.Name, []int64{1, 1}, []int64{42}))
		case in.Name == modelgen.GPTPositionIDs:
			out = append(out, tensor.FromInt64(in.Name, []int64{1, 1}, []int64{int64(past)}))
		case in.Name == modelgen.GPTAttentionMask:
			mask := make([]int64, past+1)
			for i := range mask {
				mask[i] = 1
			}
			out = append(out, tensor.FromInt64(in.Name, []int64{1, int64(past + 1)}, mask))
		case strings.HasPrefix(in.Name, "past_key_values."):
			key := fmt.Sprint(cfg.Name, "/", in.Name, "/", past)
			if t, ok := pastCache.Load(key); ok {
				out = append(out, t.(tensor.Tensor))
				continue
			}
			v := make([]float32, int64(cfg.Heads)*int64(past)*hd)
			for i := range v {
				v[i] = float32(i%7) * 0.01
			}
			t := tensor.FromFloat32(in.Name, []int64{1, int64(cfg.Heads), int64(past), hd}, v)
			pastCache.Store(key, t)
			out = append(out, t)
		}
	}
	return out
}

// timedChain runs decode steps through chain (stage after stage, each fed the
// previous one's outputs, or stage0Out's when the chain starts past stage 0) on the
// calling thread pinned to core (-1: not pinned), at pasts 64 to 127 in turn, and
// returns each session's mean time per step.
func timedChain(b *testing.B, core int, chain []accel.Session, cfg modelgen.GPTConfig, steps int, stage0Out map[int]map[string]tensor.Tensor) []time.Duration {
	if core >= 0 {
		// The thread gets its cores back before it goes back to the runtime, or any
		// goroutine, and any process it starts, would run on core alone.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var was, set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &was); err != nil {
			b.Error(err)
			return nil
		}
		set.Set(core)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			b.Error(err)
			return nil
		}
		defer func() {
			if err := unix.SchedSetaffinity(0, &was); err != nil {
				b.Error(err)
			}
		}()
	}
	ctx := context.Background()
	total := make([]time.Duration, len(chain))
	for step := range steps {
		past := 64 + step%64
		from := map[string]tensor.Tensor{}
		for k, v := range stage0Out[past] {
			from[k] = v
		}
		for i, s := range chain {
			in := decodeStepInputs(s.Inputs(), cfg, past, from)
			start := time.Now()
			outs, err := s.Run(ctx, in, notPresent(s))
			if err != nil {
				b.Error(err)
				return nil
			}
			total[i] += time.Since(start)
			for _, o := range outs {
				from[o.Name] = o
			}
		}
	}
	for i := range total {
		total[i] /= time.Duration(steps)
	}
	return total
}

// notPresent names a session's outputs but its present keys and values: a stage
// keeps those in ONNX Runtime's memory, and copying them into fresh Go memory on
// every step would time page faults the stage never takes.
func notPresent(s accel.Session) []string {
	var out []string
	for _, o := range s.Outputs() {
		if !strings.HasPrefix(o.Name, "present.") {
			out = append(out, o.Name)
		}
	}
	return out
}

// stageCut is one 2-stage cut of the model with its sessions.
type stageCut struct {
	at     int
	stages []accel.Session
}

// openCut extracts the 2 stages of a cut before node at and opens them.
func openCut(b *testing.B, be accel.Backend, pm *partition.Model, g *partition.Graph, plan *partition.StagePlan, at int) stageCut {
	b.Helper()
	p := *plan
	p.Stages = slices.Clone(plan.Stages)
	p.Stages[0].End, p.Stages[1].Start = at, at
	dir := filepath.Join(b.TempDir(), fmt.Sprint("cut", at))
	man, err := partition.Extract(pm, g, &p, dir)
	if err != nil {
		b.Fatal(err)
	}
	c := stageCut{at: at}
	for _, s := range man.Stages {
		sess, err := be.Open(context.Background(), filepath.Join(dir, s.File), accel.SessionOptions{IntraOpThreads: 1})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { sess.Close() })
		c.stages = append(c.stages, sess)
	}
	return c
}

// cutsNear lists the cuts around the plan's: the valid ones within a block that carry
// at most two hidden states, and the plan's own.
func cutsNear(g *partition.Graph, planCut, dim int) []int {
	out := []int{planCut}
	for _, c := range g.ValidCuts() {
		if c != planCut && c > planCut-50 && c < planCut+50 && g.Cuts[c].Bytes <= int64(2*4*dim) {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

// BenchmarkDecodeStageCuts times, in this one process with 1 intra-op thread, the two
// stages of the with-past 12 x 768 GPT at the planner's cut and at the cuts next to
// it that carry little, decode steps at pasts 64 to 127 (rounds interleave the
// cuts), against the whole model; then the whole model on both cores at once (each
// thread pinned to its core) and the planner's two stages side by side the same way,
// what a pipeline of two one-core nodes runs. It logs each figure per round and
// reports the means: the slower stage at the planner's cut and at the best cut, the
// whole model alone, on both cores at once, and the two stages' sum side by side.
func BenchmarkDecodeStageCuts(b *testing.B) {
	const steps, rounds = 64, 3
	cfg := modelgen.GPT2Small
	path, _, _ := gpt2SmallWithPast(b)
	pm, err := partition.Load(path)
	if err != nil {
		b.Fatal(err)
	}
	g, err := partition.AnalyzeWith(pm, partition.AnalyzeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	plan, err := partition.Plan(g, partition.UniformDevices(2, 1<<40, 100e9), partition.PlanOptions{Stages: 2})
	if err != nil {
		b.Fatal(err)
	}
	be, err := ort.New(ort.Config{Provider: accel.ProviderCPU, IntraOpThreads: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pastCache.Clear)
	measuredCut := measuredPlanCut(b, be, g, 96)
	var cuts []stageCut
	for _, at := range cutsNear(g, plan.Cuts()[0], cfg.Dim) {
		cuts = append(cuts, openCut(b, be, pm, g, plan, at))
	}
	if !slices.ContainsFunc(cuts, func(c stageCut) bool { return c.at == measuredCut }) {
		cuts = append(cuts, openCut(b, be, pm, g, plan, measuredCut))
		slices.SortFunc(cuts, func(x, y stageCut) int { return x.at - y.at })
	}
	whole := make([]accel.Session, 2)
	for i := range whole {
		if whole[i], err = be.Open(context.Background(), path, accel.SessionOptions{IntraOpThreads: 1}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { whole[i].Close() })
	}
	// A session's first runs are slow (ONNX Runtime sizes its buffers): warm each.
	timedChain(b, -1, whole, cfg, 4, nil)
	for _, c := range cuts {
		timedChain(b, -1, c.stages, cfg, 4, nil)
	}
	b.ResetTimer()
	slower := make([]time.Duration, len(cuts)) // per cut: the slower stage, summed over rounds
	var wholeSum time.Duration
	for r := range rounds {
		w := timedChain(b, -1, whole[:1], cfg, steps, nil)[0]
		wholeSum += w
		line := fmt.Sprintf("round %d, ms per decode step: whole %.2f", r, ms(w))
		for i, c := range cuts {
			t := timedChain(b, -1, c.stages, cfg, steps, nil)
			slower[i] += max(t[0], t[1])
			line += fmt.Sprintf("; cut %d%s %.2f + %.2f", c.at, planMark(c.at, plan, measuredCut), ms(t[0]), ms(t[1]))
		}
		b.Log(line)
	}
	best := 0
	for i := range cuts {
		if slower[i] < slower[best] {
			best = i
		}
		if cuts[i].at == plan.Cuts()[0] {
			b.ReportMetric(ms(slower[i]/rounds), "plan-cut-slower-ms")
		}
		if cuts[i].at == measuredCut {
			b.ReportMetric(ms(slower[i]/rounds), "measured-cut-slower-ms")
		}
	}
	b.ReportMetric(ms(slower[best]/rounds), "best-cut-slower-ms")
	b.ReportMetric(float64(cuts[best].at), "best-cut")
	b.ReportMetric(float64(measuredCut), "measured-cut")
	b.ReportMetric(ms(wholeSum/rounds), "whole-ms")
	b.Log(concurrentFigures(b, whole, cuts, plan, cfg, steps, rounds))
}

// planMark marks the planner's cut, and the measured plan's, in the log.
func planMark(at int, plan *partition.StagePlan, measured int) string {
	switch {
	case at == plan.Cuts()[0] && at == measured:
		return " (plan, measured plan)"
	case at == plan.Cuts()[0]:
		return " (plan)"
	case at == measured:
		return " (measured plan)"
	}
	return ""
}

// measuredPlanCut is where a measured plan (deploy option plan=measured) cuts g in
// two for equal devices: node times of a decode step at the given past, as
// partition.MeasureNodeCosts takes them here with 1 intra-op thread. It leaves g
// planning on FLOPs again.
func measuredPlanCut(b *testing.B, be accel.Backend, g *partition.Graph, past int64) int {
	b.Helper()
	inputs, err := g.DecodeInputs(past, partition.VerifySeed)
	if err != nil {
		b.Fatal(err)
	}
	costs, err := partition.MeasureNodeCosts(context.Background(), be.(accel.NodeProfiler), g, inputs, accel.SessionOptions{IntraOpThreads: 1},
		partition.DefaultMeasureWarmup, partition.DefaultMeasureRuns, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	if err := g.SetMeasuredCosts(costs.Seconds, 100e9); err != nil {
		b.Fatal(err)
	}
	defer g.SetMeasuredCosts(nil, 0)
	p, err := partition.Plan(g, partition.UniformDevices(2, 1<<40, 100e9), partition.PlanOptions{Stages: 2})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("measured plan (a decode step at past %d): cut %d, stages %.2f + %.2f ms", past, p.Cuts()[0], 1e3*p.Stages[0].ComputeSeconds, 1e3*p.Stages[1].ComputeSeconds)
	return p.Cuts()[0]
}

// concurrentFigures runs, per round, the whole model on both cores at once and the
// planner's two stages side by side (stage 1 fed stage 0's outputs computed
// beforehand), each on its own pinned thread, and describes the step times.
func concurrentFigures(b *testing.B, whole []accel.Session, cuts []stageCut, plan *partition.StagePlan, cfg modelgen.GPTConfig, steps, rounds int) string {
	var planned stageCut
	for _, c := range cuts {
		if c.at == plan.Cuts()[0] {
			planned = c
		}
	}
	stage0Out := map[int]map[string]tensor.Tensor{}
	for past := 64; past < 128; past++ {
		outs, err := planned.stages[0].Run(context.Background(), decodeStepInputs(planned.stages[0].Inputs(), cfg, past, nil), notPresent(planned.stages[0]))
		if err != nil {
			b.Fatal(err)
		}
		stage0Out[past] = map[string]tensor.Tensor{}
		for _, o := range outs {
			stage0Out[past][o.Name] = o
		}
	}
	var out []string
	var wholeSum, stagesSum time.Duration
	for r := range rounds {
		var a, c []time.Duration
		var wg sync.WaitGroup
		wg.Go(func() { a = timedChain(b, 0, whole[:1], cfg, steps, nil) })
		wg.Go(func() { c = timedChain(b, 1, whole[1:], cfg, steps, nil) })
		wg.Wait()
		wholeSum += (a[0] + c[0]) / 2
		line := fmt.Sprintf("round %d, both cores at once: whole %.2f and %.2f ms", r, ms(a[0]), ms(c[0]))
		wg.Go(func() { a = timedChain(b, 0, planned.stages[:1], cfg, steps, nil) })
		wg.Go(func() { c = timedChain(b, 1, planned.stages[1:], cfg, steps, stage0Out) })
		wg.Wait()
		stagesSum += a[0] + c[0]
		out = append(out, line+fmt.Sprintf("; stages %.2f + %.2f ms", ms(a[0]), ms(c[0])))
	}
	b.ReportMetric(ms(wholeSum/time.Duration(rounds)), "both-cores-whole-ms")
	b.ReportMetric(ms(stagesSum/time.Duration(rounds)), "both-cores-stages-sum-ms")
	return strings.Join(out, "\n")
}
