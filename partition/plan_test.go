package partition

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
)

// randomGraph builds an analysed graph directly: n nodes in a random DAG over one
// graph input, each reading 1-3 earlier tensors and 0-2 weights from a shared pool
// (so weights are tied across distant nodes), with random sizes and FLOPs, and a few
// cut points ruled out.
func randomGraph(r *rand.Rand, n int) *Graph {
	g := &Graph{Values: map[string]*Value{}, InputShapes: map[string][]int64{}}
	g.Inputs = []string{"x"}
	g.Values["x"] = &Value{Name: "x", Kind: KindGraphInput, DType: tensor.Float32, Shape: []int64{1}, Bytes: int64(1 + r.IntN(100)), Producer: -1}
	nw := 1 + r.IntN(n)
	for i := 0; i < nw; i++ {
		name := fmt.Sprintf("w%d", i)
		g.Weights = append(g.Weights, Weight{Name: name, Bytes: int64(1 + r.IntN(1000))})
		g.Values[name] = &Value{Name: name, Kind: KindWeight, Producer: -1}
	}
	avail := []string{"x"}
	for pos := 0; pos < n; pos++ {
		nd := Node{Position: pos, OpType: "Op", Name: fmt.Sprintf("n%d", pos), FLOPs: int64(r.IntN(10000))}
		seen := map[string]bool{}
		for k := 0; k < 1+r.IntN(3); k++ {
			// Prefer recent tensors, as real graphs do, but reach back sometimes.
			var in string
			if r.IntN(3) == 0 {
				in = avail[r.IntN(len(avail))]
			} else {
				in = avail[max(0, len(avail)-1-r.IntN(2))]
			}
			if !seen[in] {
				seen[in] = true
				nd.Inputs = append(nd.Inputs, in)
			}
		}
		for k := 0; k < r.IntN(3); k++ {
			wi := r.IntN(nw)
			name := g.Weights[wi].Name
			if !seen[name] {
				seen[name] = true
				nd.Inputs = append(nd.Inputs, name)
				nd.Weights = append(nd.Weights, wi)
				nd.ParamBytes += g.Weights[wi].Bytes
			}
		}
		out := fmt.Sprintf("t%d", pos)
		nd.Outputs = []string{out}
		nd.OutputBytes = int64(1 + r.IntN(200))
		g.Values[out] = &Value{Name: out, Kind: KindActivation, DType: tensor.Float32, Shape: []int64{nd.OutputBytes}, Bytes: nd.OutputBytes, Producer: pos}
		for _, in := range nd.Inputs {
			g.Values[in].Consumers = append(g.Values[in].Consumers, pos)
		}
		g.Nodes = append(g.Nodes, nd)
		avail = append(avail, out)
	}
	for _, w := range g.Weights {
		g.ParamBytes += w.Bytes
	}
	g.Outputs = []string{fmt.Sprintf("t%d", n-1)}
	g.findCuts()
	if len(g.ValidCuts()) != n-1 {
		panic("randomGraph: every cut should start valid")
	}
	for c := 1; c < n; c++ {
		if r.IntN(5) == 0 {
			g.Cuts[c].Valid = false
		}
	}
	return g
}

// naiveStage recomputes a stage's memory and time from scratch, independently of the
// planner's incremental sums.
// outBW is PlanOptions.OutputBandwidth (0: the outputs are not counted).
func naiveStage(g *Graph, devices []Device, bw func(i, j int) float64, outBW float64, k, a, b int) (mem int64, secs float64) {
	used := map[int]bool{}
	var params, work, flops int64
	for pos := a; pos < b; pos++ {
		nd := g.Nodes[pos]
		for _, wi := range nd.Weights {
			if !used[wi] {
				used[wi] = true
				params += g.Weights[wi].Bytes
			}
		}
		w := nd.OutputBytes
		for _, in := range nd.Inputs {
			if g.Values[in].Kind != KindWeight {
				w += g.Values[in].Bytes
			}
		}
		work = max(work, w)
		flops += nd.FLOPs
	}
	secs = float64(flops) / devices[k].Speed
	if g.measured != nil {
		var sum float64
		for pos := a; pos < b; pos++ {
			sum += g.measured[pos]
		}
		secs = sum / devices[k].Speed
	}
	if b < len(g.Nodes) {
		secs += float64(g.Cuts[b].Bytes) / bw(k, k+1)
	} else if outBW > 0 {
		for _, o := range g.Outputs {
			secs += float64(g.Values[o].Bytes) / outBW
		}
	}
	return params + g.Cuts[a].Bytes + work, secs
}

