package compress

import (
	"encoding/binary"
	"fmt"
	"math"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/partition/onnxpb"
)

// msDomain is ONNX Runtime's contrib operator domain (MatMulNBits,
// DynamicQuantizeMatMul, DynamicQuantizeLSTM, GatherBlockQuantized).
const msDomain = "com.microsoft"

// editor holds a model's graph while passes rewrite it: the initializers by name,
// which nodes read each tensor, and fresh-name generation. Passes add nodes and
// initializers through it and mark replaced nodes dead; finish rebuilds the graph.
type editor struct {
	model *onnxpb.ModelProto
	graph *onnxpb.GraphProto
	inits map[string]*onnxpb.TensorProto
	// readers[name] are the indexes of the nodes that read name.
	readers map[string][]int
	// producer[name] is the index of the node that writes name.
	producer map[string]int
	dead     map[int]bool
	// after[i] are nodes to insert right after node i (before it when i is -1).
	after        map[int][]*onnxpb.NodeProto
	before       map[int][]*onnxpb.NodeProto
	names        map[string]bool
	graphOutputs map[string]bool
	// staleInfo names tensors whose value_info a pass made wrong (pruning
	// changes channel counts): finish drops it.
	staleInfo map[string]bool
}

func newEditor(m *onnxpb.ModelProto) *editor {
	e := &editor{model: m, graph: m.GetGraph(), inits: map[string]*onnxpb.TensorProto{},
		readers: map[string][]int{}, producer: map[string]int{}, dead: map[int]bool{},
		after: map[int][]*onnxpb.NodeProto{}, before: map[int][]*onnxpb.NodeProto{}, names: map[string]bool{},
		graphOutputs: map[string]bool{}, staleInfo: map[string]bool{}}
	for _, t := range e.graph.GetInitializer() {
		e.inits[t.GetName()] = t
		e.names[t.GetName()] = true
	}
	for _, o := range e.graph.GetOutput() {
		e.graphOutputs[o.GetName()] = true
	}
	for _, in := range e.graph.GetInput() {
		e.names[in.GetName()] = true
	}
	for i, n := range e.graph.GetNode() {
		e.names[n.GetName()] = true
		for _, in := range n.GetInput() {
			if in != "" {
				e.readers[in] = append(e.readers[in], i)
			}
		}
		for _, out := range n.GetOutput() {
			e.producer[out] = i
			e.names[out] = true
		}
	}
	return e
}

// fresh returns a tensor or node name not yet in the graph, based on base.
func (e *editor) fresh(base string) string {
	name := base
	for i := 1; e.names[name]; i++ {
		name = fmt.Sprintf("%s_%d", base, i)
	}
	e.names[name] = true
	return name
}

// addInit adds an initializer under a fresh name based on t's name and returns it.
func (e *editor) addInit(t *onnxpb.TensorProto) string {
	t.Name = proto.String(e.fresh(t.GetName()))
	e.graph.Initializer = append(e.graph.Initializer, t)
	e.inits[t.GetName()] = t
	return t.GetName()
}

// replace marks node i dead and puts nodes in its place.
func (e *editor) replace(i int, nodes ...*onnxpb.NodeProto) {
	e.dead[i] = true
	e.after[i] = append(e.after[i], nodes...)
}

// insertAfter puts nodes right after node i.
func (e *editor) insertAfter(i int, nodes ...*onnxpb.NodeProto) {
	e.after[i] = append(e.after[i], nodes...)
}

// insertBefore puts nodes right before node i.
func (e *editor) insertBefore(i int, nodes ...*onnxpb.NodeProto) {
	e.before[i] = append(e.before[i], nodes...)
}

// finish rebuilds the node list and drops initializers no node reads any more.
func (e *editor) finish() {
	var nodes []*onnxpb.NodeProto
	nodes = append(nodes, e.before[-1]...)
	for i, n := range e.graph.GetNode() {
		nodes = append(nodes, e.before[i]...)
		if !e.dead[i] {
			nodes = append(nodes, n)
		}
		nodes = append(nodes, e.after[i]...)
	}
	e.graph.Node = nodes
	used := map[string]bool{}
	for _, n := range nodes {
		for _, in := range n.GetInput() {
			used[in] = true
		}
		markSubgraphReads(n, used)
	}
	for name := range e.graphOutputs {
		used[name] = true
	}
	var inits []*onnxpb.TensorProto
	for _, t := range e.graph.GetInitializer() {
		if used[t.GetName()] {
			inits = append(inits, t)
		}
	}
	e.graph.Initializer = inits
	var vis []*onnxpb.ValueInfoProto
	produced := map[string]bool{}
	for _, n := range nodes {
		for _, o := range n.GetOutput() {
			produced[o] = true
		}
	}
	// value_info of tensors that no longer exist, or whose shape a pass changed,
	// would mislead ONNX Runtime's shape inference: keep only those still produced.
	for _, vi := range e.graph.GetValueInfo() {
		if produced[vi.GetName()] && !e.staleInfo[vi.GetName()] {
			vis = append(vis, vi)
		}
	}
	e.graph.ValueInfo = vis
}

