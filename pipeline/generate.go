package pipeline

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/mesh"
)

// Generation: the entry node drives a session through the stages one step at a time.
// It keeps the session's token log (prompt and generated ids); each stage's replica
// keeps the session's state; the last stage samples and answers with a token id. Per
// step only token ids and one hidden state per stage boundary cross the mesh. When a
// pinned replica fails, the session is pinned to other replicas, which rebuild the
// state by a prefill of the whole log, and generation goes on from the next token:
// sampling draws depend only on (seed, token index), so nothing is lost or repeated.

// sessionCloseTimeout bounds the close calls that free a session's state on its
// replicas once it ends (also when the client has gone).
const sessionCloseTimeout = 2 * time.Second

// genSession is one generation as the entry node drives it.
type genSession struct {
	id     string
	plan   RoutePlan
	reqID  string
	pinned []Replica
	failed map[string]bool
	tokens []int32 // prompt, then the generated ids
	prompt int
	samp   Sampling
	log    *slog.Logger
}

// stepError is a failed step on one stage's pinned replica.
type stepError struct {
	stage int
	node  string
	err   error
}

func (e *stepError) Error() string { return fmt.Sprintf("stage %d on %s: %v", e.stage, e.node, e.err) }
func (e *stepError) Unwrap() error { return e.err }

// Generate runs a generation of a model version whose plan is Generative. It emits
// each token in order; it returns when MaxTokens are generated ("length"), the context
// is full ("length"), a stop sequence appears ("stop"; its tokens are not emitted),
// emit fails (the client is gone) or ctx ends. Every way out frees the session's state
// on every replica.
func (r *Router) Generate(ctx context.Context, plan RoutePlan, req api.GenerateRequest, emit func(api.GeneratedToken) error) (api.GenerateResult, error) {
	gs := &genSession{id: newRequestID() + newRequestID(), plan: plan, reqID: api.RequestID(ctx), failed: map[string]bool{},
		tokens: slices.Clone(req.Prompt), prompt: len(req.Prompt), samp: samplingOf(req)}
	if gs.reqID == "" {
		gs.reqID = newRequestID()
	}
	gs.log = r.log.With("model", plan.Model, "version", plan.Version, "session", gs.id, "request", gs.reqID)
	gen := newGeneration(req, plan.ContextLen, emit)
	defer func() {
		r.closeSession(ctx, gs, gs.pinned)
		r.unpinAll(gs)
	}()
	if err := r.pinSession(ctx, gs, -1); err != nil {
		return gen.res, err
	}
	step, pos, pending := mesh.StepPrefill, 0, gs.tokens
	replays := 0
	for {
		tok, err := r.sessionPass(ctx, gs, step, pos, pending)
		if err != nil {
			var se *stepError
			if !errors.As(err, &se) || !retryable(ctx, err) {
				return gen.res, err
			}
			if replays >= r.cfg.MaxAttempts {
				return gen.res, fmt.Errorf("%w: session of %s after %d replays: %w", ErrStageFailed, plan.Model, replays, err)
			}
			replays++
			r.sessionReplays.Add(1)
			r.metrics().replay(plan.Model)
			gs.log.Warn("session stalled: its replica failed; replaying the session on other replicas",
				"stage", se.stage, "peer", se.node, "tokens", len(gs.tokens), "generated", len(gs.tokens)-gs.prompt, "err", se.err)
			old := slices.Clone(gs.pinned)
			if err := r.repinFailed(ctx, gs, se.node); err != nil {
				return gen.res, err
			}
			r.closeSession(ctx, gs, replaced(old, gs.pinned))
			step, pos, pending = mesh.StepPrefill, 0, gs.tokens
			continue
		}
		gs.tokens = append(gs.tokens, tok)
		if done, err := gen.add(tok, len(gs.tokens)); done || err != nil {
			return gen.res, err
		}
		step, pos, pending = mesh.StepDecode, len(gs.tokens)-1, gs.tokens[len(gs.tokens)-1:]
	}
}

// repinFailed re-chooses the replica of every stage the session had pinned on the
// failed node (a dead node usually held more than one of them: one replay then
// covers them all) and tells of each move.
func (r *Router) repinFailed(ctx context.Context, gs *genSession, node string) error {
	gs.failed[node] = true
	r.penalize(node)
	for k, rep := range gs.pinned {
		if rep.Node != node {
			continue
		}
		if err := r.pinSession(ctx, gs, k); err != nil {
			return err
		}
		r.reportSessionReplay(gs.plan, k, node, gs.pinned[k].Node)
	}
	return nil
}

