package pipeline

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/mesh"
)

// Pipeline errors. The service maps them onto the API's sentinels (service.go); the
// stage RPC carries them between nodes through wireReasons.
var (
	// ErrNoReplica means a stage of the model has no live, ready replica anywhere.
	ErrNoReplica = errors.New("no live replica of stage")
	// ErrStageFailed means every attempt on a stage failed within the request's budget.
	ErrStageFailed = errors.New("stage failed on every replica")
	// ErrBadStageResponse means a peer answered with tensors that do not match the
	// stage's manifest (missing outputs, malformed data): garbage, retried elsewhere.
	ErrBadStageResponse = errors.New("bad stage response")
	// ErrUnknownModel means the router has no plan for the model version asked for.
	ErrUnknownModel = errors.New("model not deployed")
	// ErrStageNotServed means this node has no ready session for the stage asked for;
	// the caller retries on another replica.
	ErrStageNotServed = errors.New("stage not served here")
	// ErrOverBudget means loading a stage would exceed the node's --mem-budget.
	ErrOverBudget = errors.New("stage exceeds memory budget")
)

// NoReplicaError names the stage that has no live replica; it wraps ErrNoReplica.
type NoReplicaError struct {
	Model, Version string
	Stage          int
}

func (e *NoReplicaError) Error() string {
	return fmt.Sprintf("%v %d of %s version %s", ErrNoReplica, e.Stage, e.Model, e.Version)
}

// Unwrap lets errors.Is match ErrNoReplica.
func (e *NoReplicaError) Unwrap() error { return ErrNoReplica }

// wireReason is one row of the stage RPC's error mapping. The mesh's wire codes are
// coarse (a bad request, a stage not loaded, a deadline, an internal fault); the
// reason travels as the first word of the message, so that the caller gets back the
// very sentinels the serving node had: a shape mismatch three hops away is still a
// shape mismatch. Rows are matched in order; the first whose sentinel the error
// carries names it.
type wireReason struct {
	reason string
	// is are the sentinels a local error carries and a decoded remote error gets back.
	is []error
	// wire is the mesh sentinel that picks the wire code; nil lets the mesh derive it
	// (CodeDeadline, CodeCanceled, CodeInternal).
	wire error
	// remote, when set, replaces is on the calling side: what the error means there.
	remote []error
}

var wireReasons = []wireReason{
	{"shape_mismatch", []error{accel.ErrShapeMismatch, accel.ErrInputMismatch}, mesh.ErrBadRequest, nil},
	{"dtype_mismatch", []error{accel.ErrDTypeMismatch, accel.ErrInputMismatch}, mesh.ErrBadRequest, nil},
	{"unsupported_input", []error{accel.ErrUnsupportedInput}, mesh.ErrBadRequest, nil},
	{"input_mismatch", []error{accel.ErrInputMismatch}, mesh.ErrBadRequest, nil},
	{"stage_not_served", []error{ErrStageNotServed}, mesh.ErrStageNotLoaded, nil},
	{"session_lost", []error{ErrSessionLost}, mesh.ErrStageNotLoaded, nil},
	{"kv_exhausted", []error{api.ErrKVExhausted}, nil, nil},
	{"not_generative", []error{api.ErrNotGenerative}, mesh.ErrBadRequest, nil},
	// A peer that does not know the model version lags behind the state (or has
	// dropped it): to the caller it is a replica that does not serve the stage, and
	// another one is tried.
	{"unknown_model", []error{ErrUnknownModel}, mesh.ErrStageNotLoaded, []error{ErrStageNotServed}},
	// A deadline that passed after failed attempts is still a deadline.
	{"timeout", []error{context.DeadlineExceeded}, nil, nil},
	{"canceled", []error{context.Canceled}, nil, nil},
	{"no_replica", []error{ErrNoReplica}, nil, nil},
	{"bad_stage_response", []error{ErrBadStageResponse}, nil, nil},
	{"stage_failed", []error{ErrStageFailed}, nil, nil},
}

// wireError is a handler's error on its way out: the reason word, the mesh sentinel
// that picks the code and the original error.
type wireError struct {
	reason string
	wire   error
	err    error
}

func (e *wireError) Error() string { return e.reason + ": " + e.err.Error() }

func (e *wireError) Unwrap() []error {
	if e.wire == nil {
		return []error{e.err}
	}
	return []error{e.wire, e.err}
}

// toWire gives a stage handler's error the wire code and reason the caller decodes
// with fromWire. An error no row names goes as it is (CodeInternal, retried elsewhere).
func toWire(err error) error {
	if err == nil {
		return nil
	}
	for _, row := range wireReasons {
		if errors.Is(err, row.is[0]) {
			return &wireError{reason: row.reason, wire: row.wire, err: err}
		}
	}
	return err
}

// remoteError is a peer's error decoded by fromWire: it matches the reason's
// sentinels and still the mesh's RemoteError (errors.As finds the peer and code).
type remoteError struct {
	is  []error
	err error
}

func (e *remoteError) Error() string { return e.err.Error() }

func (e *remoteError) Unwrap() []error { return append(slices.Clone(e.is), e.err) }

// fromWire turns a stage RPC error back into the sentinels the serving node had.
// A remote bad request without a known reason still counts as a rejected input, so
// it is not retried on every replica.
func fromWire(err error) error {
	var re *mesh.RemoteError
	if err == nil || !errors.As(err, &re) {
		return err
	}
	// The reason is the first ": "-separated word of the message that names one: the
	// serving mesh may put its own words before it ("mesh: deadline exceeded: ...").
	for _, word := range strings.Split(re.Message, ": ") {
		for _, row := range wireReasons {
			if row.reason == word && row.remote != nil {
				return &remoteError{is: row.remote, err: err}
			}
			if row.reason == word {
				return &remoteError{is: row.is, err: err}
			}
		}
	}
	switch {
	case errors.Is(err, mesh.ErrDeadline):
		return &remoteError{is: []error{context.DeadlineExceeded}, err: err}
	case errors.Is(err, mesh.ErrBadRequest):
		return &remoteError{is: []error{accel.ErrInputMismatch}, err: err}
	case errors.Is(err, mesh.ErrStageNotLoaded):
		return &remoteError{is: []error{ErrStageNotServed}, err: err}
	}
	return err
}

// retryable says whether another replica could answer where this one failed. A
// request the model rejects is rejected everywhere; a cancelled or expired request is
// over. Everything else (a dead peer, a reset stream, a timeout of one attempt, a
// stage not loaded there, garbage on the wire) is the replica's problem.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	for _, final := range []error{accel.ErrInputMismatch, accel.ErrShapeMismatch, accel.ErrDTypeMismatch, accel.ErrUnsupportedInput, ErrUnknownModel,
		api.ErrKVExhausted, api.ErrNotGenerative} {
		if errors.Is(err, final) {
			return false
		}
	}
	return true
}

// checkStageOutputs rejects a response that lacks an expected tensor or carries an
// invalid one, so that a confused or malicious peer cannot poison a later stage.
func checkStageOutputs(out []tensor.Tensor, want []string) error {
	for _, name := range want {
		i := slices.IndexFunc(out, func(t tensor.Tensor) bool { return t.Name == name })
		if i < 0 {
			return fmt.Errorf("%w: output %q missing", ErrBadStageResponse, name)
		}
		if err := out[i].Validate(); err != nil {
			return fmt.Errorf("%w: %w", ErrBadStageResponse, err)
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func newRequestID() string {
	var b [8]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}
