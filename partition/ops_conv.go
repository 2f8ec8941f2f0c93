package partition

import (
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// convRules: convolutions and pooling over the spatial dims of an NC... tensor.
var convRules = []opGroup{
	{[]string{"Conv"}, inferConv},
	{[]string{"ConvInteger"}, int32Output(inferConv)},
	{[]string{"ConvTranspose"}, inferConvTranspose},
	{[]string{"MaxPool", "AveragePool", "LpPool"}, inferPool},
	{[]string{"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}, inferGlobalPool},
}

func inferConv(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	return []*vinfo{{dtype: x.dtype, shape: convShape(n, x.shape, in(ins, 1).shape, false)}}
}

func inferConvTranspose(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	return []*vinfo{{dtype: x.dtype, shape: convShape(n, x.shape, in(ins, 1).shape, true)}}
}

// inferPool also gives MaxPool's optional int64 indices, of the output's shape.
func inferPool(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	k, _ := attrInts(n, "kernel_shape")
	return []*vinfo{{dtype: x.dtype, shape: poolShape(n, x.shape, k)}, {dtype: tensor.Int64, shape: poolShape(n, x.shape, k)}}
}

// inferGlobalPool reduces every spatial dim to 1.
func inferGlobalPool(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	if len(x.shape) < 2 {
		return []*vinfo{{dtype: x.dtype}}
	}
	out := append([]int64{}, x.shape[:2]...)
	for range x.shape[2:] {
		out = append(out, 1)
	}
	return []*vinfo{{dtype: x.dtype, shape: out}}
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
