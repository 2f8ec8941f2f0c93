package modelgen

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// Config is what every model configuration offers: building the model and
// making inputs that fit it. GPTConfig, ResNetConfig and LSTMConfig implement
// it.
type Config interface {
	// Build returns the model for this configuration.
	Build() (*onnxpb.ModelProto, error)
	// ExampleInputs returns deterministic inputs for batch items and, where
	// the model has a time axis, seq steps (ignored otherwise). The same
	// arguments always give the same values.
	ExampleInputs(batch, seq int, seed int64) ([]tensor.Tensor, error)
	// OutputNames lists the graph outputs in order.
	OutputNames() []string
	// Params is the number of float32 weights the model holds.
	Params() int64
}

// Build implements Config.
func (c GPTConfig) Build() (*onnxpb.ModelProto, error) {
	if c.WithPast {
		return GPTWithPast(c)
	}
	return GPT(c)
}

// Build implements Config.
func (c ResNetConfig) Build() (*onnxpb.ModelProto, error) { return ResNet(c) }

// Build implements Config.
func (c LSTMConfig) Build() (*onnxpb.ModelProto, error) { return LSTM(c) }

// OutputNames implements Config.
func (c GPTConfig) OutputNames() []string {
	out := []string{GPTOutput}
	if c.WithPast {
		for i := 0; i < c.Layers; i++ {
			out = append(out, GPTPresentKey(i), GPTPresentValue(i))
		}
	}
	return out
}

// OutputNames implements Config.
func (c ResNetConfig) OutputNames() []string { return []string{ResNetOutput} }

// OutputNames implements Config.
func (c LSTMConfig) OutputNames() []string { return []string{LSTMOutput} }

// ExampleInputs implements Config: "input_ids" int64 [batch, seq], token ids
// spread over the whole vocabulary; with past, also the other inputs of a
// prefill step (see GPTWithPast).
func (c GPTConfig) ExampleInputs(batch, seq int, seed int64) ([]tensor.Tensor, error) {
	if batch < 1 || seq < 1 || seq > c.Context {
		return nil, fmt.Errorf("%w: gpt inputs need batch >= 1 and 1 <= seq <= context %d, got %dx%d", ErrBadInput, c.Context, batch, seq)
	}
	u := make([]float32, batch*seq)
	fillUniform(u, streamSeed(seed, GPTInput), 0.5, 0.5)
	ids := make([]int64, len(u))
	for i, v := range u {
		ids[i] = min(int64(v*float32(c.Vocab)), int64(c.Vocab-1))
	}
	out := []tensor.Tensor{tensor.FromInt64(GPTInput, []int64{int64(batch), int64(seq)}, ids)}
	if c.WithPast {
		out = append(out, gptPastInputs(c, batch, seq)...)
	}
	return out, nil
}

// ExampleInputs implements Config: "image" float32 [batch, 3, size, size]
// uniform in [-1, 1); seq is ignored.
func (c ResNetConfig) ExampleInputs(batch, _ int, seed int64) ([]tensor.Tensor, error) {
	if batch < 1 {
		return nil, fmt.Errorf("%w: resnet inputs need batch >= 1, got %d", ErrBadInput, batch)
	}
	s := int64(c.ImageSize)
	shape := []int64{int64(batch), 3, s, s}
	v := make([]float32, product(shape))
	fillUniform(v, streamSeed(seed, ResNetInput), 1, 0)
	return []tensor.Tensor{tensor.FromFloat32(ResNetInput, shape, v)}, nil
}

// ExampleInputs implements Config: "sequence" float32 [seq, batch, features]
// uniform in [-1, 1).
func (c LSTMConfig) ExampleInputs(batch, seq int, seed int64) ([]tensor.Tensor, error) {
	if batch < 1 || seq < 1 {
		return nil, fmt.Errorf("%w: lstm inputs need batch >= 1 and seq >= 1, got %dx%d", ErrBadInput, batch, seq)
	}
	shape := []int64{int64(seq), int64(batch), int64(c.Features)}
	v := make([]float32, product(shape))
	fillUniform(v, streamSeed(seed, LSTMInput), 1, 0)
	return []tensor.Tensor{tensor.FromFloat32(LSTMInput, shape, v)}, nil
}

// presets maps every name Lookup accepts to its base configuration. The bare
// kind names pick the size a command-line user most likely wants.
var presets = map[string]Config{
	"gpt":           GPT2Small,
	"gpt-tiny":      GPTTiny,
	"gpt2-small":    GPT2Small,
	"gpt-large":     GPTLarge,
	"resnet":        ResNetMedium,
	"resnet-tiny":   ResNetTiny,
	"resnet-medium": ResNetMedium,
	"lstm":          LSTMMedium,
	"lstm-tiny":     LSTMTiny,
	"lstm-medium":   LSTMMedium,
}

