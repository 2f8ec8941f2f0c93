package node

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
)

// Router errors. The API maps ErrNoReplica to 503 with Retry-After.
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
)

// DriveStage is the stage index of a StageCall that asks the peer to drive the whole
// pipeline itself: run every stage (its own locally) and answer with the outputs. It
// stays inside this package (the router keys learned timeouts and metrics by it); on
// the wire a hand-over is the stage RPC's explicit drive flag (mesh.StageRequest.Drive).
const DriveStage = -1

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

// StageCall is one request for a stage (or, with Stage == DriveStage, for the whole
// pipeline) sent to a peer.
type StageCall struct {
	RequestID      string
	Model, Version string
	Stage          int
	Inputs         []tensor.Tensor
	// Outputs names the tensors wanted back; for a stage call these are the stage's
	// outputs, for a drive call the model outputs the client asked for.
	Outputs []string
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
	log    *slog.Logger
	// metrics may be set while the router serves (SetMetrics); nil records nothing.
	metricsP atomic.Pointer[RouterMetrics]

	mu       sync.Mutex
	inFlight map[string]int       // node -> calls this router has open to it
	penalty  map[string]time.Time // node -> ranked last until then
	usual    map[usualKey]*usualDuration

	requests, forwarded, stageCalls, retries, badResponses, noReplica atomic.Uint64
}

// NewRouter returns a router; local may be nil on a node that serves no stages.
func NewRouter(cfg RouterConfig, plans PlanSource, view ReplicaView, caller StageCaller, local LocalStages, logger *slog.Logger) *Router {
	if logger == nil {
		logger = slog.Default()
	}
	return &Router{
		cfg: cfg.withDefaults(), plans: plans, view: view, caller: caller, local: local,
		log:      logger.With("component", "router"),
		inFlight: make(map[string]int),
		penalty:  make(map[string]time.Time),
		usual:    make(map[usualKey]*usualDuration),
	}
}

// usualKey names a stage (or the drive) of a model version whose durations are learned.
type usualKey struct {
	model, version string
	stage          int
}

// usualDuration is an exponentially weighted mean of successful attempts.
type usualDuration struct {
	mean    time.Duration
	samples int
}

// learnedSamples is how many answers a stage needs before its learned timeout is used.
const learnedSamples = 3

// attemptTimeout is the bound for one attempt at stage k (or the drive): the configured
// one until the stage has answered a few times, then a multiple of its usual duration.
func (r *Router) attemptTimeout(plan RoutePlan, stage int, configured time.Duration) time.Duration {
	r.mu.Lock()
	u := r.usual[usualKey{plan.Model, plan.Version, stage}]
	r.mu.Unlock()
	if u == nil || u.samples < learnedSamples {
		return configured
	}
	floor := r.cfg.MinStageTimeout
	if stage == DriveStage {
		floor = max(floor, 5*time.Second)
	}
	learned := max(time.Duration(r.cfg.TimeoutFactor*float64(u.mean)), floor)
	if configured > 0 {
		learned = min(learned, configured)
	}
	return learned
}

func (r *Router) learn(plan RoutePlan, stage int, d time.Duration) {
	k := usualKey{plan.Model, plan.Version, stage}
	r.mu.Lock()
	defer r.mu.Unlock()
	u := r.usual[k]
	if u == nil {
		u = &usualDuration{mean: d}
		r.usual[k] = u
	}
	u.mean += (d - u.mean) / 8
	u.samples++
}

// SetMetrics makes the router record its Prometheus series.
func (r *Router) SetMetrics(m *RouterMetrics) { r.metricsP.Store(m) }

func (r *Router) metrics() *RouterMetrics { return r.metricsP.Load() }

// Stats returns the router's counters.
func (r *Router) Stats() RouterStats {
	return RouterStats{
		Requests: r.requests.Load(), Forwarded: r.forwarded.Load(), StageCalls: r.stageCalls.Load(),
		Retries: r.retries.Load(), BadResponses: r.badResponses.Load(), NoReplica: r.noReplica.Load(),
	}
}