// markSubgraphReads records every name read inside n's subgraphs (If, Loop, Scan).
func markSubgraphReads(n *onnxpb.NodeProto, used map[string]bool) {
	for _, a := range n.GetAttribute() {
		for _, g := range append([]*onnxpb.GraphProto{a.GetG()}, a.GetGraphs()...) {
			for _, sn := range g.GetNode() {
				for _, in := range sn.GetInput() {
					used[in] = true
				}
				markSubgraphReads(sn, used)
			}
		}
	}
}

// useOpset makes sure the model imports domain at version at least v.
func (e *editor) useOpset(domain string, v int64) {
	for _, o := range e.model.GetOpsetImport() {
		if o.GetDomain() == domain {
			if o.GetVersion() < v {
				o.Version = proto.Int64(v)
			}
			return
		}
	}
	e.model.OpsetImport = append(e.model.OpsetImport, &onnxpb.OperatorSetIdProto{Domain: proto.String(domain), Version: proto.Int64(v)})
}

// opset is the model's default-domain opset version.
func (e *editor) opset() int64 {
	for _, o := range e.model.GetOpsetImport() {
		if o.GetDomain() == "" || o.GetDomain() == "ai.onnx" {
			return o.GetVersion()
		}
	}
	return 0
}

// floatDims returns a float32 initializer's dims, or false when name is not a
// float32 initializer held in the model file itself (with consistent data).
func (e *editor) floatDims(name string) ([]int64, bool) {
	t, ok := e.inits[name]
	if !ok || t.GetDataType() != int32(onnxpb.TensorProto_FLOAT) || t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
		return nil, false
	}
	n := int64(1)
	for _, d := range t.GetDims() {
		n *= d
	}
	if fd := t.GetFloatData(); len(fd) > 0 {
		return t.GetDims(), int64(len(fd)) == n
	}
	return t.GetDims(), int64(len(t.GetRawData())) == 4*n
}

// floatAt returns a reader of a float32 initializer's elements that decodes
// them in place: the big weights are read once, never copied whole.
func (e *editor) floatAt(name string) (func(i int) float32, []int64, bool) {
	dims, ok := e.floatDims(name)
	if !ok {
		return nil, nil, false
	}
	t := e.inits[name]
	if fd := t.GetFloatData(); len(fd) > 0 {
		return func(i int) float32 { return fd[i] }, dims, true
	}
	raw := t.GetRawData()
	return func(i int) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])) }, dims, true
}

// floats returns a copy of a float32 initializer's values, or false when name
// is not a float32 initializer held in the model file itself.
func (e *editor) floats(name string) ([]float32, []int64, bool) {
	at, dims, ok := e.floatAt(name)
	if !ok {
		return nil, nil, false
	}
	out := make([]float32, product(dims))
	for i := range out {
		out[i] = at(i)
	}
	return out, dims, true
}

// node builds a NodeProto.
func node(op, domain, name string, inputs, outputs []string, attrs ...*onnxpb.AttributeProto) *onnxpb.NodeProto {
	n := &onnxpb.NodeProto{OpType: proto.String(op), Name: proto.String(name), Input: inputs, Output: outputs, Attribute: attrs}
	if domain != "" {
		n.Domain = proto.String(domain)
	}
	return n
}

func attrInt(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INT.Enum(), I: proto.Int64(v)}
}

// attr returns n's attribute name, or nil.
func attr(n *onnxpb.NodeProto, name string) *onnxpb.AttributeProto {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return a
		}
	}
	return nil
}

// attrIntOr returns n's int attribute name, or def.
func attrIntOr(n *onnxpb.NodeProto, name string, def int64) int64 {
	if a := attr(n, name); a != nil {
		return a.GetI()
	}
	return def
}

// attrFloatOr returns n's float attribute name, or def.
func attrFloatOr(n *onnxpb.NodeProto, name string, def float32) float32 {
	if a := attr(n, name); a != nil {
		return a.GetF()
	}
	return def
}

// floatInit makes a float32 initializer.
func floatInit(name string, dims []int64, vals []float32) *onnxpb.TensorProto {
	raw := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return &onnxpb.TensorProto{Name: proto.String(name), Dims: dims, DataType: proto.Int32(int32(onnxpb.TensorProto_FLOAT)), RawData: raw}
}

// bytesInit makes a uint8 or int8 initializer.
func bytesInit(name string, dt onnxpb.TensorProto_DataType, dims []int64, vals []byte) *onnxpb.TensorProto {
	return &onnxpb.TensorProto{Name: proto.String(name), Dims: dims, DataType: proto.Int32(int32(dt)), RawData: vals}
}

// int64Init makes an int64 initializer.
func int64Init(name string, dims []int64, vals ...int64) *onnxpb.TensorProto {
	raw := make([]byte, 8*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
	}
	return &onnxpb.TensorProto{Name: proto.String(name), Dims: dims, DataType: proto.Int32(int32(onnxpb.TensorProto_INT64)), RawData: raw}
}
