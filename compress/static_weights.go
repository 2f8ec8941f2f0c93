package compress

import (
	"encoding/binary"
	"math"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/partition/onnxpb"
)

// weightLayout says where a weighted op's output-channel axis is and which
// input is its bias, so one routine quantizes Conv, Gemm and MatMul weights.
type weightLayout struct {
	axis int // output-channel axis of the weight
	bias int // bias input index, -1 if none
}

// staticWeightLayouts gives the layout per op; ok false rejects the node.
var staticWeightLayouts = map[string]func(n *onnxpb.NodeProto) (weightLayout, string){
	"Conv": func(*onnxpb.NodeProto) (weightLayout, string) { return weightLayout{axis: 0, bias: 2}, "" },
	"Gemm": func(n *onnxpb.NodeProto) (weightLayout, string) {
		if attrIntOr(n, "transA", 0) != 0 || attrFloatOr(n, "alpha", 1) != 1 || attrFloatOr(n, "beta", 1) != 1 {
			return weightLayout{}, "Gemm with transA, alpha or beta"
		}
		if attrIntOr(n, "transB", 0) != 0 {
			return weightLayout{axis: 0, bias: 2}, ""
		}
		return weightLayout{axis: 1, bias: 2}, ""
	},
	"MatMul": func(*onnxpb.NodeProto) (weightLayout, string) { return weightLayout{axis: 1, bias: -1}, "" },
}

// quantizeWeights makes n's weight per-channel symmetric int8 behind a
// DequantizeLinear, and its bias int32 at scale input_scale*weight_scale (what
// QLinearConv and QGemm take), or says why the node stays float32.
func quantizeWeights(e *editor, n *onnxpb.NodeProto, i int, params map[string]qparams) string {
	l, why := staticWeightLayouts[n.GetOpType()](n)
	if why != "" {
		return why
	}
	in := n.GetInput()
	x, ok := params[in[0]]
	if !ok {
		return "its input is not quantized"
	}
	w, dims, _ := e.floats(in[1])
	if l.axis >= len(dims) || (n.GetOpType() != "Conv" && len(dims) != 2) {
		return "weight of unexpected rank"
	}
	channels := int(dims[l.axis])
	inner := 1
	for _, d := range dims[l.axis+1:] {
		inner *= int(d)
	}
	per := len(w) / channels
	// Element j of channel c sits at outer*channels*inner + c*inner + rest.
	index := func(c, j int) int { return (j/inner)*channels*inner + c*inner + j%inner }
	q := make([]byte, len(w))
	scales := perChannelInt8(channels, per, func(c, j int) float32 { return w[index(c, j)] },
		func(c, j int, v int8) { q[index(c, j)] = byte(v) })
	var bias []float32
	if l.bias >= 0 && at(in, l.bias) != "" {
		b, bd, ok := e.floats(in[l.bias])
		if !ok || len(bd) != 1 || int(bd[0]) != channels {
			return "bias is not a constant vector of one value per output channel"
		}
		bias = b
	}
	var nodes []*onnxpb.NodeProto
	wq := e.addInit(bytesInit(in[1]+"/int8", onnxpb.TensorProto_INT8, dims, q))
	ws := e.addInit(floatInit(in[1]+"/scale", []int64{int64(channels)}, scales))
	wz := e.addInit(bytesInit(in[1]+"/zero_point", onnxpb.TensorProto_INT8, []int64{int64(channels)}, make([]byte, channels)))
	wf := e.fresh(in[1] + "/dq")
	nodes = append(nodes, node("DequantizeLinear", "", e.fresh(n.GetName()+"/weight/dequantize"), []string{wq, ws, wz}, []string{wf}, attrInt("axis", int64(l.axis))))
	in[1] = wf
	if bias != nil {
		bq := make([]byte, 4*channels)
		bs := make([]float32, channels)
		for c := range channels {
			bs[c] = x.scale * scales[c]
			v := math.Round(float64(bias[c] / bs[c]))
			binary.LittleEndian.PutUint32(bq[4*c:], uint32(int32(min(max(v, math.MinInt32), math.MaxInt32))))
		}
		bqn := e.addInit(&onnxpb.TensorProto{Name: proto.String(in[l.bias] + "/int32"), Dims: []int64{int64(channels)},
			DataType: proto.Int32(int32(onnxpb.TensorProto_INT32)), RawData: bq})
		bsn := e.addInit(floatInit(in[l.bias]+"/scale", []int64{int64(channels)}, bs))
		bzn := e.addInit(&onnxpb.TensorProto{Name: proto.String(in[l.bias] + "/zero_point"), Dims: []int64{int64(channels)},
			DataType: proto.Int32(int32(onnxpb.TensorProto_INT32)), RawData: make([]byte, 4*channels)})
		bf := e.fresh(in[l.bias] + "/dq")
		nodes = append(nodes, node("DequantizeLinear", "", e.fresh(n.GetName()+"/bias/dequantize"), []string{bqn, bsn, bzn}, []string{bf}, attrInt("axis", 0)))
		in[l.bias] = bf
	}
	e.insertBefore(i, nodes...)
	return ""
}
