package partition

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
)

// VerifySeed seeds the random inputs Verify makes when none are given.
const VerifySeed = 1

// OutputDiff compares one graph output of the stage chain with the whole model's.
type OutputDiff struct {
	Name string
	// MaxAbs is max |chain - whole| over elements.
	MaxAbs float64
	// MaxRel is max |chain - whole| / max(|whole|, 1e-6) over elements.
	MaxRel float64
	// MaxRelToScale is MaxAbs divided by max |whole|: the error relative to the
	// output's magnitude, insensitive to elements that happen to be near zero.
	MaxRelToScale float64
	// Exact is true when every element is bit-identical.
	Exact bool
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	Outputs []OutputDiff
	// MaxAbs and MaxRel are the worst over all outputs.
	MaxAbs, MaxRel float64
}

// Verify runs the whole model at modelPath and the chain of stages described by
// manifest (stage files in stageDir) on the same inputs, and compares every graph
// output. With no inputs it makes seeded random ones from the manifest's input
// shapes: floats uniform in [-1, 1), integers in [0, 8) (small enough to be valid
// token ids or indices for most models).
func Verify(ctx context.Context, backend accel.Backend, modelPath string, manifest *Manifest, stageDir string, inputs []tensor.Tensor) (*VerifyReport, error) {
	if len(inputs) == 0 {
		var err error
		if inputs, err = RandomInputs(manifest, VerifySeed); err != nil {
			return nil, err
		}
	}
	whole, err := runModel(ctx, backend, modelPath, inputs, nil)
	if err != nil {
		return nil, fmt.Errorf("partition: verify: whole model: %w", err)
	}
	chain, err := RunChain(ctx, backend, manifest, stageDir, inputs)
	if err != nil {
		return nil, fmt.Errorf("partition: verify: %w", err)
	}
	rep := &VerifyReport{}
	for _, out := range manifest.Outputs {
		w, ok1 := whole[out.Name]
		c, ok2 := chain[out.Name]
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%w: output %q missing (whole model: %v, chain: %v)", ErrMismatch, out.Name, ok1, ok2)
		}
		d, err := compareTensors(w, c)
		if err != nil {
			return nil, fmt.Errorf("%w: output %q: %w", ErrMismatch, out.Name, err)
		}
		d.Name = out.Name
		rep.Outputs = append(rep.Outputs, d)
		rep.MaxAbs = math.Max(rep.MaxAbs, d.MaxAbs)
		rep.MaxRel = math.Max(rep.MaxRel, d.MaxRel)
	}
	return rep, nil
}

// RunChain runs the stages of manifest in order, as a pipeline driver would: each
// stage gets the graph inputs and earlier stage outputs it names. It returns every
// tensor the stages produced, by name.
func RunChain(ctx context.Context, backend accel.Backend, manifest *Manifest, stageDir string, inputs []tensor.Tensor) (map[string]tensor.Tensor, error) {
	have := map[string]tensor.Tensor{}
	for _, t := range inputs {
		have[t.Name] = t
	}
	out := map[string]tensor.Tensor{}
	for _, st := range manifest.Stages {
		var ins []tensor.Tensor
		for _, spec := range st.Inputs {
			t, ok := have[spec.Name]
			if !ok {
				return nil, fmt.Errorf("stage %d needs %q, which no input or earlier stage provides", st.Index, spec.Name)
			}
			ins = append(ins, t)
		}
		var names []string
		for _, spec := range st.Outputs {
			names = append(names, spec.Name)
		}
		res, err := runModel(ctx, backend, filepath.Join(stageDir, st.File), ins, names)
		if err != nil {
			return nil, fmt.Errorf("stage %d: %w", st.Index, err)
		}
		for name, t := range res {
			have[name] = t
			out[name] = t
		}
	}
	return out, nil
}

