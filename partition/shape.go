package partition

import (
	"fmt"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// vinfo is what one inference pass knows about a tensor.
type vinfo struct {
	dtype tensor.DType
	shape []int64 // nil: rank unknown; -1: dim unknown
	val   []int64 // values of a small integer tensor, when known
}

func (v *vinfo) known() bool {
	if v == nil || v.shape == nil {
		return false
	}
	for _, d := range v.shape {
		if d < 0 {
			return false
		}
	}
	return true
}

func (v *vinfo) numel() int64 {
	if !v.known() {
		return -1
	}
	n := int64(1)
	for _, d := range v.shape {
		n = satMul(n, d)
	}
	return n
}

// maxSize caps any size or FLOP count: 256 Ti, beyond any real tensor, and low enough
// that sums over a graph of up to 32768 nodes cannot overflow int64.
const maxSize = 1 << 48

// satMul multiplies non-negative sizes, saturating at maxSize instead of
// overflowing: a hostile or broken model must not turn a size negative.
func satMul(a, b int64) int64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	if a > maxSize/b {
		return maxSize
	}
	return a * b
}

// inferShapes runs shape inference twice: once with the symbolic input dims bound as
// asked, once with each moved by bump. Dims that differ between the passes depend on
// the input shape and stay symbolic in stage models; the first pass gives sizes and
// FLOPs.
func (g *Graph) inferShapes(opts AnalyzeOptions) error {
	def := opts.DefaultDim
	if def <= 0 {
		def = 1
	}
	gp := g.Model.Proto.GetGraph()
	inputVI := map[string]*onnxpb.ValueInfoProto{}
	for _, vi := range gp.GetInput() {
		inputVI[vi.GetName()] = vi
	}
	for name := range opts.InputShapes {
		if _, ok := g.Values[name]; !ok || g.Values[name].Kind != KindGraphInput {
			return fmt.Errorf("%w: %q is not a graph input (inputs: %v)", ErrInputShape, name, g.Inputs)
		}
	}
	params := map[string]int64{}
	// Bind named symbolic dims from the given shapes first, so that every input
	// sharing a dim name agrees.
	for _, name := range g.Inputs {
		given, ok := opts.InputShapes[name]
		dims := inputVI[name].GetType().GetTensorType().GetShape().GetDim()
		if !ok {
			continue
		}
		if inputVI[name].GetType().GetTensorType().GetShape() != nil && len(dims) != len(given) {
			return fmt.Errorf("%w: %q has rank %d, given %v", ErrInputShape, name, len(dims), given)
		}
		for i, d := range dims {
			if given[i] <= 0 {
				return fmt.Errorf("%w: %q dim %d must be positive, given %v", ErrInputShape, name, i, given)
			}
			if d.GetDimParam() != "" {
				params[d.GetDimParam()] = given[i]
			} else if dv := d.GetDimValue(); dv > 0 && dv != given[i] {
				return fmt.Errorf("%w: %q dim %d is fixed at %d, given %d", ErrInputShape, name, i, dv, given[i])
			}
		}
	}
	boundA := map[string][]int64{}
	boundB := map[string][]int64{}
	for _, name := range g.Inputs {
		tt := inputVI[name].GetType().GetTensorType()
		given, ok := opts.InputShapes[name]
		if tt.GetShape() == nil && !ok {
			continue
		}
		a, b := []int64{}, []int64{}
		if tt.GetShape() == nil {
			a = append(a, given...)
			b = append(b, given...) // rank-only input: nothing is known to be symbolic
		}
		for i, d := range tt.GetShape().GetDim() {
			switch {
			case d.GetDimValue() > 0:
				a, b = append(a, d.GetDimValue()), append(b, d.GetDimValue())
			case ok:
				a, b = append(a, given[i]), append(b, bump(given[i]))
			case d.GetDimParam() != "":
				v, have := params[d.GetDimParam()]
				if !have {
					v = def
					params[d.GetDimParam()] = v
				}
				a, b = append(a, v), append(b, bump(v))
			default:
				a, b = append(a, def), append(b, bump(def))
			}
		}
		boundA[name], boundB[name] = a, b
		g.InputShapes[name] = a
	}
	passA := g.inferPass(boundA, opts.Measured, params, 0)
	bumped := map[string]int64{}
	for k, v := range params {
		bumped[k] = bump(v)
	}
	passB := g.inferPass(boundB, nil, bumped, 1)

	for name, v := range g.Values {
		a := passA[name]
		if a == nil {
			continue
		}
		v.DType = a.dtype
		if a.shape != nil {
			v.Shape = append([]int64{}, a.shape...)
			v.Dynamic = make([]bool, len(a.shape))
			b := passB[name]
			for i := range a.shape {
				v.Dynamic[i] = b == nil || len(b.shape) != len(a.shape) || b.shape[i] != a.shape[i] || a.shape[i] < 0
			}
		}
	}
	// Sizes: exact where the shape is known, else the largest input of the producer
	// (most ops whose shape we cannot infer keep their input's size).
	for _, name := range g.Inputs {
		g.Values[name].Bytes = valueBytes(g.Values[name], 0)
	}
	for pos := range g.Nodes {
		nd := &g.Nodes[pos]
		var largestIn int64
		for _, in := range nd.Inputs {
			if v := g.Values[in]; v.Kind != KindWeight && v.Bytes > largestIn {
				largestIn = v.Bytes
			}
		}
		nd.OutputBytes = 0
		for _, o := range nd.Outputs {
			v := g.Values[o]
			v.Bytes = valueBytes(v, largestIn)
			nd.OutputBytes += v.Bytes
		}
		nd.FLOPs = min(max(nodeFLOPs(nd, passA, largestIn), 0), maxSize)
	}
	return nil
}

