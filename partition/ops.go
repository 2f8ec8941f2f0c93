package partition

import (
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// Shape-inference rules for the operators that real models are made of. Where a rule
// is missing or an input is unknown the output stays unknown; Analyze then falls back
// to value_info annotations and, for sizes, to the producer's largest input.

var sameShapeOps = map[string]bool{
	"Relu": true, "Sigmoid": true, "Tanh": true, "Erf": true, "Sqrt": true, "Exp": true,
	"Log": true, "HardSigmoid": true, "HardSwish": true,
	"LeakyRelu": true, "Gelu": true, "Identity": true, "Softmax": true, "LogSoftmax": true,
	"Clip": true, "Reciprocal": true, "Floor": true, "Ceil": true, "Sin": true, "Cos": true,
	"Elu": true, "Selu": true, "Softplus": true, "Softsign": true, "BatchNormalization": true,
	"LayerNormalization": true, "InstanceNormalization": true, "Mish": true, "PRelu": true,
	"Round": true, "Sign": true, "LRN": true, "Hardmax": true, "ThresholdedRelu": true,
	"Celu": true, "Dropout": true, "SimplifiedLayerNormalization": true,
	"SkipLayerNormalization": true, "FastGelu": true, "BiasGelu": true,
	"GroupNormalization": true, "CumSum": true, "Acos": true, "Acosh": true, "Asin": true,
	"Asinh": true, "Atan": true, "Atanh": true, "Cosh": true, "Sinh": true, "Tan": true,
	"Shrink": true, "Trilu": true, "ReverseSequence": true, "ScatterElements": true,
	"ScatterND": true, "Scatter": true, "MeanVarianceNormalization": true,
}

var broadcastOps = map[string]bool{
	"Add": true, "Sub": true, "Mul": true, "Div": true, "Pow": true, "Mod": true,
	"Max": true, "Min": true, "Sum": true, "Mean": true, "BitShift": true,
	"Equal": true, "Less": true, "Greater": true, "LessOrEqual": true, "GreaterOrEqual": true,
	"And": true, "Or": true, "Xor": true, "Where": true,
}

var boolOps = map[string]bool{
	"Equal": true, "Less": true, "Greater": true, "LessOrEqual": true, "GreaterOrEqual": true,
	"And": true, "Or": true, "Xor": true, "Not": true, "IsNaN": true, "IsInf": true,
}

func attrInt(n *onnxpb.NodeProto, name string, def int64) int64 {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return a.GetI()
		}
	}
	return def
}

func attrInts(n *onnxpb.NodeProto, name string) ([]int64, bool) {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return a.GetInts(), true
		}
	}
	return nil, false
}

func attrString(n *onnxpb.NodeProto, name, def string) string {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return string(a.GetS())
		}
	}
	return def
}

func in(ins []*vinfo, i int) *vinfo {
	if i < len(ins) && ins[i] != nil {
		return ins[i]
	}
	return &vinfo{}
}

func normAxis(a int64, rank int) int64 {
	if a < 0 {
		a += int64(rank)
	}
	return a
}

// broadcast applies numpy broadcasting; unknown dims stay unknown.
func broadcast(shapes ...[]int64) []int64 {
	rank := 0
	for _, s := range shapes {
		if s == nil {
			return nil
		}
		rank = max(rank, len(s))
	}
	out := make([]int64, rank)
	for i := range out {
		out[i] = 1
	}
	for _, s := range shapes {
		off := rank - len(s)
		for i, d := range s {
			switch {
			case d == 1:
			case d < 0:
				if out[off+i] == 1 {
					out[off+i] = -1
				}
			case out[off+i] == 1 || out[off+i] < 0:
				out[off+i] = d
			}
		}
	}
	return out
}

func elementwiseVals(op string, ins []*vinfo) []int64 {
	if len(ins) != 2 || ins[0] == nil || ins[1] == nil || ins[0].val == nil || ins[1].val == nil {
		return nil
	}
	a, b := ins[0].val, ins[1].val
	if len(a) == 0 || len(b) == 0 || len(a) != len(b) && len(a) != 1 && len(b) != 1 {
		return nil
	}
	n := max(len(a), len(b))
	out := make([]int64, n)
	for i := range out {
		x, y := a[min(i, len(a)-1)], b[min(i, len(b)-1)]
		switch op {
		case "Add":
			out[i] = x + y
		case "Sub":
			out[i] = x - y
		case "Mul":
			out[i] = x * y
		case "Div":
			if y == 0 {
				return nil
			}
			out[i] = x / y
		case "Max":
			out[i] = max(x, y)
		case "Min":
			out[i] = min(x, y)
		default:
			return nil
		}
	}
	return out
}

