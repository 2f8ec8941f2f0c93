package partition

import (
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// layoutRules: ops that rearrange, reshape, repeat or pad a tensor, and those that
// read its shape.
var layoutRules = []opGroup{
	{[]string{"Flatten"}, inferFlatten},
	{[]string{"Reshape"}, inferReshape},
	{[]string{"Transpose"}, inferTranspose},
	{[]string{"Unsqueeze"}, inferUnsqueeze},
	{[]string{"Squeeze"}, inferSqueeze},
	{[]string{"Expand"}, inferExpand},
	{[]string{"Tile"}, inferTile},
	{[]string{"Pad"}, inferPad},
	{[]string{"DepthToSpace"}, inferDepthToSpace},
	{[]string{"SpaceToDepth"}, inferSpaceToDepth},
	{[]string{"Shape"}, inferShapeOp},
	{[]string{"Size"}, inferSize},
}

func inferFlatten(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
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
}

// inferReshape reads the target shape from an attribute before opset 5 and from
// the (folded) second input since; known values pass through.
func inferReshape(n *onnxpb.NodeProto, ins []*vinfo, opset int64) []*vinfo {
	x := in(ins, 0)
	var target []int64
	if opset < 5 {
		target, _ = attrInts(n, "shape")
	} else {
		target = in(ins, 1).val
	}
	return []*vinfo{{dtype: x.dtype, shape: reshape(x.shape, target, attrInt(n, "allowzero", 0) != 0), val: x.val}}
}

func inferTranspose(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
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
}

// squeezeAxes reads the axes of Squeeze and Unsqueeze: an attribute, or from opset
// 13 an optional input. unknownRank reports axes computed at run time, which leave
// the output's rank unknown.
func squeezeAxes(n *onnxpb.NodeProto, ins []*vinfo, opset int64) (axes []int64, ok, unknownRank bool) {
	axes, ok = attrInts(n, "axes")
	if !ok && opset >= 13 && len(ins) > 1 && ins[1] != nil {
		if ins[1].val == nil {
			return nil, false, true
		}
		axes, ok = ins[1].val, true
	}
	return axes, ok, false
}

func inferUnsqueeze(n *onnxpb.NodeProto, ins []*vinfo, opset int64) []*vinfo {
	x := in(ins, 0)
	axes, ok, unknownRank := squeezeAxes(n, ins, opset)
	if unknownRank {
		return []*vinfo{{dtype: x.dtype}}
	}
	if x.shape == nil {
		return []*vinfo{{dtype: x.dtype, val: x.val}}
	}
	if !ok {
		return []*vinfo{{dtype: x.dtype}}
	}
	r := len(x.shape) + len(axes)
	set := map[int64]bool{}
	for _, a := range axes {
		set[normAxis(a, r)] = true
	}
	var out []int64
	j := 0
	for i := 0; i < r; i++ {
		if set[int64(i)] {
			out = append(out, 1)
		} else if j < len(x.shape) {
			out = append(out, x.shape[j])
			j++
		}
	}
	return []*vinfo{{dtype: x.dtype, shape: out, val: x.val}}
}

// inferSqueeze drops the listed axes, or without axes every dim of size 1.
func inferSqueeze(n *onnxpb.NodeProto, ins []*vinfo, opset int64) []*vinfo {
	x := in(ins, 0)
	axes, ok, unknownRank := squeezeAxes(n, ins, opset)
	if unknownRank {
		return []*vinfo{{dtype: x.dtype}}
	}
	if x.shape == nil {
		return []*vinfo{{dtype: x.dtype, val: x.val}}
	}
	set := map[int64]bool{}
	for _, a := range axes {
		set[normAxis(a, len(x.shape))] = true
	}
	var out []int64
	for i, d := range x.shape {
		if (ok && set[int64(i)]) || (!ok && d == 1) {
			continue
		}
		out = append(out, d)
	}
	return []*vinfo{{dtype: x.dtype, shape: out, val: x.val}}
}

func inferExpand(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	sh := in(ins, 1).val
	if sh == nil {
		return []*vinfo{{dtype: x.dtype}}
	}
	return []*vinfo{{dtype: x.dtype, shape: broadcast(x.shape, sh)}}
}

func inferTile(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
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
}

// inferPad reads pads from the attribute (before opset 11) or the second input.
func inferPad(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
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
}

// blockNCHW returns the NCHW shape and blocksize of DepthToSpace and SpaceToDepth,
// ok false where the output shape cannot be computed.
func blockNCHW(n *onnxpb.NodeProto, x *vinfo) (s []int64, b int64, ok bool) {
	b = attrInt(n, "blocksize", 0)
	if len(x.shape) != 4 || b <= 0 || !x.known() {
		return nil, 0, false
	}
	return x.shape, b, true
}

func inferDepthToSpace(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	s, b, ok := blockNCHW(n, x)
	if !ok {
		return []*vinfo{{dtype: x.dtype}}
	}
	return []*vinfo{{dtype: x.dtype, shape: []int64{s[0], s[1] / (b * b), s[2] * b, s[3] * b}}}
}

func inferSpaceToDepth(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	s, b, ok := blockNCHW(n, x)
	if !ok {
		return []*vinfo{{dtype: x.dtype}}
	}
	return []*vinfo{{dtype: x.dtype, shape: []int64{s[0], s[1] * b * b, s[2] / b, s[3] / b}}}
}

// inferShapeOp gives Shape's output and, where all dims are known, its values, so
// the Reshape targets computed from it fold.
func inferShapeOp(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
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
}

func inferSize(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	out := &vinfo{dtype: tensor.Int64, shape: []int64{}}
	if x.known() {
		out.val = []int64{x.numel()}
	}
	return []*vinfo{out}
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
