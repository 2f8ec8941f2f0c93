package compress

import (
	"math"

	"github.com/layermesh/layermesh/partition/onnxpb"
)

// Structured pruning by the dependency-graph method: every output channel of a
// prunable layer (a Conv filter, a MatMul/Gemm output unit) is an atom; a
// tensor's channel axis is a list of atoms; ops that combine tensors channel by
// channel (residual Add, Mul) unify their atoms, Concat concatenates the lists,
// depthwise convolutions and BatchNormalization pass them through. Atoms
// unified into one class are removed together, so every consumer still sees
// matching channel counts. A class that reaches an op the pass cannot slice
// (Reshape, Split, a graph output...) is kept whole.

// pruner holds the channel-dependency analysis of one graph.
type pruner struct {
	e         *editor
	producers []*producer
	// space[t] are the atoms along t's channel axis; axis[t] is that axis
	// counted from the end (-1 last); rank[t] is t's rank, 0 when unknown.
	space map[string][]int
	axis  map[string]int
	rank  map[string]int
	// pooled marks [N, C, 1, 1] tensors, which Flatten maps onto [N, C].
	pooled    map[string]bool
	parent    []int // union-find over atoms
	atomProd  []int // atom -> producer
	atomIdx   []int // atom -> channel of its producer
	blocked   []bool
	slices    []weightSlice
	groupAttr []int // depthwise Conv nodes whose group attribute follows their channels
}

// producer is a layer whose output channels are atoms.
type producer struct {
	node  int
	name  string
	first int // first atom id
	// norms are the L1 norms of each output channel's weights.
	norms []float64
}

// weightSlice keeps, along axis of node's input, the positions of tensor's
// space whose atoms survive.
type weightSlice struct {
	node, input, axis int
	tensor            string
	// compensate marks a weight that reads tensor's channels (a Conv's or
	// Gemm's input channels), whose removed channels' mean contribution moves
	// into the layer's bias.
	compensate bool
}

// pruneRule updates the analysis for node i.
type pruneRule func(p *pruner, i int, n *onnxpb.NodeProto)

// pruneRules by op type; any other op blocks the channels of its inputs.
var pruneRules = map[string]pruneRule{
	"Conv":               (*pruner).conv,
	"MatMul":             (*pruner).matMul,
	"Gemm":               (*pruner).gemm,
	"BatchNormalization": (*pruner).batchNorm,
	"Concat":             (*pruner).concat,
	"Flatten":            (*pruner).flatten,
	"GlobalAveragePool":  (*pruner).pool,
	"GlobalMaxPool":      (*pruner).pool,
	"MaxPool":            (*pruner).passThrough,
	"AveragePool":        (*pruner).passThrough,
}

// elementwise ops map channel c of every input to channel c of the output.
var elementwise = map[string]bool{
	"Relu": true, "LeakyRelu": true, "Sigmoid": true, "Tanh": true, "Clip": true, "HardSigmoid": true,
	"HardSwish": true, "Erf": true, "Identity": true, "Dropout": true, "Neg": true, "Abs": true, "Elu": true,
	"Selu": true, "Softplus": true, "Gelu": true, "Add": true, "Sub": true, "Mul": true, "Div": true,
	"Max": true, "Min": true, "Pow": true, "Exp": true, "Sqrt": true, "PRelu": true,
}

func newPruner(e *editor) *pruner {
	return &pruner{e: e, space: map[string][]int{}, axis: map[string]int{}, rank: map[string]int{}, pooled: map[string]bool{}}
}

// analyse walks the graph in order and applies the rules.
func (p *pruner) analyse() {
	for i, n := range p.e.graph.GetNode() {
		if n.GetDomain() != "" && n.GetDomain() != "ai.onnx" {
			p.blockInputs(n)
			continue
		}
		if rule, ok := pruneRules[n.GetOpType()]; ok {
			rule(p, i, n)
		} else if elementwise[n.GetOpType()] {
			p.elementwise(i, n)
		} else {
			p.blockInputs(n)
		}
	}
	for name := range p.e.graphOutputs {
		p.block(p.space[name])
	}
}

func (p *pruner) find(a int) int {
	for p.parent[a] != a {
		p.parent[a] = p.parent[p.parent[a]]
		a = p.parent[a]
	}
	return a
}

func (p *pruner) union(a, b int) { p.parent[p.find(a)] = p.find(b) }

func (p *pruner) block(atoms []int) {
	for _, a := range atoms {
		p.blocked[a] = true
	}
}

func (p *pruner) blockInputs(n *onnxpb.NodeProto) {
	for _, in := range n.GetInput() {
		p.block(p.space[in])
	}
	reads := map[string]bool{}
	markSubgraphReads(n, reads)
	for name := range reads {
		p.block(p.space[name])
	}
}

