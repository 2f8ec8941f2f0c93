package partition

import (
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// generatorRules: ops that make a tensor from a shape, a range or a distribution.
var generatorRules = []opGroup{
	{[]string{"ConstantOfShape"}, inferConstantOfShape},
	{[]string{"Range"}, inferRange},
	{[]string{"RandomUniform", "RandomNormal"}, inferRandom},
	{[]string{"RandomUniformLike", "RandomNormalLike"}, inferRandomLike},
}

// inferConstantOfShape also folds a small integer fill, which shape computations
// use for masks and default dims.
func inferConstantOfShape(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
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
}

// inferRange computes the length, and the values when few, from known scalar
// start, limit and delta.
func inferRange(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
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
}

func inferRandom(n *onnxpb.NodeProto, _ []*vinfo, _ int64) []*vinfo {
	shape, _ := attrInts(n, "shape")
	return []*vinfo{{dtype: tensor.DType(attrInt(n, "dtype", int64(tensor.Float32))), shape: append([]int64{}, shape...)}}
}

// inferRandomLike takes the shape, and unless told otherwise the dtype, of its input.
func inferRandomLike(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	return []*vinfo{{dtype: tensor.DType(attrInt(n, "dtype", int64(x.dtype))), shape: x.shape}}
}