// bruteForce tries every choice of k-1 valid cuts and returns the best bottleneck
// (+Inf when nothing fits).
func bruteForce(g *Graph, devices []Device, bw func(i, j int) float64, outBW float64, k int) float64 {
	valid := g.ValidCuts()
	best := math.Inf(1)
	var rec func(start, stage int, bounds []int)
	rec = func(start, stage int, bounds []int) {
		if stage == k-1 {
			bounds = append(bounds, len(g.Nodes))
			worst := 0.0
			for j := 0; j < k; j++ {
				mem, secs := naiveStage(g, devices, bw, outBW, j, bounds[j], bounds[j+1])
				if mem > devices[j].MemBudget {
					return
				}
				worst = math.Max(worst, secs)
			}
			best = math.Min(best, worst)
			return
		}
		for i := start; i < len(valid); i++ {
			if valid[i] > bounds[len(bounds)-1] {
				rec(i+1, stage+1, append(append([]int(nil), bounds...), valid[i]))
			}
		}
	}
	rec(0, 0, []int{0})
	return best
}

// setRandomMeasuredCosts gives g measured node times that have nothing to do with its
// FLOPs (from their own stream, so that the cases after stay the same), as if
// MeasureNodeCosts had timed them on a device of speed 2.
func setRandomMeasuredCosts(t *testing.T, g *Graph, iter int) {
	t.Helper()
	mr := rand.New(rand.NewPCG(uint64(iter), 99))
	secs := make([]float64, len(g.Nodes))
	for i := range secs {
		secs[i] = mr.Float64() * 30
	}
	if err := g.SetMeasuredCosts(secs, 2); err != nil {
		t.Fatal(err)
	}
}

// outputBandwidthFor gives every other case an output bandwidth for the last stage
// (deterministic, so the random sequence of the cases stays the same).
func outputBandwidthFor(iter int) float64 {
	if iter%2 == 0 {
		return 0
	}
	return float64(1 + iter%50)
}

func TestPlanMatchesBruteForce(t *testing.T) {
	// One random stream for both phases, so each phase sees the same cases on every run.
	r := rand.New(rand.NewPCG(42, 7))
	if !t.Run("fixed device order", func(t *testing.T) { checkPlansAgainstBruteForce(t, r) }) {
		return
	}
	t.Run("reordered devices", func(t *testing.T) { checkReorderedPlansAgainstBruteForce(t, r) })
}

// randomLinks draws the bandwidth of every link between nd devices.
func randomLinks(r *rand.Rand, nd int) [][]float64 {
	bwm := make([][]float64, nd)
	for i := range bwm {
		bwm[i] = make([]float64, nd)
		for j := range bwm[i] {
			bwm[i][j] = 1 + 100*r.Float64()
		}
	}
	return bwm
}

