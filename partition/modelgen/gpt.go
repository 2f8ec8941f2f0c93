package modelgen

import (
	"fmt"
	"math"

	"github.com/layermesh/layermesh/partition/onnxpb"
	"google.golang.org/protobuf/proto"
)

// GPTConfig describes a GPT-2-style decoder.
type GPTConfig struct {
	Layers  int    // number of transformer blocks
	Dim     int    // model width (d_model)
	Heads   int    // attention heads; must divide Dim
	Vocab   int    // token vocabulary size
	Context int    // maximum sequence length (rows of the position table)
	Seed    int64  // seeds every weight (those not given in Weights)
	Name    string // graph name; "gpt" when empty
	// WithPast builds the with-past layout (GPTWithPast): the model runs as a
	// session, one token per step, keeping its keys and values between steps.
	WithPast bool
	// Weights, when set, are trained weights (ReadSafetensors) used instead of drawn
	// ones: every weight of the model must be there with its shape, and nothing else.
	Weights *Trained
}

// Presets. GPT2Small has the shape of OpenAI's GPT-2 small (124M parameters,
// about 500 MB in float32); GPTLarge has GPT-2 medium's shape (about 355M
// parameters, 1.4 GB) and is what split and scale tests use.
var (
	GPTTiny   = GPTConfig{Layers: 2, Dim: 32, Heads: 2, Vocab: 97, Context: 16, Seed: 1, Name: "gpt-tiny"}
	GPT2Small = GPTConfig{Layers: 12, Dim: 768, Heads: 12, Vocab: 50257, Context: 1024, Seed: 1, Name: "gpt2-small"}
	GPTLarge  = GPTConfig{Layers: 24, Dim: 1024, Heads: 16, Vocab: 50257, Context: 1024, Seed: 1, Name: "gpt-large"}
)

// GPT tensor names shared by the builder and ReferenceGPT, and useful to the
// partitioner's tests: TokenEmbedding is read both by the first Gather and by
// the LM head's Gemm (the tied weight).
const (
	GPTInput       = "input_ids"
	GPTOutput      = "logits"
	TokenEmbedding = "wte"
	PosEmbedding   = "wpe"
)

// layerNormEpsilon is GPT-2's LayerNorm epsilon.
const layerNormEpsilon = 1e-5

// Validate reports whether the configuration describes a buildable model.
func (c GPTConfig) Validate() error {
	switch {
	case c.Layers < 1, c.Dim < 1, c.Heads < 1, c.Vocab < 1, c.Context < 1:
		return fmt.Errorf("%w: gpt layers, dim, heads, vocab and context must be positive: %+v", ErrInvalidConfig, c)
	case c.Dim%c.Heads != 0:
		return fmt.Errorf("%w: gpt dim %d not divisible by heads %d", ErrInvalidConfig, c.Dim, c.Heads)
	}
	if err := checkBounds("gpt", "layers", c.Layers, 1<<16, "dim", c.Dim, 1<<20, "vocab", c.Vocab, 1<<24, "context", c.Context, 1<<24); err != nil {
		return err
	}
	return checkSize(c.Params())
}

// Params returns the number of float32 parameters the model holds (the
// tied token table counted once).
func (c GPTConfig) Params() int64 {
	d, l := int64(c.Dim), int64(c.Layers)
	perBlock := 2*2*d + (d*3*d + 3*d) + (d*d + d) + (d*4*d + 4*d) + (4*d*d + d)
	return int64(c.Vocab)*d + int64(c.Context)*d + l*perBlock + 2*d
}

// gptBlockNames holds the initializer names of one block; gptBlock gives
// them for block i, so the builder and the reference read the same tensors.
type gptBlockNames struct {
	ln1Scale, ln1Bias, qkvW, qkvB, projW, projB, ln2Scale, ln2Bias, fcW, fcB, fc2W, fc2B string
}