// Infer answers one request on the entry node. It picks the driver: this node when it
// serves the stage on the heavy side (the last stage for a GPT) itself, otherwise a
// replica of that stage, to which the whole request is handed. A driver that fails is
// replaced by another replica with the same inputs, so a request is lost only when
// every replica of a stage is gone. outputs empty means every model output.
func (r *Router) Infer(ctx context.Context, model, version string, inputs []tensor.Tensor, outputs []string) ([]tensor.Tensor, error) {
	plan, err := r.plans.RoutePlan(model, version)
	if err != nil {
		return nil, err
	}
	ctx, cancel := r.requestContext(ctx)
	defer cancel()
	r.requests.Add(1)
	if len(outputs) == 0 {
		outputs = plan.Outputs
	}
	// The HTTP request's id, so one id follows the request through every node's logs.
	requestID := api.RequestID(ctx)
	if requestID == "" {
		requestID = newRequestID()
	}
	side := 0
	if plan.DriveFromLast {
		side = len(plan.Stages) - 1
	}
	for _, rep := range r.view.Replicas(plan.Model, plan.Version, side) {
		if rep.Local && r.local != nil {
			return r.drive(ctx, plan, requestID, inputs, outputs)
		}
	}
	r.forwarded.Add(1)
	r.metrics().forward()
	call := StageCall{RequestID: requestID, Model: plan.Model, Version: plan.Version, Stage: DriveStage, Inputs: inputs, Outputs: outputs}
	// A drive runs every stage, so it gets the whole request budget, not a stage's.
	return r.callStage(ctx, plan, side, call, outputs, false, 0)
}

// Drive runs the whole pipeline on this node for a request a peer handed over with a
// DriveStage call.
func (r *Router) Drive(ctx context.Context, call StageCall) ([]tensor.Tensor, error) {
	plan, err := r.plans.RoutePlan(call.Model, call.Version)
	if err != nil {
		return nil, err
	}
	ctx, cancel := r.requestContext(ctx)
	defer cancel()
	outputs := call.Outputs
	if len(outputs) == 0 {
		outputs = plan.Outputs
	}
	return r.drive(ctx, plan, call.RequestID, call.Inputs, outputs)
}

func (r *Router) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, r.cfg.RequestTimeout)
}

// drive runs the stages in order, keeping every tensor a later stage or the client
// still needs and dropping the rest as soon as its last reader is done.
func (r *Router) drive(ctx context.Context, plan RoutePlan, requestID string, inputs []tensor.Tensor, outputs []string) ([]tensor.Tensor, error) {
	env := make(map[string]tensor.Tensor, len(inputs))
	for _, t := range inputs {
		env[t.Name] = t
	}
	lastUse := make(map[string]int)
	for k, st := range plan.Stages {
		for _, name := range st.Inputs {
			lastUse[name] = k
		}
	}
	for _, name := range outputs {
		lastUse[name] = len(plan.Stages)
	}
	side := 0
	if plan.DriveFromLast {
		side = len(plan.Stages) - 1
	}
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
		call := StageCall{RequestID: requestID, Model: plan.Model, Version: plan.Version, Stage: k, Inputs: in, Outputs: st.Outputs}
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
	result := make([]tensor.Tensor, 0, len(outputs))
	for _, name := range outputs {
		t, ok := env[name]
		if !ok {
			return nil, fmt.Errorf("%w: %q is not an output of model %s", accel.ErrInputMismatch, name, plan.Model)
		}
		result = append(result, t)
	}
	return result, nil
}

