package partition

import "github.com/layermesh/layermesh/partition/onnxpb"

// matrixRules: matrix products and the recurrent layers built on them.
var matrixRules = []opGroup{
	{[]string{"MatMul", "FusedMatMul"}, inferMatMul},
	{[]string{"MatMulInteger"}, int32Output(inferMatMul)},
	{[]string{"Gemm"}, inferGemm},
	{[]string{"LSTM", "GRU", "RNN"}, inferRNN},
}

// inferMatMul follows numpy's matmul: 1-D operands gain and lose a dim, batch dims
// broadcast.
func inferMatMul(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
	a, b := x.shape, in(ins, 1).shape
	if a == nil || b == nil || len(a) == 0 || len(b) == 0 {
		return []*vinfo{{dtype: x.dtype}}
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
	return []*vinfo{{dtype: x.dtype, shape: out}}
}

func inferGemm(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	x := in(ins, 0)
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
}

// inferRNN gives LSTM, GRU and RNN outputs: Y, Y_h and (LSTM) Y_c.
func inferRNN(n *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
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