// inferNode returns the outputs of n given its inputs.
func inferNode(n *onnxpb.NodeProto, ins []*vinfo, opset int64) []*vinfo {
	op := n.GetOpType()
	x := in(ins, 0)
	same := func() []*vinfo { return []*vinfo{{dtype: x.dtype, shape: x.shape}} }
	isInt := func(v *vinfo) bool { return v.dtype == tensor.Int64 || v.dtype == tensor.Int32 }
	switch {
	case op == "Cast":
		out := &vinfo{dtype: tensor.DType(attrInt(n, "to", 0)), shape: x.shape}
		if isInt(out) && isInt(x) {
			out.val = x.val
		}
		return []*vinfo{out}
	case op == "Not" || op == "IsNaN" || op == "IsInf":
		return []*vinfo{{dtype: tensor.Bool, shape: x.shape}}
	case sameShapeOps[op]:
		outs := same()
		switch op {
		case "Identity":
			outs[0].val = x.val
		case "Dropout":
			outs = append(outs, &vinfo{dtype: tensor.Bool, shape: x.shape})
		case "LayerNormalization":
			// Mean and InvStdDev: the normalized axes reduced to 1, in stash_type.
			if x.shape != nil {
				axis := normAxis(attrInt(n, "axis", -1), len(x.shape))
				if axis >= 0 && int(axis) <= len(x.shape) {
					stat := append([]int64{}, x.shape[:axis]...)
					for range x.shape[axis:] {
						stat = append(stat, 1)
					}
					st := tensor.DType(attrInt(n, "stash_type", int64(tensor.Float32)))
					outs = append(outs, &vinfo{dtype: st, shape: stat}, &vinfo{dtype: st, shape: stat})
				}
			}
		}
		return outs
	case op == "RandomUniformLike" || op == "RandomNormalLike":
		dt := tensor.DType(attrInt(n, "dtype", int64(x.dtype)))
		return []*vinfo{{dtype: dt, shape: x.shape}}
	case op == "RandomUniform" || op == "RandomNormal":
		shape, _ := attrInts(n, "shape")
		return []*vinfo{{dtype: tensor.DType(attrInt(n, "dtype", int64(tensor.Float32))), shape: append([]int64{}, shape...)}}
	case op == "Neg" || op == "Abs":
		out := &vinfo{dtype: x.dtype, shape: x.shape}
		if isInt(x) && x.val != nil {
			for _, v := range x.val {
				if op == "Neg" || v < 0 {
					v = -v
				}
				out.val = append(out.val, v)
			}
		}
		return []*vinfo{out}
	case op == "CastLike":
		return []*vinfo{{dtype: in(ins, 1).dtype, shape: x.shape}}
	case op == "GatherElements":
		return []*vinfo{{dtype: x.dtype, shape: in(ins, 1).shape}}
	case op == "DepthToSpace" || op == "SpaceToDepth":
		b := attrInt(n, "blocksize", 0)
		if len(x.shape) != 4 || b <= 0 || !x.known() {
			return []*vinfo{{dtype: x.dtype}}
		}
		s := x.shape
		if op == "DepthToSpace" {
			return []*vinfo{{dtype: x.dtype, shape: []int64{s[0], s[1] / (b * b), s[2] * b, s[3] * b}}}
		}
		return []*vinfo{{dtype: x.dtype, shape: []int64{s[0], s[1] * b * b, s[2] / b, s[3] / b}}}
	case broadcastOps[op]:
		shapes := make([][]int64, 0, len(ins))
		var dt tensor.DType
		for i, v := range ins {
			if v == nil {
				shapes = append(shapes, nil)
				continue
			}
			shapes = append(shapes, v.shape)
			if dt == 0 && (op != "Where" || i > 0) {
				dt = v.dtype
			}
		}
		out := &vinfo{dtype: dt, shape: broadcast(shapes...)}
		if boolOps[op] {
			out.dtype = tensor.Bool
		}
		if isInt(out) {
			out.val = elementwiseVals(op, ins)
		}
		return []*vinfo{out}
	}
	switch op {
	case "MatMul", "MatMulInteger", "FusedMatMul":
		dt := x.dtype
		if op == "MatMulInteger" {
			dt = tensor.Int32
		}
		a, b := x.shape, in(ins, 1).shape
		if a == nil || b == nil || len(a) == 0 || len(b) == 0 {
			return []*vinfo{{dtype: dt}}
		}
		var out []int64
		switch {
		case len(a) == 1 && len(b) == 1:
			out = []int64{}
		case len(b) == 1:
			out = append(out, a[:len(a)-1]...)
		case len(a) == 1:
			out = append(append(out, b[:len(b)-2]...), b[len(b)-1])
		default:
			batch := broadcast(a[:len(a)-2], b[:len(b)-2])
			out = append(append(batch, a[len(a)-2]), b[len(b)-1])
		}
		return []*vinfo{{dtype: dt, shape: out}}
	case "Gemm":
		a, b := x.shape, in(ins, 1).shape
		if len(a) != 2 || len(b) != 2 {
			return []*vinfo{{dtype: x.dtype}}
		}
		m, nn := a[0], b[1]
		if attrInt(n, "transA", 0) != 0 {
			m = a[1]
		}
		if attrInt(n, "transB", 0) != 0 {
			nn = b[0]
		}
		return []*vinfo{{dtype: x.dtype, shape: []int64{m, nn}}}
	case "Conv", "ConvInteger", "ConvTranspose":
		dt := x.dtype
		if op == "ConvInteger" {
			dt = tensor.Int32
		}
		return []*vinfo{{dtype: dt, shape: convShape(n, x.shape, in(ins, 1).shape, op == "ConvTranspose")}}
	case "MaxPool", "AveragePool", "LpPool":
		k, _ := attrInts(n, "kernel_shape")
		return []*vinfo{{dtype: x.dtype, shape: poolShape(n, x.shape, k)}, {dtype: tensor.Int64, shape: poolShape(n, x.shape, k)}}
	case "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool":
		if len(x.shape) < 2 {
			return []*vinfo{{dtype: x.dtype}}
		}
		out := append([]int64{}, x.shape[:2]...)
		for range x.shape[2:] {
			out = append(out, 1)
		}
		return []*vinfo{{dtype: x.dtype, shape: out}}
	case "Flatten":
		if !x.known() {
			return []*vinfo{{dtype: x.dtype}}
		}
		axis := normAxis(attrInt(n, "axis", 1), len(x.shape))
		a, b := int64(1), int64(1)
		for i, d := range x.shape {
			if int64(i) < axis {
				a *= d
			} else {
				b *= d
			}
		}
		return []*vinfo{{dtype: x.dtype, shape: []int64{a, b}}}
	case "Reshape":
		var target []int64
		if opset < 5 {
			target, _ = attrInts(n, "shape")
		} else {
			target = in(ins, 1).val
		}
		return []*vinfo{{dtype: x.dtype, shape: reshape(x.shape, target, attrInt(n, "allowzero", 0) != 0), val: x.val}}
	case "Transpose":
		if x.shape == nil {
			return []*vinfo{{dtype: x.dtype}}
		}
		perm, ok := attrInts(n, "perm")
		if !ok {
			for i := len(x.shape) - 1; i >= 0; i-- {
				perm = append(perm, int64(i))
			}
		}
		if len(perm) != len(x.shape) {
			return []*vinfo{{dtype: x.dtype}}
		}
		out := make([]int64, len(perm))
		for i, p := range perm {
			if p < 0 || int(p) >= len(x.shape) {
				return []*vinfo{{dtype: x.dtype}}
			}
			out[i] = x.shape[p]
		}
		return []*vinfo{{dtype: x.dtype, shape: out}}
	case "Shape":
		if x.shape == nil {
			return []*vinfo{{dtype: tensor.Int64}}
		}
		r := int64(len(x.shape))
		start, end := attrInt(n, "start", 0), attrInt(n, "end", r)
		start, end = clampIdx(start, r), clampIdx(end, r)
		if end < start {
			end = start
		}
		out := &vinfo{dtype: tensor.Int64, shape: []int64{end - start}}
		vals := append([]int64{}, x.shape[start:end]...)
		if (&vinfo{shape: vals}).known() {
			out.val = vals
		}
		return []*vinfo{out}
	case "Size":
		out := &vinfo{dtype: tensor.Int64, shape: []int64{}}
		if x.known() {
			out.val = []int64{x.numel()}
		}
		return []*vinfo{out}
	case "Gather":
		idx := in(ins, 1)
		if x.shape == nil || idx.shape == nil {
			return []*vinfo{{dtype: x.dtype}}
		}
		axis := normAxis(attrInt(n, "axis", 0), len(x.shape))
		if axis < 0 || int(axis) >= len(x.shape) {
			return []*vinfo{{dtype: x.dtype}}
		}
		out := append(append(append([]int64{}, x.shape[:axis]...), idx.shape...), x.shape[axis+1:]...)
		res := &vinfo{dtype: x.dtype, shape: out}
		if x.val != nil && idx.val != nil && len(x.shape) == 1 {
			for _, i := range idx.val {
				if i < 0 {
					i += int64(len(x.val))
				}
				if i < 0 || int(i) >= len(x.val) {
					res.val = nil
					break
				}
				res.val = append(res.val, x.val[i])
			}
		}
		return []*vinfo{res}
	case "Unsqueeze", "Squeeze":
		axes, ok := attrInts(n, "axes")
		if !ok && opset >= 13 && len(ins) > 1 && ins[1] != nil {
			if ins[1].val == nil {
				// Axes computed at run time: the rank is unknown.
				return []*vinfo{{dtype: x.dtype}}
			}
			axes, ok = ins[1].val, true
		}
		if x.shape == nil {
			return []*vinfo{{dtype: x.dtype, val: x.val}}
		}
		var out []int64
		if op == "Unsqueeze" {
			if !ok {
				return []*vinfo{{dtype: x.dtype}}
			}
			r := len(x.shape) + len(axes)
			set := map[int64]bool{}
			for _, a := range axes {
				set[normAxis(a, r)] = true
			}
			j := 0
			for i := 0; i < r; i++ {
				if set[int64(i)] {
					out = append(out, 1)
				} else if j < len(x.shape) {
					out = append(out, x.shape[j])
					j++
				}
			}
		} else {
			set := map[int64]bool{}
			for _, a := range axes {
				set[normAxis(a, len(x.shape))] = true
			}
			for i, d := range x.shape {
				if (ok && set[int64(i)]) || (!ok && d == 1) {
					continue
				}
				out = append(out, d)
			}
		}
		return []*vinfo{{dtype: x.dtype, shape: out, val: x.val}}
	case "Concat":
		axis := attrInt(n, "axis", 0)
		var out []int64
		var vals []int64
		valsOK := true
		for i, v := range ins {
			if v == nil || v.shape == nil {
				return []*vinfo{{dtype: x.dtype}}
			}
			if v.val == nil {
				valsOK = false
			}
			vals = append(vals, v.val...)
			if i == 0 {
				out = append([]int64{}, v.shape...)
				axis = normAxis(axis, len(out))
				if axis < 0 || int(axis) >= len(out) {
					return []*vinfo{{dtype: x.dtype}}
				}
				continue
			}
			if len(v.shape) != len(out) {
				return []*vinfo{{dtype: x.dtype}}
			}
			if out[axis] >= 0 && v.shape[axis] >= 0 {
				out[axis] += v.shape[axis]
			} else {
				out[axis] = -1
			}
		}
		res := &vinfo{dtype: x.dtype, shape: out}
		if valsOK && len(out) == 1 {
			res.val = vals
		}
		return []*vinfo{res}
	case "Slice":
		return []*vinfo{sliceInfo(n, ins, opset)}
	case "Split":
		return splitInfo(n, ins, opset)
	case "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
		"ReduceL1", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin":
		if x.shape == nil {
			return []*vinfo{{dtype: x.dtype}}
		}
		axes, ok := attrInts(n, "axes")
		if op == "ArgMax" || op == "ArgMin" {
			axes, ok = []int64{attrInt(n, "axis", 0)}, true
		} else if !ok && len(ins) > 1 && ins[1] != nil {
			if ins[1].val == nil {
				return []*vinfo{{dtype: x.dtype}}
			}
			axes, ok = ins[1].val, true
		}
		keep := attrInt(n, "keepdims", 1) != 0
		set := map[int64]bool{}
		for _, a := range axes {
			set[normAxis(a, len(x.shape))] = true
		}
		var out []int64
		for i, d := range x.shape {
			if !ok || set[int64(i)] {
				if keep {
					out = append(out, 1)
				}
				continue
			}
			out = append(out, d)
		}
		if out == nil {
			out = []int64{}
		}
		dt := x.dtype
		if op == "ArgMax" || op == "ArgMin" {
			dt = tensor.Int64
		}
		return []*vinfo{{dtype: dt, shape: out}}
	case "LSTM", "GRU", "RNN":
		return rnnInfo(n, ins)
	case "ConstantOfShape":
		dt := tensor.Float32
		for _, a := range n.GetAttribute() {
			if a.GetName() == "value" {
				dt = tensor.DType(a.GetT().GetDataType())
			}
		}
		s := in(ins, 0).val
		out := &vinfo{dtype: dt, shape: s}
		if sh := in(ins, 0).shape; s == nil && len(sh) == 1 && sh[0] >= 0 && sh[0] <= tensor.MaxRank {
			// Values unknown, but the rank is the shape input's length.
			out.shape = make([]int64, sh[0])
			for i := range out.shape {
				out.shape[i] = -1
			}
		}
		if s != nil && (dt == tensor.Int64 || dt == tensor.Int32) {
			if ints, ok := tensorIntsAttr(n); ok && len(ints) == 1 {
				nel := int64(1)
				for _, d := range s {
					nel *= d
				}
				if nel <= maxFoldElems {
					for i := int64(0); i < nel; i++ {
						out.val = append(out.val, ints[0])
					}
				}
			}
		}
		return []*vinfo{out}
	case "Range":
		s, l, d := in(ins, 0), in(ins, 1), in(ins, 2)
		out := &vinfo{dtype: s.dtype, shape: []int64{-1}}
		if len(s.val) == 1 && len(l.val) == 1 && len(d.val) == 1 && d.val[0] != 0 {
			cnt := (l.val[0] - s.val[0] + d.val[0] - 1) / d.val[0]
			if d.val[0] < 0 {
				cnt = (s.val[0] - l.val[0] - d.val[0] - 1) / -d.val[0]
			}
			out.shape = []int64{max(cnt, 0)}
			if cnt <= maxFoldElems {
				for i := int64(0); i < cnt; i++ {
					out.val = append(out.val, s.val[0]+i*d.val[0])
				}
			}
		}
		return []*vinfo{out}
	case "Expand":
		sh := in(ins, 1).val
		if sh == nil {
			return []*vinfo{{dtype: x.dtype}}
		}
		return []*vinfo{{dtype: x.dtype, shape: broadcast(x.shape, sh)}}
	case "Tile":
		r := in(ins, 1).val
		if x.shape == nil || r == nil || len(r) != len(x.shape) {
			return []*vinfo{{dtype: x.dtype}}
		}
		out := make([]int64, len(r))
		for i := range r {
			out[i] = x.shape[i] * r[i]
			if x.shape[i] < 0 {
				out[i] = -1
			}
		}
		return []*vinfo{{dtype: x.dtype, shape: out}}
	case "Pad":
		pads, ok := attrInts(n, "pads")
		if !ok {
			pads = in(ins, 1).val
		}
		if x.shape == nil || len(pads) != 2*len(x.shape) {
			return []*vinfo{{dtype: x.dtype}}
		}
		out := make([]int64, len(x.shape))
		for i, d := range x.shape {
			out[i] = d + pads[i] + pads[i+len(x.shape)]
			if d < 0 {
				out[i] = -1
			}
		}
		return []*vinfo{{dtype: x.dtype, shape: out}}
	case "NonZero":
		return []*vinfo{{dtype: tensor.Int64, shape: []int64{int64(len(x.shape)), -1}}}
	case "TopK":
		return []*vinfo{{dtype: x.dtype}, {dtype: tensor.Int64}}
	case "If":
		// Both branches must produce the same types; take the then-branch's.
		for _, a := range n.GetAttribute() {
			if a.GetName() != "then_branch" {
				continue
			}
			var outs []*vinfo
			for _, o := range a.GetG().GetOutput() {
				v := fromValueInfo(o, nil)
				if v == nil {
					v = &vinfo{}
				}
				outs = append(outs, v)
			}
			return outs
		}
	}
	if dtypeKeepingOps[op] {
		// Shape rules not written for these; their first output keeps the data
		// input's dtype, so at least a cut after them has a type.
		return []*vinfo{{dtype: x.dtype}}
	}
	return nil
}