// checkPlansAgainstBruteForce: for 400 random graphs and device sets and every stage
// count, Plan finds the brute-force optimum or, where nothing fits, ErrDoesNotFit.
func checkPlansAgainstBruteForce(t *testing.T, r *rand.Rand) {
	feasible, infeasible := 0, 0
	for iter := 0; iter < 400; iter++ {
		n := 1 + r.IntN(9)
		g := randomGraph(r, n)
		nd := 1 + r.IntN(4)
		devices := make([]Device, nd)
		var total int64
		for _, w := range g.Weights {
			total += w.Bytes
		}
		for i := range devices {
			devices[i] = Device{Name: fmt.Sprintf("d%d", i), MemBudget: int64(r.IntN(int(total)+600)) + 100, Speed: 0.5 + 4*r.Float64()}
		}
		bwm := randomLinks(r, nd)
		bw := func(i, j int) float64 { return bwm[i][j] }
		outBW := outputBandwidthFor(iter)
		maxK := min(nd, len(g.ValidCuts())+1)
		if iter%3 == 2 {
			setRandomMeasuredCosts(t, g, iter)
		}
		for k := 0; k <= maxK; k++ {
			var want float64
			if k == 0 {
				want = math.Inf(1)
				for kk := 1; kk <= maxK; kk++ {
					want = math.Min(want, bruteForce(g, devices, bw, outBW, kk))
				}
			} else {
				want = bruteForce(g, devices, bw, outBW, k)
			}
			p, err := Plan(g, devices, PlanOptions{Stages: k, LinkBandwidth: bw, OutputBandwidth: outBW})
			if math.IsInf(want, 1) {
				infeasible++
				if !errors.Is(err, ErrDoesNotFit) {
					t.Fatalf("iter %d k=%d: brute force finds no fit, planner says %v", iter, k, err)
				}
				continue
			}
			feasible++
			if err != nil {
				t.Fatalf("iter %d k=%d: brute force finds %g, planner: %v", iter, k, want, err)
			}
			if math.Abs(p.Bottleneck-want) > 1e-9*math.Max(1, want) {
				t.Fatalf("iter %d k=%d: planner bottleneck %g, brute force %g (cuts %v)", iter, k, p.Bottleneck, want, p.Cuts())
			}
			checkPlanStages(t, fmt.Sprintf("iter %d k=%d", iter, k), g, devices, bw, outBW, p)
		}
	}
	t.Logf("%d feasible and %d infeasible cases agree with brute force", feasible, infeasible)
	if feasible < 400 || infeasible < 400 {
		t.Fatalf("random cases do not cover both outcomes: %d feasible, %d infeasible", feasible, infeasible)
	}
}

// checkPlanStages: the plan itself is what it claims: contiguous, on valid cuts,
// fitting, each stage's memory and time as recomputed naively.
func checkPlanStages(t *testing.T, label string, g *Graph, devices []Device, bw func(i, j int) float64, outBW float64, p *StagePlan) {
	t.Helper()
	for j, s := range p.Stages {
		mem, secs := naiveStage(g, devices, bw, outBW, j, s.Start, s.End)
		if mem != s.MemoryBytes || mem > devices[j].MemBudget || math.Abs(secs-s.Seconds) > 1e-9*math.Max(1, secs) {
			t.Fatalf("%s stage %d: reports mem %d secs %g, recomputed %d %g, budget %d", label, j, s.MemoryBytes, s.Seconds, mem, secs, devices[j].MemBudget)
		}
		if j > 0 && !g.Cuts[s.Start].Valid {
			t.Fatalf("%s: stage %d starts at invalid cut %d", label, j, s.Start)
		}
	}
	if err := g.checkPlan(p); err != nil {
		t.Fatal(err)
	}
}

// checkReorderedPlansAgainstBruteForce: with ReorderDevices, Plan finds the best over
// every order of the devices, each order brute-forced, and uses each device once.
func checkReorderedPlansAgainstBruteForce(t *testing.T, r *rand.Rand) {
	reordered := 0
	for iter := 0; iter < 150; iter++ {
		g := randomGraph(r, 1+r.IntN(7))
		nd := 1 + r.IntN(4)
		devices := make([]Device, nd)
		for i := range devices {
			devices[i] = Device{Name: fmt.Sprintf("d%d", i), MemBudget: int64(300 + r.IntN(3000)), Speed: 0.5 + 4*r.Float64()}
		}
		bwm := randomLinks(r, nd)
		bw := func(i, j int) float64 { return bwm[i][j] }
		outBW := outputBandwidthFor(iter)
		k := r.IntN(min(nd, len(g.ValidCuts())+1) + 1)
		want := bestOverDeviceOrders(g, devices, bwm, outBW, k)
		p, err := Plan(g, devices, PlanOptions{Stages: k, LinkBandwidth: bw, OutputBandwidth: outBW, ReorderDevices: true})
		if math.IsInf(want, 1) {
			if !errors.Is(err, ErrDoesNotFit) {
				t.Fatalf("reorder iter %d: no order fits, planner says %v", iter, err)
			}
			continue
		}
		if err != nil || math.Abs(p.Bottleneck-want) > 1e-9*math.Max(1, want) {
			t.Fatalf("reorder iter %d k=%d: planner %v %v, brute force over orders %g", iter, k, p, err, want)
		}
		used := map[int]bool{}
		for _, s := range p.Stages {
			if used[s.DeviceIndex] || devices[s.DeviceIndex] != s.Device || s.MemoryBytes > s.Device.MemBudget {
				t.Fatalf("reorder iter %d: stage %d on device %d (%+v) reused or over budget", iter, s.Index, s.DeviceIndex, s.Device)
			}
			used[s.DeviceIndex] = true
		}
		reordered++
	}
	t.Logf("%d feasible ReorderDevices cases agree with brute force over every order", reordered)
	if reordered < 50 {
		t.Fatalf("only %d feasible ReorderDevices cases", reordered)
	}
}

