package partition

import (
	"container/heap"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// ValueKind says where a tensor comes from.
type ValueKind int

// Value kinds.
const (
	// KindActivation is produced by a compute node.
	KindActivation ValueKind = iota
	// KindGraphInput is fed by the caller.
	KindGraphInput
	// KindWeight is an initializer or the output of a Constant node.
	KindWeight
)

// Value is one named tensor of the graph as the analysis sees it.
type Value struct {
	Name  string
	Kind  ValueKind
	DType tensor.DType // 0 when unknown
	// Shape is bound to the analysis input shapes: nil when the rank is unknown, -1 for
	// a dim that could not be inferred.
	Shape []int64
	// Dynamic marks the dims that follow the model's symbolic input dims (they change
	// when the input shape does); those stay symbolic in stage models.
	Dynamic []bool
	// Bytes is the tensor's size under the bound shapes (an estimate when a dim is
	// unknown).
	Bytes int64
	// Producer is the position in Graph.Nodes of the node that produces it, or -1.
	Producer int
	// Consumers are the positions of the compute nodes that read it, ascending.
	Consumers []int
}

// Node is one compute node in topological order. Constant nodes are not compute
// nodes: their outputs are weights.
type Node struct {
	// Position is the node's index in Graph.Nodes.
	Position int
	Proto    *onnxpb.NodeProto
	Name     string
	OpType   string
	// Inputs are the distinct tensors the node reads, including the outer tensors its
	// subgraphs read, weights included.
	Inputs []string
	// Outputs are the tensors it produces.
	Outputs []string
	// Weights are indices into Graph.Weights of the weights it reads.
	Weights []int
	// ParamBytes is the size of the weights it reads.
	ParamBytes int64
	// FLOPs estimates its arithmetic under the bound input shapes.
	FLOPs int64
	// OutputBytes is the size of its outputs under the bound input shapes.
	OutputBytes int64
}

// Weight is an initializer or a Constant node's value.
type Weight struct {
	Name  string
	Bytes int64
	// Initializer is set for initializers; Constant for Constant nodes.
	Initializer *onnxpb.TensorProto
	Constant    *onnxpb.NodeProto
	// Users are the positions of the compute nodes that read it, ascending.
	Users []int
}

// Cut is the boundary before Graph.Nodes[Position].
type Cut struct {
	Position int
	// Crossing are the activations and graph inputs produced before the cut and read
	// after it, sorted by name. Weights never cross.
	Crossing []string
	// Bytes is the total size of Crossing.
	Bytes int64
	// Valid is false where a stage boundary cannot go (Reason says why).
	Valid  bool
	Reason string
}

// Graph is the analysis of a model: a topological order of its compute nodes, every
// tensor's type and size, the weights, and the cut points.
type Graph struct {
	Model  *Model
	Nodes  []Node
	Values map[string]*Value
	// Weights in first-use order.
	Weights []Weight
	// Cuts has len(Nodes)+1 entries; Cuts[0] and Cuts[len(Nodes)] are the ends of the
	// graph and never valid stage boundaries.
	Cuts []Cut
	// Inputs and Outputs are the graph's input names (initializers excluded) and
	// output names.
	Inputs  []string
	Outputs []string
	// InputShapes are the bound input shapes used for sizes and FLOPs.
	InputShapes map[string][]int64
	// ParamBytes is the size of all weights, each counted once.
	ParamBytes int64
	// FLOPs is the sum over nodes.
	FLOPs int64
	// State are the model's state pairs (SetState); Analyze detects them by name.
	State []StatePair
	// measured is each node's measured work (SetMeasuredCosts), in FLOP at the
	// measuring device's speed; nil: the planner uses Node.FLOPs.
	measured []float64
}

// AnalyzeOptions tune Analyze.
type AnalyzeOptions struct {
	// InputShapes binds graph inputs to concrete shapes. Inputs not named bind their
	// symbolic dims to DefaultDim.
	InputShapes map[string][]int64
	// DefaultDim is the size given to symbolic dims not bound otherwise; 0 means 1.
	DefaultDim int64
	// Measured are exact types of intermediate tensors (MeasureValues obtains them
	// from ONNX Runtime); they override inference.
	Measured map[string]MeasuredValue
	// State declares the model's state pairs; nil detects them by name
	// (DetectStatePairs), an empty non-nil slice declares none.
	State []StatePair
}

// MeasuredValue is the observed dtype and shape of a tensor.
type MeasuredValue struct {
	DType tensor.DType
	Shape []int64
}

// Analyze sorts m's graph, infers tensor shapes under inputShapes (symbolic dims not
// given are bound to 1), and finds the cut points.
func Analyze(m *Model, inputShapes map[string][]int64) (*Graph, error) {
	return AnalyzeWith(m, AnalyzeOptions{InputShapes: inputShapes})
}

// AnalyzeWith is Analyze with options.
func AnalyzeWith(m *Model, opts AnalyzeOptions) (*Graph, error) {
	gp := m.Proto.GetGraph()
	if gp == nil {
		return nil, fmt.Errorf("%w: no graph", ErrNotONNX)
	}
	b := &graphBuilder{
		g:          &Graph{Model: m, Values: map[string]*Value{}, InputShapes: map[string][]int64{}},
		gp:         gp,
		weightIdx:  map[string]int{},
		isInput:    map[string]bool{},
		producedBy: map[string]int{},
	}
	if err := b.collectWeights(); err != nil {
		return nil, err
	}
	if err := b.collectInputs(); err != nil {
		return nil, err
	}
	if err := b.collectComputeNodes(); err != nil {
		return nil, err
	}
	succ, indeg, err := b.dependencies()
	if err != nil {
		return nil, err
	}
	order, err := b.topologicalOrder(succ, indeg)
	if err != nil {
		return nil, err
	}
	if err := b.buildNodesAndValues(b.liveNodes(order)); err != nil {
		return nil, err
	}
	g := b.g
	if err := g.inferShapes(opts); err != nil {
		return nil, err
	}
	for pos := range g.Nodes {
		g.FLOPs += g.Nodes[pos].FLOPs
	}
	g.findCuts()
	if err := g.SetState(opts.State); err != nil {
		return nil, err
	}
	return g, nil
}

// graphBuilder carries what AnalyzeWith learns about a graph from one phase to the
// next.
type graphBuilder struct {
	g          *Graph
	gp         *onnxpb.GraphProto
	weightIdx  map[string]int      // weight name -> index into g.Weights
	isInput    map[string]bool     // graph inputs that are not weights
	compute    []*onnxpb.NodeProto // nodes other than Constant, in file order
	producedBy map[string]int      // tensor name -> index into compute
	inputsOf   [][]string          // per compute node: inputs and subgraph captures, deduplicated
}

// collectWeights records the initializers, dense and sparse.
func (b *graphBuilder) collectWeights() error {
	for _, t := range b.gp.GetInitializer() {
		if _, dup := b.weightIdx[t.GetName()]; dup || t.GetName() == "" {
			return fmt.Errorf("%w: initializer %q", ErrDuplicateOutput, t.GetName())
		}
		n, _ := tensorDataBytes(t)
		n = min(n, maxSize)
		b.weightIdx[t.GetName()] = len(b.g.Weights)
		b.g.Weights = append(b.g.Weights, Weight{Name: t.GetName(), Bytes: n, Initializer: t})
	}
	for _, sp := range b.gp.GetSparseInitializer() {
		// Sparse initializers are rare; they are kept whole in every stage that reads them.
		name := sp.GetValues().GetName()
		n, _ := tensorDataBytes(sp.GetValues())
		in, _ := tensorDataBytes(sp.GetIndices())
		b.weightIdx[name] = len(b.g.Weights)
		b.g.Weights = append(b.g.Weights, Weight{Name: name, Bytes: min(n+in, maxSize)})
	}
	return nil
}

// collectInputs records the graph inputs that are not weights.
func (b *graphBuilder) collectInputs() error {
	for _, vi := range b.gp.GetInput() {
		if _, ok := b.weightIdx[vi.GetName()]; ok {
			// An input with an initializer of the same name is a weight with a default
			// (IR < 4 style); treat it as a weight.
			continue
		}
		if b.isInput[vi.GetName()] {
			return fmt.Errorf("%w: graph input %q", ErrDuplicateOutput, vi.GetName())
		}
		b.isInput[vi.GetName()] = true
		b.g.Inputs = append(b.g.Inputs, vi.GetName())
	}
	return nil
}

// collectComputeNodes turns Constant nodes into weights and indexes the producers
// of the other nodes' outputs, each tensor name produced once.
func (b *graphBuilder) collectComputeNodes() error {
	for _, n := range b.gp.GetNode() {
		if !isConstantNode(n) {
			b.compute = append(b.compute, n)
			continue
		}
		if len(n.GetOutput()) != 1 || n.GetOutput()[0] == "" {
			return fmt.Errorf("%w: Constant node %q needs exactly one output", ErrNotONNX, n.GetName())
		}
		name := n.GetOutput()[0]
		if _, dup := b.weightIdx[name]; dup || b.isInput[name] {
			return fmt.Errorf("%w: %q", ErrDuplicateOutput, name)
		}
		b.weightIdx[name] = len(b.g.Weights)
		b.g.Weights = append(b.g.Weights, Weight{Name: name, Bytes: min(constantBytes(n), maxSize), Constant: n})
	}
	for i, n := range b.compute {
		for _, o := range n.GetOutput() {
			if o == "" {
				continue
			}
			_, w := b.weightIdx[o]
			_, p := b.producedBy[o]
			if w || p || b.isInput[o] {
				return fmt.Errorf("%w: %q (node %q)", ErrDuplicateOutput, o, nodeLabel(n, i))
			}
			b.producedBy[o] = i
		}
	}
	return nil
}

// dependencies fills inputsOf, with subgraph captures as inputs, and returns each
// compute node's successors and in-degree.
func (b *graphBuilder) dependencies() (succ [][]int, indeg []int, err error) {
	b.inputsOf = make([][]string, len(b.compute))
	succ = make([][]int, len(b.compute))
	indeg = make([]int, len(b.compute))
	for i, n := range b.compute {
		seen := map[string]bool{}
		var ins []string
		add := func(name string) {
			if name == "" || seen[name] {
				return
			}
			seen[name] = true
			ins = append(ins, name)
		}
		for _, in := range n.GetInput() {
			add(in)
		}
		for _, c := range subgraphCaptures(n) {
			add(c)
		}
		b.inputsOf[i] = ins
		for _, in := range ins {
			if p, ok := b.producedBy[in]; ok {
				if p == i {
					return nil, nil, fmt.Errorf("%w: node %q reads its own output %q", ErrCycle, nodeLabel(n, i), in)
				}
				succ[p] = append(succ[p], i)
				indeg[i]++
				continue
			}
			if _, ok := b.weightIdx[in]; ok || b.isInput[in] {
				continue
			}
			return nil, nil, fmt.Errorf("%w: node %q (%s) reads %q, which is no graph input, initializer or node output", ErrDanglingInput, nodeLabel(n, i), n.GetOpType(), in)
		}
	}
	return succ, indeg, nil
}

// topologicalOrder is Kahn's algorithm, always taking the ready node that came first
// in the file, so an already sorted graph keeps its order (exporters put related
// nodes together).
func (b *graphBuilder) topologicalOrder(succ [][]int, indeg []int) ([]int, error) {
	compute := b.compute
	order := make([]int, 0, len(compute))
	ready := &intHeap{}
	for i := range compute {
		if indeg[i] == 0 {
			heap.Push(ready, i)
		}
	}
	for ready.Len() > 0 {
		i := heap.Pop(ready).(int)
		order = append(order, i)
		for _, s := range succ[i] {
			indeg[s]--
			if indeg[s] == 0 {
				heap.Push(ready, s)
			}
		}
	}
	if len(order) != len(compute) {
		var stuck []string
		for i := range compute {
			if indeg[i] > 0 {
				stuck = append(stuck, nodeLabel(compute[i], i))
				if len(stuck) == 5 {
					break
				}
			}
		}
		return nil, fmt.Errorf("%w: %d of %d nodes are on or behind a cycle (e.g. %s)", ErrCycle, len(compute)-len(order), len(compute), strings.Join(stuck, ", "))
	}
	return order, nil
}

// liveNodes drops dead nodes from order (nothing reads their outputs, transitively,
// and none is a graph output), as ONNX Runtime does: a stage made only of them would
// have no outputs.
func (b *graphBuilder) liveNodes(order []int) []int {
	needed := map[string]bool{}
	for _, o := range b.gp.GetOutput() {
		needed[o.GetName()] = true
	}
	live := order[:0:0]
	for j := len(order) - 1; j >= 0; j-- {
		i := order[j]
		used := false
		for _, o := range b.compute[i].GetOutput() {
			used = used || (o != "" && needed[o])
		}
		if !used {
			continue
		}
		for _, in := range b.inputsOf[i] {
			needed[in] = true
		}
		live = append(live, i)
	}
	slices.Reverse(live)
	return live
}

// buildNodesAndValues lays the compute nodes out in order and links every value to
// its producer, its consumers and, for weights, its users.
func (b *graphBuilder) buildNodesAndValues(order []int) error {
	g := b.g
	g.Nodes = make([]Node, len(order))
	for pos, i := range order {
		n := b.compute[i]
		g.Nodes[pos] = Node{Position: pos, Proto: n, Name: n.GetName(), OpType: n.GetOpType(), Inputs: b.inputsOf[i]}
		for _, o := range n.GetOutput() {
			if o != "" {
				g.Nodes[pos].Outputs = append(g.Nodes[pos].Outputs, o)
			}
		}
	}
	for _, name := range g.Inputs {
		g.Values[name] = &Value{Name: name, Kind: KindGraphInput, Producer: -1}
	}
	for _, w := range g.Weights {
		g.Values[w.Name] = &Value{Name: w.Name, Kind: KindWeight, Producer: -1}
	}
	for pos := range g.Nodes {
		for _, o := range g.Nodes[pos].Outputs {
			g.Values[o] = &Value{Name: o, Kind: KindActivation, Producer: pos}
		}
	}
	for pos := range g.Nodes {
		nd := &g.Nodes[pos]
		for _, in := range nd.Inputs {
			v := g.Values[in]
			v.Consumers = append(v.Consumers, pos)
			if wi, ok := b.weightIdx[in]; ok {
				nd.Weights = append(nd.Weights, wi)
				nd.ParamBytes += g.Weights[wi].Bytes
				g.Weights[wi].Users = append(g.Weights[wi].Users, pos)
			}
		}
	}
	for _, o := range b.gp.GetOutput() {
		g.Outputs = append(g.Outputs, o.GetName())
		if _, ok := g.Values[o.GetName()]; !ok {
			return fmt.Errorf("%w: graph output %q is produced by nothing", ErrDanglingInput, o.GetName())
		}
	}
	for _, w := range g.Weights {
		g.ParamBytes += w.Bytes
	}
	return nil
}

// findCuts computes the crossing tensors of every cut. A tensor produced at position
// p (graph inputs: -1) and last read at position l crosses cuts p+1..l; Cuts[0] thus
// lists the graph inputs the first stage receives.
func (g *Graph) findCuts() {
	n := len(g.Nodes)
	g.Cuts = make([]Cut, n+1)
	for i := range g.Cuts {
		g.Cuts[i].Position = i
		g.Cuts[i].Valid = i > 0 && i < n
	}
	if n > 0 {
		g.Cuts[0].Reason = "start of graph"
		g.Cuts[n].Reason = "end of graph"
	}
	names := make([]string, 0, len(g.Values))
	for name, v := range g.Values {
		if v.Kind != KindWeight && len(v.Consumers) > 0 {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		v := g.Values[name]
		last := v.Consumers[len(v.Consumers)-1]
		fused := g.insideQDQ(v)
		for c := v.Producer + 1; c <= last; c++ {
			cut := &g.Cuts[c]
			cut.Crossing = append(cut.Crossing, name)
			cut.Bytes += v.Bytes
			switch {
			case !cut.Valid:
			case v.DType == 0:
				cut.Valid = false
				cut.Reason = fmt.Sprintf("type of crossing tensor %q unknown", name)
			case v.Shape == nil:
				// A stage input must declare its rank: ONNX Runtime reports an
				// unknown-rank input as a scalar, and callers validate against that.
				cut.Valid = false
				cut.Reason = fmt.Sprintf("rank of crossing tensor %q unknown (MeasureValues can tell)", name)
			case fused != "":
				cut.Valid = false
				cut.Reason = fused
			}
		}
	}
}

// insideQDQ says why no cut may separate v's producer from its readers, or "".
// ONNX Runtime fuses DequantizeLinear -> op -> QuantizeLinear (a statically
// quantized model) into one integer kernel (QLinearConv, QGemm, ...); a stage
// boundary inside that pattern would run the op in float32 in the stages but not
// in the whole model, and their results would differ. The boundary between a
// QuantizeLinear and its DequantizeLinear stays open, and carries int8.
func (g *Graph) insideQDQ(v *Value) string {
	if v.Producer >= 0 && g.Nodes[v.Producer].OpType == "DequantizeLinear" {
		return fmt.Sprintf("crossing tensor %q comes from a DequantizeLinear its reader fuses with", v.Name)
	}
	if v.Producer < 0 {
		return ""
	}
	for _, c := range v.Consumers {
		if g.Nodes[c].OpType == "QuantizeLinear" {
			return fmt.Sprintf("crossing tensor %q goes to a QuantizeLinear its producer fuses with", v.Name)
		}
	}
	return ""
}

// ValidCuts returns the positions of the valid cut points.
func (g *Graph) ValidCuts() []int {
	var out []int
	for _, c := range g.Cuts {
		if c.Valid {
			out = append(out, c.Position)
		}
	}
	return out
}

func isConstantNode(n *onnxpb.NodeProto) bool {
	return n.GetOpType() == "Constant" && (n.GetDomain() == "" || n.GetDomain() == "ai.onnx") && len(n.GetInput()) == 0
}

// constantBytes is the size of a Constant node's value.
func constantBytes(n *onnxpb.NodeProto) int64 {
	for _, a := range n.GetAttribute() {
		switch a.GetName() {
		case "value":
			b, _ := tensorDataBytes(a.GetT())
			return b
		case "sparse_value":
			b, _ := tensorDataBytes(a.GetSparseTensor().GetValues())
			ib, _ := tensorDataBytes(a.GetSparseTensor().GetIndices())
			return b + ib
		case "value_floats":
			return int64(4 * len(a.GetFloats()))
		case "value_ints":
			return int64(8 * len(a.GetInts()))
		case "value_float":
			return 4
		case "value_int":
			return 8
		case "value_string":
			return int64(len(a.GetS()))
		case "value_strings":
			var s int64
			for _, x := range a.GetStrings() {
				s += int64(len(x))
			}
			return s
		}
	}
	return 0
}

// subgraphCaptures returns the outer-scope names the subgraphs of n read: names used
// inside a body that the body does not define itself.
func subgraphCaptures(n *onnxpb.NodeProto) []string {
	var out []string
	seen := map[string]bool{}
	for _, a := range n.GetAttribute() {
		var bodies []*onnxpb.GraphProto
		if a.GetG() != nil {
			bodies = append(bodies, a.GetG())
		}
		bodies = append(bodies, a.GetGraphs()...)
		for _, b := range bodies {
			for _, c := range graphCaptures(b, map[string]bool{}) {
				if !seen[c] {
					seen[c] = true
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// graphCaptures returns names read in g (and nested bodies) that are defined neither
// in g nor in the enclosing scopes listed in defined.
func graphCaptures(g *onnxpb.GraphProto, outer map[string]bool) []string {
	defined := map[string]bool{}
	for k := range outer {
		defined[k] = true
	}
	for _, vi := range g.GetInput() {
		defined[vi.GetName()] = true
	}
	for _, t := range g.GetInitializer() {
		defined[t.GetName()] = true
	}
	for _, sp := range g.GetSparseInitializer() {
		defined[sp.GetValues().GetName()] = true
	}
	for _, n := range g.GetNode() {
		for _, o := range n.GetOutput() {
			defined[o] = true
		}
	}
	var out []string
	seen := map[string]bool{}
	use := func(name string) {
		if name != "" && !defined[name] && !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	for _, n := range g.GetNode() {
		for _, in := range n.GetInput() {
			use(in)
		}
		for _, a := range n.GetAttribute() {
			var bodies []*onnxpb.GraphProto
			if a.GetG() != nil {
				bodies = append(bodies, a.GetG())
			}
			bodies = append(bodies, a.GetGraphs()...)
			for _, b := range bodies {
				for _, c := range graphCaptures(b, defined) {
					use(c)
				}
			}
		}
	}
	for _, o := range g.GetOutput() {
		use(o.GetName())
	}
	return out
}

func nodeLabel(n *onnxpb.NodeProto, i int) string {
	if n.GetName() != "" {
		return n.GetName()
	}
	return fmt.Sprintf("#%d %s", i, n.GetOpType())
}

// intHeap is a min-heap of node indices (container/heap.Interface).
type intHeap []int

func (h intHeap) Len() int           { return len(h) }
func (h intHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h intHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *intHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *intHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
