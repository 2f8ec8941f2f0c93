package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/mesh"
)

// StageKey identifies one stage of one model version.
type StageKey struct {
	Model, Version string
	Stage          int
}

func (k StageKey) String() string { return fmt.Sprintf("%s@%s/%d", k.Model, k.Version, k.Stage) }

// StageAssignment is one stage the placement gives this node.
type StageAssignment struct {
	Key StageKey
	// Blob is the sha256 of the stage's ONNX file, Size its length.
	Blob string
	Size int64
	// MemBytes is what the loaded stage counts against the memory budget.
	MemBytes int64
	// State are the state pairs the stage owns; with any, it serves sessions.
	State []StatePair
}

// StageBlobs is where the runtime gets stage files: a local content-addressed store
// that can pull a blob from the peers holding it.
type StageBlobs interface {
	// Path is the local file of a stored blob.
	Path(hash string) string
	// Fetch makes the blob local (a no-op when it already is).
	Fetch(ctx context.Context, hash string, size int64) error
}

// ServedStage is one entry of what this node tells the others it serves.
type ServedStage struct {
	Key   StageKey
	Ready bool
}

// RuntimeConfig configures a StageRuntime.
type RuntimeConfig struct {
	Backend accel.Backend
	Session accel.SessionOptions
	// MemBudget bounds the sum of MemBytes of the stages loaded or loading; 0 means
	// no bound.
	MemBudget int64
	Blobs     StageBlobs
	// Report publishes the served stages (the serving record, membership metadata).
	// It runs on the runtime's own reporting goroutine after changes, never
	// concurrently and with no lock held, so a Report that blocks on the network
	// (memberlist's UpdateNode) delays only later reports, never a load or an unload.
	Report func([]ServedStage)
	// ReadyElsewhere says whether another node serves the stage ready; a stage no
	// longer assigned here is unloaded once it does (make before break) or after
	// HandoverTimeout. It is called with no lock held.
	ReadyElsewhere func(StageKey) bool
	// HandoverTimeout bounds how long an unassigned stage is kept waiting for a
	// replacement. Default 30s.
	HandoverTimeout time.Duration
	// SessionTTL is how long a session's state is kept without a step. Default
	// DefaultSessionTTL. Session state counts against MemBudget too.
	SessionTTL time.Duration
	// RetryInterval is the wait before a failed load is tried again. Default 2s.
	RetryInterval time.Duration
	// MaxBatch is how many sessions' decode steps one run of a stage may carry
	// (batch.go); 0 or 1 runs each step alone, and a seeded generation then repeats
	// bit for bit.
	MaxBatch int
	Logger   *slog.Logger
}

type stageStatus int

const (
	stageLoading stageStatus = iota
	stageReady
	stageFailed
)

// loadedStage is one stage on this node. inFlight counts RunStage calls that took
// the session while the stage was in the map, so an unload can wait for them.
type loadedStage struct {
	a        StageAssignment
	status   stageStatus
	sess     accel.Session
	err      error
	failedAt time.Time
	cancel   context.CancelFunc
	inFlight sync.WaitGroup
	// unassignedAt is when the placement dropped the stage; zero while assigned.
	unassignedAt time.Time
	// batch runs the stage's decode steps together; nil when it does not batch.
	batch *stepBatcher
	// held runs the stage with its sessions' state in the backend's memory (a stage
	// with state pairs, on a backend that holds values); nil otherwise.
	held *heldRun
}