func gptBlock(i int) gptBlockNames {
	p := "block" + itoa(i) + "/"
	return gptBlockNames{
		ln1Scale: p + "ln1/scale", ln1Bias: p + "ln1/bias",
		qkvW: p + "attn/qkv/weight", qkvB: p + "attn/qkv/bias",
		projW: p + "attn/proj/weight", projB: p + "attn/proj/bias",
		ln2Scale: p + "ln2/scale", ln2Bias: p + "ln2/bias",
		fcW: p + "mlp/fc/weight", fcB: p + "mlp/fc/bias",
		fc2W: p + "mlp/proj/weight", fc2B: p + "mlp/proj/bias",
	}
}

// addWeights draws the block's weights, in the one order that makes GPT and
// GPTWithPast of one seed carry the same values: std for most, residStd for the two
// projections into the residual stream, LayerNorm scales around 1.
func (n gptBlockNames) addWeights(g *graphBuilder, d int64, std, residStd float32) {
	g.uniformWeight(n.ln1Scale, []int64{d}, 0.1, 1)
	g.uniformWeight(n.ln1Bias, []int64{d}, std, 0)
	g.uniformWeight(n.qkvW, []int64{d, 3 * d}, std, 0)
	g.uniformWeight(n.qkvB, []int64{3 * d}, std, 0)
	g.uniformWeight(n.projW, []int64{d, d}, residStd, 0)
	g.uniformWeight(n.projB, []int64{d}, std, 0)
	g.uniformWeight(n.ln2Scale, []int64{d}, 0.1, 1)
	g.uniformWeight(n.ln2Bias, []int64{d}, std, 0)
	g.uniformWeight(n.fcW, []int64{d, 4 * d}, std, 0)
	g.uniformWeight(n.fcB, []int64{4 * d}, std, 0)
	g.uniformWeight(n.fc2W, []int64{4 * d, d}, residStd, 0)
	g.uniformWeight(n.fc2B, []int64{d}, std, 0)
}

// Final LayerNorm weights.
const (
	lnfScale = "ln_f/scale"
	lnfBias  = "ln_f/bias"
)

