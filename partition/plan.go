package partition

import (
	"fmt"
	"math"
	"strings"
)

// DefaultLinkBandwidth is the link speed assumed between devices when none is given:
// 1 GB/s, gigabit Ethernet's order of magnitude with room for a faster LAN.
const DefaultLinkBandwidth = 1e9

// Device is where one stage runs.
type Device struct {
	Name string
	// MemBudget is how many bytes of weights and activations the device may hold.
	MemBudget int64
	// Speed is the device's compute rate: FLOP/s, or any relative score (then stage
	// times are in matching relative units). Must be positive.
	Speed float64
}

// PlanOptions tune Plan.
type PlanOptions struct {
	// Stages is the number of stages; 0 picks the count (up to len(devices)) with the
	// fastest bottleneck, preferring fewer stages on a tie.
	Stages int
	// LinkBandwidth returns the bytes/s from device i to device j (indices into the
	// devices given to Plan); nil means DefaultLinkBandwidth everywhere.
	LinkBandwidth func(i, j int) float64
	// OutputBandwidth is the bytes/s at which the last stage's device hands the
	// model's outputs on (to the client that asked): their bytes over it count in the
	// last stage's time, as a cut's bytes count in the stage before it. 0 leaves
	// them out. It matters when the outputs are large next to the compute (a
	// language model's logits answering a plain inference), so that the last stage
	// is not loaded as heavily as the others on top of sending them. A model with
	// state pairs hands nothing on: it runs as sessions, whose state stays on the
	// node and whose last stage answers with a sampled token id.
	OutputBandwidth float64
	// ReorderDevices lets the planner choose which device runs which stage (and, with
	// fewer stages than devices, which devices to use): it runs the exact program
	// for every order and keeps the fastest. At most MaxReorderDevices devices.
	ReorderDevices bool
}

// Stage is one contiguous run of nodes, Graph.Nodes[Start:End], on one device.
type Stage struct {
	Index  int
	Device Device
	// DeviceIndex is the position of Device in the devices given to Plan: Index,
	// unless PlanOptions.ReorderDevices moved it.
	DeviceIndex int
	// Start and End delimit the stage's node positions: [Start, End).
	Start, End int
	// FirstOp and LastOp are the op types of its first and last node.
	FirstOp, LastOp string
	// ParamBytes counts each weight the stage reads once, shared weights included.
	ParamBytes int64
	// ActivationBytes is the allowance for activations: what the stage receives plus
	// the largest working set of any one of its nodes (its inputs and outputs).
	ActivationBytes int64
	// MemoryBytes is ParamBytes + ActivationBytes, what must fit Device.MemBudget.
	MemoryBytes int64
	FLOPs       int64
	// SendBytes is what crosses the cut after this stage; for the last stage, the
	// model's outputs when PlanOptions.OutputBandwidth counts them, else 0.
	SendBytes int64
	// ComputeSeconds is FLOPs/Speed, or the stage's measured work over Speed when
	// the graph has measured costs (Graph.SetMeasuredCosts); TransferSeconds is
	// SendBytes over the link to the
	// next device; Seconds is their sum.
	ComputeSeconds, TransferSeconds, Seconds float64
}

// StagePlan is the planner's answer.
type StagePlan struct {
	Stages []Stage
	// Bottleneck is the largest Stage.Seconds: the pipeline's time per request in
	// steady state.
	Bottleneck float64
}

// Cuts returns the plan's cut positions (each stage's Start but the first).
func (p *StagePlan) Cuts() []int {
	var out []int
	for _, s := range p.Stages[1:] {
		out = append(out, s.Start)
	}
	return out
}

// stageScan holds per-node figures the planner sums over ranges.
type stageScan struct {
	g       *Graph
	flops   []int64   // prefix sums of node FLOPs
	work    []float64 // prefix sums of node work: measured, else FLOPs
	working []int64   // per node: non-weight inputs + outputs
	stamp   []int     // per weight: last sweep that counted it
	sweep   int
}

func newStageScan(g *Graph) *stageScan {
	s := &stageScan{g: g, flops: make([]int64, len(g.Nodes)+1), work: make([]float64, len(g.Nodes)+1),
		working: make([]int64, len(g.Nodes)), stamp: make([]int, len(g.Weights))}
	for i := range g.Nodes {
		nd := &g.Nodes[i]
		s.flops[i+1] = s.flops[i] + nd.FLOPs
		if g.measured != nil {
			s.work[i+1] = s.work[i] + g.measured[i]
		} else {
			s.work[i+1] = s.work[i] + float64(nd.FLOPs)
		}
		w := nd.OutputBytes
		for _, in := range nd.Inputs {
			if v := g.Values[in]; v.Kind != KindWeight {
				w += v.Bytes
			}
		}
		s.working[i] = w
	}
	return s
}