// newProducer makes channels atoms for the output of node i, weighted by the
// L1 norms of weight w's slices along axis.
func (p *pruner) newProducer(i int, out string, w []float32, dims []int64, axis, rank int, negAxis int) {
	channels := int(dims[axis])
	pr := &producer{node: i, name: p.e.graph.GetNode()[i].GetName(), first: len(p.parent), norms: make([]float64, channels)}
	inner := 1
	for _, d := range dims[axis+1:] {
		inner *= int(d)
	}
	for k, v := range w {
		pr.norms[(k/inner)%channels] += math.Abs(float64(v))
	}
	atoms := make([]int, channels)
	for c := range atoms {
		atoms[c] = len(p.parent)
		p.parent = append(p.parent, len(p.parent))
		p.atomProd = append(p.atomProd, len(p.producers))
		p.atomIdx = append(p.atomIdx, c)
		p.blocked = append(p.blocked, false)
	}
	p.producers = append(p.producers, pr)
	p.space[out], p.axis[out], p.rank[out] = atoms, negAxis, rank
}

// consume records that node i's input k must be sliced along axis as tensor's
// channels are, or blocks tensor's channels when that input is not a float
// initializer.
func (p *pruner) consume(i, k, axis int, tensor string) {
	if _, ok := p.e.floatDims(at(p.e.graph.GetNode()[i].GetInput(), k)); !ok {
		p.block(p.space[tensor])
		return
	}
	p.slices = append(p.slices, weightSlice{node: i, input: k, axis: axis, tensor: tensor})
}

// passThrough gives the output the input's channels.
func (p *pruner) passThrough(_ int, n *onnxpb.NodeProto) {
	in, out := n.GetInput()[0], n.GetOutput()[0]
	if s, ok := p.space[in]; ok {
		p.space[out], p.axis[out], p.rank[out] = s, p.axis[in], p.rank[in]
	}
}

func (p *pruner) pool(i int, n *onnxpb.NodeProto) {
	p.passThrough(i, n)
	p.pooled[n.GetOutput()[0]] = true
}

// flatten maps a pooled [N, C, 1, 1] onto [N, C].
func (p *pruner) flatten(_ int, n *onnxpb.NodeProto) {
	in, out := n.GetInput()[0], n.GetOutput()[0]
	s, ok := p.space[in]
	if !ok {
		return
	}
	if !p.pooled[in] || attrIntOr(n, "axis", 1) != 1 || p.axis[in] != -3 {
		p.block(s)
		return
	}
	p.space[out], p.axis[out], p.rank[out] = s, -1, 2
}

func (p *pruner) batchNorm(i int, n *onnxpb.NodeProto) {
	in := n.GetInput()[0]
	if _, ok := p.space[in]; !ok {
		return
	}
	if len(n.GetOutput()) > 1 && n.GetOutput()[1] != "" {
		p.block(p.space[in]) // training-mode outputs
		return
	}
	for k := 1; k <= 4; k++ {
		p.consume(i, k, 0, in)
	}
	p.passThrough(i, n)
}

// conv slices a regular convolution's input channels and makes its filters
// atoms; a depthwise convolution (group = channels, one filter each) passes
// its input's atoms through and is sliced with them; other grouped
// convolutions block their input.
func (p *pruner) conv(i int, n *onnxpb.NodeProto) {
	in := n.GetInput()
	x, out := in[0], n.GetOutput()[0]
	w, dims, ok := p.e.floats(at(in, 1))
	group := attrIntOr(n, "group", 1)
	if !ok || len(dims) < 3 {
		p.blockInputs(n)
		return
	}
	switch {
	case group == 1:
		if _, has := p.space[x]; has {
			p.consume(i, 1, 1, x)
			p.slices[len(p.slices)-1].compensate = true
		}
		p.newProducer(i, out, w, dims, 0, len(dims), 1-len(dims))
		p.slices = append(p.slices, weightSlice{node: i, input: 1, axis: 0, tensor: out})
		if at(in, 2) != "" {
			p.consume(i, 2, 0, out)
		}
	case dims[1] == 1 && group == dims[0]:
		if _, has := p.space[x]; !has {
			return
		}
		p.passThrough(i, n)
		p.consume(i, 1, 0, x)
		if at(in, 2) != "" {
			p.consume(i, 2, 0, x)
		}
		p.groupAttr = append(p.groupAttr, i)
	default:
		p.blockInputs(n)
	}
}