// bestOverDeviceOrders is the brute-force bottleneck for k stages (any count when k
// is 0) over every order of the devices.
func bestOverDeviceOrders(g *Graph, devices []Device, bwm [][]float64, outBW float64, k int) float64 {
	nd := len(devices)
	want := math.Inf(1)
	order := make([]int, nd)
	for i := range order {
		order[i] = i
	}
	permute(order, 0, func(perm []int) {
		pd := make([]Device, nd)
		for j, d := range perm {
			pd[j] = devices[d]
		}
		pbw := func(i, j int) float64 { return bwm[perm[i]][perm[j]] }
		kmin, kmaxB := k, k
		if k == 0 {
			kmin, kmaxB = 1, min(nd, len(g.ValidCuts())+1)
		}
		for kk := kmin; kk <= kmaxB; kk++ {
			want = math.Min(want, bruteForce(g, pd, pbw, outBW, kk))
		}
	})
	return want
}

// TestHeterogeneousBudgets: budgets summing to just above the model's size, none able
// to hold it alone, still give a plan in which every stage fits; budgets too small
// give ErrDoesNotFit saying by how much.
func TestHeterogeneousBudgets(t *testing.T) {
	cfg := modelgen.ResNetMedium
	cfg.ImageSize = 32
	path := writeGenerated(t, cfg, t.TempDir())
	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, map[string][]int64{modelgen.ResNetInput: {1, 3, 32, 32}})
	if err != nil {
		t.Fatal(err)
	}
	// Budgets cut to measure: split the weights about 45/35/20 at valid cuts, give
	// each device 2% more than that stage needs. Their sum is then just above the
	// model's size and no single budget holds the model.
	P := g.ParamBytes
	var bounds []int
	var cum int64
	for pos, nd := range g.Nodes {
		cum += nd.ParamBytes
		frac := float64(cum) / float64(P)
		if pos+1 < len(g.Nodes) && g.Cuts[pos+1].Valid && ((len(bounds) == 0 && frac >= 0.45) || (len(bounds) == 1 && frac >= 0.8)) {
			bounds = append(bounds, pos+1)
		}
	}
	bounds = append(append([]int{0}, bounds...), len(g.Nodes))
	if len(bounds) != 4 {
		t.Fatalf("no 45/35/20 split found: %v", bounds)
	}
	var devices []Device
	var sum int64
	for i := 0; i < 3; i++ {
		mem, _ := naiveStage(g, UniformDevices(3, 0, 1), func(int, int) float64 { return 1 }, 0, i, bounds[i], bounds[i+1])
		b := mem + mem/50
		devices = append(devices, Device{Name: fmt.Sprintf("dev%d", i), MemBudget: b, Speed: float64(1 + i)})
		sum += b
		if b >= P {
			t.Fatalf("budget %d (%d) holds the whole model (%d)", i, b, P)
		}
	}
	if float64(sum) > 1.1*float64(P) {
		t.Fatalf("budgets sum to %d, not just above the weights (%d)", sum, P)
	}
	t.Logf("weights %s, budgets %s + %s + %s = %s", FormatBytes(P), FormatBytes(devices[0].MemBudget), FormatBytes(devices[1].MemBudget), FormatBytes(devices[2].MemBudget), FormatBytes(sum))
	p, err := Plan(g, devices, PlanOptions{Stages: 3})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	man, err := Extract(m, g, p, dir)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range p.Stages {
		// Check the written stage file, not only the planner's arithmetic.
		sm, err := Load(filepath.Join(dir, man.Stages[i].File))
		if err != nil {
			t.Fatal(err)
		}
		var weights int64
		for _, init := range sm.Proto.GetGraph().GetInitializer() {
			b, _ := tensorDataBytes(init)
			weights += b
		}
		t.Logf("stage %d nodes [%d,%d): weights %s (file), memory %s, budget %s", i, s.Start, s.End, FormatBytes(weights), FormatBytes(s.MemoryBytes), FormatBytes(s.Device.MemBudget))
		if weights != s.ParamBytes || s.MemoryBytes > s.Device.MemBudget {
			t.Errorf("stage %d: file weights %d, plan says %d; memory %d over budget %d", i, weights, s.ParamBytes, s.MemoryBytes, s.Device.MemBudget)
		}
	}
	be := ortBackend(t)
	inputs, err := cfg.ExampleInputs(1, 0, 5)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(t.Context(), be, path, man, dir, inputs)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Outputs[0].MaxRelToScale > chainTolerance {
		t.Errorf("chain differs: %+v", rep.Outputs[0])
	}

	// The same devices listed smallest first: in that order nothing fits, and
	// ReorderDevices finds the order that does.
	reversed := []Device{devices[2], devices[1], devices[0]}
	if _, err := Plan(g, reversed, PlanOptions{Stages: 3}); !errors.Is(err, ErrDoesNotFit) {
		t.Fatalf("reversed devices in given order: %v", err)
	}
	rp, err := Plan(g, reversed, PlanOptions{Stages: 3, ReorderDevices: true})
	if err != nil {
		t.Fatalf("reversed devices, reordering: %v", err)
	}
	for _, s := range rp.Stages {
		if s.MemoryBytes > s.Device.MemBudget || reversed[s.DeviceIndex] != s.Device {
			t.Fatalf("reordered stage %d: %+v", s.Index, s)
		}
	}

	// Too small: three budgets of 30% each cannot hold the weights.
	small := UniformDevices(3, int64(0.3*float64(P)), 1)
	_, err = Plan(g, small, PlanOptions{Stages: 3})
	if !errors.Is(err, ErrDoesNotFit) || !strings.Contains(err.Error(), "more bytes") {
		t.Fatalf("small budgets: %v", err)
	}
	t.Log(err)
	_, err = Plan(g, small, PlanOptions{})
	if !errors.Is(err, ErrDoesNotFit) {
		t.Fatalf("small budgets, auto: %v", err)
	}
}

