package compress

import (
	"math"

	"github.com/layermesh/layermesh/partition/onnxpb"
)

// dynamicRule rewrites node i for dynamic int8, or says why it cannot ("" when
// the node has nothing to quantize).
type dynamicRule func(e *editor, i int, n *onnxpb.NodeProto) (as, why string)

// dynamicRules are the dynamic int8 rewrites by op type: weights become int8
// per output channel, activations are quantized by ONNX Runtime at run time.
var dynamicRules = map[string]dynamicRule{
	"MatMul": dynamicMatMul,
	"Gemm":   dynamicGemm,
	"LSTM":   dynamicLSTM,
}

// dynamicQuantize applies dynamicRules to every node and returns how many it rewrote.
func dynamicQuantize(e *editor, rep *Report) int {
	count := 0
	for i, n := range e.graph.GetNode() {
		rule, ok := dynamicRules[n.GetOpType()]
		if !ok || (n.GetDomain() != "" && n.GetDomain() != "ai.onnx") {
			continue
		}
		as, why := rule(e, i, n)
		switch {
		case as != "":
			rep.rewrote(n, as)
			count++
		case why != "":
			rep.kept(n, why)
		}
	}
	if count > 0 {
		e.useOpset(msDomain, 1)
	}
	return count
}

// perChannelInt8 quantizes a weight symmetrically to int8 with one scale per
// output channel: channels is their count, at(c, j) reads element j of channel
// c, and put(c, j, q) stores its int8.
func perChannelInt8(channels, per int, at func(c, j int) float32, put func(c, j int, q int8)) []float32 {
	scales := make([]float32, channels)
	for c := range channels {
		amax := 0.0
		for j := range per {
			amax = math.Max(amax, math.Abs(float64(at(c, j))))
		}
		s := float32(amax / 127)
		if s == 0 {
			s = 1
		}
		scales[c] = s
		for j := range per {
			put(c, j, int8(min(max(math.Round(float64(at(c, j)/s)), -127), 127)))
		}
	}
	return scales
}

// int8Matrix quantizes a [K, N] matrix, read through at(k, n), per column:
// the int8 data, [K, N], and N scales.
func int8Matrix(at func(k, n int) float32, k, n int) ([]byte, []float32) {
	q := make([]byte, k*n)
	scales := perChannelInt8(n, k, func(c, j int) float32 { return at(j, c) },
		func(c, j int, v int8) { q[j*n+c] = byte(v) })
	return q, scales
}

// dynamicMatMul rewrites MatMul(A, W) with a constant 2-D W into
// DynamicQuantizeMatMul.
func dynamicMatMul(e *editor, i int, n *onnxpb.NodeProto) (string, string) {
	in := n.GetInput()
	if len(in) != 2 {
		return "", "MatMul without two inputs"
	}
	if _, ok := e.inits[in[1]]; !ok {
		return "", ""
	}
	val, dims, ok := e.floatAt(in[1])
	if !ok || len(dims) != 2 {
		return "", "MatMul weight is not a 2-D float32 tensor in the model file"
	}
	cols := int(dims[1])
	at := func(k, n int) float32 { return val(k*cols + n) }
	e.replace(i, dynamicMatMulNode(e, n, at, int(dims[0]), cols, in[1], ""))
	return "DynamicQuantizeMatMul", ""
}

// dynamicGemm rewrites Gemm(A, W[, bias]) with transA=0 and alpha=beta=1.
func dynamicGemm(e *editor, i int, n *onnxpb.NodeProto) (string, string) {
	in := n.GetInput()
	if len(in) < 2 {
		return "", "Gemm without two inputs"
	}
	val, dims, ok := e.floatAt(in[1])
	if !ok || len(dims) != 2 {
		return "", "Gemm whose B is not a constant 2-D float32 weight"
	}
	if attrIntOr(n, "transA", 0) != 0 || attrFloatOr(n, "alpha", 1) != 1 || attrFloatOr(n, "beta", 1) != 1 {
		return "", "Gemm with transA, alpha or beta"
	}
	k, nn := int(dims[0]), int(dims[1])
	at := func(r, c int) float32 { return val(r*nn + c) }
	if attrIntOr(n, "transB", 0) != 0 {
		k, nn = nn, k
		at = func(r, c int) float32 { return val(c*k + r) }
	}
	bias := ""
	if len(in) > 2 && in[2] != "" {
		bd, ok := e.floatDims(in[2])
		if !ok || len(bd) != 1 || int(bd[0]) != nn {
			return "", "Gemm whose C is not a bias of N values"
		}
		bias = in[2]
	}
	e.replace(i, dynamicMatMulNode(e, n, at, k, nn, in[1], bias))
	return "DynamicQuantizeMatMul", ""
}

