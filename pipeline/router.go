package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/internal/ctxtime"
	"github.com/layermesh/layermesh/mesh"
)

// Request is one inference request as it travels from the API boundary to the stage
// RPC: the entry node's router, a driver it hands the request to and every stage call
// carry the same id, model version and client inputs/outputs.
type Request struct {
	// ID follows the request through every node's logs (the HTTP request id).
	ID             string
	Model, Version string
	Inputs         []tensor.Tensor
	// Outputs names the model outputs the client wants; empty means all of them.
	Outputs []string
}

// StageCall is one request sent to a peer: either one stage (Inputs and Outputs are
// the stage's tensors) or, with Drive, the whole request handed over to a driver that
// runs every stage itself (Inputs and Outputs are the client's, Stage means nothing).
type StageCall struct {
	Request
	Stage int
	Drive bool
	// Session, Step, Pos and Len make the call one step of a session
	// (mesh.StageRequest).
	Session  string
	Step     mesh.StepKind
	Pos, Len int
}

// label names the call's target in logs and metrics: the stage index, or "drive".
func (c StageCall) label() string {
	if c.Drive {
		return "drive"
	}
	return strconv.Itoa(c.Stage)
}

// StageCaller sends a StageCall to a peer and waits for its tensors. The mesh's stage
// RPC implements it; a peer's context deadline travels with the call.
type StageCaller interface {
	CallStage(ctx context.Context, peer string, call StageCall) ([]tensor.Tensor, error)
}

// LocalStages runs a stage this node has loaded, without any network hop.
type LocalStages interface {
	RunStage(ctx context.Context, model, version string, stage int, inputs []tensor.Tensor, outputs []string) ([]tensor.Tensor, error)
}

// Replica is one ready, healthy replica of a stage as the router sees it.
type Replica struct {
	Node  string
	Local bool
	// RTT is the last measured round trip to the node (0 when unknown or local).
	RTT time.Duration
}

// ReplicaView lists the replicas that are ready to serve a stage right now: members
// alive in memberlist whose metadata says the stage is loaded. Its answer changes as
// nodes come and go; the router asks again on every retry round.
type ReplicaView interface {
	Replicas(model, version string, stage int) []Replica
}

// RouteStage is what the router needs of one stage: the tensors it reads (from the
// client's inputs or from earlier stages' outputs) and the tensors it produces.
type RouteStage struct {
	Inputs  []string
	Outputs []string
}

// RoutePlan describes how a request for one model version flows through its stages.
type RoutePlan struct {
	Model, Version string
	Stages         []RouteStage
	// Outputs are the model's outputs, in signature order.
	Outputs []string
	// Generative says some stage owns state pairs: the model runs as sessions
	// (Router.Generate). ContextLen is its context length in tokens (0: unknown).
	Generative bool
	ContextLen int
	// Vocab is the size of a generative model's vocabulary (the last dim of its
	// logits), 0 when unknown.
	Vocab int
	// StageState lists, per stage, the state outputs it keeps (never sent).
	StageState [][]string
	// DriveFromLast says the output is the larger side (a GPT's logits), so the request
	// is driven by a replica of the last stage, which then never ships its own output
	// to another stage; otherwise a replica of the first stage drives.
	DriveFromLast bool
}

// PlanSource finds the route plan of a deployed model version ("" means the newest
// version with a placement).
type PlanSource interface {
	RoutePlan(model, version string) (RoutePlan, error)
}

// RouterConfig tunes retries and timeouts; zero fields take the defaults.
type RouterConfig struct {
	// RequestTimeout bounds a request whose context has no deadline. Default 60s.
	RequestTimeout time.Duration
	// StageTimeout bounds one attempt on one replica, so that a hung peer (paused,
	// partitioned) costs at most this much before the next replica is tried. Default 20s.
	// Once a stage has answered a few times, an attempt gets TimeoutFactor times its
	// usual (smoothed) duration instead, at least MinStageTimeout: a paused peer then
	// costs about a second, not twenty.
	StageTimeout time.Duration
	// TimeoutFactor and MinStageTimeout shape the learned attempt timeout. Defaults 8
	// and 2s (5s for a request handed to a driver, which may retry inside).
	TimeoutFactor   float64
	MinStageTimeout time.Duration
	// MaxAttempts bounds the attempts on one stage across all replicas. Default 8.
	MaxAttempts int
	// BackoffBase and BackoffMax shape the wait after every replica failed once
	// (exponential, full jitter). Defaults 25ms and 1s.
	BackoffBase, BackoffMax time.Duration
	// NoReplicaWait is how long a stage with no ready replica is waited for (a
	// replica may be loading after a heal) before ErrNoReplica. Default 2s.
	NoReplicaWait time.Duration
	// FailurePenalty is how long a replica that just failed is ranked last. Default 5s.
	FailurePenalty time.Duration
}