// StageRuntime loads the stages the placement assigns to this node, serves them to
// the router and to peers, and unloads those it no longer holds once their in-flight
// requests finish. It never lets the stages it holds exceed the memory budget.
//
// Lock order: mu is the only lock; it is never held across a blob fetch, a session
// open, a run, Report or ReadyElsewhere.
type StageRuntime struct {
	cfg RuntimeConfig
	log *slog.Logger

	mu     sync.Mutex
	stages map[StageKey]*loadedStage
	want   map[StageKey]StageAssignment
	closed bool
	// sessions hold the state of the sessions on this node's stages (session.go).
	sessions        map[sessionKey]*stageSession
	sessionBytes    int64
	sessionsExpired uint64

	// reportKick wakes reportLoop, the one goroutine that calls Report.
	reportKick chan struct{}
	// batched counts the decode steps that ran batched, over every stage.
	batched batchCounters
	// observe, when set, hears each run's compute time (SetComputeObserver).
	observe atomic.Pointer[func(k StageKey, step mesh.StepKind, d time.Duration, err error)]
	kick    chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// NewStageRuntime starts the runtime's reconcile loop; Close stops it.
func NewStageRuntime(cfg RuntimeConfig) *StageRuntime {
	if cfg.HandoverTimeout <= 0 {
		cfg.HandoverTimeout = 30 * time.Second
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ReadyElsewhere == nil {
		cfg.ReadyElsewhere = func(StageKey) bool { return false }
	}
	r := &StageRuntime{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "runtime"),
		stages: make(map[StageKey]*loadedStage),
		want:   make(map[StageKey]StageAssignment),

		sessions: make(map[sessionKey]*stageSession),
		kick:     make(chan struct{}, 1),

		reportKick: make(chan struct{}, 1),
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Add(2)
	go r.loop()
	go r.reportLoop()
	return r
}

// SetAssignments replaces the set of stages this node should serve.
func (r *StageRuntime) SetAssignments(want []StageAssignment) {
	m := make(map[StageKey]StageAssignment, len(want))
	for _, a := range want {
		m[a.Key] = a
	}
	r.mu.Lock()
	r.want = m
	r.mu.Unlock()
	r.Kick()
}

// Kick asks for a reconcile soon, for example when another node's readiness changed.
func (r *StageRuntime) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Serves reports whether the stage is loaded and ready here.
func (r *StageRuntime) Serves(k StageKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.stages[k]
	return ok && s.status == stageReady
}

// Served lists the stages this node holds and whether each is ready.
func (r *StageRuntime) Served() []ServedStage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.servedLocked()
}

func (r *StageRuntime) servedLocked() []ServedStage {
	out := make([]ServedStage, 0, len(r.stages))
	for k, s := range r.stages {
		if s.status == stageFailed {
			continue
		}
		out = append(out, ServedStage{Key: k, Ready: s.status == stageReady})
	}
	slices.SortFunc(out, func(a, b ServedStage) int { return compareKeys(a.Key, b.Key) })
	return out
}

func compareKeys(a, b StageKey) int {
	if a.Model != b.Model {
		return cmpStrings(a.Model, b.Model)
	}
	if a.Version != b.Version {
		return cmpStrings(a.Version, b.Version)
	}
	return a.Stage - b.Stage
}

func cmpStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// UsedBytes is the memory the stages loaded or loading here count against the budget.
func (r *StageRuntime) UsedBytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.usedLocked()
}

func (r *StageRuntime) usedLocked() int64 {
	var used int64
	for _, s := range r.stages {
		if s.status != stageFailed {
			used += s.a.MemBytes
		}
	}
	return used
}

// RunStage runs a ready stage on inputs. It implements LocalStages for the router and
// serves peers' stage calls.
func (r *StageRuntime) RunStage(ctx context.Context, model, version string, stage int, inputs []tensor.Tensor, outputs []string) ([]tensor.Tensor, error) {
	k := StageKey{Model: model, Version: version, Stage: stage}
	r.mu.Lock()
	s, ok := r.stages[k]
	if !ok || s.status != stageReady {
		r.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrStageNotServed, k)
	}
	s.inFlight.Add(1)
	r.mu.Unlock()
	defer s.inFlight.Done()
	var rt accel.RunTime
	start := time.Now()
	out, err := s.sess.Run(accel.WithRunTime(ctx, &rt), inputs, outputs)
	if fn := r.observe.Load(); fn != nil {
		(*fn)(k, mesh.StepNone, computeTime(&rt, start), err)
	}
	return out, err
}

// computeTime is a run's compute time as its backend reported it (without the wait
// for a free session of its pool), else the time since start.
func computeTime(rt *accel.RunTime, start time.Time) time.Duration {
	if d, ok := rt.Get(); ok {
		return d
	}
	return time.Since(start)
}

// SetComputeObserver makes RunStage and SessionStep report each run's compute time
// and its step kind (mesh.StepNone for a stateless run), for metrics.
func (r *StageRuntime) SetComputeObserver(fn func(k StageKey, step mesh.StepKind, d time.Duration, err error)) {
	r.observe.Store(&fn)
}

// Close cancels loads, waits for in-flight runs and closes every session.
func (r *StageRuntime) Close() {
	r.mu.Lock()
	r.closed = true
	stages := r.stages
	r.stages = make(map[StageKey]*loadedStage)
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	for _, s := range stages {
		s.inFlight.Wait()
		if s.sess != nil {
			_ = s.sess.Close()
		}
	}
	r.mu.Lock()
	for sk, sess := range r.sessions {
		sess.release()
		delete(r.sessions, sk)
	}
	r.sessionBytes = 0
	r.mu.Unlock()
}

func (r *StageRuntime) loop() {
	defer r.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		r.reconcile()
		r.expireSessions(time.Now())
		select {
		case <-r.ctx.Done():
			return
		case <-r.kick:
		case <-tick.C:
		}
	}
}