// matMul slices a constant [K, N] weight's rows by its input's channels and
// makes its N outputs atoms.
func (p *pruner) matMul(i int, n *onnxpb.NodeProto) {
	in := n.GetInput()
	w, dims, ok := p.e.floats(in[1])
	if !ok || len(dims) != 2 {
		p.blockInputs(n)
		return
	}
	if _, has := p.space[in[0]]; has {
		if p.axis[in[0]] != -1 {
			p.block(p.space[in[0]])
		} else {
			p.consume(i, 1, 0, in[0])
		}
	}
	out := n.GetOutput()[0]
	p.newProducer(i, out, w, dims, 1, 0, -1)
	p.slices = append(p.slices, weightSlice{node: i, input: 1, axis: 1, tensor: out})
}

// gemm is matMul for Gemm: B is [K, N], or [N, K] with transB; C a bias.
func (p *pruner) gemm(i int, n *onnxpb.NodeProto) {
	in := n.GetInput()
	w, dims, ok := p.e.floats(in[1])
	if !ok || len(dims) != 2 || attrIntOr(n, "transA", 0) != 0 {
		p.blockInputs(n)
		return
	}
	kAxis, nAxis := 0, 1
	if attrIntOr(n, "transB", 0) != 0 {
		kAxis, nAxis = 1, 0
	}
	if _, has := p.space[in[0]]; has {
		if p.axis[in[0]] != -1 {
			p.block(p.space[in[0]])
		} else {
			p.consume(i, 1, kAxis, in[0])
			p.slices[len(p.slices)-1].compensate = attrFloatOr(n, "alpha", 1) == 1 && attrFloatOr(n, "beta", 1) == 1
		}
	}
	out := n.GetOutput()[0]
	p.newProducer(i, out, w, dims, nAxis, 2, -1)
	p.slices = append(p.slices, weightSlice{node: i, input: 1, axis: nAxis, tensor: out})
	if c := at(in, 2); c != "" {
		if cd, ok := p.e.floatDims(c); ok && len(cd) == 1 && cd[0] == dims[nAxis] {
			p.consume(i, 2, 0, out)
		} else if !ok || len(cd) > 0 && product(cd) > 1 {
			p.block(p.space[out])
		}
	}
}

func product(dims []int64) int64 {
	n := int64(1)
	for _, d := range dims {
		n *= d
	}
	return n
}

// elementwise unifies the channels of its activation inputs and slices
// per-channel constants; a scalar constant needs nothing.
func (p *pruner) elementwise(i int, n *onnxpb.NodeProto) {
	var first string
	var acts []string
	for _, in := range n.GetInput() {
		if in == "" || p.e.inits[in] != nil {
			continue
		}
		acts = append(acts, in)
		if _, has := p.space[in]; has && first == "" {
			first = in
		}
	}
	if first == "" {
		return
	}
	s := p.space[first]
	for _, a := range acts {
		o, has := p.space[a]
		if !has || len(o) != len(s) || p.axis[a] != p.axis[first] {
			p.blockInputs(n)
			return
		}
		for k := range s {
			p.union(s[k], o[k])
		}
	}
	for k, in := range n.GetInput() {
		if p.e.inits[in] == nil {
			continue
		}
		dims, ok := p.e.floatDims(in)
		ca := len(dims) + p.axis[first]
		switch {
		case ok && (ca < 0 || dims[ca] == 1):
		case ok && int(dims[ca]) == len(s):
			p.consume(i, k, ca, first)
		case !ok && product(p.e.inits[in].GetDims()) <= 1:
		default:
			p.blockInputs(n)
			return
		}
	}
	out := n.GetOutput()[0]
	p.space[out], p.axis[out], p.rank[out] = s, p.axis[first], p.rank[first]
	p.pooled[out] = p.pooled[first]
}

// concat along the channel axis concatenates the inputs' atoms; along another
// axis it unifies them like an elementwise op.
func (p *pruner) concat(i int, n *onnxpb.NodeProto) {
	in := n.GetInput()
	if _, has := p.space[in[0]]; !has {
		p.blockInputs(n)
		return
	}
	ax, r := attrIntOr(n, "axis", 0), p.rank[in[0]]
	if ax >= 0 && r > 0 {
		ax -= int64(r)
	}
	for _, t := range in {
		if _, ok := p.space[t]; !ok || p.axis[t] != p.axis[in[0]] || (ax >= 0 && r == 0) {
			p.blockInputs(n)
			return
		}
	}
	out := n.GetOutput()[0]
	if int(ax) != p.axis[in[0]] {
		p.elementwise(i, n)
		return
	}
	var atoms []int
	for _, t := range in {
		atoms = append(atoms, p.space[t]...)
	}
	p.space[out], p.axis[out], p.rank[out] = atoms, p.axis[in[0]], r
}