// sweepFrom calls visit(b, params, activation) for b = a+1..N in order, where params
// and activation are those of the stage [a, b), until visit returns false. Both grow
// with b, which is what lets the planner stop early.
func (s *stageScan) sweepFrom(a int, visit func(b int, params, act int64) bool) {
	s.sweep++
	var params, work int64
	in := s.g.Cuts[a].Bytes
	for b := a + 1; b <= len(s.g.Nodes); b++ {
		nd := &s.g.Nodes[b-1]
		for _, wi := range nd.Weights {
			if s.stamp[wi] != s.sweep {
				s.stamp[wi] = s.sweep
				params += s.g.Weights[wi].Bytes
			}
		}
		work = max(work, s.working[b-1])
		if !visit(b, params, in+work) {
			return
		}
	}
}

// links is what the planner knows of the transfers: the bandwidth between devices,
// and the model outputs' bytes with the bandwidth the last stage hands them out at.
type links struct {
	bw       func(i, j int) float64
	outBytes int64
	outBW    float64
}

// stageCost is the time of stage k (on devices[k]) covering [a, b), whose nodes do
// work FLOP (or measured FLOP-equivalents, see SetMeasuredCosts).
func stageCost(g *Graph, devices []Device, l links, k, a, b int, work float64) (compute, transfer float64) {
	compute = work / devices[k].Speed
	switch {
	case b < len(g.Nodes) && k+1 < len(devices):
		transfer = float64(g.Cuts[b].Bytes) / l.bw(k, k+1)
	case b == len(g.Nodes) && l.outBW > 0:
		transfer = float64(l.outBytes) / l.outBW
	}
	return compute, transfer
}

// handoffBytes is what the last stage hands on per run: the sizes of the graph's
// outputs, or nothing for a model with state pairs. Such a model runs as sessions:
// its state outputs stay in the stage's memory for the next step, and its last stage
// samples and answers with a token id, so its logits never leave the node either.
func (g *Graph) handoffBytes() int64 {
	if len(g.State) > 0 {
		return 0
	}
	var n int64
	for _, o := range g.Outputs {
		if v, ok := g.Values[o]; ok {
			n += v.Bytes
		}
	}
	return n
}

// Plan splits g into contiguous stages, stage i on devices[i], so that every stage
// fits its device and the slowest stage is as fast as possible. It is an exact
// dynamic program over the valid cut points: O(K*N^2) time for N nodes and K stages,
// O(K*N) memory.
//
// Devices are used in the order given (with Stages 0, a prefix of them), unless
// PlanOptions.ReorderDevices asks the planner to search the orders too.
//
// A stage's time is its FLOPs (or its nodes' measured times, scaled to FLOP at the
// measuring device's speed: Graph.SetMeasuredCosts) over its device's speed plus the
// bytes crossing the cut
// after it (activations and graph inputs that later stages read) over the link to
// the next device; the last stage sends the model's outputs when
// PlanOptions.OutputBandwidth is set and the model has no state pairs, else nothing.
// Its memory is its weights (each once, shared weights in every stage that reads
// them) plus an activation allowance: what it receives plus the largest working set
// (inputs and outputs) of one of its nodes.
func Plan(g *Graph, devices []Device, opts PlanOptions) (*StagePlan, error) {
	if len(devices) == 0 {
		return nil, ErrNoDevices
	}
	if len(g.Nodes) == 0 {
		return nil, fmt.Errorf("%w: graph has no compute nodes", ErrBadPlan)
	}
	for i, d := range devices {
		if !(d.Speed > 0) || math.IsInf(d.Speed, 0) {
			return nil, fmt.Errorf("%w: device %d (%s) speed %v must be positive", ErrBadPlan, i, d.Name, d.Speed)
		}
	}
	bw := opts.LinkBandwidth
	if bw == nil {
		bw = func(int, int) float64 { return DefaultLinkBandwidth }
	}
	if opts.OutputBandwidth < 0 || math.IsNaN(opts.OutputBandwidth) || math.IsInf(opts.OutputBandwidth, 0) {
		return nil, fmt.Errorf("%w: output bandwidth %v must be positive (or 0: not counted)", ErrBadPlan, opts.OutputBandwidth)
	}
	l := links{bw: bw, outBytes: g.handoffBytes(), outBW: opts.OutputBandwidth}
	for i := range devices {
		for j := range devices {
			if (j == i+1 || (opts.ReorderDevices && i != j)) && !(bw(i, j) > 0) {
				return nil, fmt.Errorf("%w: link bandwidth from device %d to %d is %v, must be positive", ErrBadPlan, i, j, bw(i, j))
			}
		}
	}
	maxStages := len(g.ValidCuts()) + 1
	k := opts.Stages
	switch {
	case k < 0:
		return nil, fmt.Errorf("%w: %d stages", ErrTooManyStages, k)
	case k > len(devices):
		return nil, fmt.Errorf("%w: %d stages asked for, %d devices given", ErrTooManyStages, k, len(devices))
	case k > maxStages:
		return nil, fmt.Errorf("%w: %d stages asked for, the graph has %d valid cut points (at most %d stages)", ErrTooManyStages, k, maxStages-1, maxStages)
	}
	kmax := k
	if k == 0 {
		kmax = min(len(devices), maxStages)
	}
	order := make([]int, len(devices))
	for i := range order {
		order[i] = i
	}
	if !opts.ReorderDevices {
		return g.planInOrder(devices, l, order, k, kmax)
	}
	if len(devices) > MaxReorderDevices {
		return nil, fmt.Errorf("%w: ReorderDevices searches every order, at most %d devices (%d given)", ErrBadPlan, MaxReorderDevices, len(devices))
	}
	// Every order of all devices: with Stages 0 or fewer stages than devices, each
	// order's prefixes are the ordered subsets, so this covers those too.
	var best *StagePlan
	var firstErr error
	permute(order, 0, func(perm []int) {
		p, err := g.planInOrder(devices, l, perm, k, kmax)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			return
		}
		if best == nil || p.Bottleneck < best.Bottleneck {
			best = p
		}
	})
	if best == nil {
		return nil, firstErr
	}
	return best, nil
}