// replaced keeps, per stage, the replica of old that pinned no longer has (an empty
// Replica where the stage kept its replica).
func replaced(old, pinned []Replica) []Replica {
	out := make([]Replica, len(old))
	for k, rep := range old {
		if k < len(pinned) && pinned[k].Node != rep.Node {
			out[k] = rep
		}
	}
	return out
}

// pinSession chooses a replica for every stage (stage < 0) or re-chooses the one of
// stage, avoiding replicas that failed this session while others exist.
func (r *Router) pinSession(ctx context.Context, gs *genSession, stage int) error {
	if gs.pinned == nil {
		gs.pinned = make([]Replica, len(gs.plan.Stages))
	}
	for k := range gs.plan.Stages {
		if stage >= 0 && k != stage {
			continue
		}
		call := StageCall{Request: Request{Model: gs.plan.Model, Version: gs.plan.Version}, Stage: k}
		st := stageAttempts{tried: gs.failed, backoff: r.cfg.BackoffBase}
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			candidates, err := r.candidates(ctx, gs.plan, k, call, &st)
			if err != nil {
				return err
			}
			if len(candidates) > 0 {
				r.pin(gs, k, candidates)
				break
			}
		}
	}
	return nil
}

// pinKey is one stage replica a session is pinned to.
type pinKey struct {
	model, version string
	stage          int
	node           string
}

// pin pins stage k of the session to the candidate with the fewest of this router's
// sessions pinned to it for that stage, then as pick ranks (calls in flight, RTT, a
// local replica): a session's load lasts as long as the session, so the calls in
// flight at its start say little of it, and sessions that start together would all
// choose the same replica. Choosing and counting under one lock spreads them; among
// replicas with as many sessions, the nearest still wins, so a lone session keeps
// its stages where the fewest hidden states cross the network.
func (r *Router) pin(gs *genSession, k int, candidates []Replica) {
	key := func(node string) pinKey {
		return pinKey{model: gs.plan.Model, version: gs.plan.Version, stage: k, node: node}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := gs.pinned[k].Node; old != "" {
		r.unpinLocked(key(old))
	}
	rep := r.rankLocked(candidates, false, func(rep Replica) int { return r.pins[key(rep.Node)] })
	r.pins[key(rep.Node)]++
	gs.pinned[k] = rep
}

// unpinAll forgets the session's pins when it ends.
func (r *Router) unpinAll(gs *genSession) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, rep := range gs.pinned {
		if rep.Node != "" {
			r.unpinLocked(pinKey{model: gs.plan.Model, version: gs.plan.Version, stage: k, node: rep.Node})
		}
	}
}

func (r *Router) unpinLocked(key pinKey) {
	if r.pins[key]--; r.pins[key] <= 0 {
		delete(r.pins, key)
	}
}

// sessionPass runs one step (a prefill of ids from position 0, or a decode of one
// token at pos) through every stage on the pinned replicas and returns the sampled
// token. Each stage gets the tensors earlier stages produced that it reads; the
// stages derive masks and positions and keep their state themselves.
func (r *Router) sessionPass(ctx context.Context, gs *genSession, step mesh.StepKind, pos int, ids []int32) (int32, error) {
	r.sessionSteps.Add(1)
	ids64 := make([]int64, len(ids))
	for i, id := range ids {
		ids64[i] = int64(id)
	}
	env := map[string]tensor.Tensor{}
	last := len(gs.plan.Stages) - 1
	for k, st := range gs.plan.Stages {
		var in []tensor.Tensor
		if k == 0 {
			in = append(in, tensor.FromInt64(sessionTokenInput(st.Inputs), []int64{1, int64(len(ids))}, ids64))
		}
		for _, name := range st.Inputs {
			if t, ok := env[name]; ok {
				in = append(in, t)
			}
		}
		var want []string
		if k == last {
			s := gs.samp
			s.Index = len(gs.tokens) - gs.prompt
			in = append(in, s.tensor())
			want = []string{TokenTensor}
		} else {
			want = gs.plan.crossing(k)
		}
		call := StageCall{Request: Request{ID: gs.reqID, Model: gs.plan.Model, Version: gs.plan.Version, Inputs: in, Outputs: want},
			Stage: k, Session: gs.id, Step: step, Pos: pos, Len: len(ids)}
		if k == last {
			call.Outputs = nil
		}
		rep := gs.pinned[k]
		// A prefill's time grows with the prompt: it gets the configured bound, and
		// only decode steps learn their usual time (which then bounds them).
		timeout := r.cfg.StageTimeout
		if step == mesh.StepDecode {
			timeout = r.attemptTimeout(call, timeout)
		}
		start := time.Now()
		out, err := r.attempt(ctx, rep, call, timeout)
		if err == nil {
			err = checkStageOutputs(out, want)
		}
		if err != nil {
			return 0, &stepError{stage: k, node: rep.Node, err: err}
		}
		if step == mesh.StepDecode {
			r.learn(call, time.Since(start))
		}
		if !rep.Local {
			r.sessionWireBytes.Add(uint64(tensorBytes(in) + tensorBytes(out)))
		}
		for _, t := range out {
			env[t.Name] = t
		}
	}
	tok := env[TokenTensor]
	v, err := tok.Int64s()
	if err != nil || len(v) != 1 {
		return 0, &stepError{stage: last, node: gs.pinned[last].Node, err: fmt.Errorf("%w: no token", ErrBadStageResponse)}
	}
	return int32(v[0]), nil
}

