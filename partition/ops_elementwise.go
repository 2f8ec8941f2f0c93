package partition

import (
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// elementwiseRules: ops whose output has the shape of their first input, or of all
// their inputs broadcast together.
var elementwiseRules = []opGroup{
	{sameShapeOps, inferSameShape},
	{[]string{"Identity"}, inferIdentity},
	{[]string{"Dropout"}, inferDropout},
	{[]string{"LayerNormalization"}, inferLayerNorm},
	{[]string{"Cast"}, inferCast},
	{[]string{"CastLike"}, inferCastLike},
	{[]string{"Not", "IsNaN", "IsInf"}, inferBoolSameShape},
	{[]string{"Neg"}, foldIntUnary(func(v int64) int64 { return -v })},
	{[]string{"Abs"}, foldIntUnary(func(v int64) int64 {
		if v < 0 {
			return -v
		}
		return v
	})},
	{[]string{
		"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "BitShift",
	}, inferArithmetic},
	{[]string{
		"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor",
	}, inferComparison},
	{[]string{"Where"}, inferWhere},
}

// sameShapeOps produce one output of their first input's shape and dtype.
var sameShapeOps = []string{
	"Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Exp", "Log", "HardSigmoid", "HardSwish",
	"LeakyRelu", "Gelu", "Softmax", "LogSoftmax", "Clip", "Reciprocal", "Floor", "Ceil",
	"Sin", "Cos", "Elu", "Selu", "Softplus", "Softsign", "BatchNormalization",
	"InstanceNormalization", "Mish", "PRelu", "Round", "Sign", "LRN", "Hardmax",
	"ThresholdedRelu", "Celu", "SimplifiedLayerNormalization", "SkipLayerNormalization",
	"FastGelu", "BiasGelu", "GroupNormalization", "CumSum", "Acos", "Acosh", "Asin",
	"Asinh", "Atan", "Atanh", "Cosh", "Sinh", "Tan", "Shrink", "Trilu", "ReverseSequence",
	"ScatterElements", "ScatterND", "Scatter", "MeanVarianceNormalization",
}

func inferSameShape(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	return []*vinfo{{dtype: x.dtype, shape: x.shape}}
}

// inferIdentity also passes known values through, so shape arithmetic survives it.
func inferIdentity(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	return []*vinfo{{dtype: x.dtype, shape: x.shape, val: x.val}}
}

// inferDropout adds the optional boolean mask of the data's shape.
func inferDropout(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	return []*vinfo{{dtype: x.dtype, shape: x.shape}, {dtype: tensor.Bool, shape: x.shape}}
}

// inferLayerNorm adds the optional Mean and InvStdDev outputs: the normalized axes
// reduced to 1, in stash_type.
func inferLayerNorm(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	outs := []*vinfo{{dtype: x.dtype, shape: x.shape}}
	if x.shape == nil {
		return outs
	}
	axis := normAxis(attrInt(n, "axis", -1), len(x.shape))
	if axis < 0 || int(axis) > len(x.shape) {
		return outs
	}
	stat := append([]int64{}, x.shape[:axis]...)
	for range x.shape[axis:] {
		stat = append(stat, 1)
	}
	st := tensor.DType(attrInt(n, "stash_type", int64(tensor.Float32)))
	return append(outs, &vinfo{dtype: st, shape: stat}, &vinfo{dtype: st, shape: stat})
}

// inferCast keeps known values across a cast between integer types.
func inferCast(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	out := &vinfo{dtype: tensor.DType(attrInt(n, "to", 0)), shape: x.shape}
	if isIntTensor(out) && isIntTensor(x) {
		out.val = x.val
	}
	return []*vinfo{out}
}

func inferCastLike(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	return []*vinfo{{dtype: in(ins, 1).dtype, shape: in(ins, 0).shape}}
}

func inferBoolSameShape(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	return []*vinfo{{dtype: tensor.Bool, shape: in(ins, 0).shape}}
}

// foldIntUnary is the rule of a same-shape op that also folds f over known
// integer values.
func foldIntUnary(f func(int64) int64) shapeRule {
	return func(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
		x := in(ins, 0)
		out := &vinfo{dtype: x.dtype, shape: x.shape}
		if isIntTensor(x) && x.val != nil {
			for _, v := range x.val {
				out.val = append(out.val, f(v))
			}
		}
		return []*vinfo{out}
	}
}

// inferArithmetic broadcasts its inputs and folds the integer arithmetic that
// shape computations use.
func inferArithmetic(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	out := broadcastInputs(ins, 0)
	if isIntTensor(out) {
		out.val = foldIntBinary(n.GetOpType(), ins)
	}
	return []*vinfo{out}
}

func inferComparison(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	out := broadcastInputs(ins, 0)
	out.dtype = tensor.Bool
	return []*vinfo{out}
}

// inferWhere takes its dtype from the values, not from the boolean condition.
func inferWhere(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	return []*vinfo{broadcastInputs(ins, 1)}
}

// broadcastInputs is the broadcast shape of all inputs, in the dtype of the first
// typed input from index typedFrom on.
func broadcastInputs(ins []*vinfo, typedFrom int) *vinfo {
	shapes := make([][]int64, 0, len(ins))
	var dt tensor.DType
	for i, v := range ins {
		if v == nil {
			shapes = append(shapes, nil)
			continue
		}
		shapes = append(shapes, v.shape)
		if dt == 0 && i >= typedFrom {
			dt = v.dtype
		}
	}
	return &vinfo{dtype: dt, shape: broadcast(shapes...)}
}

// intFolds are the binary integer ops whose results shape inference computes; ok is
// false where the result is undefined.
var intFolds = map[string]func(x, y int64) (r int64, ok bool){
	"Add": func(x, y int64) (int64, bool) { return x + y, true },
	"Sub": func(x, y int64) (int64, bool) { return x - y, true },
	"Mul": func(x, y int64) (int64, bool) { return x * y, true },
	"Div": func(x, y int64) (int64, bool) {
		if y == 0 {
			return 0, false
		}
		return x / y, true
	},
	"Max": func(x, y int64) (int64, bool) { return max(x, y), true },
	"Min": func(x, y int64) (int64, bool) { return min(x, y), true },
}

// foldIntBinary computes op over two known integer tensors of equal length, or one
// of length 1 against the other; nil where that is not possible.
func foldIntBinary(op string, ins []*vinfo) []int64 {
	fold, ok := intFolds[op]
	if !ok || len(ins) != 2 || ins[0] == nil || ins[1] == nil || ins[0].val == nil || ins[1].val == nil {
		return nil
	}
	a, b := ins[0].val, ins[1].val
	if len(a) == 0 || len(b) == 0 || len(a) != len(b) && len(a) != 1 && len(b) != 1 {
		return nil
	}
	out := make([]int64, max(len(a), len(b)))
	for i := range out {
		r, ok := fold(a[min(i, len(a)-1)], b[min(i, len(b)-1)])
		if !ok {
			return nil
		}
		out[i] = r
	}
	return out
}
