package modelgen

import (
	"fmt"
	"math"

	"github.com/layermesh/layermesh/partition/onnxpb"
)

// ResNetConfig describes a ResNet-style CNN of basic blocks (two 3x3 convs
// with a residual skip). Stage s has Blocks[s] blocks and Width<<s channels;
// every stage after the first halves the spatial size in its first block,
// whose skip is then a strided 1x1 projection.
type ResNetConfig struct {
	Width     int    // channels of the stem and the first stage
	Blocks    []int  // blocks per stage
	ImageSize int    // input height and width
	Classes   int    // logits per image
	Stem      int    // stem downsampling: 1 (3x3 conv) or 4 (7x7/2 conv + 3x3/2 max pool, as ResNet-18)
	Seed      int64  // seeds every weight
	Name      string // graph name; "resnet" when empty
}

// ResNet presets: ResNetTiny is for unit tests (milliseconds per image);
// ResNetMedium has ResNet-18's layout (11.7M parameters, 224x224 input).
var (
	ResNetTiny   = ResNetConfig{Width: 8, Blocks: []int{1, 1}, ImageSize: 16, Classes: 10, Stem: 1, Seed: 1, Name: "resnet-tiny"}
	ResNetMedium = ResNetConfig{Width: 64, Blocks: []int{2, 2, 2, 2}, ImageSize: 224, Classes: 1000, Stem: 4, Seed: 1, Name: "resnet-medium"}
)

// ResNet graph input and output names.
const (
	ResNetInput  = "image"
	ResNetOutput = "logits"
)

// Validate reports whether the configuration describes a buildable model.
func (c ResNetConfig) Validate() error {
	if c.Width < 1 || len(c.Blocks) == 0 || c.ImageSize < 1 || c.Classes < 1 {
		return fmt.Errorf("%w: resnet width, blocks, image size and classes must be positive: %+v", ErrInvalidConfig, c)
	}
	if c.Stem != 1 && c.Stem != 4 {
		return fmt.Errorf("%w: resnet stem must be 1 or 4, got %d", ErrInvalidConfig, c.Stem)
	}
	for _, b := range c.Blocks {
		if err := checkBounds("resnet", "blocks per stage", b, 1<<10); b < 1 || err != nil {
			return fmt.Errorf("%w: resnet stage with %d blocks", ErrInvalidConfig, b)
		}
	}
	if err := checkBounds("resnet", "stages", len(c.Blocks), 24, "image size", c.ImageSize, 1<<14, "classes", c.Classes, 1<<24); err != nil {
		return err
	}
	// The widest stage has Width<<(stages-1) channels.
	if err := checkBounds("resnet", "width (for this many stages)", c.Width, (1<<20)>>(len(c.Blocks)-1)); err != nil {
		return err
	}
	return checkSize(c.Params())
}

// Params returns the number of float32 parameters the model holds (batch
// norm statistics included).
func (c ResNetConfig) Params() int64 {
	convBN := func(cin, cout, k int64) int64 { return cout*cin*k*k + 4*cout }
	w := int64(c.Width)
	n := convBN(3, w, 3)
	if c.Stem == 4 {
		n = convBN(3, w, 7)
	}
	cin := w
	for s, blocks := range c.Blocks {
		cout := w << s
		for b := 0; b < blocks; b++ {
			n += convBN(cin, cout, 3) + convBN(cout, cout, 3)
			if s > 0 && b == 0 || cin != cout {
				n += convBN(cin, cout, 1)
			}
			cin = cout
		}
	}
	return n + int64(c.Classes)*cin + int64(c.Classes)
}

