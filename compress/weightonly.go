package compress

import (
	"fmt"

	"github.com/layermesh/layermesh/partition/onnxpb"
)

// layout says which axis of a 2-D weight is MatMulNBits' N (output) axis.
type layout int

const (
	// colsOut: the weight is [K, N] (MatMul's B, Gemm's B without transB).
	colsOut layout = iota
	// rowsOut: the weight is [N, K] (Gemm's B with transB, an embedding table's rows).
	rowsOut
)

// quantKey names one quantization of one weight; every node that reads the same
// weight in the same layout shares it, so a tied weight dequantizes identically
// at each of its uses and is stored once.
type quantKey struct {
	weight string
	layout layout
}

// quantWeight is a weight quantized and added to the graph.
type quantWeight struct {
	q                          *blockQuant
	packed, scales, zeroPoints string // initializer names; zeroPoints "" when symmetric
}

// weightOnly rewrites MatMul and Gemm nodes with constant weights into
// MatMulNBits, and embedding Gathers into GatherBlockQuantized, per the rules
// in weightRules and gatherRule.
type weightOnly struct {
	e         *editor
	bits      int
	block     int
	symmetric bool
	accuracy  int64
	done      map[quantKey]*quantWeight
	rep       *Report
}

// weightRule rewrites node i, or says why it cannot.
type weightRule func(w *weightOnly, i int, n *onnxpb.NodeProto) (ok bool, why string)

// weightRules are the weight-only rewrites by op type. Gathers run in a second
// sweep (gatherRule) so that they can reuse a tied weight's MatMul quantization.
var weightRules = map[string]weightRule{
	"MatMul": (*weightOnly).matMul,
	"Gemm":   (*weightOnly).gemm,
}

// run applies the rules to every node of the main graph.
func (w *weightOnly) run() {
	nodes := w.e.graph.GetNode()
	for i, n := range nodes {
		if n.GetDomain() != "" && n.GetDomain() != "ai.onnx" {
			continue
		}
		rule, ok := weightRules[n.GetOpType()]
		if !ok {
			continue
		}
		if ok, why := rule(w, i, n); ok {
			w.rep.rewrote(n, "MatMulNBits")
		} else if why != "" {
			w.rep.kept(n, why)
		}
	}
	for i, n := range nodes {
		if n.GetOpType() == "Gather" && (n.GetDomain() == "" || n.GetDomain() == "ai.onnx") {
			if ok, why := w.gather(i, n); ok {
				w.rep.rewrote(n, "GatherBlockQuantized")
			} else if why != "" {
				w.rep.kept(n, why)
			}
		}
	}
	if len(w.done) > 0 {
		w.e.useOpset(msDomain, 1)
	}
}

// matMul rewrites Y = A x B with B a [K, N] float initializer.
func (w *weightOnly) matMul(i int, n *onnxpb.NodeProto) (bool, string) {
	if len(n.GetInput()) != 2 {
		return false, "MatMul without two inputs"
	}
	if _, isInit := w.e.inits[n.GetInput()[1]]; !isInit {
		return false, "" // activation x activation (attention scores): nothing to quantize
	}
	qw, why := w.quantized(n.GetInput()[1], colsOut)
	if qw == nil {
		return false, why
	}
	w.e.replace(i, w.matMulNBits(n, qw, ""))
	return true, ""
}

// gemm rewrites Y = A x B (+ C) with transA=0, alpha=1, B a float initializer
// and C, if any, a bias of N values added with beta=1.
func (w *weightOnly) gemm(i int, n *onnxpb.NodeProto) (bool, string) {
	in := n.GetInput()
	if len(in) < 2 {
		return false, "Gemm without two inputs"
	}
	if _, isInit := w.e.inits[in[1]]; !isInit {
		return false, "Gemm whose B is not a constant weight"
	}
	if attrIntOr(n, "transA", 0) != 0 || attrFloatOr(n, "alpha", 1) != 1 {
		return false, "Gemm with transA or alpha != 1"
	}
	l := colsOut
	if attrIntOr(n, "transB", 0) != 0 {
		l = rowsOut
	}
	bias := ""
	if len(in) > 2 && in[2] != "" {
		dims, ok := w.e.floatDims(in[2])
		if !ok || len(dims) != 1 || attrFloatOr(n, "beta", 1) != 1 {
			return false, "Gemm whose C is not a bias vector added with beta=1"
		}
		bias = in[2]
	}
	qw, why := w.quantized(in[1], l)
	if qw == nil {
		return false, why
	}
	if bias != "" && int(w.e.inits[bias].GetDims()[0]) != qw.q.N {
		return false, "Gemm bias does not have N values"
	}
	w.e.replace(i, w.matMulNBits(n, qw, bias))
	return true, ""
}

