package modelgen

import (
	"math"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
	"google.golang.org/protobuf/proto"
)

// Tensor names of the with-past GPT, the layout Hugging Face Optimum exports a
// decoder in ("decoder_model_merged" without the branch): the graph reads the
// keys and values of earlier positions and writes them back with the new
// positions appended, so a caller that keeps them runs one token per step.
const (
	GPTAttentionMask = "attention_mask"
	GPTPositionIDs   = "position_ids"
)

// GPTPastKey, GPTPastValue, GPTPresentKey and GPTPresentValue name block i's
// state pair tensors: past_key_values.{i}.key -> present.{i}.key, and the same
// for value. Past tensors are float32 [batch, heads, past, head_dim]; present
// tensors [batch, heads, past+seq, head_dim].
func GPTPastKey(i int) string { return "past_key_values." + itoa(i) + ".key" }

// GPTPastValue names block i's past values; see GPTPastKey.
func GPTPastValue(i int) string { return "past_key_values." + itoa(i) + ".value" }

// GPTPresentKey names block i's present keys; see GPTPastKey.
func GPTPresentKey(i int) string { return "present." + itoa(i) + ".key" }

// GPTPresentValue names block i's present values; see GPTPastKey.
func GPTPresentValue(i int) string { return "present." + itoa(i) + ".value" }

// attentionPadding is what a masked-out position (attention_mask 0) adds to
// an attention score: large enough to vanish in the softmax, finite so that
// 0 * it stays 0 for positions that are not masked.
const attentionPadding = 1e9

// gptPastShared holds the constants and per-graph tensors every block of the
// with-past GPT reads.
type gptPastShared struct {
	g                                      *graphBuilder
	cfg                                    GPTConfig
	d, hd                                  int64
	one1, headsShape, mergeShape, splitQKV string
	scale, sqrt2, fOne, fHalf, axes0, big  string
	padShape                               string
	negInf                                 *onnxpb.AttributeProto
	f                                      func(name string, dims ...any) string
	i64                                    func(name string, dims ...any) string
}

