package partition

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// MeasureValues runs the model once in ONNX Runtime with every activation exposed as
// an output and returns each one's dtype and shape: exact crossing sizes and stage
// signatures where shape inference falls short (operators it has no rule for,
// data-dependent shapes). Feed the result to AnalyzeWith as AnalyzeOptions.Measured.
// tmpDir receives a temporary copy of the model (removed afterwards); sequence and
// optional values are skipped, they are not tensors.
func MeasureValues(ctx context.Context, backend accel.Backend, g *Graph, inputs []tensor.Tensor, tmpDir string) (map[string]MeasuredValue, error) {
	dir, err := os.MkdirTemp(tmpDir, "measure-")
	if err != nil {
		return nil, fmt.Errorf("partition: measure: %w", err)
	}
	defer os.RemoveAll(dir)
	whole := Stage{Index: 0, Start: 0, End: len(g.Nodes)}
	stageOf := make([]int, len(g.Nodes))
	// The copy keeps the source's external-data choice: large models stay large.
	sm, err := g.writeStage(g.Model, whole, stageOf, 1, dir, ExtractOptions{exposeAll: true})
	if err != nil {
		return nil, fmt.Errorf("partition: measure: %w", err)
	}
	var names []string
	for _, o := range sm.Outputs {
		if p := g.Values[o.Name].Producer; p >= 0 && !producesNonTensor(g.Nodes[p].OpType) {
			names = append(names, o.Name)
		}
	}
	res, err := runModel(ctx, backend, filepath.Join(dir, sm.File), inputs, names)
	if err != nil {
		return nil, fmt.Errorf("partition: measure: %w", err)
	}
	out := make(map[string]MeasuredValue, len(res))
	for name, t := range res {
		out[name] = MeasuredValue{DType: t.DType, Shape: append([]int64(nil), t.Shape...)}
	}
	return out, nil
}

func producesNonTensor(op string) bool {
	return strings.HasPrefix(op, "Sequence") || op == "SplitToSequence" || strings.HasPrefix(op, "Optional") || op == "Loop" || op == "Scan"
}

// profileNodeName names node pos in the copy MeasureNodeCosts profiles: the source's
// own names may be empty or repeated.
func profileNodeName(pos int) string { return fmt.Sprintf("layermesh_node_%d", pos) }

// The runs MeasureNodeCosts's callers give it by default: 5 to let ONNX Runtime size
// its buffers, then 41 timed, whose median per node shrugs off a few disturbed runs.
const (
	DefaultMeasureWarmup = 5
	DefaultMeasureRuns   = 41
)

// maxUnmeasuredShare is the share of the graph's FLOPs that nodes missing from a
// profile may carry before MeasureNodeCosts gives up: at the basic optimization level
// ONNX Runtime folds constant subgraphs and drops no-op nodes, which cost little, and
// merges an Add, Mul or BatchNormalization into the Conv before it, whose time the
// Conv's name carries.
const maxUnmeasuredShare = 0.1