// dtypeKeepingOps produce their first output in the dtype of their first input.
var dtypeKeepingOps = map[string]bool{
	"Resize": true, "Upsample": true, "DepthToSpace": true, "SpaceToDepth": true,
	"ReverseSequence": true, "ScatterND": true, "ScatterElements": true, "Scatter": true,
	"GatherElements": true, "GatherND": true, "Trilu": true, "Compress": true,
	"Einsum": true, "RoiAlign": true, "MaxRoiPool": true, "MaxUnpool": true,
	"GridSample": true, "AffineGrid": true, "Col2Im": true, "CenterCropPad": true,
	"QuickGelu": true, "BiasAdd": true, "BiasSplitGelu": true,
}

func tensorIntsAttr(n *onnxpb.NodeProto) ([]int64, bool) {
	for _, a := range n.GetAttribute() {
		if a.GetName() == "value" {
			return tensorInts(a.GetT())
		}
	}
	return nil, false
}

func clampIdx(i, r int64) int64 {
	if i < 0 {
		i += r
	}
	return min(max(i, 0), r)
}

func reshape(in, target []int64, allowZero bool) []int64 {
	if target == nil {
		return nil
	}
	out := make([]int64, len(target))
	infer := -1
	known := int64(1)
	for i, d := range target {
		switch {
		case d == 0 && !allowZero:
			if in == nil || i >= len(in) {
				return nil
			}
			out[i] = in[i]
		case d == -1:
			if infer >= 0 {
				return nil
			}
			infer = i
			continue
		default:
			out[i] = d
		}
		if out[i] < 0 {
			known = -1
		} else if known >= 0 {
			known *= out[i]
		}
	}
	if infer >= 0 {
		total := (&vinfo{shape: in}).numel()
		if total < 0 || known <= 0 {
			out[infer] = -1
		} else {
			out[infer] = total / known
		}
	}
	return out
}

