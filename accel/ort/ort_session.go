package ort

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
)

// ortPool is a Session backed by a fixed set of ORT sessions of one model. A Run takes
// one session for its duration, so up to len(all) runs proceed in parallel.
type ortPool struct {
	path    string
	log     *slog.Logger
	inputs  []ioInfo
	outputs []ioInfo
	byName  map[string]int // input name -> index in inputs
	outIdx  map[string]int // output name -> index in outputs

	idle      chan *ortSession
	all       []*ortSession
	closed    chan struct{}
	closeOnce sync.Once
}

// openPool opens opts.PoolSize sessions of the model at path, profiled as prof says.
func openPool(ctx context.Context, o *Backend, path string, opts accel.SessionOptions, prof profiling) (*ortPool, error) {
	size := max(opts.PoolSize, 1)
	threads := o.threads
	if opts.IntraOpThreads > 0 {
		threads = opts.IntraOpThreads
	}
	p := &ortPool{
		path:   path,
		log:    o.log.With("model", path),
		idle:   make(chan *ortSession, size),
		closed: make(chan struct{}),
	}
	for range size {
		if err := ctx.Err(); err != nil {
			p.releaseAll()
			return nil, err
		}
		s, err := newOrtSession(path, nil, threads, o.provider, o.options, prof)
		if err != nil {
			p.releaseAll()
			return nil, classifyOpenError(path, err)
		}
		p.all = append(p.all, s)
		p.idle <- s
	}
	var err error
	if p.inputs, err = p.all[0].ioInfos(false); err == nil {
		p.outputs, err = p.all[0].ioInfos(true)
	}
	if err != nil {
		p.releaseAll()
		return nil, fmt.Errorf("%w: %s: reading inputs and outputs: %w", accel.ErrInvalidModel, path, err)
	}
	p.byName = make(map[string]int, len(p.inputs))
	for i, in := range p.inputs {
		p.byName[in.Name] = i
	}
	p.outIdx = make(map[string]int, len(p.outputs))
	for i, out := range p.outputs {
		p.outIdx[out.Name] = i
	}
	p.log.Debug("model opened", "pool", size, "intra_op_threads", threads, "inputs", len(p.inputs), "outputs", len(p.outputs))
	return p, nil
}

