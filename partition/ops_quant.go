package partition

import (
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// quantRules: quantization ops, standard (QuantizeLinear, DequantizeLinear,
// DynamicQuantizeLinear) and ONNX Runtime's contrib ops that compress writes
// (MatMulNBits, GatherBlockQuantized, DynamicQuantizeMatMul, DynamicQuantizeLSTM).
var quantRules = []opGroup{
	{[]string{"QuantizeLinear"}, inferQuantize},
	{[]string{"DequantizeLinear"}, inferDequantize},
	{[]string{"DynamicQuantizeLinear"}, inferDynamicQuantize},
	{[]string{"MatMulNBits"}, inferMatMulNBits},
	{[]string{"DynamicQuantizeMatMul"}, inferMatMul},
	{[]string{"GatherBlockQuantized"}, inferGatherBlockQuantized},
	// DynamicQuantizeLSTM's int8 W and R are only read for their sizes, which
	// hidden_size gives, as for LSTM.
	{[]string{"DynamicQuantizeLSTM"}, inferRNN},
}

// inferQuantize: x's shape, in the zero point's type (uint8 without one, or
// output_dtype from opset 21).
func inferQuantize(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	dt := tensor.Uint8
	if z := in(ins, 2); z.dtype != 0 {
		dt = z.dtype
	} else if o := attrInt(n, "output_dtype", 0); o != 0 {
		dt = tensor.DType(o)
	}
	return []*vinfo{{dtype: dt, shape: in(ins, 0).shape}}
}

// inferDequantize: x's shape, in the scale's type.
func inferDequantize(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	dt := in(ins, 1).dtype
	if dt == 0 {
		dt = tensor.Float32
	}
	return []*vinfo{{dtype: dt, shape: in(ins, 0).shape}}
}

func inferDynamicQuantize(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	return []*vinfo{{dtype: tensor.Uint8, shape: in(ins, 0).shape}, {dtype: tensor.Float32, shape: []int64{}}, {dtype: tensor.Uint8, shape: []int64{}}}
}

// inferMatMulNBits: A's shape with its last dim replaced by the N attribute.
func inferMatMulNBits(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	a := in(ins, 0)
	if len(a.shape) == 0 {
		return []*vinfo{{dtype: a.dtype}}
	}
	out := append(append([]int64{}, a.shape[:len(a.shape)-1]...), attrInt(n, "N", -1))
	return []*vinfo{{dtype: a.dtype, shape: out}}
}

// inferGatherBlockQuantized: a Gather of the dequantized table, whose last dim
// holds 8/bits values per byte, in the scales' type.
func inferGatherBlockQuantized(n *onnxpb.NodeProto, ins []*vinfo, opset int64) []*vinfo {
	data, scales := in(ins, 0), in(ins, 2)
	out := inferGather(&onnxpb.NodeProto{Attribute: []*onnxpb.AttributeProto{attrOf(n, "gather_axis", "axis")}}, ins, opset)[0]
	out.dtype, out.val = scales.dtype, nil
	if data.dtype == tensor.Uint8 && len(out.shape) > 0 && out.shape[len(out.shape)-1] > 0 {
		out.shape[len(out.shape)-1] *= 8 / max(attrInt(n, "bits", 4), 1)
	}
	return []*vinfo{out}
}

// attrOf is n's int attribute from, renamed to.
func attrOf(n *onnxpb.NodeProto, from, to string) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: &to, Type: onnxpb.AttributeProto_INT.Enum(), I: ptr(attrInt(n, from, 0))}
}

func ptr[T any](v T) *T { return &v }
