package partition

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
	switch nd.OpType {
	case "MatMul", "FusedMatMul", "MatMulInteger":
		a := get(0)
		if a.known() && len(a.shape) > 0 {
			return 2 * outElems * a.shape[len(a.shape)-1]
		}
	case "Gemm":
		a := get(0)
		if a.known() && len(a.shape) == 2 {
			k := a.shape[1]
			if attrInt(p, "transA", 0) != 0 {
				k = a.shape[0]
			}
			return 2 * outElems * k
		}
	case "Conv", "ConvInteger":
		w := get(1)
		if w.known() && len(w.shape) >= 3 {
			perOut := int64(1)
			for _, d := range w.shape[1:] {
				perOut *= d
			}
			return 2 * outElems * perOut
		}
	case "ConvTranspose":
		x, w := get(0), get(1)
		if x.known() && w.known() && len(w.shape) >= 3 {
			perIn := int64(1)
			for _, d := range w.shape[1:] {
				perIn *= d
			}
			return 2 * x.numel() * perIn
		}
	case "LSTM", "GRU", "RNN":
		x := get(0)
		h := attrInt(p, "hidden_size", 0)
		gates := map[string]int64{"LSTM": 4, "GRU": 3, "RNN": 1}[nd.OpType]
		dirs := int64(1)
		if attrString(p, "direction", "forward") == "bidirectional" {
			dirs = 2
		}
		if x.known() && len(x.shape) == 3 {
			return 2 * dirs * gates * h * (x.shape[2] + h) * x.shape[0] * x.shape[1]
		}
	case "Attention", "MultiHeadAttention":
		x := get(0)
		if x.known() && len(x.shape) == 3 {
			b, s, d := x.shape[0], x.shape[1], x.shape[2]
			return 2*b*s*d*3*d + 4*b*s*s*d
		}
	}
	return outElems
}