func valueBytes(v *Value, fallback int64) int64 {
	if v.Shape == nil {
		return fallback
	}
	size := int64(4)
	if v.DType.Valid() && v.DType.Size() > 0 {
		size = int64(v.DType.Size())
	}
	n := int64(1)
	for _, d := range v.Shape {
		if d < 0 {
			return fallback
		}
		n = satMul(n, d)
	}
	return satMul(n, size)
}

// inferPass infers every tensor's dtype, shape and (for small integer tensors) value.
// Value-info annotations in the model fill in what the rules below do not cover.
func (g *Graph) inferPass(inputs map[string][]int64, measured map[string]MeasuredValue, params map[string]int64, pass int) map[string]*vinfo {
	gp := g.Model.Proto.GetGraph()
	env := map[string]*vinfo{}
	annotated := map[string]*vinfo{}
	for _, list := range [][]*onnxpb.ValueInfoProto{gp.GetInput(), gp.GetValueInfo(), gp.GetOutput()} {
		for _, vi := range list {
			annotated[vi.GetName()] = fromValueInfo(vi, params)
		}
	}
	for _, name := range g.Inputs {
		vi := annotated[name]
		if vi == nil {
			vi = &vinfo{}
		}
		env[name] = &vinfo{dtype: vi.dtype, shape: inputs[name]}
	}
	for _, w := range g.Weights {
		var t *onnxpb.TensorProto
		if w.Initializer != nil {
			t = w.Initializer
		} else if w.Constant != nil {
			env[w.Name] = constantInfo(w.Constant)
			continue
		}
		if t == nil {
			env[w.Name] = &vinfo{}
			continue
		}
		vi := &vinfo{dtype: tensor.DType(t.GetDataType()), shape: append([]int64{}, t.GetDims()...)}
		vi.val, _ = tensorInts(t)
		env[w.Name] = vi
	}
	opset := g.opsetVersion()
	for pos := range g.Nodes {
		nd := &g.Nodes[pos]
		ins := make([]*vinfo, len(nd.Proto.GetInput()))
		for i, in := range nd.Proto.GetInput() {
			if in != "" {
				ins[i] = env[in]
			}
		}
		outs := inferNode(nd.Proto, ins, opset)
		for i, o := range nd.Proto.GetOutput() {
			if o == "" {
				continue
			}
			var vi *vinfo
			if i < len(outs) && outs[i] != nil {
				vi = outs[i]
			} else {
				vi = &vinfo{}
			}
			if m, ok := measured[o]; ok && pass == 0 {
				vi = &vinfo{dtype: m.DType, shape: append([]int64{}, m.Shape...), val: vi.val}
			}
			if a := annotated[o]; a != nil {
				if vi.dtype == 0 {
					vi.dtype = a.dtype
				}
				if !vi.known() && a.shape != nil {
					vi.shape = a.shape
				}
			}
			env[o] = vi
		}
	}
	return env
}

func (g *Graph) opsetVersion() int64 {
	for _, o := range g.Model.Proto.GetOpsetImport() {
		if o.GetDomain() == "" || o.GetDomain() == "ai.onnx" {
			return o.GetVersion()
		}
	}
	return 1
}

func fromValueInfo(vi *onnxpb.ValueInfoProto, params map[string]int64) *vinfo {
	tt := vi.GetType().GetTensorType()
	if tt == nil {
		return nil
	}
	out := &vinfo{dtype: tensor.DType(tt.GetElemType())}
	if tt.GetShape() == nil {
		return out
	}
	out.shape = []int64{}
	for _, d := range tt.GetShape().GetDim() {
		switch {
		case d.GetDimValue() > 0:
			out.shape = append(out.shape, d.GetDimValue())
		case d.GetDimParam() != "" && params[d.GetDimParam()] > 0:
			out.shape = append(out.shape, params[d.GetDimParam()])
		default:
			out.shape = append(out.shape, -1)
		}
	}
	return out
}

func constantInfo(n *onnxpb.NodeProto) *vinfo {
	for _, a := range n.GetAttribute() {
		switch a.GetName() {
		case "value":
			t := a.GetT()
			vi := &vinfo{dtype: tensor.DType(t.GetDataType()), shape: append([]int64{}, t.GetDims()...)}
			vi.val, _ = tensorInts(t)
			return vi
		case "value_int":
			return &vinfo{dtype: tensor.Int64, shape: []int64{}, val: []int64{a.GetI()}}
		case "value_ints":
			vi := &vinfo{dtype: tensor.Int64, shape: []int64{int64(len(a.GetInts()))}}
			if len(a.GetInts()) <= maxFoldElems {
				vi.val = append([]int64{}, a.GetInts()...)
			}
			return vi
		case "value_float":
			return &vinfo{dtype: tensor.Float32, shape: []int64{}}
		case "value_floats":
			return &vinfo{dtype: tensor.Float32, shape: []int64{int64(len(a.GetFloats()))}}
		case "sparse_value":
			sp := a.GetSparseTensor()
			return &vinfo{dtype: tensor.DType(sp.GetValues().GetDataType()), shape: append([]int64{}, sp.GetDims()...)}
		}
	}
	return &vinfo{}
}

// bump is the second pass's value for a symbolic dim bound to d. It is far enough
// from d that a dim divided by a network's total stride (32 for most CNNs, 64 at most)
// still differs, and odd so that even-only coincidences do not hide a dependency.
func bump(d int64) int64 { return 2*d + 129 }