// classifyOpenError marks a failure to create a session as the model's fault
// (ErrInvalidModel) unless it is the provider's. ORT reports model defects with
// several codes (INVALID_PROTOBUF, INVALID_GRAPH, and the generic FAIL for unsupported
// operators or type errors found while building the graph); none of them is the
// caller's environment.
func classifyOpenError(path string, err error) error {
	if errors.Is(err, accel.ErrProviderUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %s: %w", accel.ErrInvalidModel, path, err)
}

func (p *ortPool) releaseAll() {
	for _, s := range p.all {
		s.release()
	}
	p.all = nil
}

// Inputs describes the model's inputs; non-tensor inputs have DType tensor.Invalid.
func (p *ortPool) Inputs() []accel.TensorInfo { return publicInfos(p.inputs) }

// Outputs describes the model's outputs; non-tensor outputs have DType tensor.Invalid.
func (p *ortPool) Outputs() []accel.TensorInfo { return publicInfos(p.outputs) }

func publicInfos(in []ioInfo) []accel.TensorInfo {
	out := make([]accel.TensorInfo, len(in))
	for i, info := range in {
		out[i] = accel.TensorInfo{Name: info.Name, DType: info.DType, Shape: append([]int64(nil), info.Shape...)}
	}
	return out
}

// Close waits for runs in flight, then releases every ORT session. Later Runs return
// ErrSessionClosed.
func (p *ortPool) Close() error {
	p.closeOnce.Do(func() {
		close(p.closed)
		for range p.all {
			s := <-p.idle
			s.release()
		}
	})
	return nil
}

// Run validates inputs, waits for a free ORT session (or ctx), and runs it. A ctx that
// ends during the run asks ORT to terminate it.
func (p *ortPool) Run(ctx context.Context, inputs []tensor.Tensor, names []string) ([]tensor.Tensor, error) {
	out, _, err := p.run(ctx, inputs, nil, p.outputNames(names, nil), nil)
	return out, err
}

// RunHeld is Run with held inputs and outputs (accel.HeldRunner): the kept outputs
// stay in ONNX Runtime's memory, where the next step's run reads them in place.
func (p *ortPool) RunHeld(ctx context.Context, inputs []tensor.Tensor, held []accel.HeldInput, names, keep []string) ([]tensor.Tensor, []accel.Held, error) {
	return p.run(ctx, inputs, held, p.outputNames(names, keep), keep)
}

// outputNames are the outputs a run copies: names, or when it is empty every output
// not kept.
func (p *ortPool) outputNames(names, keep []string) []string {
	if len(names) > 0 {
		return names
	}
	out := make([]string, 0, len(p.outputs))
	for _, o := range p.outputs {
		if !slices.Contains(keep, o.Name) {
			out = append(out, o.Name)
		}
	}
	return out
}

// run runs inputs and held on a free ORT session, copies the outputs named in names
// and keeps those named in keep.
func (p *ortPool) run(ctx context.Context, inputs []tensor.Tensor, held []accel.HeldInput, names, keep []string) ([]tensor.Tensor, []accel.Held, error) {
	select {
	case <-p.closed:
		return nil, nil, accel.ErrSessionClosed
	default:
	}
	ordered, heldVals, err := p.validate(inputs, held)
	if err != nil {
		return nil, nil, err
	}
	for _, n := range append(slices.Clone(names), keep...) {
		i, ok := p.outIdx[n]
		if !ok {
			return nil, nil, fmt.Errorf("%w: unknown output %q (model outputs: %s)", accel.ErrInputMismatch, n, infoNames(p.outputs))
		}
		if o := p.outputs[i]; !o.isTensor || !o.DType.Valid() || (o.DType == tensor.String && slices.Contains(keep, n)) {
			return nil, nil, fmt.Errorf("%w: output %q is a %s of element type %d", accel.ErrUnsupportedOutput, n, o.kind, uint8(o.DType))
		}
	}

	// A context that has already ended must win over a free session: select picks
	// among ready cases at random.
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("run %s: %w", p.path, err)
	}
	var s *ortSession
	select {
	case <-p.closed:
		return nil, nil, accel.ErrSessionClosed
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("waiting for a session of %s: %w", p.path, ctx.Err())
	case s = <-p.idle:
	}
	defer func() { p.idle <- s }()

	var vals cValues
	defer vals.release()
	inNames := make([]string, 0, len(p.inputs))
	for _, t := range ordered {
		if t == nil {
			continue
		}
		inNames = append(inNames, t.Name)
		if err := vals.add(t); err != nil {
			return nil, nil, err
		}
	}
	inVals := slices.Clone(vals.vals)
	for _, h := range heldVals {
		inNames = append(inNames, h.name)
		inVals = append(inVals, h.v.v)
	}
	ro, err := newRunOptions()
	if err != nil {
		return nil, nil, err
	}
	// terminate may fire while ORT runs; the mutex keeps it from touching the run
	// options after they are released.
	var mu sync.Mutex
	done := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			ro.terminate()
		}
	})
	start := time.Now()
	out, kept, err := s.run(ro, inNames, inVals, names, keep, &vals)
	if t := accel.RunTimeFrom(ctx); t != nil {
		t.Set(time.Since(start))
	}
	stop()
	mu.Lock()
	done = true
	mu.Unlock()
	ro.release()
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("run %s: %w (%w)", p.path, ctx.Err(), err)
		}
		return nil, nil, fmt.Errorf("run %s: %w", p.path, err)
	}
	return out, kept, nil
}

// namedHeld is a held input checked against the model.
type namedHeld struct {
	name string
	v    *heldValue
}