func convShape(n *onnxpb.NodeProto, x, w []int64, transpose bool) []int64 {
	if len(x) < 3 || len(w) != len(x) {
		return nil
	}
	sp := len(x) - 2
	k, ok := attrInts(n, "kernel_shape")
	if !ok {
		k = w[2:]
	}
	strides := ones(attrIntsOr(n, "strides", nil), sp)
	dil := ones(attrIntsOr(n, "dilations", nil), sp)
	pads := attrIntsOr(n, "pads", make([]int64, 2*sp))
	group := attrInt(n, "group", 1)
	out := []int64{x[0], w[0]}
	if transpose {
		out[1] = w[1] * group
		if shape, ok := attrInts(n, "output_shape"); ok {
			if len(shape) != sp {
				return nil
			}
			return append(out, shape...)
		}
	}
	autoPad := attrString(n, "auto_pad", "NOTSET")
	for i := 0; i < sp; i++ {
		in := x[2+i]
		if in < 0 || len(k) != sp || len(pads) != 2*sp {
			out = append(out, -1)
			continue
		}
		ek := dil[i]*(k[i]-1) + 1
		if strides[i] <= 0 {
			out = append(out, -1)
			continue
		}
		var o int64
		switch {
		case transpose && (autoPad == "SAME_UPPER" || autoPad == "SAME_LOWER"):
			o = in * strides[i]
		case transpose:
			outPad := attrIntsOr(n, "output_padding", nil)
			if len(outPad) != sp {
				outPad = make([]int64, sp)
			}
			o = strides[i]*(in-1) + outPad[i] + ek - pads[i] - pads[i+sp]
		case autoPad == "SAME_UPPER" || autoPad == "SAME_LOWER":
			o = (in + strides[i] - 1) / strides[i]
		case autoPad == "VALID":
			o = (in-ek)/strides[i] + 1
		default:
			o = (in+pads[i]+pads[i+sp]-ek)/strides[i] + 1
		}
		out = append(out, o)
	}
	return out
}

