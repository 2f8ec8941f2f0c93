// Package compress shrinks an fp32 ONNX model before it is deployed: weight-only
// int8/int4 quantization (ONNX Runtime's MatMulNBits, and GatherBlockQuantized
// for embeddings, a tied LM head and token table sharing one quantization),
// dynamic int8 (DynamicQuantizeMatMul, DynamicQuantizeLSTM), static int8 with
// activation ranges calibrated on sample inputs (QuantizeLinear/DequantizeLinear
// pairs ONNX Runtime fuses into QLinearConv and QGemm), and structured pruning
// of convolution filters and MatMul/Gemm output units (Transformer MLP hidden
// units), which physically removes channels; channels coupled through residual
// Adds, Concats and depthwise convolutions go together. Pruning ranks by filter
// L1 norm or, given a calibration set, by the output error a channel's removal
// adds, and moves removed channels' means into the next layer's bias. Patterns
// a pass does not handle stay float32 and are listed in the Report, and a
// compressed model that ONNX Runtime does not load is never written.
//
// Compress is the one entry point: meshctl compress calls it offline, and the
// deploy path can call it before planning, so the planner places the smaller
// model. It reads models with partition's loader and runs models (calibration,
// verification) only through the accel.Backend the caller passes in.
package compress

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// Errors callers match with errors.Is.
var (
	// ErrInvalidOptions is a bad option (unknown mode, block size, prune ratio).
	ErrInvalidOptions = errors.New("invalid compression options")
	// ErrCalibration is a calibration set that does not fit the model.
	ErrCalibration = errors.New("calibration set does not match the model")
	// ErrUnsupportedModel is a model Compress cannot rewrite as a whole (one
	// with external data, which the output could not point back at).
	ErrUnsupportedModel = errors.New("model not supported by compress")
	// ErrVerifyFailed means the compressed model drifted past the thresholds;
	// the Report still says by how much, and nothing was written.
	ErrVerifyFailed = errors.New("compressed model failed verification")
)

// Quantization modes.
const (
	QuantNone    = ""
	QuantInt8    = "int8"    // weight-only int8 (MatMulNBits bits=8)
	QuantInt4    = "int4"    // weight-only int4 (MatMulNBits bits=4)
	QuantDynamic = "dynamic" // int8 activations quantized at run time
	QuantStatic  = "static"  // int8 with calibrated activation ranges
)

// Pruning criteria.
const (
	CriterionL1     = "l1"
	CriterionOutput = "output"
)

// MaxPruneRatio is the largest fraction of channels pruning may remove.
const MaxPruneRatio = 0.95

