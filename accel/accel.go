// Package accel declares how ONNX models are run: Backend opens a Session for a model
// file; a Session runs it on named tensors. It holds the interfaces, their option and
// info types and the error sentinels, and no cgo: the ONNX Runtime backend, the one
// real implementation, lives in accel/ort, and only the binaries and tests that run
// models import it. Everything else (api, partition, the request path) depends on these
// interfaces and so builds with CGO_ENABLED=0.
package accel

import (
	"context"
	"errors"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
)

// Errors callers match with errors.Is.
var (
	ErrProviderUnavailable = errors.New("execution provider unavailable")
	ErrInvalidModel        = errors.New("invalid model")
	ErrInputMismatch       = errors.New("input does not match model")
	ErrSessionClosed       = errors.New("session closed")

	// ErrShapeMismatch and ErrDTypeMismatch refine ErrInputMismatch; errors that carry
	// them also match ErrInputMismatch.
	ErrShapeMismatch = errors.New("shape mismatch")
	ErrDTypeMismatch = errors.New("dtype mismatch")
	// ErrUnsupportedOutput is returned when a requested output is not a tensor of a
	// tensor.DType (a sequence, map, empty optional, complex or float8 tensor).
	ErrUnsupportedOutput = errors.New("unsupported output type")
	// ErrUnsupportedInput marks a model input that is not a tensor of a tensor.DType;
	// such a model opens, but cannot be run.
	ErrUnsupportedInput = errors.New("unsupported input type")
	// ErrLibraryNotFound means no ONNX Runtime shared library was found.
	ErrLibraryNotFound = errors.New("onnx runtime library not found")
)

// Provider names an ONNX Runtime execution provider.
type Provider string

// Execution providers. Auto picks the best one that loads: TensorRT, then CUDA, then CPU.
const (
	ProviderAuto     Provider = "auto"
	ProviderCPU      Provider = "cpu"
	ProviderCUDA     Provider = "cuda"
	ProviderTensorRT Provider = "tensorrt"
)

// TensorInfo describes one model input or output. A dim of -1 is dynamic (symbolic
// or unknown).
type TensorInfo struct {
	Name  string
	DType tensor.DType
	Shape []int64
}

// SessionOptions tune one session.
type SessionOptions struct {
	// IntraOpThreads is ONNX Runtime's intra-op thread count; 0 means the backend default.
	IntraOpThreads int
	// PoolSize is how many ORT sessions serve concurrent Run calls; 0 means 1.
	PoolSize int
}

// NodeProfiler is a Backend that can time each node of a model: the planner's
// measured costs come from it.
type NodeProfiler interface {
	// ProfileNodes opens the model at path, runs it with inputs warmup times and then
	// runs times, once plainly and once with a profiler writing under tmpDir ("": the
	// system's), and returns the median time of a plain run and each node's median
	// kernel time. Both sessions optimize the graph at the basic level only, whose
	// few fusions (a Conv with the Add, Mul or BatchNormalization after it) keep the
	// first node's name; the fusions that rename nodes are off.
	ProfileNodes(ctx context.Context, path string, opts SessionOptions, inputs []tensor.Tensor, warmup, runs int, tmpDir string) (*NodeProfile, error)
}

// NodeProfile is what ProfileNodes measured.
type NodeProfile struct {
	// Run is the median wall time of one run without the profiler.
	Run time.Duration
	// Nodes is each node's median kernel time, by node name. What a run takes
	// beyond their sum is the executor's own work between the kernels.
	Nodes map[string]time.Duration
}

// Backend opens sessions. It is safe for concurrent use.
type Backend interface {
	// Open loads the model at path. External-data files resolve against path's folder.
	Open(ctx context.Context, path string, opts SessionOptions) (Session, error)
	// Provider is the execution provider this backend actually uses.
	Provider() Provider
	Close() error
}

// Session runs one loaded model. Run is safe for concurrent use.
type Session interface {
	Inputs() []TensorInfo
	Outputs() []TensorInfo
	// Run validates inputs against Inputs() and returns the requested outputs (all
	// outputs when names is empty), in the order asked.
	Run(ctx context.Context, inputs []tensor.Tensor, names []string) ([]tensor.Tensor, error)
	Close() error
}

// Held is a tensor kept in the backend's own memory between runs: an output handed
// back without a copy into Go memory, given to a later run as an input without one.
// A session's state (a KV cache) lives this way on the node that runs it. Its owner
// releases it once no run reads it any more; Release is idempotent.
type Held interface {
	// DType and Shape describe the tensor; Bytes is its size.
	DType() tensor.DType
	Shape() []int64
	Bytes() int64
	// Tensor copies the value into Go memory under name.
	Tensor(name string) (tensor.Tensor, error)
	// ReadAt copies part of the value's bytes (io.ReaderAt): a caller that needs one
	// row of a large output (the last position's logits) copies only that row.
	ReadAt(p []byte, off int64) (int, error)
	Release()
}

// HeldInput is a held value given to a run as the input Name.
type HeldInput struct {
	Name  string
	Value Held
}

// HeldRunner is a Session that keeps outputs in the backend's memory.
type HeldRunner interface {
	// RunHeld is Run with held values as further inputs, that returns the outputs
	// named in keep as held values (in keep's order, owned by the caller) and copies
	// the others named in names (every output not kept when names is empty). The
	// held inputs must stay unreleased until it returns.
	RunHeld(ctx context.Context, inputs []tensor.Tensor, held []HeldInput, names, keep []string) ([]tensor.Tensor, []Held, error)
}

// HeldStacker is a HeldRunner that also builds held values out of others in the
// backend's memory: a stage that batches its sessions' decode steps stacks their
// state into one batch and cuts each session's back out of the batched outputs, and
// no state passes through Go memory.
type HeldStacker interface {
	HeldRunner
	// StackHeld stacks rows, each with a first dimension of 1 and otherwise alike,
	// along the first dimension. With axis > 0, rows may differ in their length along
	// axis: each is padded in front to length with zeros (tensor.PadRow). The rows
	// stay the caller's; the stack is a new value the caller releases.
	StackHeld(rows []Held, axis, length int) (Held, error)
	// CutHeld returns row i of h's first dimension as a new value, less its first pad
	// positions along axis when axis > 0 (tensor.UnpadRow).
	CutHeld(h Held, i, axis, pad int) (Held, error)
}

// HeldCounter is a Backend that counts what it holds between runs: the bytes of the
// Held values not yet released. The ONNX Runtime backend counts them over the whole
// process, which in meshnode is one node's.
type HeldCounter interface {
	HeldBytes() int64
}

// runTimeKey carries a RunTime into a Run through its context.
type runTimeKey struct{}

// RunTime is filled by a backend that supports it with how long a run computed, not
// counting the wait for a free session of its pool.
type RunTime struct {
	d   time.Duration
	set bool
}

// Get returns the run's compute time, and false when the backend did not report it.
func (t *RunTime) Get() (time.Duration, bool) { return t.d, t.set }

// Set records the run's compute time (backends call it).
func (t *RunTime) Set(d time.Duration) { t.d, t.set = d, true }

// WithRunTime returns a context whose Run (or RunHeld) records its compute time in t.
func WithRunTime(ctx context.Context, t *RunTime) context.Context {
	return context.WithValue(ctx, runTimeKey{}, t)
}

// RunTimeFrom is the RunTime a run's context carries, or nil.
func RunTimeFrom(ctx context.Context) *RunTime {
	t, _ := ctx.Value(runTimeKey{}).(*RunTime)
	return t
}