func (c RouterConfig) withDefaults() RouterConfig {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.RequestTimeout, 60*time.Second)
	def(&c.StageTimeout, 20*time.Second)
	def(&c.BackoffBase, 25*time.Millisecond)
	def(&c.BackoffMax, time.Second)
	def(&c.NoReplicaWait, 2*time.Second)
	def(&c.FailurePenalty, 5*time.Second)
	def(&c.MinStageTimeout, 2*time.Second)
	if c.TimeoutFactor <= 0 {
		c.TimeoutFactor = 8
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 8
	}
	return c
}

// RouterStats are cumulative counters for metrics and tests.
type RouterStats struct {
	Requests, Forwarded, StageCalls, Retries, BadResponses, NoReplica uint64
	// SessionSteps counts passes of session steps (one token, or a prefill) through
	// every stage; SessionReplays the sessions rebuilt on other replicas after a
	// failure; SessionWireBytes the tensor bytes of session step calls to peers, both
	// ways.
	SessionSteps, SessionReplays, SessionWireBytes uint64
}

// Router drives requests through a model's stages. It holds no lock across a stage
// call, so concurrent requests sit in different stages at once (pipeline parallelism);
// its only shared state is the per-peer in-flight and failure bookkeeping.
type Router struct {
	cfg    RouterConfig
	plans  PlanSource
	view   ReplicaView
	caller StageCaller
	local  LocalStages
	// sessions is local as LocalSessions, when it runs sessions (StageRuntime does).
	sessions LocalSessions
	log      *slog.Logger
	// metrics may be set while the router serves (SetMetrics); nil records nothing.
	metricsP atomic.Pointer[RouterMetrics]
	// failoverP is told of every failover (OnFailover); nil tells no one.
	failoverP atomic.Pointer[FailoverFunc]
	// replayP is told of every session replay (OnSessionReplay); nil tells no one.
	replayP atomic.Pointer[SessionReplayFunc]

	mu       sync.Mutex
	inFlight map[string]int       // node -> calls this router has open to it
	penalty  map[string]time.Time // node -> ranked last until then
	// pins counts the generation sessions this router drives, per stage replica
	// they are pinned to (generate.go).
	pins  map[pinKey]int
	usual map[usualKey]*usualDuration

	requests, forwarded, stageCalls, retries, badResponses, noReplica atomic.Uint64
	// Sessions (generate.go): session steps, replays after a failover, and the tensor
	// bytes of session steps sent to and received from peers.
	sessionSteps, sessionReplays, sessionWireBytes atomic.Uint64
}

// NewRouter returns a router; local may be nil on a node that serves no stages.
func NewRouter(cfg RouterConfig, plans PlanSource, view ReplicaView, caller StageCaller, local LocalStages, logger *slog.Logger) *Router {
	if logger == nil {
		logger = slog.Default()
	}
	sessions, _ := local.(LocalSessions)
	return &Router{
		cfg: cfg.withDefaults(), plans: plans, view: view, caller: caller, local: local, sessions: sessions,
		log:      logger.With("component", "router"),
		inFlight: make(map[string]int),
		penalty:  make(map[string]time.Time),
		pins:     make(map[pinKey]int),
		usual:    make(map[usualKey]*usualDuration),
	}
}

// SetMetrics makes the router record its Prometheus series.
func (r *Router) SetMetrics(m *RouterMetrics) { r.metricsP.Store(m) }

func (r *Router) metrics() *RouterMetrics { return r.metricsP.Load() }