// MeasureNodeCosts times each node of g: it writes a copy of the model whose nodes
// are named by position and has p run it on inputs (warmup runs, then runs timed
// ones; see accel.NodeProfiler), and returns each node's time in seconds, by position
// in g.Nodes: its median kernel time, brought to add up to a plain run's time. Where
// the run took longer than the kernels' sum, each node gets an equal share of the
// difference (the executor's work between the kernels, which grows with the node
// count and which FLOPs miss); where it took less (the profiler's own cost in each
// kernel's time), every kernel's time shrinks in proportion, so that none that ran
// falls to 0. A node that does not appear in
// the profile (ONNX Runtime folded or dropped it) costs 0; if such nodes carry more
// than a tenth of the graph's FLOPs, it fails with ErrNotMeasured. Give
// NodeCosts.Seconds to SetMeasuredCosts.
func MeasureNodeCosts(ctx context.Context, p accel.NodeProfiler, g *Graph, inputs []tensor.Tensor, opts accel.SessionOptions, warmup, runs int, tmpDir string) (*NodeCosts, error) {
	dir, err := os.MkdirTemp(tmpDir, "profile-")
	if err != nil {
		return nil, fmt.Errorf("partition: measure node costs: %w", err)
	}
	defer os.RemoveAll(dir)
	whole := Stage{Index: 0, Start: 0, End: len(g.Nodes)}
	sm, err := g.writeStage(g.Model, whole, make([]int, len(g.Nodes)), 1, dir, ExtractOptions{nameNodes: true})
	if err != nil {
		return nil, fmt.Errorf("partition: measure node costs: %w", err)
	}
	prof, err := p.ProfileNodes(ctx, filepath.Join(dir, sm.File), opts, inputs, warmup, runs, dir)
	if err != nil {
		return nil, fmt.Errorf("partition: measure node costs: %w", err)
	}
	out := make([]float64, len(g.Nodes))
	var missing int64
	var kernels float64
	var ran []int // positions of the nodes the profile timed
	for pos := range g.Nodes {
		d, ok := prof.Nodes[profileNodeName(pos)]
		if !ok {
			missing += g.Nodes[pos].FLOPs
			continue
		}
		out[pos] = d.Seconds()
		kernels += d.Seconds()
		ran = append(ran, pos)
	}
	if len(ran) == 0 || float64(missing) > maxUnmeasuredShare*float64(g.FLOPs) {
		return nil, fmt.Errorf("%w: the profile has no time for nodes carrying %d of the model's %d FLOPs", ErrNotMeasured, missing, g.FLOPs)
	}
	// A plain run's time is the truth of the total. A positive difference is the
	// executor's work between kernels, an equal share per node. A negative one is the
	// profiler's own cost inside the kernels' times plus the noise of a busy machine;
	// an equal cut there would wipe out the tiny kernels (a decode step's attention
	// products take microseconds), so the kernels shrink in proportion instead.
	run := prof.Run.Seconds()
	if share := (run - kernels) / float64(len(ran)); share >= 0 {
		for _, pos := range ran {
			out[pos] += share
		}
	} else {
		for _, pos := range ran {
			out[pos] *= run / kernels
		}
	}
	return &NodeCosts{Seconds: out, Run: run, Kernels: kernels}, nil
}

// NodeCosts are what MeasureNodeCosts measured.
type NodeCosts struct {
	// Seconds is each node's time, by position in Graph.Nodes.
	Seconds []float64
	// Run is a plain run's median time; Kernels is the sum of the nodes' median
	// kernel times. Seconds sums to Run.
	Run, Kernels float64
}

// SetMeasuredCosts makes Plan balance measured times instead of FLOPs: seconds[i] is
// node i's time on a device whose speed score is speed, so a stage of nodes that took
// S seconds there takes S*speed/s on a device of speed s. nil goes back to FLOPs.
func (g *Graph) SetMeasuredCosts(seconds []float64, speed float64) error {
	if seconds == nil {
		g.measured = nil
		return nil
	}
	if len(seconds) != len(g.Nodes) {
		return fmt.Errorf("%w: %d node times for %d nodes", ErrNotMeasured, len(seconds), len(g.Nodes))
	}
	if !(speed > 0) || math.IsInf(speed, 0) {
		return fmt.Errorf("%w: speed %v must be positive", ErrNotMeasured, speed)
	}
	var total float64
	for i, s := range seconds {
		if !(s >= 0) || math.IsInf(s, 0) {
			return fmt.Errorf("%w: node %d's time %v", ErrNotMeasured, i, s)
		}
		total += s
	}
	if total == 0 {
		return fmt.Errorf("%w: every node's time is 0", ErrNotMeasured)
	}
	g.measured = make([]float64, len(seconds))
	for i, s := range seconds {
		g.measured[i] = s * speed
	}
	return nil
}

