package pipeline

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/mesh"
)

// Session errors.
var (
	// ErrSessionLost means a stage replica does not hold the session's state at the
	// step's position (expired, restarted, or a step failed there): the caller
	// rebuilds it by replaying the session's tokens.
	ErrSessionLost = errors.New("session state lost")
)

// StatePair is a stage input and output that carry a session's state between steps
// (partition.StatePair): the runtime feeds In from what the previous step wrote to
// Out, on this node.
type StatePair struct{ In, Out string }

// Names of the Optimum decoder layout's inputs that the stage runtime derives from a
// session's position when a stage reads them and the caller does not send them: only
// token ids and hidden states cross the wire.
const (
	attentionMaskInput = "attention_mask"
	positionIDsInput   = "position_ids"
)

// DefaultSessionTTL is how long a session's state stays on a stage without a step.
const DefaultSessionTTL = 5 * time.Minute

// SessionStep is one step of a session on one stage of this node.
type SessionStep struct {
	Session string
	Key     StageKey
	Step    mesh.StepKind
	// Pos is the number of tokens the session had before this step, Len the number
	// it runs.
	Pos, Len int
	Inputs   []tensor.Tensor
	// Outputs names the tensors wanted back; empty means every output that is not
	// state. With a SamplingTensor among the inputs the answer is TokenTensor.
	Outputs []string
}

// sessionKey is one session's state on one stage.
type sessionKey struct {
	id    string
	stage StageKey
}

// stageSession is what a stage keeps of one session between steps: its state, named
// as the stage's state inputs, held by the backend where it can (the next step reads
// it in place, or a batch stacks it there; nothing is copied into Go memory or left
// to Go's collector) and in Go memory where it cannot. The state is released when the session
// moves on or ends, never while a step that reads it runs.
type stageSession struct {
	state    []tensor.Tensor
	held     []accel.HeldInput
	pos      int
	bytes    int64
	lastUsed time.Time
	busy     bool
}

// release frees the backend memory of the session's state.
func (s *stageSession) release() {
	releaseHeld(s.held)
	s.held, s.state = nil, nil
}

func releaseHeld(held []accel.HeldInput) {
	for _, h := range held {
		h.Value.Release()
	}
}

// SessionStats are the runtime's session figures, for metrics and tests.
type SessionStats struct {
	Sessions int
	// Bytes is the state the sessions hold, counted against the memory budget.
	Bytes   int64
	Expired uint64
	// Batched counts the decode steps that ran several sessions in one run.
	Batched BatchStats
}

// SessionStats returns the sessions held now and their bytes.
func (r *StageRuntime) SessionStats() SessionStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return SessionStats{Sessions: len(r.sessions), Bytes: r.sessionBytes, Expired: r.sessionsExpired,
		Batched: BatchStats{Runs: r.batched.runs.Load(), Steps: r.batched.steps.Load()}}
}

// SessionStep runs one step of a session on a stage served here. A prefill replaces
// any state the session had; a decode needs the state at exactly Pos (else
// ErrSessionLost); a close frees it. A new session is refused with
// api.ErrKVExhausted when the budget is spent; running ones go on. No lock is held
// during the run, so steps of different sessions run at once.
func (r *StageRuntime) SessionStep(ctx context.Context, req SessionStep) ([]tensor.Tensor, error) {
	sk := sessionKey{id: req.Session, stage: req.Key}
	if req.Step == mesh.StepClose {
		r.dropSession(sk)
		return nil, nil
	}
	s, sess, err := r.beginStep(sk, req)
	if err != nil {
		return nil, err
	}
	defer s.inFlight.Done()
	sampling, inputs, err := samplingFrom(req.Inputs)
	if err == nil {
		inputs, err = sessionInputs(s.sess, s.a.State, sess, req.Pos, req.Len, inputs)
	}
	var (
		out    []tensor.Tensor
		held   []accel.HeldInput
		logits accel.Held
	)
	if err == nil {
		var rt accel.RunTime
		start := time.Now()
		runCtx := accel.WithRunTime(ctx, &rt)
		switch {
		case s.batch != nil && req.Step == mesh.StepDecode && s.batch.batching():
			out, held, logits, err = s.batch.run(ctx, inputs, sess.held, req.Pos, req.Len, sampling != nil)
		case s.held != nil:
			out, held, logits, err = s.held.run(runCtx, inputs, sess.held, sampling != nil)
		default:
			out, err = s.sess.Run(runCtx, inputs, nil)
		}
		if fn := r.observe.Load(); fn != nil {
			(*fn)(req.Key, req.Step, computeTime(&rt, start), err)
		}
	}
	if err != nil {
		// The state is no longer known to match the session's tokens.
		r.failStep(sk, sess)
		return nil, err
	}
	state, rest := splitState(s.a.State, out)
	r.endStep(sk, sess, state, held, req.Pos+req.Len)
	switch {
	case logits != nil:
		defer logits.Release()
		return sampleLastRow(logits, *sampling)
	case sampling != nil:
		return sampleToken(rest, *sampling)
	}
	if len(req.Outputs) > 0 {
		rest = slices.DeleteFunc(rest, func(t tensor.Tensor) bool { return !slices.Contains(req.Outputs, t.Name) })
	}
	return rest, nil
}

