package ort

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

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

func openPool(ctx context.Context, o *Backend, path string, opts accel.SessionOptions) (*ortPool, error) {
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
		s, err := newOrtSession(path, nil, threads, o.provider, o.options)
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
	select {
	case <-p.closed:
		return nil, accel.ErrSessionClosed
	default:
	}
	ordered, err := p.validate(inputs)
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		names = make([]string, len(p.outputs))
		for i, o := range p.outputs {
			names[i] = o.Name
		}
	}
	for _, n := range names {
		i, ok := p.outIdx[n]
		if !ok {
			return nil, fmt.Errorf("%w: unknown output %q (model outputs: %s)", accel.ErrInputMismatch, n, infoNames(p.outputs))
		}
		if o := p.outputs[i]; !o.isTensor || !o.DType.Valid() {
			return nil, fmt.Errorf("%w: output %q is a %s of element type %d", accel.ErrUnsupportedOutput, n, o.kind, uint8(o.DType))
		}
	}

	// A context that has already ended must win over a free session: select picks
	// among ready cases at random.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("run %s: %w", p.path, err)
	}
	var s *ortSession
	select {
	case <-p.closed:
		return nil, accel.ErrSessionClosed
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for a session of %s: %w", p.path, ctx.Err())
	case s = <-p.idle:
	}
	defer func() { p.idle <- s }()

	var vals cValues
	defer vals.release()
	inNames := make([]string, len(ordered))
	for i, t := range ordered {
		inNames[i] = t.Name
		if err := vals.add(t); err != nil {
			return nil, err
		}
	}
	ro, err := newRunOptions()
	if err != nil {
		return nil, err
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
	out, err := s.run(ro, inNames, &vals, names)
	stop()
	mu.Lock()
	done = true
	mu.Unlock()
	ro.release()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("run %s: %w (%w)", p.path, ctx.Err(), err)
		}
		return nil, fmt.Errorf("run %s: %w", p.path, err)
	}
	return out, nil
}

// validate checks inputs against the model and returns them in the model's order.
func (p *ortPool) validate(inputs []tensor.Tensor) ([]*tensor.Tensor, error) {
	ordered := make([]*tensor.Tensor, len(p.inputs))
	for i := range inputs {
		t := &inputs[i]
		idx, ok := p.byName[t.Name]
		if !ok {
			return nil, fmt.Errorf("%w: unknown input %q (model inputs: %s)", accel.ErrInputMismatch, t.Name, infoNames(p.inputs))
		}
		if ordered[idx] != nil {
			return nil, fmt.Errorf("%w: input %q given twice", accel.ErrInputMismatch, t.Name)
		}
		if err := checkInput(p.inputs[idx], t); err != nil {
			return nil, err
		}
		ordered[idx] = t
	}
	var missing []string
	for i, t := range ordered {
		if t == nil {
			missing = append(missing, p.inputs[i].Name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: missing input(s) %s", accel.ErrInputMismatch, strings.Join(missing, ", "))
	}
	return ordered, nil
}

// checkInput compares one tensor to the model's description of that input.
func checkInput(want ioInfo, t *tensor.Tensor) error {
	if !want.isTensor {
		return fmt.Errorf("%w: input %q is a %s; only tensors can be passed", accel.ErrUnsupportedInput, want.Name, want.kind)
	}
	if t.DType != want.DType {
		return fmt.Errorf("%w: %w: input %q: expected %s, got %s", accel.ErrInputMismatch, accel.ErrDTypeMismatch, t.Name, want.DType, t.DType)
	}
	if len(t.Shape) != len(want.Shape) {
		return fmt.Errorf("%w: %w: input %q: expected rank %d %s, got rank %d %v", accel.ErrInputMismatch, accel.ErrShapeMismatch, t.Name, len(want.Shape), dimsString(want.Shape), len(t.Shape), t.Shape)
	}
	for i, d := range t.Shape {
		if d < 0 {
			return fmt.Errorf("%w: %w: input %q: dim %d is negative (%d)", accel.ErrInputMismatch, accel.ErrShapeMismatch, t.Name, i, d)
		}
		if w := want.Shape[i]; w >= 0 && d != w {
			return fmt.Errorf("%w: %w: input %q: expected %s, got %v (dim %d)", accel.ErrInputMismatch, accel.ErrShapeMismatch, t.Name, dimsString(want.Shape), t.Shape, i)
		}
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