// MaxReorderDevices bounds PlanOptions.ReorderDevices: 7 devices are 5040 orders.
const MaxReorderDevices = 7

// permute calls visit with every permutation of p[i:] (Heap-style swaps, in place).
func permute(p []int, i int, visit func([]int)) {
	if i == len(p) {
		visit(p)
		return
	}
	for j := i; j < len(p); j++ {
		p[i], p[j] = p[j], p[i]
		permute(p, i+1, visit)
		p[i], p[j] = p[j], p[i]
	}
}

// planInOrder plans with stage j on devices[order[j]].
func (g *Graph) planInOrder(all []Device, allLinks links, order []int, k, kmax int) (*StagePlan, error) {
	devices := make([]Device, len(order))
	for j, d := range order {
		devices[j] = all[d]
	}
	l := allLinks
	l.bw = func(i, j int) float64 { return allLinks.bw(order[i], order[j]) }
	costFn := func(stage, a, b int, params, act int64, work float64) (float64, bool) {
		if params+act > devices[stage].MemBudget {
			return 0, false
		}
		c, t := stageCost(g, devices, l, stage, a, b, work)
		return c + t, true
	}
	best, parent := solve(g, kmax, costFn, func(stage int, params, act int64) bool {
		return params+act <= devices[stage].MemBudget
	})
	pick := k
	if k == 0 {
		for kk := 1; kk <= kmax; kk++ {
			if !math.IsInf(best[kk], 1) && (pick == 0 || best[kk] < best[pick]) {
				pick = kk
			}
		}
	}
	if pick == 0 || math.IsInf(best[pick], 1) {
		return nil, g.doesNotFit(devices, kmax, k == 0)
	}
	p := g.buildPlan(devices, l, parent, pick)
	for j := range p.Stages {
		p.Stages[j].DeviceIndex = order[j]
	}
	return p, nil
}

// solve runs the bottleneck dynamic program for up to kmax stages. best[k] is the
// optimum with exactly k stages (+Inf if none fits); par[j][b] is where the j-th
// stage starts in the best j-stage cover of [0, b), so walking it back from
// par[k][N] yields the k-stage optimum. grow reports whether stage j could still
// fit with these sizes (sizes only grow with b, so a false ends the sweep).
func solve(g *Graph, kmax int, cost func(stage, a, b int, params, act int64, work float64) (float64, bool), grow func(stage int, params, act int64) bool) ([]float64, [][]int) {
	n := len(g.Nodes)
	scan := newStageScan(g)
	inf := math.Inf(1)
	// f[j][b]: best bottleneck of j stages covering [0, b).
	f := make([][]float64, kmax+1)
	par := make([][]int, kmax+1)
	for j := range f {
		f[j] = make([]float64, n+1)
		par[j] = make([]int, n+1)
		for b := range f[j] {
			f[j][b] = inf
			par[j][b] = -1
		}
	}
	f[0][0] = 0
	for a := 0; a < n; a++ {
		if a > 0 && !g.Cuts[a].Valid {
			continue
		}
		var live []int // stages j+1 that can start at a
		for j := 0; j < kmax; j++ {
			if !math.IsInf(f[j][a], 1) {
				live = append(live, j)
			}
		}
		if len(live) == 0 {
			continue
		}
		scan.sweepFrom(a, func(b int, params, act int64) bool {
			endOK := b == n || g.Cuts[b].Valid
			anyGrow := false
			for _, j := range live {
				if !grow(j, params, act) {
					continue
				}
				anyGrow = true
				if !endOK || (b < n && j+1 == kmax) {
					continue
				}
				c, ok := cost(j, a, b, params, act, scan.work[b]-scan.work[a])
				if !ok {
					continue
				}
				if v := math.Max(f[j][a], c); v < f[j+1][b] {
					f[j+1][b] = v
					par[j+1][b] = a
				}
			}
			return anyGrow
		})
	}
	best := make([]float64, kmax+1)
	best[0] = inf
	for k := 1; k <= kmax; k++ {
		best[k] = f[k][n]
	}
	return best, par
}