// matMulNBits builds the replacement node for n.
func (w *weightOnly) matMulNBits(n *onnxpb.NodeProto, qw *quantWeight, bias string) *onnxpb.NodeProto {
	inputs := []string{n.GetInput()[0], qw.packed, qw.scales, qw.zeroPoints}
	if bias != "" {
		inputs = append(inputs, "", bias) // g_idx (deprecated) left empty
	}
	for len(inputs) > 3 && inputs[len(inputs)-1] == "" {
		inputs = inputs[:len(inputs)-1]
	}
	return node("MatMulNBits", msDomain, w.e.fresh(n.GetName()+"/q"), inputs, n.GetOutput()[:1],
		attrInt("K", int64(qw.q.K)), attrInt("N", int64(qw.q.N)), attrInt("bits", int64(w.bits)),
		attrInt("block_size", int64(w.block)), attrInt("accuracy_level", w.accuracy))
}

// quantized returns the weight's quantization in layout l, quantizing it on
// first use; nil and the reason when the weight cannot be quantized.
func (w *weightOnly) quantized(name string, l layout) (*quantWeight, string) {
	key := quantKey{name, l}
	if qw, ok := w.done[key]; ok {
		return qw, ""
	}
	val, dims, ok := w.e.floatAt(name)
	if !ok {
		return nil, fmt.Sprintf("weight %q is not a float32 tensor stored in the model file", name)
	}
	if len(dims) != 2 {
		return nil, fmt.Sprintf("weight %q has rank %d, not 2", name, len(dims))
	}
	rows, cols := int(dims[0]), int(dims[1])
	var q *blockQuant
	if l == colsOut {
		q = quantizeBlocks(cols, rows, w.bits, w.block, w.symmetric, func(n, k int) float32 { return val(k*cols + n) })
	} else {
		q = quantizeBlocks(rows, cols, w.bits, w.block, w.symmetric, func(n, k int) float32 { return val(n*cols + k) })
	}
	base := fmt.Sprintf("%s/q%d", name, w.bits)
	if l == rowsOut {
		base += "t"
	}
	qw := &quantWeight{q: q}
	qw.packed = w.e.addInit(bytesInit(base+"/packed", onnxpb.TensorProto_UINT8, []int64{int64(q.N), int64(q.kBlocks()), int64(q.blob())}, q.Packed))
	qw.scales = w.e.addInit(floatInit(base+"/scales", []int64{int64(q.N), int64(q.kBlocks())}, q.Scales))
	if q.ZeroPoints != nil {
		qw.zeroPoints = w.e.addInit(bytesInit(base+"/zero_points", onnxpb.TensorProto_UINT8, []int64{int64(q.N), int64(q.zpRow())}, q.ZeroPoints))
	}
	w.done[key] = qw
	return qw, ""
}

// gatherPaysBytes is the embedding table size from which an untied Gather is
// quantized on its own: below it the table is a rounding error of the model.
const gatherPaysBytes = 64 << 10

// gather rewrites an embedding lookup Gather(table, ids) on axis 0 into
// GatherBlockQuantized over the table's row-major quantization, the same one a
// tied LM head (Gemm with transB) reads.
func (w *weightOnly) gather(i int, n *onnxpb.NodeProto) (bool, string) {
	in := n.GetInput()
	t, isInit := w.e.inits[in[0]]
	if !isInit || len(in) != 2 {
		return false, ""
	}
	qw, tied := w.done[quantKey{in[0], rowsOut}]
	if !tied {
		if _, colTied := w.done[quantKey{in[0], colsOut}]; colTied {
			return false, "embedding tied to a MatMul weight stored [K, N]: the table stays float32"
		}
		if len(t.GetRawData())+4*len(t.GetFloatData()) < gatherPaysBytes {
			return false, ""
		}
	}
	if attrIntOr(n, "axis", 0) != 0 || len(t.GetDims()) != 2 {
		return false, "Gather on an axis other than 0 of a 2-D table"
	}
	if t.GetDims()[1]%int64(w.block) != 0 {
		return false, fmt.Sprintf("embedding width %d is not a multiple of the block size %d", t.GetDims()[1], w.block)
	}
	if !tied {
		var why string
		if qw, why = w.quantized(in[0], rowsOut); qw == nil {
			return false, why
		}
	}
	q := qw.q
	shape := w.e.addInit(int64Init(qw.packed+"/rows_shape", []int64{2}, int64(q.N), int64(q.kBlocks()*q.blob())))
	rows := w.e.fresh(qw.packed + "/rows")
	reshape := node("Reshape", "", w.e.fresh(n.GetName()+"/table"), []string{qw.packed, shape}, []string{rows})
	inputs := []string{rows, in[1], qw.scales}
	if qw.zeroPoints != "" {
		inputs = append(inputs, qw.zeroPoints)
	}
	g := node("GatherBlockQuantized", msDomain, w.e.fresh(n.GetName()+"/q"), inputs, n.GetOutput(),
		attrInt("gather_axis", 0), attrInt("quantize_axis", 1), attrInt("block_size", int64(w.block)), attrInt("bits", int64(w.bits)))
	w.e.replace(i, reshape, g)
	return true, ""
}