// dynamicMatMulNode quantizes the [k, n] weight read through at and builds the node.
func dynamicMatMulNode(e *editor, n *onnxpb.NodeProto, at func(k, n int) float32, k, nn int, weight, bias string) *onnxpb.NodeProto {
	q, scales := int8Matrix(at, k, nn)
	qn := e.addInit(bytesInit(weight+"/int8", onnxpb.TensorProto_INT8, []int64{int64(k), int64(nn)}, q))
	sn := e.addInit(floatInit(weight+"/scale", []int64{int64(nn)}, scales))
	zn := e.addInit(bytesInit(weight+"/zero_point", onnxpb.TensorProto_INT8, []int64{int64(nn)}, make([]byte, nn)))
	inputs := []string{n.GetInput()[0], qn, sn, zn}
	if bias != "" {
		inputs = append(inputs, bias)
	}
	return node("DynamicQuantizeMatMul", msDomain, e.fresh(n.GetName()+"/dq"), inputs, n.GetOutput()[:1])
}

// dynamicLSTM rewrites an LSTM with constant W and R into DynamicQuantizeLSTM,
// whose weights are int8 per gate row and stored transposed ([dirs, in, 4h]).
func dynamicLSTM(e *editor, i int, n *onnxpb.NodeProto) (string, string) {
	in := n.GetInput()
	if len(in) < 3 {
		return "", "LSTM without W and R"
	}
	w, wd, ok1 := e.floats(in[1])
	r, rd, ok2 := e.floats(in[2])
	if !ok1 || !ok2 || len(wd) != 3 || len(rd) != 3 {
		return "", "LSTM whose W or R is not a constant float32 weight"
	}
	if attr(n, "activations") != nil || attrIntOr(n, "layout", 0) != 0 || attrIntOr(n, "input_forget", 0) != 0 || attr(n, "clip") != nil {
		return "", "LSTM with custom activations, layout, clip or input_forget"
	}
	wq, ws := lstmWeight(e, in[1], w, wd)
	rq, rs := lstmWeight(e, in[2], r, rd)
	inputs := make([]string, 8)
	copy(inputs, in)
	inputs[1], inputs[2] = wq, rq
	wz := e.addInit(bytesInit(in[1]+"/zero_point", onnxpb.TensorProto_INT8, []int64{wd[0], wd[1]}, make([]byte, wd[0]*wd[1])))
	rz := e.addInit(bytesInit(in[2]+"/zero_point", onnxpb.TensorProto_INT8, []int64{rd[0], rd[1]}, make([]byte, rd[0]*rd[1])))
	inputs = append(inputs, ws, wz, rs, rz)
	q := node("DynamicQuantizeLSTM", msDomain, e.fresh(n.GetName()+"/dq"), inputs, n.GetOutput(), n.GetAttribute()...)
	e.replace(i, q)
	return "DynamicQuantizeLSTM", ""
}

// lstmWeight quantizes an LSTM weight [dirs, 4h, in] per gate row and stores it
// transposed, [dirs, in, 4h], with scales [dirs, 4h].
func lstmWeight(e *editor, name string, vals []float32, dims []int64) (string, string) {
	dirs, rows, cols := int(dims[0]), int(dims[1]), int(dims[2])
	q := make([]byte, len(vals))
	var scales []float32
	for d := range dirs {
		base := d * rows * cols
		s := perChannelInt8(rows, cols, func(c, j int) float32 { return vals[base+c*cols+j] },
			func(c, j int, v int8) { q[base+j*rows+c] = byte(v) })
		scales = append(scales, s...)
	}
	qn := e.addInit(bytesInit(name+"/int8", onnxpb.TensorProto_INT8, []int64{int64(dirs), int64(cols), int64(rows)}, q))
	sn := e.addInit(floatInit(name+"/scale", []int64{int64(dirs), int64(rows)}, scales))
	return qn, sn
}