// beginStep finds the stage and the session's state for a prefill or decode, marks
// the session busy and the stage in flight.
func (r *StageRuntime) beginStep(sk sessionKey, req SessionStep) (*loadedStage, *stageSession, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.stages[req.Key]
	if !ok || s.status != stageReady {
		return nil, nil, fmt.Errorf("%w: %s", ErrStageNotServed, req.Key)
	}
	sess := r.sessions[sk]
	switch req.Step {
	case mesh.StepPrefill:
		if req.Pos != 0 {
			return nil, nil, fmt.Errorf("%w: prefill at %d", accel.ErrInputMismatch, req.Pos)
		}
		if sess != nil && sess.busy {
			return nil, nil, fmt.Errorf("%w: session %s has a step running", ErrSessionLost, sk.id)
		}
		if sess != nil {
			r.sessionBytes -= sess.bytes
			sess.release()
		} else if r.cfg.MemBudget > 0 && r.usedLocked()+r.sessionBytes >= r.cfg.MemBudget {
			return nil, nil, fmt.Errorf("%w: stage %s holds %d bytes of session state, budget %d",
				api.ErrKVExhausted, req.Key, r.sessionBytes, r.cfg.MemBudget)
		}
		sess = &stageSession{}
		r.sessions[sk] = sess
	case mesh.StepDecode:
		if sess == nil || sess.busy || sess.pos != req.Pos {
			if sess != nil && !sess.busy {
				// Out of step with its caller: the state is of no use any more.
				r.sessionBytes -= sess.bytes
				delete(r.sessions, sk)
				sess.release()
			}
			return nil, nil, fmt.Errorf("%w: session %s on %s at %d", ErrSessionLost, sk.id, req.Key, req.Pos)
		}
	default:
		return nil, nil, fmt.Errorf("%w: session step kind %d", accel.ErrInputMismatch, req.Step)
	}
	sess.busy, sess.lastUsed = true, time.Now()
	s.inFlight.Add(1)
	return s, sess, nil
}

// endStep stores a step's state in place of the state the step read, unless the
// session was closed or replaced meanwhile: then both are released.
func (r *StageRuntime) endStep(sk sessionKey, sess *stageSession, state []tensor.Tensor, held []accel.HeldInput, pos int) {
	var n int64
	for _, t := range state {
		n += int64(len(t.Data))
	}
	for _, h := range held {
		n += h.Value.Bytes()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	sess.release()
	if r.sessions[sk] != sess {
		releaseHeld(held)
		return
	}
	r.sessionBytes += n - sess.bytes
	sess.state, sess.held, sess.bytes, sess.pos, sess.busy, sess.lastUsed = state, held, n, pos, false, time.Now()
}

// failStep ends a step that failed: the session's state no longer matches its
// tokens, so it goes.
func (r *StageRuntime) failStep(sk sessionKey, sess *stageSession) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessions[sk] == sess {
		r.sessionBytes -= sess.bytes
		delete(r.sessions, sk)
	}
	sess.busy = false
	sess.release()
}

// dropSession frees one session's state on one stage. The state of a session with a
// step running is released when the step ends (endStep).
func (r *StageRuntime) dropSession(sk sessionKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if sess, ok := r.sessions[sk]; ok {
		r.sessionBytes -= sess.bytes
		delete(r.sessions, sk)
		if !sess.busy {
			sess.release()
		}
	}
}

// expireSessions frees the sessions idle longer than the TTL, and those of stages
// no longer held.
func (r *StageRuntime) expireSessions(now time.Time) {
	r.mu.Lock()
	var gone []sessionKey
	for sk, sess := range r.sessions {
		_, held := r.stages[sk.stage]
		if !held || (!sess.busy && now.Sub(sess.lastUsed) > r.cfg.SessionTTL) {
			r.sessionBytes -= sess.bytes
			delete(r.sessions, sk)
			if !sess.busy {
				sess.release() // else its step's end releases it
			}
			r.sessionsExpired++
			gone = append(gone, sk)
		}
	}
	r.mu.Unlock()
	for _, sk := range gone {
		r.log.Info("session state expired", "session", sk.id, "stage", sk.stage.String())
	}
}