func poolShape(n *onnxpb.NodeProto, x, k []int64) []int64 {
	if len(x) < 3 || len(k) != len(x)-2 {
		return nil
	}
	sp := len(k)
	strides := ones(attrIntsOr(n, "strides", nil), sp)
	dil := ones(attrIntsOr(n, "dilations", nil), sp)
	pads := attrIntsOr(n, "pads", make([]int64, 2*sp))
	ceil := attrInt(n, "ceil_mode", 0) != 0
	autoPad := attrString(n, "auto_pad", "NOTSET")
	out := []int64{x[0], x[1]}
	for i := 0; i < sp; i++ {
		in := x[2+i]
		if in < 0 || len(pads) != 2*sp {
			out = append(out, -1)
			continue
		}
		ek := dil[i]*(k[i]-1) + 1
		if strides[i] <= 0 {
			out = append(out, -1)
			continue
		}
		var o int64
		switch {
		case autoPad == "SAME_UPPER" || autoPad == "SAME_LOWER":
			o = (in + strides[i] - 1) / strides[i]
		case autoPad == "VALID":
			o = (in-ek)/strides[i] + 1
		default:
			num := in + pads[i] + pads[i+sp] - ek
			if ceil {
				o = (num+strides[i]-1)/strides[i] + 1
				// The last window must start inside the input or its left padding.
				if (o-1)*strides[i] >= in+pads[i] {
					o--
				}
			} else {
				o = num/strides[i] + 1
			}
		}
		out = append(out, o)
	}
	return out
}