// TestAutoStages: auto picks one stage when one fast device holds everything and the
// links are slow, and more when memory forces it.
func TestAutoStages(t *testing.T) {
	m, err := Parse(marshal(t, chainModel(6, 256)), "")
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	slow := func(int, int) float64 { return 1 }
	p, err := Plan(g, UniformDevices(3, 1<<30, 1e6), PlanOptions{LinkBandwidth: slow})
	if err != nil || len(p.Stages) != 1 {
		t.Fatalf("slow links: %v %+v", err, p)
	}
	fast := func(int, int) float64 { return 1e15 }
	p, err = Plan(g, UniformDevices(3, 1<<30, 1), PlanOptions{LinkBandwidth: fast})
	if err != nil || len(p.Stages) != 3 {
		t.Fatalf("fast links, equal devices: want 3 stages: %v %+v", err, p)
	}
	tight := UniformDevices(3, g.ParamBytes*6/10+4096, 1e6)
	p, err = Plan(g, tight, PlanOptions{LinkBandwidth: slow})
	if err != nil || len(p.Stages) < 2 {
		t.Fatalf("tight memory: want 2+ stages: %v %+v", err, p)
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"2GiB": 2 << 30, "1.5G": 3 << 29, "512MB": 512e6, "300M": 300 << 20, "1024": 1024, "4 KiB": 4096} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "GiB", "-1G", "1XB", "1e400"} {
		if _, err := ParseBytes(bad); err == nil {
			t.Errorf("ParseBytes(%q) accepted", bad)
		}
	}
}