// validate checks inputs and held inputs against the model. It returns the tensors
// in the model's order (nil where a held value stands) and the held values.
func (p *ortPool) validate(inputs []tensor.Tensor, held []accel.HeldInput) ([]*tensor.Tensor, []namedHeld, error) {
	ordered := make([]*tensor.Tensor, len(p.inputs))
	given := make([]bool, len(p.inputs))
	for i := range inputs {
		t := &inputs[i]
		idx, ok := p.byName[t.Name]
		if !ok {
			return nil, nil, fmt.Errorf("%w: unknown input %q (model inputs: %s)", accel.ErrInputMismatch, t.Name, infoNames(p.inputs))
		}
		if given[idx] {
			return nil, nil, fmt.Errorf("%w: input %q given twice", accel.ErrInputMismatch, t.Name)
		}
		if err := checkInput(p.inputs[idx], t); err != nil {
			return nil, nil, err
		}
		ordered[idx], given[idx] = t, true
	}
	var hv []namedHeld
	for _, h := range held {
		idx, ok := p.byName[h.Name]
		if !ok {
			return nil, nil, fmt.Errorf("%w: unknown input %q (model inputs: %s)", accel.ErrInputMismatch, h.Name, infoNames(p.inputs))
		}
		if given[idx] {
			return nil, nil, fmt.Errorf("%w: input %q given twice", accel.ErrInputMismatch, h.Name)
		}
		v, ok := h.Value.(*heldValue)
		if !ok || v.released() {
			return nil, nil, fmt.Errorf("%w: input %q: not a live value held by ONNX Runtime", accel.ErrInputMismatch, h.Name)
		}
		if err := checkShape(p.inputs[idx], h.Name, v.dtype, v.shape); err != nil {
			return nil, nil, err
		}
		given[idx] = true
		hv = append(hv, namedHeld{name: h.Name, v: v})
	}
	var missing []string
	for i, ok := range given {
		if !ok {
			missing = append(missing, p.inputs[i].Name)
		}
	}
	if len(missing) > 0 {
		return nil, nil, fmt.Errorf("%w: missing input(s) %s", accel.ErrInputMismatch, strings.Join(missing, ", "))
	}
	return ordered, hv, nil
}

// checkInput compares one tensor to the model's description of that input.
func checkInput(want ioInfo, t *tensor.Tensor) error {
	if err := checkShape(want, t.Name, t.DType, t.Shape); err != nil {
		return err
	}
	// ORT copies strings as C strings: an embedded NUL would silently cut one short.
	for i, s := range t.Strings {
		if strings.IndexByte(s, 0) >= 0 {
			return fmt.Errorf("%w: input %q: string element %d contains a NUL byte", accel.ErrInputMismatch, t.Name, i)
		}
	}
	// Validate checks that the element count does not overflow and that the data is
	// exactly as long as the shape says, neither shorter nor longer.
	if err := t.Validate(); err != nil {
		return fmt.Errorf("%w: %w", accel.ErrInputMismatch, err)
	}
	return nil
}

// checkShape compares an input's element type and shape to the model's description.
func checkShape(want ioInfo, name string, dtype tensor.DType, shape []int64) error {
	if !want.isTensor {
		return fmt.Errorf("%w: input %q is a %s; only tensors can be passed", accel.ErrUnsupportedInput, want.Name, want.kind)
	}
	if dtype != want.DType {
		return fmt.Errorf("%w: %w: input %q: expected %s, got %s", accel.ErrInputMismatch, accel.ErrDTypeMismatch, name, want.DType, dtype)
	}
	if len(shape) != len(want.Shape) {
		return fmt.Errorf("%w: %w: input %q: expected rank %d %s, got rank %d %v", accel.ErrInputMismatch, accel.ErrShapeMismatch, name, len(want.Shape), dimsString(want.Shape), len(shape), shape)
	}
	for i, d := range shape {
		if d < 0 {
			return fmt.Errorf("%w: %w: input %q: dim %d is negative (%d)", accel.ErrInputMismatch, accel.ErrShapeMismatch, name, i, d)
		}
		if w := want.Shape[i]; w >= 0 && d != w {
			return fmt.Errorf("%w: %w: input %q: expected %s, got %v (dim %d)", accel.ErrInputMismatch, accel.ErrShapeMismatch, name, dimsString(want.Shape), shape, i)
		}
	}
	return nil
}

// dimsString prints a model shape with "?" for dynamic dims.
func dimsString(shape []int64) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		if d < 0 {
			parts[i] = "?"
		} else {
			parts[i] = fmt.Sprint(d)
		}
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func infoNames(infos []ioInfo) string {
	names := make([]string, len(infos))
	for i, in := range infos {
		names[i] = in.Name
	}
	return strings.Join(names, ", ")
}