func attrIntsOr(n *onnxpb.NodeProto, name string, def []int64) []int64 {
	if v, ok := attrInts(n, name); ok {
		return v
	}
	return def
}

func ones(v []int64, n int) []int64 {
	if len(v) == n {
		return v
	}
	out := make([]int64, n)
	for i := range out {
		out[i] = 1
	}
	return out
}

func sliceInfo(n *onnxpb.NodeProto, ins []*vinfo, opset int64) *vinfo {
	x := in(ins, 0)
	var starts, ends, axes, steps []int64
	if opset < 10 {
		starts, _ = attrInts(n, "starts")
		ends, _ = attrInts(n, "ends")
		axes, _ = attrInts(n, "axes")
	} else {
		starts, ends = in(ins, 1).val, in(ins, 2).val
		if len(ins) > 3 && ins[3] != nil {
			if ins[3].val == nil {
				return &vinfo{dtype: x.dtype}
			}
			axes = ins[3].val
		}
		if len(ins) > 4 && ins[4] != nil {
			if ins[4].val == nil {
				return &vinfo{dtype: x.dtype}
			}
			steps = ins[4].val
		}
	}
	if x.shape == nil || starts == nil || ends == nil || len(starts) != len(ends) {
		return &vinfo{dtype: x.dtype}
	}
	if axes == nil {
		for i := range starts {
			axes = append(axes, int64(i))
		}
	}
	if steps == nil {
		steps = ones(nil, len(starts))
	}
	if len(axes) != len(starts) || len(steps) != len(starts) {
		return &vinfo{dtype: x.dtype}
	}
	out := append([]int64{}, x.shape...)
	var vals []int64
	for i, a := range axes {
		a = normAxis(a, len(out))
		if a < 0 || int(a) >= len(out) || steps[i] == 0 {
			return &vinfo{dtype: x.dtype}
		}
		d := x.shape[a]
		if d < 0 {
			out[a] = -1
			continue
		}
		s, e, st := starts[i], ends[i], steps[i]
		if s < 0 {
			s += d
		}
		if e < 0 {
			e += d
		}
		var cnt int64
		if st > 0 {
			s, e = min(max(s, 0), d), min(max(e, 0), d)
			cnt = max(0, (e-s+st-1)/st)
		} else {
			s, e = min(max(s, -1), d-1), min(max(e, -1), d-1)
			cnt = max(0, (s-e-st-1)/-st)
		}
		out[a] = cnt
		if len(x.shape) == 1 && x.val != nil {
			for j := int64(0); j < cnt; j++ {
				idx := s + j*st
				if idx < 0 || int(idx) >= len(x.val) {
					vals = nil
					break
				}
				vals = append(vals, x.val[idx])
			}
		}
	}
	return &vinfo{dtype: x.dtype, shape: out, val: vals}
}