// TestOutputBandwidth: counting the outputs' hand-off moves work off the last stage of
// a chain whose output is large, and a negative bandwidth is refused.
func TestOutputBandwidth(t *testing.T) {
	g := randomGraph(rand.New(rand.NewPCG(3, 4)), 40)
	for i := range g.Nodes {
		g.Nodes[i].FLOPs = 100
	}
	for c := 1; c < len(g.Nodes); c++ {
		g.Cuts[c].Valid = true
	}
	out := g.Values[g.Outputs[0]]
	out.Bytes = 1000
	devices := UniformDevices(2, 1<<40, 1)
	plain, err := Plan(g, devices, PlanOptions{Stages: 2, LinkBandwidth: func(int, int) float64 { return 1e12 }})
	if err != nil {
		t.Fatal(err)
	}
	counted, err := Plan(g, devices, PlanOptions{Stages: 2, LinkBandwidth: func(int, int) float64 { return 1e12 }, OutputBandwidth: 1})
	if err != nil {
		t.Fatal(err)
	}
	last := counted.Stages[1]
	if last.SendBytes != 1000 || last.TransferSeconds != 1000 {
		t.Fatalf("last stage sends %d bytes in %g s, want 1000 and 1000", last.SendBytes, last.TransferSeconds)
	}
	if last.FLOPs >= plain.Stages[1].FLOPs {
		t.Fatalf("last stage keeps %d FLOPs with the outputs counted, %d without", last.FLOPs, plain.Stages[1].FLOPs)
	}
	if d := counted.Stages[0].Seconds - last.Seconds; math.Abs(d) > 100 {
		t.Fatalf("stages not balanced with the outputs counted: %g s and %g s", counted.Stages[0].Seconds, last.Seconds)
	}
	if _, err := Plan(g, devices, PlanOptions{Stages: 2, OutputBandwidth: -1}); !errors.Is(err, ErrBadPlan) {
		t.Fatalf("negative output bandwidth: %v, want %v", err, ErrBadPlan)
	}
}

// TestOutputBandwidthSkipsSessionModels: a model with state pairs runs as sessions,
// whose state stays on the node and whose last stage answers with a token id, so
// the outputs' hand-off does not move its cut; the same graph without state pairs
// (a plain inference hands the logits on) has its last stage lightened.
func TestOutputBandwidthSkipsSessionModels(t *testing.T) {
	cfg := modelgen.GPTTiny
	cfg.Layers, cfg.WithPast = 6, true
	m, err := Load(writeGenerated(t, cfg, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	devices := UniformDevices(2, 1<<40, 1e9)
	fast := func(int, int) float64 { return 1e15 }
	plan := func(state []StatePair, outBW float64) *StagePlan {
		t.Helper()
		g, err := AnalyzeWith(m, AnalyzeOptions{State: state})
		if err != nil {
			t.Fatal(err)
		}
		p, err := Plan(g, devices, PlanOptions{Stages: 2, LinkBandwidth: fast, OutputBandwidth: outBW})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The logits alone take as long to hand on as a quarter of the model's compute.
	g, err := AnalyzeWith(m, AnalyzeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(g.State) != 2*cfg.Layers {
		t.Fatalf("%d state pairs detected, want %d", len(g.State), 2*cfg.Layers)
	}
	var flops int64
	for _, nd := range g.Nodes {
		flops += nd.FLOPs
	}
	logits := g.Values[g.Outputs[0]].Bytes
	outBW := float64(logits) / (float64(flops) / 1e9 / 4)

	plain, session := plan(nil, 0), plan(nil, outBW)
	if !slices.Equal(session.Cuts(), plain.Cuts()) || session.Stages[1].SendBytes != 0 {
		t.Fatalf("session model: cuts %v sending %d bytes with the outputs' hand-off counted, %v without",
			session.Cuts(), session.Stages[1].SendBytes, plain.Cuts())
	}
	none := []StatePair{}
	stateless, counted := plan(none, 0), plan(none, outBW)
	if counted.Stages[1].SendBytes == 0 || counted.Stages[1].FLOPs >= stateless.Stages[1].FLOPs {
		t.Fatalf("without state pairs: last stage sends %d bytes and keeps %d FLOPs with the hand-off counted, %d without",
			counted.Stages[1].SendBytes, counted.Stages[1].FLOPs, stateless.Stages[1].FLOPs)
	}
}
