package partition

import "github.com/layermesh/layermesh/partition/onnxpb"

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
	if rule, ok := flopRules[nd.OpType]; ok {
		if flops, ok := rule(p, get, outElems); ok {
			return flops
		}
	}
	return outElems
}

// flopRule counts the FLOPs of a heavy op from its inputs (in(i): what is known of
// input i) and its output elements; ok is false where the inputs are not known well
// enough, and the node then counts one FLOP per output element.
type flopRule func(p *onnxpb.NodeProto, in func(int) *vinfo, outElems int64) (flops int64, ok bool)

// flopRules is the dispatch table from op type to FLOP rule, for the ops whose cost
// is far above one operation per output element.
var flopRules = map[string]flopRule{
	"MatMul":        matMulFLOPs,
	"FusedMatMul":   matMulFLOPs,
	"MatMulInteger": matMulFLOPs,
	// compress's quantized forms cost what the float op they replace does.
	"MatMulNBits":           matMulFLOPs,
	"DynamicQuantizeMatMul": matMulFLOPs,
	"DynamicQuantizeLSTM":   recurrentFLOPs(4),
	"Gemm":                  gemmFLOPs,
	"Conv":                  convFLOPs,
	"ConvInteger":           convFLOPs,
	"ConvTranspose":         convTransposeFLOPs,
	"LSTM":                  recurrentFLOPs(4),
	"GRU":                   recurrentFLOPs(3),
	"RNN":                   recurrentFLOPs(1),
	"Attention":             attentionFLOPs,
	"MultiHeadAttention":    attentionFLOPs,
}

// matMulFLOPs: each output element is a dot product over A's last dim.
func matMulFLOPs(_ *onnxpb.NodeProto, in func(int) *vinfo, outElems int64) (int64, bool) {
	a := in(0)
	if a.known() && len(a.shape) > 0 {
		return 2 * outElems * a.shape[len(a.shape)-1], true
	}
	return 0, false
}

func gemmFLOPs(p *onnxpb.NodeProto, in func(int) *vinfo, outElems int64) (int64, bool) {
	a := in(0)
	if a.known() && len(a.shape) == 2 {
		k := a.shape[1]
		if attrInt(p, "transA", 0) != 0 {
			k = a.shape[0]
		}
		return 2 * outElems * k, true
	}
	return 0, false
}

// convFLOPs: each output element sums over one filter (input channels of its group
// times the kernel).
func convFLOPs(_ *onnxpb.NodeProto, in func(int) *vinfo, outElems int64) (int64, bool) {
	w := in(1)
	if w.known() && len(w.shape) >= 3 {
		perOut := int64(1)
		for _, d := range w.shape[1:] {
			perOut *= d
		}
		return 2 * outElems * perOut, true
	}
	return 0, false
}

// convTransposeFLOPs: each input element is scattered through one filter.
func convTransposeFLOPs(_ *onnxpb.NodeProto, in func(int) *vinfo, _ int64) (int64, bool) {
	x, w := in(0), in(1)
	if x.known() && w.known() && len(w.shape) >= 3 {
		perIn := int64(1)
		for _, d := range w.shape[1:] {
			perIn *= d
		}
		return 2 * x.numel() * perIn, true
	}
	return 0, false
}

// recurrentFLOPs is the rule of a recurrent layer with the given number of gates:
// per step, direction and gate, a [batch, input+hidden] x [input+hidden, hidden]
// product.
func recurrentFLOPs(gates int64) flopRule {
	return func(p *onnxpb.NodeProto, in func(int) *vinfo, _ int64) (int64, bool) {
		x := in(0)
		h := attrInt(p, "hidden_size", 0)
		dirs := int64(1)
		if attrString(p, "direction", "forward") == "bidirectional" {
			dirs = 2
		}
		if x.known() && len(x.shape) == 3 {
			return 2 * dirs * gates * h * (x.shape[2] + h) * x.shape[0] * x.shape[1], true
		}
		return 0, false
	}
}

// attentionFLOPs: the Q, K, V projections of a [batch, seq, dim] input plus the two
// seq x seq products.
func attentionFLOPs(_ *onnxpb.NodeProto, in func(int) *vinfo, _ int64) (int64, bool) {
	x := in(0)
	if x.known() && len(x.shape) == 3 {
		b, s, d := x.shape[0], x.shape[1], x.shape[2]
		return 2*b*s*d*3*d + 4*b*s*s*d, true
	}
	return 0, false
}