// Options choose what Compress does. The zero value does nothing.
type Options struct {
	// Quantize is one of the Quant* modes.
	Quantize string
	// BlockSize is the weight-only block length along K: a power of two from 16
	// to 256; 0 means 32. With int8 compute (accuracy_level 4, int8's default)
	// it is also the length along which activations share a scale: 64 lost about
	// a point of next-token agreement on the 12x768 GPT to save 2% of its size.
	BlockSize int
	// Symmetric drops zero points: smaller, slightly less accurate.
	Symmetric bool
	// AccuracyLevel is MatMulNBits' accuracy_level (1 fp32, 4 int8 compute);
	// 0 means 4 for int8 and unset (ONNX Runtime's fp32 compute) for int4.
	// ONNX Runtime's CPU kernels for 8-bit weights compute in int8 only: at any
	// other level it dequantizes the whole weight to float32 on every run, which
	// made the 12x768 GPT's decode step 10 x slower than float32's.
	AccuracyLevel int
	// Prune is the fraction of prunable channels removed from each prunable
	// layer group, in [0, MaxPruneRatio]; 0 prunes nothing.
	Prune float64
	// PruneCriterion ranks channels: CriterionL1 (default) by their filters'
	// L1 norms; CriterionOutput by the error their removal adds to the layers
	// that read them on the calibration set (the channel's variance times the
	// squared weights reading it), which needs a calibration set.
	PruneCriterion string
	// PruneGlobal applies Prune to the model as a whole: the least important
	// channels anywhere go, so layers differ in how much they lose.
	PruneGlobal bool
	// PruneSteps splits global pruning with a calibration set into steps that
	// each remove the same fraction of what is left, re-measuring the channels
	// (and so the biases that compensate them) between steps; 0 means 8.
	// Per-layer pruning, or pruning without calibration, takes one step.
	PruneSteps int
	// Calibration is the sample inputs static int8 derives activation ranges
	// from, and Verify's default inputs: each element is one set of model inputs.
	Calibration [][]tensor.Tensor
	// CalibrationDir, when set, is read with LoadCalibration and appended to
	// Calibration.
	CalibrationDir string
	// CalibrationMethod is "minmax" (default) or "percentile".
	CalibrationMethod string
	// Percentile is the upper percentile of an activation's values the
	// percentile method keeps (and 100-Percentile the lower); 0 means 99.99.
	Percentile float64
	// Backend runs models for calibration and verification.
	Backend accel.Backend
	// Verify is how many inputs the original and compressed models are
	// compared on before the file is written; 0 skips verification.
	Verify int
	// MaxError fails verification when the output error relative to the output
	// scale exceeds it; 0 means no limit.
	MaxError float64
	// MinAgreement fails verification when top-1 agreement falls below it; 0
	// means no limit.
	MinAgreement float64
	// InputShapes binds dynamic input dims for verification inputs made up
	// when no calibration set is given (unbound dims are 1).
	InputShapes map[string][]int64
}

