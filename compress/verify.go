package compress

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition"
)

// OutputCheck compares one output of the compressed model with the original's
// over all verification inputs.
type OutputCheck struct {
	Name string `json:"name"`
	// MaxAbs is max |compressed - original|.
	MaxAbs float64 `json:"max_abs"`
	// MaxRel is MaxAbs over max |original|: the error relative to the output's scale.
	MaxRel float64 `json:"max_rel"`
	// Cosine is the lowest per-input cosine similarity of the flattened outputs.
	Cosine float64 `json:"cosine"`
	// Top1 is the fraction of rows (every position of every axis but the last)
	// whose argmax over the last axis agrees; -1 when the last axis has one element.
	Top1 float64 `json:"top1"`
	Rows int     `json:"rows"`
}

// VerifyReport compares a compressed model with its original.
type VerifyReport struct {
	Samples int           `json:"samples"`
	Outputs []OutputCheck `json:"outputs"`
	// The worst over all outputs.
	MaxAbs    float64 `json:"max_abs"`
	MaxRel    float64 `json:"max_rel"`
	MinCosine float64 `json:"min_cosine"`
	// MinTop1 is the lowest top-1 agreement of an output that has one; -1 if none has.
	MinTop1 float64 `json:"min_top1"`
}

// check fails the report against the thresholds (0 disables one).
func (r *VerifyReport) check(maxErr, minAgree float64) error {
	var errs []error
	if maxErr > 0 && !(r.MaxRel <= maxErr) {
		errs = append(errs, fmt.Errorf("%w: error %.4g relative to the output scale is above --max-error %.4g", ErrVerifyFailed, r.MaxRel, maxErr))
	}
	if minAgree > 0 && r.MinTop1 >= 0 && r.MinTop1 < minAgree {
		errs = append(errs, fmt.Errorf("%w: top-1 agreement %.4f is below --min-agreement %.4f", ErrVerifyFailed, r.MinTop1, minAgree))
	}
	return errors.Join(errs...)
}

// VerifyModels runs the models at original and compressed on the same inputs
// and compares every output of the original.
func VerifyModels(ctx context.Context, backend accel.Backend, original, compressed string, inputs [][]tensor.Tensor) (*VerifyReport, error) {
	so, err := backend.Open(ctx, original, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		return nil, fmt.Errorf("compress: verify: original: %w", err)
	}
	defer so.Close()
	sc, err := backend.Open(ctx, compressed, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		return nil, fmt.Errorf("compress: verify: compressed model does not load: %w", err)
	}
	defer sc.Close()
	var names []string
	for _, o := range so.Outputs() {
		names = append(names, o.Name)
	}
	acc := make([]outputAcc, len(names))
	for _, in := range inputs {
		want, err := so.Run(ctx, in, names)
		if err != nil {
			return nil, fmt.Errorf("compress: verify: original: %w", err)
		}
		got, err := sc.Run(ctx, in, names)
		if err != nil {
			return nil, fmt.Errorf("compress: verify: compressed: %w", err)
		}
		for i := range names {
			if err := acc[i].add(want[i], got[i]); err != nil {
				return nil, fmt.Errorf("compress: verify: output %q: %w", names[i], err)
			}
		}
	}
	rep := &VerifyReport{Samples: len(inputs), MinCosine: 1, MinTop1: -1}
	for i, name := range names {
		c := acc[i].result(name)
		rep.Outputs = append(rep.Outputs, c)
		rep.MaxAbs = math.Max(rep.MaxAbs, c.MaxAbs)
		rep.MaxRel = math.Max(rep.MaxRel, c.MaxRel)
		rep.MinCosine = math.Min(rep.MinCosine, c.Cosine)
		if c.Top1 >= 0 && (rep.MinTop1 < 0 || c.Top1 < rep.MinTop1) {
			rep.MinTop1 = c.Top1
		}
	}
	return rep, nil
}

// outputAcc accumulates the comparison of one output over inputs.
type outputAcc struct {
	maxAbs, scale, minCos float64
	agree, rows           int
	seen                  bool
}

func (a *outputAcc) add(want, got tensor.Tensor) error {
	w, err1 := want.Float64s()
	g, err2 := got.Float64s()
	if err1 != nil || err2 != nil || len(w) != len(g) {
		return fmt.Errorf("outputs are not comparable numeric tensors of one shape (%v vs %v)", want.Shape, got.Shape)
	}
	if !a.seen {
		a.minCos, a.seen = 1, true
	}
	var dot, nw, ng float64
	for i := range w {
		a.maxAbs = math.Max(a.maxAbs, math.Abs(w[i]-g[i]))
		a.scale = math.Max(a.scale, math.Abs(w[i]))
		dot, nw, ng = dot+w[i]*g[i], nw+w[i]*w[i], ng+g[i]*g[i]
	}
	cos := 1.0
	if nw > 0 || ng > 0 {
		cos = dot / math.Sqrt(nw*ng)
	}
	a.minCos = math.Min(a.minCos, cos)
	if len(want.Shape) > 0 {
		if last := int(want.Shape[len(want.Shape)-1]); last > 1 {
			for r := 0; r+last <= len(w); r += last {
				a.rows++
				if argmax(w[r:r+last]) == argmax(g[r:r+last]) {
					a.agree++
				}
			}
		}
	}
	return nil
}