func splitInfo(n *onnxpb.NodeProto, ins []*vinfo, opset int64) []*vinfo {
	x := in(ins, 0)
	k := len(n.GetOutput())
	outs := make([]*vinfo, k)
	for i := range outs {
		outs[i] = &vinfo{dtype: x.dtype}
	}
	if x.shape == nil {
		return outs
	}
	axis := normAxis(attrInt(n, "axis", 0), len(x.shape))
	if axis < 0 || int(axis) >= len(x.shape) {
		return outs
	}
	split, ok := attrInts(n, "split")
	if !ok && opset >= 13 && len(ins) > 1 && ins[1] != nil {
		split = ins[1].val
		if split == nil {
			return outs
		}
	}
	d := x.shape[axis]
	if split == nil {
		if d < 0 || k == 0 {
			return outs
		}
		each := (d + int64(k) - 1) / int64(k)
		for i := 0; i < k; i++ {
			split = append(split, min(each, d-int64(i)*each))
		}
	}
	if len(split) != k {
		return outs
	}
	for i := range outs {
		s := append([]int64{}, x.shape...)
		s[axis] = split[i]
		outs[i].shape = s
	}
	return outs
}

func rnnInfo(n *onnxpb.NodeProto, ins []*vinfo) []*vinfo {
	x := in(ins, 0)
	h := attrInt(n, "hidden_size", -1)
	dirs := int64(1)
	if attrString(n, "direction", "forward") == "bidirectional" {
		dirs = 2
	}
	if len(x.shape) != 3 || h <= 0 {
		return []*vinfo{{dtype: x.dtype}, {dtype: x.dtype}, {dtype: x.dtype}}
	}
	seq, batch := x.shape[0], x.shape[1]
	if attrInt(n, "layout", 0) != 0 {
		seq, batch = batch, seq
		return []*vinfo{
			{dtype: x.dtype, shape: []int64{batch, seq, dirs, h}},
			{dtype: x.dtype, shape: []int64{batch, dirs, h}},
			{dtype: x.dtype, shape: []int64{batch, dirs, h}},
		}
	}
	return []*vinfo{
		{dtype: x.dtype, shape: []int64{seq, dirs, batch, h}},
		{dtype: x.dtype, shape: []int64{dirs, batch, h}},
		{dtype: x.dtype, shape: []int64{dirs, batch, h}},
	}
}

