package partition

import (
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// indexingRules: ops that select, cut or join parts of tensors.
var indexingRules = []opGroup{
	{[]string{"Gather"}, inferGather},
	{[]string{"GatherElements"}, inferGatherElements},
	{[]string{"Concat"}, inferConcat},
	{[]string{"Slice"}, inferSlice},
	{[]string{"Split"}, inferSplit},
	{[]string{"NonZero"}, inferNonZero},
}

// inferGather also folds a gather from a known 1-D integer tensor, the way shape
// computations pick single dims.
func inferGather(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x, idx := in(ins, 0), in(ins, 1)
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
}

func inferGatherElements(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	return []*vinfo{{dtype: in(ins, 0).dtype, shape: in(ins, 1).shape}}
}

// inferConcat also folds the concatenation of known 1-D values (shape vectors).
func inferConcat(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
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
}

func inferSlice(n *onnxpb.NodeProto, ins []*vinfo, opset int64) []*vinfo {
	return []*vinfo{sliceInfo(n, ins, opset)}
}

// inferNonZero: one row of indices per input dim, as many columns as non-zeros.
func inferNonZero(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	return []*vinfo{{dtype: tensor.Int64, shape: []int64{int64(len(in(ins, 0).shape)), -1}}}
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

// inferSplit gives each output its share of the axis: the split sizes, or equal
// parts with a smaller last one.
func inferSplit(n *onnxpb.NodeProto, ins []*vinfo, opset int64) []*vinfo {
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