// buildPlan walks the parent pointers back from the end and fills in each stage.
func (g *Graph) buildPlan(devices []Device, l links, par [][]int, k int) *StagePlan {
	n := len(g.Nodes)
	bounds := make([]int, k+1)
	bounds[k] = n
	for j := k; j > 0; j-- {
		bounds[j-1] = par[j][bounds[j]]
	}
	p := &StagePlan{}
	scan := newStageScan(g)
	for j := 0; j < k; j++ {
		a, b := bounds[j], bounds[j+1]
		var params, act int64
		scan.sweepFrom(a, func(e int, pb, ab int64) bool {
			params, act = pb, ab
			return e < b
		})
		flops := scan.flops[b] - scan.flops[a]
		c, t := stageCost(g, devices, l, j, a, b, scan.work[b]-scan.work[a])
		st := Stage{
			Index: j, Device: devices[j], Start: a, End: b,
			FirstOp: g.Nodes[a].OpType, LastOp: g.Nodes[b-1].OpType,
			ParamBytes: params, ActivationBytes: act, MemoryBytes: params + act, FLOPs: flops,
			ComputeSeconds: c, TransferSeconds: t, Seconds: c + t,
		}
		switch {
		case b < n:
			st.SendBytes = g.Cuts[b].Bytes
		case l.outBW > 0:
			st.SendBytes = l.outBytes
		}
		p.Stages = append(p.Stages, st)
		p.Bottleneck = math.Max(p.Bottleneck, st.Seconds)
	}
	return p
}

// doesNotFit explains by how much the devices fall short: it finds the split that
// overshoots its budgets least (another bottleneck program, over bytes) and reports
// that overshoot with the model's totals.
func (g *Graph) doesNotFit(devices []Device, kmax int, auto bool) error {
	over := func(stage, a, b int, params, act int64, _ float64) (float64, bool) {
		return float64(params + act - devices[stage].MemBudget), true
	}
	best, par := solve(g, kmax, over, func(int, int64, int64) bool { return true })
	pick := kmax
	if auto {
		for k := 1; k <= kmax; k++ {
			if best[k] < best[pick] {
				pick = k
			}
		}
	}
	var sum, largestBudget int64
	for _, d := range devices[:kmax] {
		sum += d.MemBudget
		largestBudget = max(largestBudget, d.MemBudget)
	}
	scan := newStageScan(g)
	var largest int64
	largestAt := 0
	for i := range g.Nodes {
		var need int64
		scan.sweepFrom(i, func(_ int, params, act int64) bool {
			need = params + act
			return false
		})
		if need > largest {
			largest, largestAt = need, i
		}
	}
	var worst strings.Builder
	if !math.IsInf(best[pick], 1) {
		p := g.buildPlan(devices, links{bw: func(int, int) float64 { return DefaultLinkBandwidth }}, par, pick)
		for _, s := range p.Stages {
			if s.MemoryBytes > s.Device.MemBudget {
				fmt.Fprintf(&worst, "; stage %d (nodes %d..%d) needs %s on %s (budget %s)", s.Index, s.Start, s.End-1, FormatBytes(s.MemoryBytes), deviceLabel(s.Device, s.Index), FormatBytes(s.Device.MemBudget))
			}
		}
	}
	nd := g.Nodes[largestAt]
	return fmt.Errorf("%w: with %d stage(s) the best split still needs at least %s more bytes on one device%s; weights total %s, the largest indivisible node (%s %q) needs %s, the %d budget(s) sum to %s (largest %s)",
		ErrDoesNotFit, pick, FormatBytes(int64(best[pick])), worst.String(), FormatBytes(g.ParamBytes), nd.OpType, nd.Name, FormatBytes(largest), kmax, FormatBytes(sum), FormatBytes(largestBudget))
}

func deviceLabel(d Device, i int) string {
	if d.Name != "" {
		return d.Name
	}
	return fmt.Sprintf("device %d", i)
}

// FormatBytes renders a byte count in binary units (1.5 GiB), the way budgets are
// written on the command line.
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		f /= unit
		if math.Abs(f) < unit {
			return fmt.Sprintf("%.2f %s", f, u)
		}
	}
	return fmt.Sprintf("%.2f PiB", f/unit)
}