// nodeFLOPs estimates the floating-point operations of one node: 2 per
// multiply-accumulate for the heavy ops, one per output element for the rest.
func nodeFLOPs(nd *Node, env map[string]*vinfo, fallback int64) int64 {
	p := nd.Proto
	get := func(i int) *vinfo {
		if i < len(p.GetInput()) && p.GetInput()[i] != "" {
			if v := env[p.GetInput()[i]]; v != nil {
				return v
			}
		}
		return &vinfo{}
	}
	var outElems int64
	for _, o := range nd.Outputs {
		if v := env[o]; v.known() {
			outElems = min(outElems+v.numel(), maxSize)
		}
	}
	if outElems == 0 && fallback > 0 {
		outElems = fallback / 4
	}
	switch nd.OpType {
	case "MatMul", "FusedMatMul", "MatMulInteger":
		a := get(0)
		if a.known() && len(a.shape) > 0 {
			return 2 * outElems * a.shape[len(a.shape)-1]
		}
	case "Gemm":
		a := get(0)
		if a.known() && len(a.shape) == 2 {
			k := a.shape[1]
			if attrInt(p, "transA", 0) != 0 {
				k = a.shape[0]
			}
			return 2 * outElems * k
		}
	case "Conv", "ConvInteger":
		w := get(1)
		if w.known() && len(w.shape) >= 3 {
			perOut := int64(1)
			for _, d := range w.shape[1:] {
				perOut *= d
			}
			return 2 * outElems * perOut
		}
	case "ConvTranspose":
		x, w := get(0), get(1)
		if x.known() && w.known() && len(w.shape) >= 3 {
			perIn := int64(1)
			for _, d := range w.shape[1:] {
				perIn *= d
			}
			return 2 * x.numel() * perIn
		}
	case "LSTM", "GRU", "RNN":
		x := get(0)
		h := attrInt(p, "hidden_size", 0)
		gates := map[string]int64{"LSTM": 4, "GRU": 3, "RNN": 1}[nd.OpType]
		dirs := int64(1)
		if attrString(p, "direction", "forward") == "bidirectional" {
			dirs = 2
		}
		if x.known() && len(x.shape) == 3 {
			return 2 * dirs * gates * h * (x.shape[2] + h) * x.shape[0] * x.shape[1]
		}
	case "Attention", "MultiHeadAttention":
		x := get(0)
		if x.known() && len(x.shape) == 3 {
			b, s, d := x.shape[0], x.shape[1], x.shape[2]
			return 2*b*s*d*3*d + 4*b*s*s*d
		}
	}
	return outElems
}