// Stats returns the router's counters.
func (r *Router) Stats() RouterStats {
	return RouterStats{
		Requests: r.requests.Load(), Forwarded: r.forwarded.Load(), StageCalls: r.stageCalls.Load(),
		Retries: r.retries.Load(), BadResponses: r.badResponses.Load(), NoReplica: r.noReplica.Load(),
		SessionSteps: r.sessionSteps.Load(), SessionReplays: r.sessionReplays.Load(), SessionWireBytes: r.sessionWireBytes.Load(),
	}
}

// CallsInFlight is the number of stage calls this router has open (local runs and
// calls to peers), for the operator's metrics.
func (r *Router) CallsInFlight() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	calls := 0
	for _, n := range r.inFlight {
		calls += n
	}
	return calls
}

// Infer answers one request on the entry node. It picks the driver: this node when it
// serves the stage on the heavy side (the last stage for a GPT) itself, otherwise a
// replica of that stage, to which the whole request is handed. A driver that fails is
// replaced by another replica with the same inputs, so a request is lost only when
// every replica of a stage is gone. An empty req.ID takes the context's HTTP request
// id, or a fresh one.
func (r *Router) Infer(ctx context.Context, req Request) ([]tensor.Tensor, error) {
	plan, err := r.plans.RoutePlan(req.Model, req.Version)
	if err != nil {
		return nil, err
	}
	ctx, cancel := r.requestContext(ctx)
	defer cancel()
	r.requests.Add(1)
	req.Model, req.Version = plan.Model, plan.Version
	if len(req.Outputs) == 0 {
		req.Outputs = plan.Outputs
	}
	// The HTTP request's id, so one id follows the request through every node's logs.
	if req.ID == "" {
		req.ID = api.RequestID(ctx)
	}
	if req.ID == "" {
		req.ID = newRequestID()
	}
	side := plan.driverStage()
	for _, rep := range r.view.Replicas(plan.Model, plan.Version, side) {
		if rep.Local && r.local != nil {
			return r.drive(ctx, plan, req)
		}
	}
	r.forwarded.Add(1)
	r.metrics().forward()
	// A drive runs every stage, so it gets the whole request budget, not a stage's.
	return r.callStage(ctx, plan, side, StageCall{Request: req, Drive: true}, req.Outputs, false, 0)
}

// Drive runs the whole pipeline on this node for a request a peer handed over.
func (r *Router) Drive(ctx context.Context, req Request) ([]tensor.Tensor, error) {
	plan, err := r.plans.RoutePlan(req.Model, req.Version)
	if err != nil {
		return nil, err
	}
	ctx, cancel := r.requestContext(ctx)
	defer cancel()
	if len(req.Outputs) == 0 {
		req.Outputs = plan.Outputs
	}
	return r.drive(ctx, plan, req)
}

// driverStage is the stage whose replicas drive a request: the heavy side.
func (p RoutePlan) driverStage() int {
	if p.DriveFromLast {
		return len(p.Stages) - 1
	}
	return 0
}

func (r *Router) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, r.cfg.RequestTimeout)
}

// drive runs the stages in order, keeping every tensor a later stage or the client
// still needs and dropping the rest as soon as its last reader is done.
func (r *Router) drive(ctx context.Context, plan RoutePlan, req Request) ([]tensor.Tensor, error) {
	env := make(map[string]tensor.Tensor, len(req.Inputs))
	for _, t := range req.Inputs {
		env[t.Name] = t
	}
	lastUse := make(map[string]int)
	for k, st := range plan.Stages {
		for _, name := range st.Inputs {
			lastUse[name] = k
		}
	}
	for _, name := range req.Outputs {
		lastUse[name] = len(plan.Stages)
	}
	side := plan.driverStage()
	for k, st := range plan.Stages {
		in := make([]tensor.Tensor, 0, len(st.Inputs))
		for _, name := range st.Inputs {
			t, ok := env[name]
			if !ok {
				return nil, fmt.Errorf("%w: stage %d reads %q, which neither the request nor an earlier stage provides",
					accel.ErrInputMismatch, k, name)
			}
			in = append(in, t)
		}
		call := StageCall{Request: Request{ID: req.ID, Model: plan.Model, Version: plan.Version, Inputs: in, Outputs: st.Outputs}, Stage: k}
		out, err := r.callStage(ctx, plan, k, call, st.Outputs, k == side, r.cfg.StageTimeout)
		if err != nil {
			return nil, err
		}
		for _, t := range out {
			env[t.Name] = t
		}
		for name, last := range lastUse {
			if last <= k {
				delete(env, name)
				delete(lastUse, name)
			}
		}
	}
	result := make([]tensor.Tensor, 0, len(req.Outputs))
	for _, name := range req.Outputs {
		t, ok := env[name]
		if !ok {
			return nil, fmt.Errorf("%w: %q is not an output of model %s", accel.ErrInputMismatch, name, plan.Model)
		}
		result = append(result, t)
	}
	return result, nil
}