// GPTWithPast builds the GPT of GPT(cfg), same weights (same names, same
// seed), in the with-past layout: inputs input_ids [batch, seq],
// attention_mask int64 [batch, past+seq], position_ids int64 [batch, seq] and
// per block past_key_values.{i}.key/.value [batch, heads, past, head_dim];
// outputs logits [batch, seq, vocab] and present.{i}.key/.value. The past
// length is a dynamic dim and may be 0 (the prefill step). ReferenceGPT on the
// whole sequence is its reference: the logits of a step equal the last seq
// rows of a full recomputation.
//
// A block derives its causal and padding masks from its own tensors (the new
// rows, the present keys, the attention_mask input), so between blocks only the
// hidden state flows, and each block's state pair is read and written inside the
// block.
func GPTWithPast(cfg GPTConfig) (*onnxpb.ModelProto, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	name := cfg.Name
	if name == "" {
		name = "gpt"
	}
	d, hd, heads := int64(cfg.Dim), int64(cfg.Dim/cfg.Heads), int64(cfg.Heads)
	g := newGraphBuilder(name, cfg.Seed).withWeights(cfg.Weights)
	g.graph.Input = []*onnxpb.ValueInfoProto{
		valueInfo(GPTInput, elemInt64, "batch", "seq"),
		valueInfo(GPTAttentionMask, elemInt64, "batch", "total"),
		valueInfo(GPTPositionIDs, elemInt64, "batch", "seq"),
	}
	g.graph.Output = []*onnxpb.ValueInfoProto{valueInfo(GPTOutput, elemFloat, "batch", "seq", int64(cfg.Vocab))}
	for i := 0; i < cfg.Layers; i++ {
		g.graph.Input = append(g.graph.Input,
			valueInfo(GPTPastKey(i), elemFloat, "batch", heads, "past", hd),
			valueInfo(GPTPastValue(i), elemFloat, "batch", heads, "past", hd))
		g.graph.Output = append(g.graph.Output,
			valueInfo(GPTPresentKey(i), elemFloat, "batch", heads, "total", hd),
			valueInfo(GPTPresentValue(i), elemFloat, "batch", heads, "total", hd))
	}
	const std = 0.02
	wte := g.uniformWeight(TokenEmbedding, []int64{int64(cfg.Vocab), d}, std, 0)
	wpe := g.uniformWeight(PosEmbedding, []int64{int64(cfg.Context), d}, std/2, 0)
	s := &gptPastShared{
		g: g, cfg: cfg, d: d, hd: hd,
		one1:       g.constInt64("const/one1", []int64{1}, 1),
		axes0:      g.constInt64("const/axes0", []int64{1}, 0),
		headsShape: g.constInt64("const/heads_shape", []int64{4}, 0, 0, heads, hd),
		mergeShape: g.constInt64("const/merge_shape", []int64{3}, 0, 0, d),
		splitQKV:   g.constInt64("const/split_qkv", []int64{3}, d, d, d),
		scale:      g.constFloat("const/attn_scale", nil, float32(1/math.Sqrt(float64(hd)))),
		sqrt2:      g.constFloat("const/sqrt2", nil, float32(math.Sqrt2)),
		fOne:       g.constFloat("const/one_f", nil, 1),
		fHalf:      g.constFloat("const/half", nil, 0.5),
		negInf: &onnxpb.AttributeProto{Name: proto.String("value"), Type: onnxpb.AttributeProto_TENSOR.Enum(),
			T: floatTensor("", []int64{1}, []float32{float32(math.Inf(-1))})},
	}
	s.f = func(name string, dims ...any) string { return g.typed(name, elemFloat, dims...) }
	s.i64 = func(name string, dims ...any) string { return g.typed(name, elemInt64, dims...) }
	f := s.f
	bsd := []any{"batch", "seq", d}

	tok := f(g.op1("Gather", "embed/tokens", []string{wte, GPTInput}), bsd...)
	pos := f(g.op1("Gather", "embed/pos", []string{wpe, GPTPositionIDs}), bsd...)
	x := f(g.op1("Add", "embed/sum", []string{tok, pos}), bsd...)

	s.big = g.constFloat("const/padding", nil, attentionPadding)
	s.padShape = g.constInt64("const/pad_shape", []int64{4}, 0, 1, 1, -1)

	for i := 0; i < cfg.Layers; i++ {
		x = s.block(i, x)
	}

	g.uniformWeight(lnfScale, []int64{d}, 0.1, 1)
	g.uniformWeight(lnfBias, []int64{d}, std, 0)
	hf := s.layerNorm("ln_f", x, lnfScale, lnfBias)
	flatShape := g.constInt64("const/flat_shape", []int64{2}, -1, d)
	vocabDim := g.constInt64("const/vocab_dim", []int64{1}, int64(cfg.Vocab))
	flat := f(g.op1("Reshape", "lm_head/flatten", []string{hf, flatShape}), "batch*seq", d)
	scores := f(g.op1("Gemm", "lm_head", []string{flat, wte}, attrInt("transB", 1)), "batch*seq", int64(cfg.Vocab))
	batchSeq := s.i64(g.op1("Shape", "lm_head/batch_seq", []string{hf}, attrInt("start", 0), attrInt("end", 2)), 2)
	outShape := s.i64(g.op1("Concat", "lm_head/out_shape", []string{batchSeq, vocabDim}, attrInt("axis", 0)), 3)
	g.op1("Reshape", GPTOutput, []string{scores, outShape})
	return g.finish("GPT-2-style decoder with past key/values: " + gptDoc(cfg))
}

// gptDoc describes cfg for a model's doc string.
func gptDoc(cfg GPTConfig) string {
	weights := " seed=" + itoa(int(cfg.Seed))
	if cfg.Weights != nil {
		weights = " weights=trained"
	}
	return "layers=" + itoa(cfg.Layers) + " dim=" + itoa(cfg.Dim) + " heads=" + itoa(cfg.Heads) +
		" vocab=" + itoa(cfg.Vocab) + " context=" + itoa(cfg.Context) + weights
}