// GPT builds a GPT-2-style decoder: token and position embeddings, cfg.Layers
// pre-LayerNorm blocks (causal multi-head attention and a GELU MLP, each with
// a residual add), a final LayerNorm and an LM head tied to the token
// embedding. Input "input_ids" int64 [batch, seq]; output "logits" float32
// [batch, seq, vocab]. Opset 17, IR 8.
//
// Each block derives its causal mask from its own input's shape, so the only
// tensor that flows from one block to the next is the hidden state: a
// pipeline cut between blocks carries [batch, seq, dim] and nothing else.
func GPT(cfg GPTConfig) (*onnxpb.ModelProto, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	name := cfg.Name
	if name == "" {
		name = "gpt"
	}
	d, hd := int64(cfg.Dim), int64(cfg.Dim/cfg.Heads)
	g := newGraphBuilder(name, cfg.Seed).withWeights(cfg.Weights)
	g.graph.Input = []*onnxpb.ValueInfoProto{valueInfo(GPTInput, elemInt64, "batch", "seq")}
	g.graph.Output = []*onnxpb.ValueInfoProto{valueInfo(GPTOutput, elemFloat, "batch", "seq", int64(cfg.Vocab))}

	const std = 0.02
	// GPT-2 scales the projections that feed the residual stream by
	// 1/sqrt(2*layers) so the stream's variance does not grow with depth.
	residStd := float32(std / math.Sqrt(2*float64(cfg.Layers)))

	wte := g.uniformWeight(TokenEmbedding, []int64{int64(cfg.Vocab), d}, std, 0)
	wpe := g.uniformWeight(PosEmbedding, []int64{int64(cfg.Context), d}, std/2, 0)

	axis0 := g.constInt64("const/axes0", []int64{1}, 0)
	zeros1 := g.constInt64("const/zeros1", []int64{1}, 0)
	one := g.constInt64("const/one", nil, 1)
	splitQKV := g.constInt64("const/split_qkv", []int64{3}, d, d, d)
	headsShape := g.constInt64("const/heads_shape", []int64{4}, 0, 0, int64(cfg.Heads), hd)
	mergeShape := g.constInt64("const/merge_shape", []int64{3}, 0, 0, d)
	scale := g.constFloat("const/attn_scale", nil, float32(1/math.Sqrt(float64(hd))))
	sqrt2 := g.constFloat("const/sqrt2", nil, float32(math.Sqrt2))
	fOne := g.constFloat("const/one_f", nil, 1)
	fHalf := g.constFloat("const/half", nil, 0.5)
	flatShape := g.constInt64("const/flat_shape", []int64{2}, -1, d)
	vocabDim := g.constInt64("const/vocab_dim", []int64{1}, int64(cfg.Vocab))
	negInf := &onnxpb.AttributeProto{Name: proto.String("value"), Type: onnxpb.AttributeProto_TENSOR.Enum(),
		T: floatTensor("", []int64{1}, []float32{float32(math.Inf(-1))})}

	// f and i64 record an activation's shape in value_info; every shape is
	// in terms of the symbolic "batch" and "seq" of the input.
	f := func(name string, dims ...any) string { return g.typed(name, elemFloat, dims...) }
	i64 := func(name string, dims ...any) string { return g.typed(name, elemInt64, dims...) }
	bsd := []any{"batch", "seq", d}

	// Embeddings: the position rows 0..seq-1 are the first seq rows of the
	// table, sliced by the input's own length. (Not Range+Gather: ONNX
	// Runtime 1.30 returns no value for a Range output that is also a graph
	// output, which a pipeline cut right after it would make it.)
	tok := f(g.op1("Gather", "embed/tokens", []string{wte, GPTInput}), bsd...)
	seqLen := i64(g.op1("Shape", "embed/seq_len", []string{GPTInput}, attrInt("start", 1), attrInt("end", 2)), 1)
	pos := f(g.op1("Slice", "embed/pos", []string{wpe, zeros1, seqLen, axis0}), "seq", d)
	x := f(g.op1("Add", "embed/sum", []string{tok, pos}), bsd...)

	layerNorm := func(name, in, scale, bias string) string {
		return f(g.op1("LayerNormalization", name, []string{in, scale, bias},
			attrInt("axis", -1), attrFloat("epsilon", layerNormEpsilon)), bsd...)
	}
	linear := func(name, in, w, b string, width int64) string {
		mm := f(g.op1("MatMul", name+"/matmul", []string{in, w}), "batch", "seq", width)
		return f(g.op1("Add", name, []string{mm, b}), "batch", "seq", width)
	}

	for i := 0; i < cfg.Layers; i++ {
		n := gptBlock(i)
		p := "block" + itoa(i) + "/"
		n.addWeights(g, d, std, residStd)

		// Causal mask [seq, seq]: -inf strictly above the diagonal, 0 elsewhere.
		s := i64(g.op1("Shape", p+"mask/seq_len", []string{x}, attrInt("start", 1), attrInt("end", 2)), 1)
		sq := i64(g.op1("Concat", p+"mask/shape", []string{s, s}, attrInt("axis", 0)), 2)
		full := f(g.op1("ConstantOfShape", p+"mask/fill", []string{sq}, negInf), "seq", "seq")
		mask := f(g.op1("Trilu", p+"mask", []string{full, one}, attrInt("upper", 1)), "seq", "seq")

		h := layerNorm(p+"ln1", x, n.ln1Scale, n.ln1Bias)
		qkv := linear(p+"attn/qkv", h, n.qkvW, n.qkvB, 3*d)
		parts := g.node("Split", p+"attn/split", []string{qkv, splitQKV}, 3, attrInt("axis", 2))
		heads := func(name, in string, perm []int64, dims ...any) string {
			f(in, bsd...)
			r := f(g.op1("Reshape", name+"/reshape", []string{in, headsShape}), "batch", "seq", int64(cfg.Heads), hd)
			return f(g.op1("Transpose", name, []string{r}, attrInts("perm", perm...)), dims...)
		}
		q := heads(p+"attn/q", parts[0], []int64{0, 2, 1, 3}, "batch", int64(cfg.Heads), "seq", hd)
		kT := heads(p+"attn/k", parts[1], []int64{0, 2, 3, 1}, "batch", int64(cfg.Heads), hd, "seq")
		v := heads(p+"attn/v", parts[2], []int64{0, 2, 1, 3}, "batch", int64(cfg.Heads), "seq", hd)
		bhss := []any{"batch", int64(cfg.Heads), "seq", "seq"}
		scores := f(g.op1("MatMul", p+"attn/scores", []string{q, kT}), bhss...)
		scaled := f(g.op1("Mul", p+"attn/scaled", []string{scores, scale}), bhss...)
		masked := f(g.op1("Add", p+"attn/masked", []string{scaled, mask}), bhss...)
		probs := f(g.op1("Softmax", p+"attn/probs", []string{masked}, attrInt("axis", -1)), bhss...)
		ctx := f(g.op1("MatMul", p+"attn/context", []string{probs, v}), "batch", int64(cfg.Heads), "seq", hd)
		merged := f(g.op1("Transpose", p+"attn/merge", []string{ctx}, attrInts("perm", 0, 2, 1, 3)), "batch", "seq", int64(cfg.Heads), hd)
		flat := f(g.op1("Reshape", p+"attn/merge/reshape", []string{merged, mergeShape}), bsd...)
		attn := linear(p+"attn/proj", flat, n.projW, n.projB, d)
		x = f(g.op1("Add", p+"attn/residual", []string{x, attn}), bsd...)

		h2 := layerNorm(p+"ln2", x, n.ln2Scale, n.ln2Bias)
		fc := linear(p+"mlp/fc", h2, n.fcW, n.fcB, 4*d)
		// GELU as 0.5*x*(1+erf(x/sqrt2)): the Gelu operator only exists from opset 20.
		wide := []any{"batch", "seq", 4 * d}
		div := f(g.op1("Div", p+"mlp/gelu/div", []string{fc, sqrt2}), wide...)
		erf := f(g.op1("Erf", p+"mlp/gelu/erf", []string{div}), wide...)
		plus := f(g.op1("Add", p+"mlp/gelu/add", []string{erf, fOne}), wide...)
		mul := f(g.op1("Mul", p+"mlp/gelu/mul", []string{fc, plus}), wide...)
		gelu := f(g.op1("Mul", p+"mlp/gelu", []string{mul, fHalf}), wide...)
		mlp := linear(p+"mlp/proj", gelu, n.fc2W, n.fc2B, d)
		x = f(g.op1("Add", p+"mlp/residual", []string{x, mlp}), bsd...)
	}

	g.uniformWeight(lnfScale, []int64{d}, 0.1, 1)
	g.uniformWeight(lnfBias, []int64{d}, std, 0)
	hf := layerNorm("ln_f", x, lnfScale, lnfBias)
	// LM head: Gemm with transB=1 reads the token embedding itself, so one
	// initializer feeds both ends of the graph and no transposed copy exists.
	flat := f(g.op1("Reshape", "lm_head/flatten", []string{hf, flatShape}), "batch*seq", d)
	scores := f(g.op1("Gemm", "lm_head", []string{flat, wte}, attrInt("transB", 1)), "batch*seq", int64(cfg.Vocab))
	batchSeq := i64(g.op1("Shape", "lm_head/batch_seq", []string{hf}, attrInt("start", 0), attrInt("end", 2)), 2)
	outShape := i64(g.op1("Concat", "lm_head/out_shape", []string{batchSeq, vocabDim}, attrInt("axis", 0)), 3)
	g.op1("Reshape", GPTOutput, []string{scores, outShape})
	return g.finish("GPT-2-style decoder: " + gptDoc(cfg))
}