// sessionTokenInput is the first stage's token id input: input_ids when it reads it,
// else its first input.
func sessionTokenInput(inputs []string) string {
	if slices.Contains(inputs, "input_ids") || len(inputs) == 0 {
		return "input_ids"
	}
	return inputs[0]
}

// crossing lists the outputs of stage k that later stages read (never state).
func (p RoutePlan) crossing(k int) []string {
	var out []string
	for _, o := range p.Stages[k].Outputs {
		if k < len(p.StageState) && slices.Contains(p.StageState[k], o) {
			continue
		}
		for _, later := range p.Stages[k+1:] {
			if slices.Contains(later.Inputs, o) {
				out = append(out, o)
				break
			}
		}
	}
	return out
}

// closeSession frees the session's state on reps (reps[k] holds stage k; an empty
// Node skips it), in parallel, even when ctx has ended (the client went away):
// waiting for them bounds how long state outlives a generation.
func (r *Router) closeSession(ctx context.Context, gs *genSession, reps []Replica) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sessionCloseTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for k, rep := range reps {
		if rep.Node == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			call := StageCall{Request: Request{ID: gs.reqID, Model: gs.plan.Model, Version: gs.plan.Version}, Stage: k,
				Session: gs.id, Step: mesh.StepClose}
			var err error
			if rep.Local && r.sessions != nil {
				_, err = r.sessions.SessionStep(ctx, SessionStep{Session: gs.id, Step: mesh.StepClose,
					Key: StageKey{Model: gs.plan.Model, Version: gs.plan.Version, Stage: k}})
			} else if !rep.Local {
				_, err = r.caller.CallStage(ctx, rep.Node, call)
			}
			if err != nil {
				gs.log.Debug("session close failed; the replica's TTL frees it", "peer", rep.Node, "stage", k, "err", err)
			}
		}()
	}
	wg.Wait()
}

// stopFilter holds back generated tokens that may be the start of a stop sequence,
// so that a stop sequence is never emitted.
type stopFilter struct {
	stops   [][]int32
	gen     []int32
	emitted int
}

// push adds a token; it returns whether a stop sequence ended and the tokens that can
// no longer be part of one.
func (f *stopFilter) push(tok int32) (bool, []api.GeneratedToken) {
	f.gen = append(f.gen, tok)
	for _, s := range f.stops {
		if len(s) > 0 && len(f.gen) >= len(s) && slices.Equal(f.gen[len(f.gen)-len(s):], s) {
			return true, f.upTo(len(f.gen) - len(s))
		}
	}
	hold := 0
	for _, s := range f.stops {
		for h := min(len(s)-1, len(f.gen)); h > hold; h-- {
			if slices.Equal(f.gen[len(f.gen)-h:], s[:h]) {
				hold = h
				break
			}
		}
	}
	return false, f.upTo(len(f.gen) - hold)
}

// flush releases every held token.
func (f *stopFilter) flush() []api.GeneratedToken { return f.upTo(len(f.gen)) }

func (f *stopFilter) upTo(n int) []api.GeneratedToken {
	var out []api.GeneratedToken
	for ; f.emitted < n; f.emitted++ {
		out = append(out, api.GeneratedToken{ID: f.gen[f.emitted], Index: f.emitted})
	}
	return out
}