// sessionInputs completes a step's inputs: each state input from the session (empty
// at a prefill), and the attention mask and positions the stage reads when the
// caller did not send them.
func sessionInputs(model accel.Session, pairs []StatePair, sess *stageSession, pos, seq int, in []tensor.Tensor) ([]tensor.Tensor, error) {
	if seq < 1 {
		return nil, fmt.Errorf("%w: a session step of %d tokens", accel.ErrInputMismatch, seq)
	}
	out := slices.Clone(in)
	have := func(name string) bool {
		return slices.ContainsFunc(out, func(t tensor.Tensor) bool { return t.Name == name })
	}
	for _, info := range model.Inputs() {
		switch {
		case have(info.Name):
		case slices.ContainsFunc(sess.held, func(h accel.HeldInput) bool { return h.Name == info.Name }):
			// The backend reads it where it is.
		case slices.ContainsFunc(pairs, func(p StatePair) bool { return p.In == info.Name }):
			t, ok := stateOf(sess, info.Name)
			if !ok {
				t = initialState(info)
			}
			out = append(out, t)
		case info.Name == attentionMaskInput:
			mask := make([]int64, pos+seq)
			for i := range mask {
				mask[i] = 1
			}
			out = append(out, tensor.FromInt64(info.Name, []int64{1, int64(pos + seq)}, mask))
		case info.Name == positionIDsInput:
			ids := make([]int64, seq)
			for i := range ids {
				ids[i] = int64(pos + i)
			}
			out = append(out, tensor.FromInt64(info.Name, []int64{1, int64(seq)}, ids))
		}
	}
	return out, nil
}

func stateOf(sess *stageSession, name string) (tensor.Tensor, bool) {
	i := slices.IndexFunc(sess.state, func(t tensor.Tensor) bool { return t.Name == name })
	if i < 0 {
		return tensor.Tensor{}, false
	}
	return sess.state[i], true
}

// initialState is a state input before the first step: the first dynamic dim is the
// batch (1), later dynamic dims are lengths (0: a KV cache with no past); fixed dims
// stay, zero-filled (an RNN's h and c).
func initialState(info accel.TensorInfo) tensor.Tensor {
	shape := slices.Clone(info.Shape)
	batch := true
	for i, d := range shape {
		if d < 0 {
			shape[i] = 0
			if batch {
				shape[i], batch = 1, false
			}
		}
	}
	n, _ := tensor.ByteSize(info.DType, shape)
	return tensor.Tensor{Name: info.Name, DType: info.DType, Shape: shape, Data: make([]byte, n)}
}

// stateOutputs are the stage's state outputs, in the model's order.
func stateOutputs(model accel.Session, pairs []StatePair) []string {
	var out []string
	for _, o := range model.Outputs() {
		if slices.ContainsFunc(pairs, func(p StatePair) bool { return p.Out == o.Name }) {
			out = append(out, o.Name)
		}
	}
	return out
}

// heldRun runs the steps of a model with state pairs with the state in the backend's
// memory: every step of a stage or a single-node generation, but the decode steps a
// batching stage runs together (and those it runs alone through it).
type heldRun struct {
	hr accel.HeldRunner
	// keep names the state outputs, and ins the state input each one feeds next step.
	// logits is the output a sampling step takes its token from (the first float32 one
	// of rank 3 that is not state; "" when none): a sampling step holds it too
	// (keepLogits), and only its last row is copied out.
	keep, ins  []string
	logits     string
	keepLogits []string
}

// newHeldRun is how sess runs with its state held, or nil when its backend cannot
// hold values. Everything a step needs of the names is worked out here, once.
func newHeldRun(sess accel.Session, pairs []StatePair) *heldRun {
	hr, ok := sess.(accel.HeldRunner)
	if !ok {
		return nil
	}
	h := &heldRun{hr: hr, keep: stateOutputs(sess, pairs)}
	for _, out := range h.keep {
		j := slices.IndexFunc(pairs, func(p StatePair) bool { return p.Out == out })
		h.ins = append(h.ins, pairs[j].In)
	}
	for _, o := range sess.Outputs() {
		if o.DType == tensor.Float32 && len(o.Shape) == 3 && !slices.Contains(h.keep, o.Name) {
			h.logits = o.Name
			h.keepLogits = append(slices.Clip(h.keep), o.Name)
			break
		}
	}
	return h
}