// reconcile moves the held stages toward the wanted set: unassigned stages go once a
// replacement is ready elsewhere (or the handover times out, or their memory is needed
// by an assigned stage), then new stages load while the budget allows.
func (r *StageRuntime) reconcile() {
	elsewhere := r.readyElsewhere()
	now := time.Now()
	var unload []*loadedStage
	var refused []StageAssignment
	changed := false
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	for k, s := range r.stages {
		if _, ok := r.want[k]; ok {
			s.unassignedAt = time.Time{}
			if s.status == stageFailed && now.Sub(s.failedAt) >= r.cfg.RetryInterval {
				delete(r.stages, k) // try again below
				changed = true
			}
			continue
		}
		if s.unassignedAt.IsZero() {
			s.unassignedAt = now
		}
		if s.status != stageReady || now.Sub(s.unassignedAt) >= r.cfg.HandoverTimeout || elsewhere[s] {
			delete(r.stages, k)
			unload = append(unload, s)
			changed = true
		}
	}
	keys := slices.SortedFunc(maps.Keys(r.want), compareKeys)
	for _, k := range keys {
		a := r.want[k]
		if _, ok := r.stages[k]; ok {
			continue
		}
		if r.cfg.MemBudget > 0 && r.usedLocked()+a.MemBytes > r.cfg.MemBudget {
			// Memory held only for a handover gives way to an assigned stage.
			for hk, s := range r.stages {
				if _, ok := r.want[hk]; !ok && r.usedLocked()+a.MemBytes > r.cfg.MemBudget {
					delete(r.stages, hk)
					unload = append(unload, s)
				}
			}
		}
		if r.cfg.MemBudget > 0 && r.usedLocked()+a.MemBytes > r.cfg.MemBudget {
			refused = append(refused, a)
			continue
		}
		ctx, cancel := context.WithCancel(r.ctx)
		s := &loadedStage{a: a, status: stageLoading, cancel: cancel}
		r.stages[k] = s
		changed = true
		r.wg.Add(1)
		go r.load(ctx, s)
	}
	r.mu.Unlock()

	for _, a := range refused {
		r.log.Error("stage refused: it would exceed the memory budget", "stage", a.Key.String(),
			"need", a.MemBytes, "budget", r.cfg.MemBudget, "err", ErrOverBudget)
	}
	if changed || len(unload) > 0 {
		r.report()
	}
	for _, s := range unload {
		r.wg.Add(1)
		go r.unload(s)
	}
}

// readyElsewhere asks ReadyElsewhere, with no lock held, about every ready stage no
// longer assigned here. reconcile acts on the answer only for the very stage it asked
// about (the map is keyed by the stage, not its key), so a stage reloaded meanwhile
// is not taken for one that may go.
func (r *StageRuntime) readyElsewhere() map[*loadedStage]bool {
	r.mu.Lock()
	var asked []*loadedStage
	for k, s := range r.stages {
		if _, ok := r.want[k]; !ok && s.status == stageReady {
			asked = append(asked, s)
		}
	}
	r.mu.Unlock()
	out := make(map[*loadedStage]bool, len(asked))
	for _, s := range asked {
		out[s] = r.cfg.ReadyElsewhere(s.a.Key)
	}
	return out
}

// unload waits for the stage's in-flight runs (no new ones can start: it left the map)
// and closes its session.
func (r *StageRuntime) unload(s *loadedStage) {
	defer r.wg.Done()
	s.cancel()
	s.inFlight.Wait()
	if s.sess != nil {
		if err := s.sess.Close(); err != nil {
			r.log.Warn("closing stage session", "stage", s.a.Key.String(), "err", err)
		}
	}
	r.log.Info("stage unloaded", "stage", s.a.Key.String())
}

func (r *StageRuntime) load(ctx context.Context, s *loadedStage) {
	defer r.wg.Done()
	start := time.Now()
	err := r.cfg.Blobs.Fetch(ctx, s.a.Blob, s.a.Size)
	var sess accel.Session
	if err == nil {
		sess, err = r.cfg.Backend.Open(ctx, r.cfg.Blobs.Path(s.a.Blob), r.cfg.Session)
	}
	var (
		batch *stepBatcher
		held  *heldRun
	)
	if err == nil {
		if len(s.a.State) > 0 {
			held = newHeldRun(sess, s.a.State)
		}
		batch = r.batcherFor(sess, s.a, held)
	}
	r.mu.Lock()
	current := r.stages[s.a.Key] == s
	if current {
		if err != nil {
			s.status, s.err, s.failedAt = stageFailed, err, time.Now()
		} else {
			s.status, s.sess, s.batch, s.held = stageReady, sess, batch, held
		}
	}
	r.mu.Unlock()
	switch {
	case !current:
		// Unassigned or shut down while loading: nobody will use the session.
		if err == nil {
			_ = sess.Close()
		}
		return
	case err != nil:
		if ctx.Err() == nil {
			r.log.Error("stage load failed; will retry", "stage", s.a.Key.String(), "blob", s.a.Blob, "err", err)
		}
	default:
		r.log.Info("stage ready", "stage", s.a.Key.String(), "bytes", s.a.Size, "took", time.Since(start).Round(time.Millisecond))
	}
	r.report()
	r.Kick()
}

// report asks reportLoop to publish the served stages soon; changes that come while
// a Report runs fold into one more call.
func (r *StageRuntime) report() {
	select {
	case r.reportKick <- struct{}{}:
	default:
	}
}

// reportLoop calls Report with what is served now whenever report asked, until Close.
func (r *StageRuntime) reportLoop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.reportKick:
		}
		if r.cfg.Report != nil {
			r.cfg.Report(r.Served())
		}
	}
}
