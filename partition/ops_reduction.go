package partition

import (
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// reductionRules: ops that reduce axes, or select along one.
var reductionRules = []opGroup{
	{[]string{
		"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
		"ReduceL1", "ReduceLogSumExp", "ReduceSumSquare",
	}, inferReduce},
	{[]string{"ArgMax", "ArgMin"}, inferArgReduce},
	{[]string{"TopK"}, inferTopK},
}

// inferReduce reads the axes from an attribute or, in newer opsets, an optional
// input; no axes reduce them all.
func inferReduce(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	if x.shape == nil {
		return []*vinfo{{dtype: x.dtype}}
	}
	axes, ok := attrInts(n, "axes")
	if !ok && len(ins) > 1 && ins[1] != nil {
		if ins[1].val == nil {
			return []*vinfo{{dtype: x.dtype}}
		}
		axes, ok = ins[1].val, true
	}
	return []*vinfo{{dtype: x.dtype, shape: reducedShape(n, x.shape, axes, ok)}}
}

// inferArgReduce reduces the one axis attribute to int64 indices.
func inferArgReduce(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	if x.shape == nil {
		return []*vinfo{{dtype: x.dtype}}
	}
	axes := []int64{attrInt(n, "axis", 0)}
	return []*vinfo{{dtype: tensor.Int64, shape: reducedShape(n, x.shape, axes, true)}}
}

// reducedShape is shape with axes (all of them when !haveAxes) dropped, or kept as
// 1 under keepdims.
func reducedShape(n *onnxpb.NodeProto, shape, axes []int64, haveAxes bool) []int64 {
	keep := attrInt(n, "keepdims", 1) != 0
	set := map[int64]bool{}
	for _, a := range axes {
		set[normAxis(a, len(shape))] = true
	}
	var out []int64
	for i, d := range shape {
		if !haveAxes || set[int64(i)] {
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
	return out
}

// inferTopK types the values and the int64 indices; k is usually an input, so
// the shape is not inferred.
func inferTopK(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	return []*vinfo{{dtype: in(ins, 0).dtype}, {dtype: tensor.Int64}}
}