// ResNet builds the CNN: input "image" float32 [batch, 3, H, W], output
// "logits" float32 [batch, classes]. Conv, BatchNormalization (kept unfolded,
// as exported vision models usually have it) and Relu; GlobalAveragePool,
// Flatten and a Gemm head. Opset 17, IR 8.
func ResNet(cfg ResNetConfig) (*onnxpb.ModelProto, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	name := cfg.Name
	if name == "" {
		name = "resnet"
	}
	g := newGraphBuilder(name, cfg.Seed)
	size := int64(cfg.ImageSize)
	g.graph.Input = []*onnxpb.ValueInfoProto{valueInfo(ResNetInput, elemFloat, "batch", 3, size, size)}
	g.graph.Output = []*onnxpb.ValueInfoProto{valueInfo(ResNetOutput, elemFloat, "batch", int64(cfg.Classes))}

	// Activations are square; side is their height and width, tracked so
	// every activation's shape goes into value_info.
	f := func(name string, c, side int64) string { return g.typed(name, elemFloat, "batch", c, side, side) }
	// convBN is Conv (no bias, as BN follows) + BatchNormalization, with He
	// initialisation so activations keep their scale through depth. gamma
	// centres the BN scale: the last BN of a residual branch gets 0.5 so the
	// sums of branch and skip do not grow stage after stage. It returns the
	// output and its side.
	convBN := func(name, in string, side, cin, cout, k, stride int64, gamma float32) (string, int64) {
		std := float32(math.Sqrt(2 / float64(cin*k*k)))
		w := g.uniformWeight(name+"/conv/weight", []int64{cout, cin, k, k}, std, 0)
		pad := k / 2
		out := (side+2*pad-k)/stride + 1
		c := f(g.op1("Conv", name+"/conv", []string{in, w},
			attrInts("kernel_shape", k, k), attrInts("strides", stride, stride), attrInts("pads", pad, pad, pad, pad)), cout, out)
		scale := g.uniformWeight(name+"/bn/scale", []int64{cout}, 0.1*gamma, gamma)
		bias := g.uniformWeight(name+"/bn/bias", []int64{cout}, 0.05, 0)
		mean := g.uniformWeight(name+"/bn/mean", []int64{cout}, 0.05, 0)
		variance := g.uniformWeight(name+"/bn/var", []int64{cout}, 0.1, 1)
		bn := g.op1("BatchNormalization", name+"/bn", []string{c, scale, bias, mean, variance}, attrFloat("epsilon", 1e-5))
		return f(bn, cout, out), out
	}

	var x string
	width := int64(cfg.Width)
	side := size
	if cfg.Stem == 4 {
		x, side = convBN("stem", ResNetInput, side, 3, width, 7, 2, 1)
		x = f(g.op1("Relu", "stem/relu", []string{x}), width, side)
		side = (side+2-3)/2 + 1
		x = f(g.op1("MaxPool", "stem/pool", []string{x},
			attrInts("kernel_shape", 3, 3), attrInts("strides", 2, 2), attrInts("pads", 1, 1, 1, 1)), width, side)
	} else {
		x, side = convBN("stem", ResNetInput, side, 3, width, 3, 1, 1)
		x = f(g.op1("Relu", "stem/relu", []string{x}), width, side)
	}

	cin := width
	for s, n := range cfg.Blocks {
		cout := width << s
		for b := 0; b < n; b++ {
			p := "stage" + itoa(s) + "/block" + itoa(b)
			stride := int64(1)
			if s > 0 && b == 0 {
				stride = 2
			}
			h, out := convBN(p+"/a", x, side, cin, cout, 3, stride, 1)
			h = f(g.op1("Relu", p+"/a/relu", []string{h}), cout, out)
			h, _ = convBN(p+"/b", h, out, cout, cout, 3, 1, 0.5)
			skip := x
			if stride != 1 || cin != cout {
				skip, _ = convBN(p+"/proj", x, side, cin, cout, 1, stride, 0.5)
			}
			sum := f(g.op1("Add", p+"/residual", []string{h, skip}), cout, out)
			x = f(g.op1("Relu", p+"/relu", []string{sum}), cout, out)
			cin, side = cout, out
		}
	}
	pooled := g.typed(g.op1("GlobalAveragePool", "head/pool", []string{x}), elemFloat, "batch", cin, 1, 1)
	flat := g.typed(g.op1("Flatten", "head/flatten", []string{pooled}, attrInt("axis", 1)), elemFloat, "batch", cin)
	fcW := g.uniformWeight("head/fc/weight", []int64{int64(cfg.Classes), cin}, float32(1/math.Sqrt(float64(cin))), 0)
	fcB := g.uniformWeight("head/fc/bias", []int64{int64(cfg.Classes)}, 0.01, 0)
	g.op1("Gemm", ResNetOutput, []string{flat, fcW, fcB}, attrInt("transB", 1))

	doc := fmt.Sprintf("ResNet-style CNN: width=%d blocks=%v image=%d classes=%d stem=%d seed=%d",
		cfg.Width, cfg.Blocks, cfg.ImageSize, cfg.Classes, cfg.Stem, cfg.Seed)
	return g.model(doc), nil
}