// Measured reports whether Plan balances measured times (SetMeasuredCosts) rather
// than FLOPs.
func (g *Graph) Measured() bool { return g.measured != nil }

// InputSpecs describes the graph's inputs at the shapes they were analysed at, for
// RandomInputs.
func (g *Graph) InputSpecs() []TensorSpec {
	out := make([]TensorSpec, 0, len(g.Inputs))
	for _, name := range g.Inputs {
		v := g.Values[name]
		out = append(out, TensorSpec{Name: name, DType: v.DType, Shape: v.Shape, From: -1})
	}
	return out
}

// DecodeInputs are random inputs for one decode step of a model with state pairs at
// a past of past positions, for MeasureNodeCosts, at DecodeShapes.
func (g *Graph) DecodeInputs(past int64, seed uint64) ([]tensor.Tensor, error) {
	shapes, err := g.DecodeShapes(past)
	if err != nil {
		return nil, err
	}
	return RandomInputs(&Manifest{InputShapes: shapes, Inputs: g.InputSpecs()}, seed)
}

// DecodeShapes are the input shapes of one decode step at a past of past positions:
// a state input's past axis (the symbolic dim its pair's output names otherwise, as a
// KV cache's past length becomes past+1; not its batch, which the output keeps) is
// bound to past, and a dim named as a sum of dims and integers (Optimum's attention
// mask, "past_sequence_length + 1" or "past_sequence_length + sequence_length") to
// that sum; everything else keeps the shape Analyze bound. A model without state
// pairs gets the analysed shapes.
func (g *Graph) DecodeShapes(past int64) (map[string][]int64, error) {
	if past < 1 {
		return nil, fmt.Errorf("%w: past %d must be at least 1", ErrInputShape, past)
	}
	gp := g.Model.Proto.GetGraph()
	dims := map[string][]*onnxpb.TensorShapeProto_Dimension{}
	for _, vi := range append(slices.Clone(gp.GetInput()), gp.GetOutput()...) {
		dims[vi.GetName()] = vi.GetType().GetTensorType().GetShape().GetDim()
	}
	pastDims := map[string]bool{}
	for _, p := range g.State {
		out := dims[p.Out]
		for i, d := range dims[p.In] {
			if name := d.GetDimParam(); name != "" && i < len(out) && out[i].GetDimParam() != name {
				pastDims[name] = true
			}
		}
	}
	// What each plain dim param was analysed at, and the past for the past's own.
	value := map[string]int64{}
	for _, name := range g.Inputs {
		for i, d := range dims[name] {
			if p := d.GetDimParam(); p != "" && i < len(g.InputShapes[name]) {
				value[p] = g.InputShapes[name][i]
			}
		}
	}
	for p := range pastDims {
		value[p] = past
	}
	shapes := map[string][]int64{}
	for _, name := range g.Inputs {
		shape := slices.Clone(g.InputShapes[name])
		for i, d := range dims[name] {
			if i >= len(shape) {
				continue
			}
			if v, ok := dimSum(d.GetDimParam(), value); ok && (pastDims[d.GetDimParam()] || strings.Contains(d.GetDimParam(), "+")) {
				shape[i] = v
			}
		}
		shapes[name] = shape
	}
	return shapes, nil
}

// dimSum evaluates a dim param that is a sum of params and integers ("past + 1",
// Optimum's "past_sequence_length + sequence_length"); ok is false when a term is
// neither.
func dimSum(param string, value map[string]int64) (int64, bool) {
	if param == "" {
		return 0, false
	}
	var sum int64
	for _, term := range strings.Split(param, "+") {
		term = strings.TrimSpace(term)
		if v, ok := value[term]; ok {
			sum += v
		} else if n, err := strconv.ParseInt(term, 10, 64); err == nil && n >= 0 {
			sum += n
		} else {
			return 0, false
		}
	}
	return sum, true
}