// Change is one node a pass rewrote, or kept float32 and why.
type Change struct {
	Node string `json:"node"`
	Op   string `json:"op"`
	// As is the op it became; Reason is why it stayed float32.
	As     string `json:"as,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Report says what Compress did.
type Report struct {
	Source   string  `json:"source"`
	Output   string  `json:"output,omitempty"`
	Quantize string  `json:"quantize,omitempty"`
	Prune    float64 `json:"prune,omitempty"`
	// PruneGlobal and PruneCriterion are the options pruning ran with.
	PruneGlobal    bool   `json:"prune_global,omitempty"`
	PruneCriterion string `json:"prune_criterion,omitempty"`
	// SizeBefore and SizeAfter are the model file sizes.
	SizeBefore int64 `json:"size_before"`
	SizeAfter  int64 `json:"size_after,omitempty"`
	// NothingToDo means no node could be compressed; nothing was written.
	NothingToDo bool     `json:"nothing_to_do,omitempty"`
	Rewritten   []Change `json:"rewritten,omitempty"`
	// Kept lists the nodes left float32, with the reason.
	Kept []Change `json:"kept,omitempty"`
	// Pruned lists each pruned channel group.
	Pruned []PrunedGroup `json:"pruned,omitempty"`
	// Calibration says how static int8 ranges were found.
	Calibration *CalibReport  `json:"calibration,omitempty"`
	Verify      *VerifyReport `json:"verify,omitempty"`
	Elapsed     time.Duration `json:"elapsed_ns"`
}

// PrunedGroup is one set of channels pruned together: the layers whose output
// channels are coupled (through residual Adds, Concats or depthwise convolutions).
type PrunedGroup struct {
	Layers   []string `json:"layers"`
	Channels int      `json:"channels"`
	Removed  int      `json:"removed"`
}

// CalibReport says how static int8 activation ranges were found.
type CalibReport struct {
	Method  string `json:"method"`
	Samples int    `json:"samples"`
	// Tensors is how many activations got a range.
	Tensors int `json:"tensors"`
}

// Ratio is SizeAfter / SizeBefore.
func (r *Report) Ratio() float64 {
	if r.SizeBefore == 0 {
		return 0
	}
	return float64(r.SizeAfter) / float64(r.SizeBefore)
}

func (r *Report) rewrote(n nodeLike, as string) {
	r.Rewritten = append(r.Rewritten, Change{Node: n.GetName(), Op: n.GetOpType(), As: as})
}

func (r *Report) kept(n nodeLike, why string) {
	r.Kept = append(r.Kept, Change{Node: n.GetName(), Op: n.GetOpType(), Reason: why})
}

// nodeLike is what the report reads of a node.
type nodeLike interface {
	GetName() string
	GetOpType() string
}

// check validates opts and fills in defaults.
func (o *Options) check() error {
	switch o.Quantize {
	case QuantNone, QuantInt8, QuantInt4, QuantDynamic, QuantStatic:
	default:
		return fmt.Errorf("%w: unknown quantization %q (want int8, int4, dynamic or static)", ErrInvalidOptions, o.Quantize)
	}
	if o.BlockSize == 0 {
		o.BlockSize = 32
	}
	if o.AccuracyLevel == 0 && o.Quantize == QuantInt8 {
		o.AccuracyLevel = 4
	}
	if o.BlockSize < 16 || o.BlockSize > 256 || o.BlockSize&(o.BlockSize-1) != 0 {
		return fmt.Errorf("%w: block size %d is not a power of two from 16 to 256", ErrInvalidOptions, o.BlockSize)
	}
	if !(o.Prune >= 0 && o.Prune <= MaxPruneRatio) {
		return fmt.Errorf("%w: prune ratio %g is outside [0, %g]", ErrInvalidOptions, o.Prune, MaxPruneRatio)
	}
	if o.PruneSteps < 0 {
		return fmt.Errorf("%w: prune steps %d is negative", ErrInvalidOptions, o.PruneSteps)
	}
	switch o.PruneCriterion {
	case "":
		o.PruneCriterion = CriterionL1
	case CriterionL1:
	case CriterionOutput:
		if len(o.Calibration) == 0 && o.CalibrationDir == "" || o.Backend == nil {
			return fmt.Errorf("%w: the output pruning criterion needs a calibration set and a backend", ErrInvalidOptions)
		}
	default:
		return fmt.Errorf("%w: unknown pruning criterion %q (want l1 or output)", ErrInvalidOptions, o.PruneCriterion)
	}
	if o.Quantize == QuantNone && o.Prune == 0 {
		return fmt.Errorf("%w: nothing asked: give a quantization mode or a prune ratio", ErrInvalidOptions)
	}
	if o.Quantize == QuantStatic && len(o.Calibration) == 0 && o.CalibrationDir == "" {
		return fmt.Errorf("%w: static int8 needs a calibration set", ErrInvalidOptions)
	}
	if (o.Quantize == QuantStatic || o.Verify > 0 || o.CalibrationDir != "" || len(o.Calibration) > 0) && o.Backend == nil {
		return fmt.Errorf("%w: calibration and verification need a backend", ErrInvalidOptions)
	}
	switch o.CalibrationMethod {
	case "":
		o.CalibrationMethod = "minmax"
	case "minmax", "percentile":
	default:
		return fmt.Errorf("%w: unknown calibration method %q (want minmax or percentile)", ErrInvalidOptions, o.CalibrationMethod)
	}
	if o.Percentile == 0 {
		o.Percentile = 99.99
	}
	if o.Percentile < 50 || o.Percentile > 100 {
		return fmt.Errorf("%w: percentile %g is outside [50, 100]", ErrInvalidOptions, o.Percentile)
	}
	return nil
}

// Compress reads the fp32 model at src, compresses it as opts say and writes
// the result to dst (through a temporary file in dst's folder, renamed only
// once the model is complete and, with opts.Verify, verified). On any error,
// and when there is nothing to do, dst is not written.
func Compress(ctx context.Context, src, dst string, opts Options) (*Report, error) {
	start := time.Now()
	if err := opts.check(); err != nil {
		return nil, err
	}
	m, err := partition.Load(src)
	if err != nil {
		return nil, err
	}
	for _, t := range m.Proto.GetGraph().GetInitializer() {
		if t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
			return nil, fmt.Errorf("%w: %s keeps weights in external data (%s)", ErrUnsupportedModel, src, t.GetName())
		}
	}
	rep := &Report{Source: src, Quantize: opts.Quantize, Prune: opts.Prune, PruneGlobal: opts.PruneGlobal, SizeBefore: m.FileSize}
	if opts.Prune > 0 {
		rep.PruneCriterion = opts.PruneCriterion
	}
	if opts.CalibrationDir != "" {
		set, err := LoadCalibration(opts.CalibrationDir, graphInputs(m))
		if err != nil {
			return rep, err
		}
		opts.Calibration = append(opts.Calibration, set...)
	}
	if err := checkCalibration(m, opts.Calibration); err != nil {
		return rep, err
	}
	changed, err := apply(ctx, m, opts, rep)
	if err != nil {
		return rep, err
	}
	if !changed {
		rep.NothingToDo = true
		rep.Elapsed = time.Since(start)
		return rep, nil
	}
	tmp, size, err := writeTemp(m, dst)
	if err != nil {
		return rep, err
	}
	defer os.Remove(tmp) // a no-op once renamed
	rep.SizeAfter = size
	// The source model and its encoding are garbage now; hand their pages back
	// before ONNX Runtime allocates its own copy of the compressed model, or
	// the process's peak holds both (2.5 x the model for dynamic int8 of the
	// 12x768 GPT instead of 1.8 x).
	debug.FreeOSMemory()
	if opts.Backend != nil && opts.Verify == 0 {
		// Even unverified, a model that ONNX Runtime refuses is never written.
		s, err := opts.Backend.Open(ctx, tmp, accel.SessionOptions{IntraOpThreads: 1})
		if err != nil {
			return rep, fmt.Errorf("compress: the compressed model does not load: %w", err)
		}
		s.Close()
	}
	if opts.Verify > 0 {
		if rep.Verify, err = verifyFiles(ctx, opts, src, tmp); err != nil {
			return rep, err
		}
		if err := rep.Verify.check(opts.MaxError, opts.MinAgreement); err != nil {
			rep.Elapsed = time.Since(start)
			return rep, err
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		return rep, fmt.Errorf("compress: %w", err)
	}
	rep.Output = dst
	rep.Elapsed = time.Since(start)
	return rep, nil
}

// apply runs the passes opts ask for on m: pruning first (it needs the float
// weights), then quantization. It reports whether anything changed.
func apply(ctx context.Context, m *partition.Model, opts Options, rep *Report) (bool, error) {
	changed := false
	if opts.Prune > 0 {
		n, err := pruneInSteps(ctx, m, opts, rep)
		if err != nil {
			return false, err
		}
		changed = n > 0
	}
	e := newEditor(m.Proto)
	switch opts.Quantize {
	case QuantInt8, QuantInt4:
		bits := 8
		if opts.Quantize == QuantInt4 {
			bits = 4
		}
		w := &weightOnly{e: e, bits: bits, block: opts.BlockSize, symmetric: opts.Symmetric,
			accuracy: int64(opts.AccuracyLevel), done: map[quantKey]*quantWeight{}, rep: rep}
		w.run()
		changed = changed || len(w.done) > 0
	case QuantDynamic:
		changed = dynamicQuantize(e, rep) > 0 || changed
	case QuantStatic:
		n, err := staticQuantize(ctx, e, opts, rep)
		if err != nil {
			return false, err
		}
		changed = changed || n > 0
	}
	e.finish()
	return changed, nil
}

// writeTemp writes m next to dst under a temporary name and returns it and its size.
func writeTemp(m *partition.Model, dst string) (string, int64, error) {
	b, err := proto.Marshal(m.Proto)
	if err != nil {
		return "", 0, fmt.Errorf("compress: encode: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*.tmp")
	if err != nil {
		return "", 0, fmt.Errorf("compress: %w", err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", 0, fmt.Errorf("compress: write: %w", err)
	}
	return f.Name(), int64(len(b)), nil
}