// run runs one step: held is the state the step reads, and stays the caller's to
// release. It returns the outputs that are not state (the logits apart when
// sampling), the new state, each value named as the state input it feeds next step,
// and, when sampling and the model has logits, those logits held: the caller samples
// their last row (sampleLastRow) and releases them.
func (h *heldRun) run(ctx context.Context, in []tensor.Tensor, held []accel.HeldInput, sampling bool) (rest []tensor.Tensor, next []accel.HeldInput, logits accel.Held, err error) {
	keep := h.keep
	holdLogits := sampling && h.logits != ""
	if holdLogits {
		keep = h.keepLogits
	}
	out, kept, err := h.hr.RunHeld(ctx, in, held, nil, keep)
	if err != nil {
		return nil, nil, nil, err
	}
	if holdLogits {
		logits = kept[len(kept)-1]
		kept = kept[:len(kept)-1]
	}
	next = make([]accel.HeldInput, len(kept))
	for i, v := range kept {
		next[i] = accel.HeldInput{Name: h.ins[i], Value: v}
	}
	return out, next, logits, nil
}

// splitState separates a run's outputs into the new state (renamed to the inputs
// they feed next step) and the rest.
func splitState(pairs []StatePair, out []tensor.Tensor) (state, rest []tensor.Tensor) {
	for _, t := range out {
		i := slices.IndexFunc(pairs, func(p StatePair) bool { return p.Out == t.Name })
		if i < 0 {
			rest = append(rest, t)
			continue
		}
		t.Name = pairs[i].In
		state = append(state, t)
	}
	return state, rest
}

// sampleToken picks the next token from the last row of the stage's logits (its
// first float32 output of rank 3, [1, seq, vocab]).
func sampleToken(out []tensor.Tensor, s Sampling) ([]tensor.Tensor, error) {
	i := slices.IndexFunc(out, func(t tensor.Tensor) bool { return t.DType == tensor.Float32 && len(t.Shape) == 3 })
	if i < 0 {
		return nil, fmt.Errorf("%w: the last stage has no [batch, seq, vocab] logits to sample from", api.ErrNotGenerative)
	}
	seq, vocab, err := logitsShape(out[i].Shape, int64(len(out[i].Data)))
	if err != nil {
		return nil, err
	}
	// Only the last position's row is sampled: a prefill's other rows are not decoded.
	row := rowBuffers.Get().(*logitsRow)
	defer rowBuffers.Put(row)
	return row.sample(out[i].Data[4*(seq-1)*vocab:], s), nil
}

// sampleLastRow picks the next token from the last row of held [1, seq, vocab]
// logits, copying that row only.
func sampleLastRow(v accel.Held, s Sampling) ([]tensor.Tensor, error) {
	if v.DType() != tensor.Float32 {
		return nil, fmt.Errorf("%w: logits of type %s", ErrBadStageResponse, v.DType())
	}
	seq, vocab, err := logitsShape(v.Shape(), v.Bytes())
	if err != nil {
		return nil, err
	}
	row := rowBuffers.Get().(*logitsRow)
	defer rowBuffers.Put(row)
	row.raw = slices.Grow(row.raw[:0], 4*vocab)[:4*vocab]
	// The row ends where the value does, so io.EOF may come with a full read.
	if n, err := v.ReadAt(row.raw, int64(4*(seq-1)*vocab)); n < len(row.raw) {
		return nil, fmt.Errorf("reading the logits' last row: %d of %d bytes: %w", n, len(row.raw), err)
	}
	return row.sample(row.raw, s), nil
}

// logitsShape checks [1, seq, vocab] logits of n bytes.
func logitsShape(shape []int64, n int64) (seq, vocab int, err error) {
	if len(shape) != 3 || shape[1] < 1 || shape[2] < 1 || n != 4*shape[1]*shape[2] {
		return 0, 0, fmt.Errorf("%w: logits of shape %v in %d bytes", ErrBadStageResponse, shape, n)
	}
	return int(shape[1]), int(shape[2]), nil
}

// logitsRow is the memory a sampling step copies and decodes one row of logits into,
// reused from step to step (greedy sampling then allocates nothing per step).
type logitsRow struct {
	raw    []byte
	values []float32
}

var rowBuffers = sync.Pool{New: func() any { return new(logitsRow) }}

// sample decodes raw (little-endian float32s) and samples from it.
func (r *logitsRow) sample(raw []byte, s Sampling) []tensor.Tensor {
	n := len(raw) / 4
	r.values = slices.Grow(r.values[:0], n)[:n]
	for i := range r.values {
		r.values[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	tok := s.Sample(r.values)
	return []tensor.Tensor{tensor.FromInt64(TokenTensor, []int64{1}, []int64{int64(tok)})}
}