// stageAttempts is one callStage's retry bookkeeping.
type stageAttempts struct {
	tried      map[string]bool
	backoff    time.Duration
	attempts   int
	lastErr    error
	lastNode   string // the replica lastErr came from
	emptySince time.Time
}

// callStage sends call to a replica of stage k and retries the same inputs on other
// replicas until one answers with the expected tensors, the attempts run out or the
// request's deadline passes. preferLocal runs the stage here whenever this node
// serves it. attemptTimeout 0 gives each attempt the whole remaining budget. A
// deadline that passes after a failed attempt is still the deadline: the error wraps
// the context's error only, so the client hears "timeout", with the last failure as
// text.
func (r *Router) callStage(ctx context.Context, plan RoutePlan, k int, call StageCall, want []string, preferLocal bool, attemptTimeout time.Duration) ([]tensor.Tensor, error) {
	log := r.log.With("model", plan.Model, "stage", call.label(), "request", call.ID)
	st := stageAttempts{tried: make(map[string]bool), backoff: r.cfg.BackoffBase}
	for {
		if err := ctx.Err(); err != nil {
			if st.lastErr != nil {
				// The last failure is detail only: the request ended by its deadline.
				return nil, fmt.Errorf("stage %d: %w (after %d failed attempts; last error: %v)", k, err, st.attempts, st.lastErr)
			}
			return nil, fmt.Errorf("stage %d: %w", k, err)
		}
		candidates, err := r.candidates(ctx, plan, k, call, &st)
		if err != nil {
			return nil, err
		}
		if len(candidates) == 0 {
			continue
		}
		if st.attempts >= r.cfg.MaxAttempts {
			return nil, fmt.Errorf("%w: stage %d of %s after %d attempts: %w", ErrStageFailed, k, plan.Model, st.attempts, st.lastErr)
		}
		st.attempts++
		rep := r.pick(candidates, preferLocal)
		start := time.Now()
		out, err := r.attempt(ctx, rep, call, r.attemptTimeout(call, attemptTimeout))
		if err == nil {
			err = checkStageOutputs(out, want)
			if err != nil {
				r.badResponses.Add(1)
			}
		}
		if err == nil {
			r.learn(call, time.Since(start))
			r.clearPenalty(rep.Node)
			if st.attempts > 1 {
				r.metrics().failover(plan.Model, call.label())
				r.reportFailover(call, st.lastNode, rep.Node)
			}
			return out, nil
		}
		if !retryable(ctx, err) {
			return nil, err
		}
		r.retries.Add(1)
		r.metrics().retry(plan.Model, call.label())
		log.Warn("stage attempt failed, retrying on another replica", "peer", rep.Node, "attempt", st.attempts, "err", err)
		st.tried[rep.Node] = true
		r.penalize(rep.Node)
		st.lastErr, st.lastNode = err, rep.Node
	}
}

// candidates lists the replicas of stage k not yet tried in this round. With none
// ready it waits (a replica may be loading after a heal) up to NoReplicaWait, then
// fails with a NoReplicaError; with every replica tried once it waits a backoff and
// starts a new round. An empty answer with no error means "look again".
func (r *Router) candidates(ctx context.Context, plan RoutePlan, k int, call StageCall, st *stageAttempts) ([]Replica, error) {
	all := r.view.Replicas(plan.Model, plan.Version, k)
	if len(all) == 0 {
		if st.emptySince.IsZero() {
			st.emptySince = time.Now()
		}
		if time.Since(st.emptySince) >= r.cfg.NoReplicaWait {
			r.noReplica.Add(1)
			r.metrics().noReplicaFor(plan.Model, call.label())
			return nil, &NoReplicaError{Model: plan.Model, Version: plan.Version, Stage: k}
		}
		if ctxtime.Sleep(ctx, r.jitter(st.backoff)) == nil {
			st.backoff = min(2*st.backoff, r.cfg.BackoffMax)
		}
		return nil, nil
	}
	st.emptySince = time.Time{}
	candidates := slices.DeleteFunc(slices.Clone(all), func(rep Replica) bool {
		return st.tried[rep.Node] || (rep.Local && r.local == nil)
	})
	if len(candidates) == 0 {
		// Every replica failed once: wait, then give them all another chance, as a
		// heal or a restart may have brought one back.
		if ctxtime.Sleep(ctx, r.jitter(st.backoff)) == nil {
			st.backoff = min(2*st.backoff, r.cfg.BackoffMax)
			clear(st.tried)
		}
	}
	return candidates, nil
}