// Kinds lists the names Lookup and Generate accept, sorted.
func Kinds() []string {
	out := make([]string, 0, len(presets))
	for k := range presets {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// OptionKeys lists the option keys Lookup accepts for a kind, sorted.
func OptionKeys(kind string) ([]string, error) {
	base, ok := presets[kind]
	if !ok {
		return nil, fmt.Errorf("%w: %q (known: %s)", ErrUnknownKind, kind, strings.Join(Kinds(), ", "))
	}
	var keys []string
	switch base.(type) {
	case GPTConfig:
		keys = []string{"context", "dim", "heads", "layers", "seed", "vocab", "with-past"}
	case ResNetConfig:
		keys = []string{"blocks", "classes", "image", "seed", "stages", "stem", "width"}
	case LSTMConfig:
		keys = []string{"features", "hidden", "layers", "outputs", "seed"}
	}
	return keys, nil
}

// Lookup returns the configuration named by kind (see Kinds) with opts
// overriding its fields:
//
//	gpt*:    layers, dim, heads, vocab, context, seed (a changed dim without
//	         heads gets dim/64 heads, GPT-2's head width, or 1), with-past
//	         (non-zero: the with-past layout of GPTWithPast)
//	resnet*: width, stages, blocks (per stage), image, classes, stem, seed
//	lstm*:   layers, features, hidden, outputs, seed
//
// An unknown key is an error, so a typo on a command line is not silently
// ignored.
func Lookup(kind string, opts map[string]int) (Config, error) {
	base, ok := presets[kind]
	if !ok {
		return nil, fmt.Errorf("%w: %q (known: %s)", ErrUnknownKind, kind, strings.Join(Kinds(), ", "))
	}
	known, _ := OptionKeys(kind)
	for k := range opts {
		if !slices.Contains(known, k) {
			return nil, fmt.Errorf("%w: option %q does not apply to %s (known: %s)", ErrInvalidConfig, k, kind, strings.Join(known, ", "))
		}
	}
	set := func(dst *int, key string) {
		if v, ok := opts[key]; ok {
			*dst = v
		}
	}
	var cfg Config
	switch c := base.(type) {
	case GPTConfig:
		set(&c.Layers, "layers")
		set(&c.Dim, "dim")
		set(&c.Vocab, "vocab")
		set(&c.Context, "context")
		if _, ok := opts["heads"]; ok {
			set(&c.Heads, "heads")
		} else if _, ok := opts["dim"]; ok {
			c.Heads = max(c.Dim/64, 1)
		}
		if v, ok := opts["seed"]; ok {
			c.Seed = int64(v)
		}
		c.WithPast = opts["with-past"] != 0
		c.Name = kind
		cfg = c
	case ResNetConfig:
		set(&c.Width, "width")
		set(&c.ImageSize, "image")
		set(&c.Classes, "classes")
		set(&c.Stem, "stem")
		_, hasStages := opts["stages"]
		_, hasBlocks := opts["blocks"]
		if hasStages || hasBlocks {
			stages, blocks := len(c.Blocks), c.Blocks[0]
			set(&stages, "stages")
			set(&blocks, "blocks")
			c.Blocks = make([]int, max(stages, 0))
			for i := range c.Blocks {
				c.Blocks[i] = blocks
			}
		} else {
			c.Blocks = slices.Clone(c.Blocks)
		}
		if v, ok := opts["seed"]; ok {
			c.Seed = int64(v)
		}
		c.Name = kind
		cfg = c
	case LSTMConfig:
		set(&c.Layers, "layers")
		set(&c.Features, "features")
		set(&c.Hidden, "hidden")
		set(&c.Outputs, "outputs")
		if v, ok := opts["seed"]; ok {
			c.Seed = int64(v)
		}
		c.Name = kind
		cfg = c
	}
	return cfg, nil
}

// Generate builds the model named by kind with opts applied (see Lookup) and
// returns it with its configuration, which makes example inputs for it.
func Generate(kind string, opts map[string]int) (*onnxpb.ModelProto, Config, error) {
	cfg, err := Lookup(kind, opts)
	if err != nil {
		return nil, nil, err
	}
	m, err := cfg.Build()
	if err != nil {
		return nil, nil, err
	}
	return m, cfg, nil
}