func runModel(ctx context.Context, backend accel.Backend, path string, inputs []tensor.Tensor, names []string) (map[string]tensor.Tensor, error) {
	sess, err := backend.Open(ctx, path, accel.SessionOptions{})
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	// Feed only what the model declares: a stage reads a subset of the graph inputs.
	want := map[string]bool{}
	for _, in := range sess.Inputs() {
		want[in.Name] = true
	}
	var feed []tensor.Tensor
	for _, t := range inputs {
		if want[t.Name] {
			feed = append(feed, t)
		}
	}
	res, err := sess.Run(ctx, feed, names)
	if err != nil {
		return nil, err
	}
	out := map[string]tensor.Tensor{}
	for _, t := range res {
		out[t.Name] = t
	}
	if names == nil {
		for i, info := range sess.Outputs() {
			if i < len(res) {
				res[i].Name = info.Name
				out[info.Name] = res[i]
			}
		}
	}
	return out, nil
}

// RandomInputs makes seeded random inputs for the manifest's graph inputs at the
// shapes the plan was made for.
func RandomInputs(manifest *Manifest, seed uint64) ([]tensor.Tensor, error) {
	r := rand.New(rand.NewPCG(seed, 0x1a7e))
	var out []tensor.Tensor
	for _, in := range manifest.Inputs {
		shape := manifest.InputShapes[in.Name]
		if shape == nil {
			shape = in.Shape
		}
		shape = append([]int64(nil), shape...)
		for i, d := range shape {
			if d < 0 {
				shape[i] = 1
			}
		}
		n, err := tensor.NumElements(shape)
		if err != nil {
			return nil, fmt.Errorf("partition: input %q: %w", in.Name, err)
		}
		t := tensor.Tensor{Name: in.Name, DType: in.DType, Shape: shape}
		size := int64(in.DType.Size())
		if !in.DType.Valid() || size == 0 {
			return nil, fmt.Errorf("partition: input %q: cannot make random %s data", in.Name, in.DType)
		}
		t.Data = make([]byte, n*size)
		for i := int64(0); i < n; i++ {
			b := t.Data[i*size : (i+1)*size]
			switch in.DType {
			case tensor.Float32:
				binary.LittleEndian.PutUint32(b, math.Float32bits(r.Float32()*2-1))
			case tensor.Float64:
				binary.LittleEndian.PutUint64(b, math.Float64bits(r.Float64()*2-1))
			case tensor.Int64, tensor.Uint64:
				binary.LittleEndian.PutUint64(b, uint64(r.IntN(8)))
			case tensor.Int32, tensor.Uint32:
				binary.LittleEndian.PutUint32(b, uint32(r.IntN(8)))
			case tensor.Bool:
				b[0] = byte(r.IntN(2))
			default:
				b[0] = byte(r.IntN(8))
			}
		}
		out = append(out, t)
	}
	return out, nil
}

// compareTensors reports how far got is from want.
func compareTensors(want, got tensor.Tensor) (OutputDiff, error) {
	var d OutputDiff
	if want.DType != got.DType || fmt.Sprint(want.Shape) != fmt.Sprint(got.Shape) {
		return d, fmt.Errorf("whole model gives %s%v, the chain %s%v", want.DType, want.Shape, got.DType, got.Shape)
	}
	a, err1 := want.Float64s()
	b, err2 := got.Float64s()
	if err1 != nil || err2 != nil {
		// Non-numeric outputs (strings) must match exactly.
		d.Exact = fmt.Sprint(want.Strings) == fmt.Sprint(got.Strings) && string(want.Data) == string(got.Data)
		if !d.Exact {
			d.MaxAbs, d.MaxRel = math.Inf(1), math.Inf(1)
		}
		return d, nil
	}
	d.Exact = string(want.Data) == string(got.Data)
	var scale float64
	for i := range a {
		diff := math.Abs(a[i] - b[i])
		if math.IsNaN(a[i]) != math.IsNaN(b[i]) {
			diff = math.Inf(1)
		} else if math.IsNaN(a[i]) {
			diff = 0
		}
		d.MaxAbs = math.Max(d.MaxAbs, diff)
		d.MaxRel = math.Max(d.MaxRel, diff/math.Max(math.Abs(a[i]), 1e-6))
		scale = math.Max(scale, math.Abs(a[i]))
	}
	if scale > 0 {
		d.MaxRelToScale = d.MaxAbs / scale
	}
	return d, nil
}