// attempt runs call once on rep, locally or over the mesh, counting it in flight.
func (r *Router) attempt(ctx context.Context, rep Replica, call StageCall, timeout time.Duration) ([]tensor.Tensor, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	r.mu.Lock()
	r.inFlight[rep.Node]++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		if r.inFlight[rep.Node]--; r.inFlight[rep.Node] <= 0 {
			delete(r.inFlight, rep.Node)
		}
		r.mu.Unlock()
	}()
	r.stageCalls.Add(1)
	start := time.Now()
	var (
		out []tensor.Tensor
		err error
	)
	switch {
	case rep.Local && call.Drive:
		out, err = r.Drive(ctx, call.Request)
	case rep.Local && call.Session != "":
		out, err = r.sessions.SessionStep(ctx, SessionStep{Session: call.Session, Step: call.Step, Pos: call.Pos, Len: call.Len,
			Key: StageKey{Model: call.Model, Version: call.Version, Stage: call.Stage}, Inputs: call.Inputs, Outputs: call.Outputs})
	case rep.Local:
		out, err = r.local.RunStage(ctx, call.Model, call.Version, call.Stage, call.Inputs, call.Outputs)
	default:
		out, err = r.caller.CallStage(ctx, rep.Node, call)
	}
	r.metrics().observeAttempt(call.Model, call.label(), call.Step, rep.Local, err, time.Since(start))
	if !rep.Local {
		r.metrics().observeLink(rep.Node, call.Inputs, out)
	}
	return out, err
}

// pick ranks candidates: replicas that did not just fail, then (when preferLocal) this
// node, then the fewest calls in flight from this router, then the shortest RTT.
func (r *Router) pick(candidates []Replica, preferLocal bool) Replica {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rankLocked(candidates, preferLocal, nil)
}

// rankLocked is pick's choice; load, when set, ranks the replicas that are not
// penalized before anything else does (a generation session's pins). r.mu is held.
func (r *Router) rankLocked(candidates []Replica, preferLocal bool, load func(Replica) int) Replica {
	now := time.Now()
	return slices.MinFunc(candidates, func(a, b Replica) int {
		pa, pb := r.penalty[a.Node].After(now), r.penalty[b.Node].After(now)
		if pa != pb {
			return boolOrder(pa)
		}
		if load != nil {
			if la, lb := load(a), load(b); la != lb {
				return la - lb
			}
		}
		if preferLocal && a.Local != b.Local {
			return boolOrder(!a.Local)
		}
		if ia, ib := r.inFlight[a.Node], r.inFlight[b.Node]; ia != ib {
			return ia - ib
		}
		if a.RTT != b.RTT {
			return int(a.RTT - b.RTT)
		}
		if a.Local != b.Local {
			return boolOrder(!a.Local)
		}
		if a.Node < b.Node {
			return -1
		}
		return 1
	})
}

// boolOrder sorts false before true.
func boolOrder(b bool) int {
	if b {
		return 1
	}
	return -1
}

func (r *Router) penalize(node string) {
	r.mu.Lock()
	r.penalty[node] = time.Now().Add(r.cfg.FailurePenalty)
	r.mu.Unlock()
}

func (r *Router) clearPenalty(node string) {
	r.mu.Lock()
	delete(r.penalty, node)
	r.mu.Unlock()
}

// jitter draws a full-jitter wait in [d/2, d): spread out so that the requests that
// failed together do not retry together.
func (r *Router) jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}