// callStage sends call to a replica of stage k and retries the same inputs on other
// replicas until one answers with the expected tensors, the attempts run out or the
// request's deadline passes. preferLocal runs the stage here whenever this node
// serves it. attemptTimeout 0 gives each attempt the whole remaining budget.
func (r *Router) callStage(ctx context.Context, plan RoutePlan, k int, call StageCall, want []string, preferLocal bool, attemptTimeout time.Duration) ([]tensor.Tensor, error) {
	log := r.log.With("model", plan.Model, "stage", k, "request", call.RequestID)
	if call.Stage == DriveStage {
		log = log.With("drive", true)
	}
	var (
		tried      = make(map[string]bool)
		backoff    = r.cfg.BackoffBase
		attempts   int
		lastErr    error
		emptySince time.Time
	)
	for {
		if err := ctx.Err(); err != nil {
			if lastErr != nil {
				return nil, fmt.Errorf("%w: stage %d: %w (last error: %w)", ErrStageFailed, k, err, lastErr)
			}
			return nil, fmt.Errorf("stage %d: %w", k, err)
		}
		all := r.view.Replicas(plan.Model, plan.Version, k)
		if len(all) == 0 {
			if emptySince.IsZero() {
				emptySince = time.Now()
			}
			if time.Since(emptySince) >= r.cfg.NoReplicaWait {
				r.noReplica.Add(1)
				r.metrics().noReplicaFor(plan.Model, call.Stage)
				return nil, &NoReplicaError{Model: plan.Model, Version: plan.Version, Stage: k}
			}
			if err := sleepCtx(ctx, r.jitter(backoff)); err != nil {
				continue
			}
			backoff = min(2*backoff, r.cfg.BackoffMax)
			continue
		}
		emptySince = time.Time{}
		candidates := slices.DeleteFunc(slices.Clone(all), func(rep Replica) bool {
			return tried[rep.Node] || (rep.Local && r.local == nil)
		})
		if len(candidates) == 0 {
			// Every replica failed once: wait, then give them all another chance, as a
			// heal or a restart may have brought one back.
			if err := sleepCtx(ctx, r.jitter(backoff)); err != nil {
				continue
			}
			backoff = min(2*backoff, r.cfg.BackoffMax)
			clear(tried)
			continue
		}
		if attempts >= r.cfg.MaxAttempts {
			return nil, fmt.Errorf("%w: stage %d of %s after %d attempts: %w", ErrStageFailed, k, plan.Model, attempts, lastErr)
		}
		attempts++
		rep := r.pick(candidates, preferLocal)
		start := time.Now()
		out, err := r.attempt(ctx, rep, call, r.attemptTimeout(plan, call.Stage, attemptTimeout))
		if err == nil {
			err = checkStageOutputs(out, want)
			if err != nil {
				r.badResponses.Add(1)
			}
		}
		if err == nil {
			r.learn(plan, call.Stage, time.Since(start))
			r.clearPenalty(rep.Node)
			if attempts > 1 {
				r.metrics().failover(plan.Model, call.Stage)
			}
			return out, nil
		}
		if !retryable(ctx, err) {
			return nil, err
		}
		r.retries.Add(1)
		r.metrics().retry(plan.Model, call.Stage)
		log.Warn("stage attempt failed, retrying on another replica", "peer", rep.Node, "attempt", attempts, "err", err)
		tried[rep.Node] = true
		r.penalize(rep.Node)
		lastErr = err
	}
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
	case rep.Local && call.Stage == DriveStage:
		out, err = r.Drive(ctx, call)
	case rep.Local:
		out, err = r.local.RunStage(ctx, call.Model, call.Version, call.Stage, call.Inputs, call.Outputs)
	default:
		out, err = r.caller.CallStage(ctx, rep.Node, call)
	}
	r.metrics().observeAttempt(call.Model, call.Stage, rep.Local, err, time.Since(start))
	if !rep.Local {
		r.metrics().observeLink(rep.Node, call.Inputs, out)
	}
	return out, err
}

// pick ranks candidates: replicas that did not just fail, then (when preferLocal) this
// node, then the fewest calls in flight from this router, then the shortest RTT.
func (r *Router) pick(candidates []Replica, preferLocal bool) Replica {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.MinFunc(candidates, func(a, b Replica) int {
		pa, pb := r.penalty[a.Node].After(now), r.penalty[b.Node].After(now)
		if pa != pb {
			return boolOrder(pa)
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

// retryable says whether another replica could answer where this one failed. A
// request the model rejects is rejected everywhere; a cancelled or expired request is
// over. Everything else (a dead peer, a reset stream, a timeout of one attempt, a
// stage not loaded there, garbage on the wire) is the replica's problem.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	for _, final := range []error{accel.ErrInputMismatch, accel.ErrShapeMismatch, accel.ErrDTypeMismatch, ErrUnknownModel} {
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