// samplingOf is a request's sampling; without a seed, a random one, drawn once so
// that a replayed session draws the same tokens.
func samplingOf(req api.GenerateRequest) Sampling {
	s := Sampling{Temperature: req.Temperature, TopK: req.TopK, TopP: req.TopP}
	if req.Seed != nil {
		s.Seed = *req.Seed
	} else {
		var b [8]byte
		_, _ = crand.Read(b[:])
		s.Seed = binary.LittleEndian.Uint64(b[:])
	}
	return s
}

// generation is the client's side of a generation: the result so far, the stop
// filter and the end conditions, whichever way the tokens are computed.
type generation struct {
	res        api.GenerateResult
	out        stopFilter
	maxTokens  int
	contextLen int
	emit       func(api.GeneratedToken) error
}

func newGeneration(req api.GenerateRequest, contextLen int, emit func(api.GeneratedToken) error) *generation {
	return &generation{res: api.GenerateResult{PromptTokens: len(req.Prompt)}, out: stopFilter{stops: req.StopTokens},
		maxTokens: req.MaxTokens, contextLen: contextLen, emit: emit}
}

// add takes the next generated token (total: the session's tokens with it) and emits
// what can be emitted; done says the generation ended, with its finish reason set.
func (g *generation) add(tok int32, total int) (bool, error) {
	g.res.CompletionTokens++
	stopped, ready := g.out.push(tok)
	for _, t := range ready {
		if err := g.emit(t); err != nil {
			return true, err
		}
	}
	switch {
	case stopped:
		g.res.FinishReason = "stop"
		return true, nil
	case g.res.CompletionTokens >= g.maxTokens || (g.contextLen > 0 && total >= g.contextLen):
		g.res.FinishReason = "length"
		for _, t := range g.out.flush() {
			if err := g.emit(t); err != nil {
				return true, err
			}
		}
		return true, nil
	}
	return false, nil
}

// GenerateLocal runs a generation on one session of a whole model with state pairs
// (single-node mode): a prefill of the prompt, then one token a step, the state kept
// here between steps (in the backend's memory where it can hold it, as a stage does)
// and sampled as the last stage of a pipeline does. req must have passed
// CheckGenerate.
func GenerateLocal(ctx context.Context, sess accel.Session, pairs []StatePair, contextLen int, req api.GenerateRequest, emit func(api.GeneratedToken) error) (api.GenerateResult, error) {
	gen := newGeneration(req, contextLen, emit)
	samp := samplingOf(req)
	state := &stageSession{}
	defer state.release()
	held := newHeldRun(sess, pairs)
	tokens := slices.Clone(req.Prompt)
	pos, pending := 0, tokens
	for {
		ids := make([]int64, len(pending))
		for i, id := range pending {
			ids[i] = int64(id)
		}
		in := []tensor.Tensor{tensor.FromInt64(sessionTokenInput(inputNames(sess)), []int64{1, int64(len(ids))}, ids)}
		in, err := sessionInputs(sess, pairs, state, pos, len(ids), in)
		if err != nil {
			return gen.res, err
		}
		samp.Index = len(tokens) - len(req.Prompt)
		var rest []tensor.Tensor
		var logits accel.Held
		if held != nil {
			var next []accel.HeldInput
			if rest, next, logits, err = held.run(ctx, in, state.held, true); err != nil {
				return gen.res, err
			}
			state.release()
			state.held = next
		} else {
			out, err := sess.Run(ctx, in, nil)
			if err != nil {
				return gen.res, err
			}
			state.state, rest = splitState(pairs, out)
		}
		var tok []tensor.Tensor
		if logits != nil {
			tok, err = sampleLastRow(logits, samp)
			logits.Release()
		} else {
			tok, err = sampleToken(rest, samp)
		}
		if err != nil {
			return gen.res, err
		}
		v, _ := tok[0].Int64s()
		pos += len(pending)
		tokens = append(tokens, int32(v[0]))
		if done, err := gen.add(int32(v[0]), len(tokens)); done || err != nil {
			return gen.res, err
		}
		pending = tokens[len(tokens)-1:]
	}
}

func inputNames(sess accel.Session) []string {
	var out []string
	for _, in := range sess.Inputs() {
		out = append(out, in.Name)
	}
	return out
}