func (a *outputAcc) result(name string) OutputCheck {
	c := OutputCheck{Name: name, MaxAbs: a.maxAbs, Cosine: a.minCos, Top1: -1, Rows: a.rows}
	if a.scale > 0 {
		c.MaxRel = a.maxAbs / a.scale
	}
	if a.rows > 0 {
		c.Top1 = float64(a.agree) / float64(a.rows)
	}
	return c
}

func argmax(v []float64) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// verifyFiles compares the compressed file with src on opts.Verify inputs: the
// calibration samples first, then random inputs within the ranges they span
// (or floats in [-1, 1) and integers in [0, 8) without any).
func verifyFiles(ctx context.Context, opts Options, src, compressed string) (*VerifyReport, error) {
	inputs := opts.Calibration
	if len(inputs) > opts.Verify {
		inputs = inputs[:opts.Verify]
	}
	if len(inputs) < opts.Verify {
		s, err := opts.Backend.Open(ctx, src, accel.SessionOptions{IntraOpThreads: 1})
		if err != nil {
			return nil, fmt.Errorf("compress: verify: %w", err)
		}
		infos := s.Inputs()
		s.Close()
		r := rand.New(rand.NewPCG(partition.VerifySeed, 0xc0))
		for len(inputs) < opts.Verify {
			set, err := randomInputs(r, infos, opts.InputShapes, opts.Calibration)
			if err != nil {
				return nil, err
			}
			inputs = append(inputs, set)
		}
	}
	return VerifyModels(ctx, opts.Backend, src, compressed, inputs)
}

// randomInputs makes one set of inputs for infos, shaped like the calibration
// samples when there are any, with values within the range they span.
func randomInputs(r *rand.Rand, infos []accel.TensorInfo, shapes map[string][]int64, calib [][]tensor.Tensor) ([]tensor.Tensor, error) {
	var out []tensor.Tensor
	for i, info := range infos {
		lo, hi := -1.0, 1.0
		if info.DType != tensor.Float32 && info.DType != tensor.Float64 {
			lo, hi = 0, 7
		}
		shape := append([]int64(nil), info.Shape...)
		if s, ok := shapes[info.Name]; ok {
			shape = append([]int64(nil), s...)
		}
		if len(calib) > 0 && i < len(calib[0]) {
			shape = append([]int64(nil), calib[0][i].Shape...)
			lo, hi = math.Inf(1), math.Inf(-1)
			for _, set := range calib {
				vals, err := set[i].Float64s()
				if err != nil {
					return nil, fmt.Errorf("compress: calibration input %q: %w", info.Name, err)
				}
				for _, v := range vals {
					lo, hi = math.Min(lo, v), math.Max(hi, v)
				}
			}
		}
		for j, d := range shape {
			if d < 0 {
				shape[j] = 1
			}
		}
		t, err := randomTensor(r, info.Name, info.DType, shape, lo, hi)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// randomTensor fills a tensor with uniform values in [lo, hi] (integers rounded).
func randomTensor(r *rand.Rand, name string, dt tensor.DType, shape []int64, lo, hi float64) (tensor.Tensor, error) {
	n, err := tensor.NumElements(shape)
	if err != nil {
		return tensor.Tensor{}, fmt.Errorf("compress: input %q: %w", name, err)
	}
	t := tensor.Tensor{Name: name, DType: dt, Shape: shape, Data: make([]byte, n*int64(dt.Size()))}
	for i := range n {
		v := lo + r.Float64()*(hi-lo)
		switch dt {
		case tensor.Float32:
			binary.LittleEndian.PutUint32(t.Data[4*i:], math.Float32bits(float32(v)))
		case tensor.Int64:
			binary.LittleEndian.PutUint64(t.Data[8*i:], uint64(int64(math.Round(v))))
		case tensor.Int32:
			binary.LittleEndian.PutUint32(t.Data[4*i:], uint32(int32(math.Round(v))))
		default:
			return tensor.Tensor{}, fmt.Errorf("compress: input %q: cannot make random %s data", name, dt)
		}
	}
	return t, nil
}

// checkCalibration rejects a calibration set that does not fit m's inputs: a
// missing or unknown input, a wrong dtype, rank or fixed dimension.
func checkCalibration(m *partition.Model, calib [][]tensor.Tensor) error {
	inits := map[string]bool{}
	for _, t := range m.Proto.GetGraph().GetInitializer() {
		inits[t.GetName()] = true
	}
	var want []*partitionInput
	for _, vi := range m.Proto.GetGraph().GetInput() {
		if !inits[vi.GetName()] {
			want = append(want, inputOf(vi))
		}
	}
	for s, set := range calib {
		if len(set) != len(want) {
			return fmt.Errorf("%w: sample %d has %d tensors, the model takes %d inputs", ErrCalibration, s, len(set), len(want))
		}
		for i, t := range set {
			if err := want[i].accepts(t); err != nil {
				return fmt.Errorf("%w: sample %d: %w", ErrCalibration, s, err)
			}
		}
	}
	return nil
}