func (s *gptPastShared) layerNorm(name, in, scale, bias string) string {
	return s.f(s.g.op1("LayerNormalization", name, []string{in, scale, bias},
		attrInt("axis", -1), attrFloat("epsilon", layerNormEpsilon)), "batch", "seq", s.d)
}

func (s *gptPastShared) linear(name, in, w, b string, width int64) string {
	mm := s.f(s.g.op1("MatMul", name+"/matmul", []string{in, w}), "batch", "seq", width)
	return s.f(s.g.op1("Add", name, []string{mm, b}), "batch", "seq", width)
}

// heads reshapes [batch, seq, dim] into [batch, heads, seq, head_dim].
func (s *gptPastShared) heads(name, in string) string {
	r := s.f(s.g.op1("Reshape", name+"/reshape", []string{in, s.headsShape}), "batch", "seq", int64(s.cfg.Heads), s.hd)
	return s.f(s.g.op1("Transpose", name, []string{r}, attrInts("perm", 0, 2, 1, 3)), "batch", int64(s.cfg.Heads), "seq", s.hd)
}

// block adds transformer block i, reading hidden state x, and returns the
// block's output hidden state.
func (s *gptPastShared) block(i int, x string) string {
	g, f, d := s.g, s.f, s.d
	n := gptBlock(i)
	p := "block" + itoa(i) + "/"
	const std = 0.02
	residStd := float32(std / math.Sqrt(2*float64(s.cfg.Layers)))
	n.addWeights(g, d, std, residStd)
	bsd := []any{"batch", "seq", d}
	heads := int64(s.cfg.Heads)

	h := s.layerNorm(p+"ln1", x, n.ln1Scale, n.ln1Bias)
	qkv := s.linear(p+"attn/qkv", h, n.qkvW, n.qkvB, 3*d)
	parts := g.node("Split", p+"attn/split", []string{qkv, s.splitQKV}, 3, attrInt("axis", 2))
	for _, part := range parts {
		f(part, bsd...)
	}
	q := s.heads(p+"attn/q", parts[0])
	k := s.heads(p+"attn/k", parts[1])
	v := s.heads(p+"attn/v", parts[2])
	// The present tensors are graph outputs, typed by the graph's output list.
	presentK := g.op1("Concat", GPTPresentKey(i), []string{GPTPastKey(i), k}, attrInt("axis", 2))
	presentV := g.op1("Concat", GPTPresentValue(i), []string{GPTPastValue(i), v}, attrInt("axis", 2))
	kT := f(g.op1("Transpose", p+"attn/kT", []string{presentK}, attrInts("perm", 0, 1, 3, 2)), "batch", heads, s.hd, "total")

	// Causal mask [seq, total]: row r is position past+r, which sees keys
	// 0..past+r; Trilu keeps (as -inf) the entries with col-row >= past+1.
	total := s.i64(g.op1("Shape", p+"mask/total", []string{presentK}, attrInt("start", 2), attrInt("end", 3)), 1)
	seq := s.i64(g.op1("Shape", p+"mask/seq", []string{x}, attrInt("start", 1), attrInt("end", 2)), 1)
	past := s.i64(g.op1("Sub", p+"mask/past", []string{total, seq}), 1)
	diag := s.i64(g.op1("Add", p+"mask/diag1", []string{past, s.one1}), 1)
	diagScalar := s.i64(g.op1("Squeeze", p+"mask/diag", []string{diag, s.axes0}))
	shape := s.i64(g.op1("Concat", p+"mask/shape", []string{seq, total}, attrInt("axis", 0)), 2)
	full := f(g.op1("ConstantOfShape", p+"mask/fill", []string{shape}, s.negInf), "seq", "total")
	mask := f(g.op1("Trilu", p+"mask", []string{full, diagScalar}, attrInt("upper", 1)), "seq", "total")

	// Padding: (mask - 1) * 1e9, as [batch, 1, 1, total], added to every score. Each
	// block computes it from the attention_mask input itself, so that no cut carries
	// a tensor that grows with the context.
	maskF := f(g.op1("Cast", p+"pad/cast", []string{GPTAttentionMask}, attrInt("to", int64(elemFloat))), "batch", "total")
	minus := f(g.op1("Sub", p+"pad/minus_one", []string{maskF, s.fOne}), "batch", "total")
	padFlat := f(g.op1("Mul", p+"pad/scaled", []string{minus, s.big}), "batch", "total")
	padding := f(g.op1("Reshape", p+"pad", []string{padFlat, s.padShape}), "batch", 1, 1, "total")

	bhst := []any{"batch", heads, "seq", "total"}
	scores := f(g.op1("MatMul", p+"attn/scores", []string{q, kT}), bhst...)
	scaled := f(g.op1("Mul", p+"attn/scaled", []string{scores, s.scale}), bhst...)
	causal := f(g.op1("Add", p+"attn/causal", []string{scaled, mask}), bhst...)
	masked := f(g.op1("Add", p+"attn/masked", []string{causal, padding}), bhst...)
	probs := f(g.op1("Softmax", p+"attn/probs", []string{masked}, attrInt("axis", -1)), bhst...)
	ctx := f(g.op1("MatMul", p+"attn/context", []string{probs, presentV}), "batch", heads, "seq", s.hd)
	merged := f(g.op1("Transpose", p+"attn/merge", []string{ctx}, attrInts("perm", 0, 2, 1, 3)), "batch", "seq", heads, s.hd)
	flat := f(g.op1("Reshape", p+"attn/merge/reshape", []string{merged, s.mergeShape}), bsd...)
	attn := s.linear(p+"attn/proj", flat, n.projW, n.projB, d)
	x = f(g.op1("Add", p+"attn/residual", []string{x, attn}), bsd...)

	h2 := s.layerNorm(p+"ln2", x, n.ln2Scale, n.ln2Bias)
	fc := s.linear(p+"mlp/fc", h2, n.fcW, n.fcB, 4*d)
	wide := []any{"batch", "seq", 4 * d}
	div := f(g.op1("Div", p+"mlp/gelu/div", []string{fc, s.sqrt2}), wide...)
	erf := f(g.op1("Erf", p+"mlp/gelu/erf", []string{div}), wide...)
	plus := f(g.op1("Add", p+"mlp/gelu/add", []string{erf, s.fOne}), wide...)
	mul := f(g.op1("Mul", p+"mlp/gelu/mul", []string{fc, plus}), wide...)
	gelu := f(g.op1("Mul", p+"mlp/gelu", []string{mul, s.fHalf}), wide...)
	mlp := s.linear(p+"mlp/proj", gelu, n.fc2W, n.fc2B, d)
	return f(g.op1("Add", p+"mlp/residual", []string{x, mlp}), bsd...)
}

// gptPastInputs returns the inputs of a with-past prefill step for ids
// [batch, seq]: an all-ones attention mask, positions 0..seq-1 and empty
// (past length 0) keys and values.
func gptPastInputs(c GPTConfig, batch, seq int) []tensor.Tensor {
	mask := make([]int64, batch*seq)
	pos := make([]int64, batch*seq)
	for i := range mask {
		mask[i] = 1
		pos[i] = int64(i % seq)
	}
	shape := []int64{int64(batch), int64(seq)}
	out := []tensor.Tensor{tensor.FromInt64(GPTAttentionMask, shape, mask), tensor.FromInt64(GPTPositionIDs, shape, pos)}
	empty := []int64{int64(batch), int64(c.Heads), 0, int64(c.Dim / c.Heads)}
	for i := 0; i < c.Layers; i++ {
		out = append(out, tensor.FromFloat32(GPTPastKey(i), empty, nil), tensor.FromFloat32(GPTPastValue(i), empty, nil))
	}
	return out
}
