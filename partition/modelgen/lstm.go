package modelgen

import (
	"fmt"
	"math"

	"github.com/layermesh/layermesh/partition/onnxpb"
)

// LSTMConfig describes a stack of unidirectional LSTM layers with a linear
// head applied at every time step.
type LSTMConfig struct {
	Layers   int    // stacked LSTM ops
	Features int    // input features per time step
	Hidden   int    // hidden size of every layer
	Outputs  int    // output features per time step
	Seed     int64  // seeds every weight
	Name     string // graph name; "lstm" when empty
}

// LSTM presets: LSTMTiny for unit tests, LSTMMedium (3 x 512, about 5.9M
// parameters) for split tests.
var (
	LSTMTiny   = LSTMConfig{Layers: 2, Features: 8, Hidden: 16, Outputs: 4, Seed: 1, Name: "lstm-tiny"}
	LSTMMedium = LSTMConfig{Layers: 3, Features: 64, Hidden: 512, Outputs: 64, Seed: 1, Name: "lstm-medium"}
)

// LSTM graph input and output names.
const (
	LSTMInput  = "sequence"
	LSTMOutput = "output"
)

// Validate reports whether the configuration describes a buildable model.
func (c LSTMConfig) Validate() error {
	if c.Layers < 1 || c.Features < 1 || c.Hidden < 1 || c.Outputs < 1 {
		return fmt.Errorf("%w: lstm layers, features, hidden and outputs must be positive: %+v", ErrInvalidConfig, c)
	}
	if err := checkBounds("lstm", "layers", c.Layers, 1<<16, "features", c.Features, 1<<24, "hidden", c.Hidden, 1<<20, "outputs", c.Outputs, 1<<24); err != nil {
		return err
	}
	return checkSize(c.Params())
}

// Params returns the number of float32 parameters the model holds.
func (c LSTMConfig) Params() int64 {
	h, in := int64(c.Hidden), int64(c.Features)
	var n int64
	for l := 0; l < c.Layers; l++ {
		n += 4*h*in + 4*h*h + 8*h
		in = h
	}
	return n + h*int64(c.Outputs) + int64(c.Outputs)
}

// LSTM builds the stacked LSTM: input "sequence" float32 [seq, batch,
// features] (ONNX's LSTM layout, time first), output "output" float32 [seq,
// batch, outputs]. Each layer's Y [seq, 1, batch, hidden] is squeezed on its
// direction axis to feed the next. Opset 17, IR 8.
func LSTM(cfg LSTMConfig) (*onnxpb.ModelProto, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	name := cfg.Name
	if name == "" {
		name = "lstm"
	}
	g := newGraphBuilder(name, cfg.Seed)
	g.graph.Input = []*onnxpb.ValueInfoProto{valueInfo(LSTMInput, elemFloat, "seq", "batch", int64(cfg.Features))}
	g.graph.Output = []*onnxpb.ValueInfoProto{valueInfo(LSTMOutput, elemFloat, "seq", "batch", int64(cfg.Outputs))}

	h := int64(cfg.Hidden)
	// PyTorch's LSTM default: U(-1/sqrt(hidden), 1/sqrt(hidden)).
	std := float32(1 / math.Sqrt(3*float64(h)))
	dirAxis := g.constInt64("const/dir_axis", []int64{1}, 1)
	x, in := LSTMInput, int64(cfg.Features)
	for l := 0; l < cfg.Layers; l++ {
		p := "layer" + itoa(l)
		w := g.uniformWeight(p+"/W", []int64{1, 4 * h, in}, std, 0)
		r := g.uniformWeight(p+"/R", []int64{1, 4 * h, h}, std, 0)
		b := g.uniformWeight(p+"/B", []int64{1, 8 * h}, std, 0)
		y := g.typed(g.op1("LSTM", p, []string{x, w, r, b}, attrInt("hidden_size", h)), elemFloat, "seq", 1, "batch", h)
		x = g.typed(g.op1("Squeeze", p+"/squeeze", []string{y, dirAxis}), elemFloat, "seq", "batch", h)
		in = h
	}
	headW := g.uniformWeight("head/weight", []int64{h, int64(cfg.Outputs)}, float32(1/math.Sqrt(float64(h))), 0)
	headB := g.uniformWeight("head/bias", []int64{int64(cfg.Outputs)}, 0.01, 0)
	mm := g.typed(g.op1("MatMul", "head/matmul", []string{x, headW}), elemFloat, "seq", "batch", int64(cfg.Outputs))
	g.op1("Add", LSTMOutput, []string{mm, headB})

	doc := fmt.Sprintf("stacked LSTM: layers=%d features=%d hidden=%d outputs=%d seed=%d",
		cfg.Layers, cfg.Features, cfg.Hidden, cfg.Outputs, cfg.Seed)
	return g.model(doc), nil
}
