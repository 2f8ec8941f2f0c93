package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
)

// The router tests run an in-memory cluster: every fake node has its own Router, its
// own loaded stages and a view of the others; fakeMesh carries calls between them and
// counts the bytes each direction moves, like the stage RPC would.

type stageFn func(in map[string][]float32) map[string][]float32

// The test model: x -> stage 0 -> h0 -> stage 1 (also reads x) -> h1 -> stage 2 -> y,
// where y is 8 times as large as x (a GPT-like heavy output).
var testStageFns = []stageFn{
	func(in map[string][]float32) map[string][]float32 {
		return map[string][]float32{"h0": mapf(in["x"], func(v float32) float32 { return v + 1 })}
	},
	func(in map[string][]float32) map[string][]float32 {
		h := make([]float32, len(in["h0"]))
		for i := range h {
			h[i] = 2*in["h0"][i] + in["x"][i]
		}
		return map[string][]float32{"h1": h}
	},
	func(in map[string][]float32) map[string][]float32 {
		var y []float32
		for range 8 {
			y = append(y, in["h1"]...)
		}
		return map[string][]float32{"y": y}
	},
}

var testPlan = RoutePlan{
	Model: "m", Version: "1",
	Stages: []RouteStage{
		{Inputs: []string{"x"}, Outputs: []string{"h0"}},
		{Inputs: []string{"h0", "x"}, Outputs: []string{"h1"}},
		{Inputs: []string{"h1"}, Outputs: []string{"y"}},
	},
	Outputs:       []string{"y"},
	DriveFromLast: true,
}

func expectedY(x []float32) []float32 {
	var y []float32
	for range 8 {
		y = append(y, mapf(x, func(v float32) float32 { return 2*(v+1) + v })...)
	}
	return y
}

func mapf(xs []float32, f func(float32) float32) []float32 {
	out := make([]float32, len(xs))
	for i, v := range xs {
		out[i] = f(v)
	}
	return out
}

type fault int

const (
	faultNone fault = iota
	faultDead
	faultGarbage
	faultHang
	faultReject
)

// driveCalls is the fake nodes' key for drive calls in their fault and run counts,
// beside the stage indexes.
const driveCalls = -1

type fakeNode struct {
	id     string
	mesh   *fakeMesh
	router *Router
	// hook, when set, runs at the start of every stage this node runs.
	hook func(ctx context.Context, stage int)

	mu     sync.Mutex
	stages map[int]bool
	faults map[int]fault // stage (or driveCalls) -> injected fault
	ran    map[int]int
}

func (n *fakeNode) fault(stage int) fault {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.faults[stage]
}

func (n *fakeNode) setFault(stage int, f fault) {
	n.mu.Lock()
	n.faults[stage] = f
	n.mu.Unlock()
}

func (n *fakeNode) runs(stage int) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ran[stage]
}

// RunStage implements LocalStages.
func (n *fakeNode) RunStage(ctx context.Context, model, version string, stage int, inputs []tensor.Tensor, outputs []string) ([]tensor.Tensor, error) {
	n.mu.Lock()
	loaded := n.stages[stage]
	n.ran[stage]++
	n.mu.Unlock()
	if !loaded {
		return nil, fmt.Errorf("stage %d not loaded on %s", stage, n.id)
	}
	if n.hook != nil {
		n.hook(ctx, stage)
	}
	switch n.fault(stage) {
	case faultGarbage:
		return []tensor.Tensor{tensor.FromFloat32("wrong", []int64{1}, []float32{0})}, nil
	case faultHang:
		<-ctx.Done()
		return nil, ctx.Err()
	case faultReject:
		return nil, fmt.Errorf("%w: wrong dim", accel.ErrShapeMismatch)
	}
	in := map[string][]float32{}
	for _, t := range inputs {
		vals, err := t.Float32s()
		if err != nil {
			return nil, err
		}
		in[t.Name] = vals
	}
	var out []tensor.Tensor
	for name, vals := range testStageFns[stage](in) {
		out = append(out, tensor.FromFloat32(name, []int64{int64(len(vals))}, vals))
	}
	return out, nil
}

type fakeMesh struct {
	mu    sync.Mutex
	nodes map[string]*fakeNode
	// sent and returned count request and response payload bytes that crossed the mesh.
	sent, returned atomic.Int64
	maxReturned    atomic.Int64
}

func newFakeMesh(t *testing.T, cfg RouterConfig, layout map[string][]int) *fakeMesh {
	t.Helper()
	m := &fakeMesh{nodes: map[string]*fakeNode{}}
	for id, stages := range layout {
		n := &fakeNode{id: id, mesh: m, stages: map[int]bool{}, faults: map[int]fault{}, ran: map[int]int{}}
		for _, s := range stages {
			n.stages[s] = true
		}
		n.router = NewRouter(cfg, staticPlans{testPlan}, meshView{m, id}, m, n, nil)
		m.nodes[id] = n
	}
	return m
}

func (m *fakeMesh) node(id string) *fakeNode {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nodes[id]
}

// CallStage implements StageCaller.
func (m *fakeMesh) CallStage(ctx context.Context, peer string, call StageCall) ([]tensor.Tensor, error) {
	n := m.node(peer)
	key := call.Stage
	if call.Drive {
		key = driveCalls
	}
	if n == nil || n.fault(key) == faultDead {
		return nil, fmt.Errorf("dial %s: connection refused", peer)
	}
	m.sent.Add(tensor.EncodedLen(call.Inputs))
	var (
		out []tensor.Tensor
		err error
	)
	if call.Drive {
		n.mu.Lock()
		n.ran[driveCalls]++
		n.mu.Unlock()
		out, err = n.router.Drive(ctx, call.Request)
	} else {
		out, err = n.RunStage(ctx, call.Model, call.Version, call.Stage, call.Inputs, call.Outputs)
	}
	size := tensor.EncodedLen(out)
	m.returned.Add(size)
	for {
		cur := m.maxReturned.Load()
		if size <= cur || m.maxReturned.CompareAndSwap(cur, size) {
			break
		}
	}
	return out, err
}

type meshView struct {
	m    *fakeMesh
	self string
}

func (v meshView) Replicas(model, version string, stage int) []Replica {
	v.m.mu.Lock()
	defer v.m.mu.Unlock()
	var reps []Replica
	for id, n := range v.m.nodes {
		// A dead node stays listed: the view lags behind failures, as memberlist does.
		n.mu.Lock()
		ok := n.stages[stage]
		n.mu.Unlock()
		if ok {
			reps = append(reps, Replica{Node: id, Local: id == v.self, RTT: time.Millisecond})
		}
	}
	slices.SortFunc(reps, func(a, b Replica) int { return cmpString(a.Node, b.Node) })
	return reps
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

type staticPlans struct{ plan RoutePlan }

func (s staticPlans) RoutePlan(model, version string) (RoutePlan, error) {
	if model != s.plan.Model {
		return RoutePlan{}, fmt.Errorf("%w: %s", ErrUnknownModel, model)
	}
	return s.plan, nil
}

// fastRetries keeps a hung replica's cost short, while its stage timeout stays far
// above what a healthy in-process call takes on a busy machine: the tests count the
// retries exactly.
var fastRetries = RouterConfig{StageTimeout: time.Second, BackoffBase: time.Millisecond,
	BackoffMax: 5 * time.Millisecond, NoReplicaWait: 50 * time.Millisecond, RequestTimeout: 5 * time.Second}

func infer(t *testing.T, r *Router, x []float32) ([]float32, error) {
	t.Helper()
	out, err := r.Infer(context.Background(), Request{Model: "m", Inputs: []tensor.Tensor{tensor.FromFloat32("x", []int64{int64(len(x))}, x)}})
	if err != nil {
		return nil, err
	}
	if len(out) != 1 || out[0].Name != "y" {
		t.Fatalf("unexpected outputs %+v", out)
	}
	return out[0].Float32s()
}

func mustMatch(t *testing.T, got []float32, x []float32) {
	t.Helper()
	if !slices.Equal(got, expectedY(x)) {
		t.Fatalf("got %v, want %v", got, expectedY(x))
	}
}

// threeByTwo is 3 stages x 2 replicas on 3 nodes, plus an entry node that serves nothing.
var threeByTwo = map[string][]int{"a": {0, 1}, "b": {1, 2}, "c": {2, 0}, "entry": nil}

func TestRouterPipelineThroughAnyNode(t *testing.T) {
	m := newFakeMesh(t, fastRetries, threeByTwo)
	x := []float32{1, 2, 3, 4}
	for _, id := range []string{"a", "b", "c", "entry"} {
		y, err := infer(t, m.node(id).router, x)
		if err != nil {
			t.Fatalf("via %s: %v", id, err)
		}
		mustMatch(t, y, x)
	}
}

func TestRouterDriverPlacementMovesFewestBytes(t *testing.T) {
	x := make([]float32, 256)
	outBytes := tensor.EncodedLen([]tensor.Tensor{tensor.FromFloat32("y", []int64{8 * 256}, make([]float32, 8*256))})

	// The entry holds the last stage: it drives, and the heavy output never crosses.
	m := newFakeMesh(t, fastRetries, threeByTwo)
	if _, err := infer(t, m.node("b").router, x); err != nil {
		t.Fatal(err)
	}
	if m.maxReturned.Load() >= outBytes || m.node("b").router.Stats().Forwarded != 0 {
		t.Fatalf("heavy output crossed the mesh: largest response %d bytes, output %d", m.maxReturned.Load(), outBytes)
	}

	// The entry serves nothing: the request goes to a last-stage replica, which drives
	// and runs the last stage itself.
	m = newFakeMesh(t, fastRetries, threeByTwo)
	if _, err := infer(t, m.node("entry").router, x); err != nil {
		t.Fatal(err)
	}
	drivers := m.node("b").runs(driveCalls) + m.node("c").runs(driveCalls)
	if drivers != 1 || m.node("entry").router.Stats().Forwarded != 1 {
		t.Fatalf("want one drive handed to a last-stage replica, got %d", drivers)
	}
	lastRuns := m.node("b").runs(2) + m.node("c").runs(2)
	if lastRuns != 1 || m.returned.Load() > 2*outBytes {
		t.Fatalf("last stage ran %d times, %d bytes returned (output is %d)", lastRuns, m.returned.Load(), outBytes)
	}

	// Input-heavy models are driven from the first stage.
	m = newFakeMesh(t, fastRetries, threeByTwo)
	plan := testPlan
	plan.DriveFromLast = false
	for _, n := range m.nodes {
		n.router.plans = staticPlans{plan}
	}
	if _, err := infer(t, m.node("entry").router, x); err != nil {
		t.Fatal(err)
	}
	if got := m.node("a").runs(driveCalls) + m.node("c").runs(driveCalls); got != 1 {
		t.Fatalf("want the drive on a first-stage replica, got %d", got)
	}
}

func TestRouterRetriesSameStageElsewhere(t *testing.T) {
	cases := []struct {
		name  string
		f     fault
		stats func(RouterStats) bool
	}{
		{"dead peer", faultDead, func(s RouterStats) bool { return s.Retries == 1 }},
		{"garbage response", faultGarbage, func(s RouterStats) bool { return s.Retries == 1 && s.BadResponses == 1 }},
		{"hung peer", faultHang, func(s RouterStats) bool { return s.Retries == 1 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := newFakeMesh(t, fastRetries, threeByTwo)
			// b drives (it holds the last stage) and reaches stage 0 over the mesh on a
			// or c; with equal load and RTT a ranks first, and a is broken.
			m.node("a").setFault(0, c.f)
			x := []float32{5, 6}
			r := m.node("b").router
			y, err := infer(t, r, x)
			if err != nil {
				t.Fatal(err)
			}
			mustMatch(t, y, x)
			if s := r.Stats(); !c.stats(s) {
				t.Fatalf("stats %+v", s)
			}
			if m.node("c").runs(0) != 1 {
				t.Fatalf("stage 0 not retried on c")
			}
			// The failed replica is ranked last for a while: the next request goes to c.
			if _, err := infer(t, r, x); err != nil {
				t.Fatal(err)
			}
			if r.Stats().Retries != 1 {
				t.Fatalf("penalized replica tried again: %+v", r.Stats())
			}
		})
	}
}

func TestRouterDriverFailover(t *testing.T) {
	m := newFakeMesh(t, fastRetries, threeByTwo)
	m.node("b").setFault(driveCalls, faultDead)
	x := []float32{1}
	y, err := infer(t, m.node("entry").router, x)
	if err != nil {
		t.Fatal(err)
	}
	mustMatch(t, y, x)
	if m.node("c").runs(driveCalls) != 1 || m.node("entry").router.Stats().Retries != 1 {
		t.Fatalf("drive not retried on c: %+v", m.node("entry").router.Stats())
	}
}

func TestRouterNoReplica(t *testing.T) {
	m := newFakeMesh(t, fastRetries, map[string][]int{"a": {0, 2}, "b": {2}})
	start := time.Now()
	_, err := infer(t, m.node("a").router, []float32{1})
	var nre *NoReplicaError
	if !errors.Is(err, ErrNoReplica) || !errors.As(err, &nre) || nre.Stage != 1 {
		t.Fatalf("got %v, want NoReplicaError for stage 1", err)
	}
	if waited := time.Since(start); waited < fastRetries.NoReplicaWait {
		t.Fatalf("gave up after %v, before NoReplicaWait", waited)
	}
}

func TestRouterGivesUpAfterMaxAttempts(t *testing.T) {
	cfg := fastRetries
	cfg.MaxAttempts = 5
	m := newFakeMesh(t, cfg, threeByTwo)
	m.node("a").setFault(0, faultGarbage)
	m.node("c").setFault(0, faultGarbage)
	_, err := infer(t, m.node("b").router, []float32{1})
	if !errors.Is(err, ErrStageFailed) || !errors.Is(err, ErrBadStageResponse) {
		t.Fatalf("got %v, want ErrStageFailed wrapping ErrBadStageResponse", err)
	}
	if got := m.node("a").runs(0) + m.node("c").runs(0); got != 5 {
		t.Fatalf("%d attempts, want 5", got)
	}
}

func TestRouterDoesNotRetryRejectedInput(t *testing.T) {
	m := newFakeMesh(t, fastRetries, threeByTwo)
	m.node("a").setFault(0, faultReject)
	m.node("c").setFault(0, faultReject)
	_, err := infer(t, m.node("b").router, []float32{1})
	if !errors.Is(err, accel.ErrShapeMismatch) || errors.Is(err, ErrStageFailed) {
		t.Fatalf("got %v, want the model's rejection unchanged", err)
	}
	if got := m.node("a").runs(0) + m.node("c").runs(0); got != 1 {
		t.Fatalf("rejected input tried %d times", got)
	}
	if _, err := m.node("b").router.Infer(context.Background(), Request{Model: "nope"}); !errors.Is(err, ErrUnknownModel) {
		t.Fatalf("got %v, want ErrUnknownModel", err)
	}
}

func TestRouterDeadline(t *testing.T) {
	cfg := fastRetries
	cfg.StageTimeout = time.Hour
	m := newFakeMesh(t, cfg, threeByTwo)
	m.node("a").setFault(0, faultHang)
	m.node("c").setFault(0, faultHang)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := m.node("b").router.Infer(ctx, Request{Model: "m", Inputs: []tensor.Tensor{tensor.FromFloat32("x", []int64{1}, []float32{1})}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the request deadline", err)
	}
}

// TestRouterDeadlineAfterFailedAttemptIsTimeout: a request whose deadline passes
// after an attempt failed ends as a timeout (504), not as "every replica failed"
// (503 no_replica): the failure is detail, the deadline is what ended it.
func TestRouterDeadlineAfterFailedAttemptIsTimeout(t *testing.T) {
	cfg := fastRetries
	cfg.StageTimeout = time.Hour
	m := newFakeMesh(t, cfg, threeByTwo)
	m.node("a").setFault(0, faultDead)
	m.node("c").setFault(0, faultHang)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := m.node("b").router.Infer(ctx, Request{Model: "m", Inputs: []tensor.Tensor{tensor.FromFloat32("x", []int64{1}, []float32{1})}})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrStageFailed) {
		t.Fatalf("got %v, want the request deadline and not ErrStageFailed", err)
	}
	if m.node("b").router.Stats().Retries == 0 {
		t.Fatal("no attempt failed before the deadline: the case is not exercised")
	}
	if code := api.Classify(toAPI(err)).Code; code != api.CodeTimeout {
		t.Fatalf("API code %s, want %s", code, api.CodeTimeout)
	}
}

// TestRouterPipelineParallel proves requests overlap in different stages: request A's
// stage 1 does not finish until request B has entered stage 0. A router that ran one
// request at a time would deadlock here and fail on the context deadline.
func TestRouterPipelineParallel(t *testing.T) {
	m := newFakeMesh(t, fastRetries, map[string][]int{"s0": {0}, "s1": {1}, "s2": {2}})
	bInStage0 := make(chan struct{})
	aInStage1 := make(chan struct{})
	var once0, once1 sync.Once
	m.node("s0").hook = func(ctx context.Context, stage int) {
		select {
		case <-aInStage1: // request A is already past stage 0: this is B.
			once0.Do(func() { close(bInStage0) })
		default:
		}
	}
	m.node("s1").hook = func(ctx context.Context, stage int) {
		once1.Do(func() {
			close(aInStage1)
			select {
			case <-bInStage0:
			case <-ctx.Done():
			}
		})
	}
	r := m.node("s2").router
	errs := make(chan error, 2)
	go func() { _, err := infer(t, r, []float32{1}); errs <- err }()
	<-aInStage1
	go func() { _, err := infer(t, r, []float32{2}); errs <- err }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestRouterPrefersLeastInFlight(t *testing.T) {
	cfg := fastRetries
	cfg.StageTimeout = 2 * time.Second
	m := newFakeMesh(t, cfg, threeByTwo)
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	m.node("a").hook = func(ctx context.Context, stage int) {
		if stage == 0 {
			entered <- struct{}{}
			<-release
		}
	}
	r := m.node("b").router
	done := make(chan error, 1)
	go func() { _, err := infer(t, r, []float32{1}); done <- err }()
	<-entered // one call in flight to a
	if _, err := infer(t, r, []float32{2}); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if m.node("c").runs(0) != 1 || m.node("a").runs(0) != 1 {
		t.Fatalf("second request should go to idle c: a=%d c=%d", m.node("a").runs(0), m.node("c").runs(0))
	}
}

// TestRouterLearnsStageTimeout: once a stage has answered a few times, a hung replica
// costs a small multiple of the stage's usual time, not the configured hour.
func TestRouterLearnsStageTimeout(t *testing.T) {
	cfg := fastRetries
	cfg.StageTimeout = time.Hour
	// Far below the configured hour, far above a healthy call on a busy machine.
	cfg.MinStageTimeout = time.Second
	cfg.RequestTimeout = time.Minute
	m := newFakeMesh(t, cfg, threeByTwo)
	r := m.node("b").router
	for i := range learnedSamples {
		if _, err := infer(t, r, []float32{float32(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// a ranks first for stage 0 (equal load and RTT, a < c) and now hangs.
	m.node("a").setFault(0, faultHang)
	start := time.Now()
	y, err := infer(t, r, []float32{7})
	if err != nil {
		t.Fatal(err)
	}
	mustMatch(t, y, []float32{7})
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("hung replica cost %v", took)
	}
	if r.Stats().Retries != 1 {
		t.Fatalf("stats %+v, want one retry after the learned timeout", r.Stats())
	}
}

func TestRouterTellsWhichReplicaAStageFailedOverFrom(t *testing.T) {
	m := newFakeMesh(t, fastRetries, threeByTwo)
	m.node("a").setFault(0, faultDead)
	r := m.node("b").router
	type failover struct {
		stage    int
		drive    bool
		from, to string
	}
	var got []failover
	r.OnFailover(func(model, version string, stage int, drive bool, from, to string) {
		got = append(got, failover{stage, drive, from, to})
	})
	x := []float32{5, 6}
	if _, err := infer(t, r, x); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != (failover{0, false, "a", "c"}) {
		t.Fatalf("failovers told = %+v, want stage 0 from a to c", got)
	}
	r.OnFailover(nil)
	m.node("c").setFault(0, faultDead)
	m.node("a").setFault(0, faultNone)
	if _, err := infer(t, r, x); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("a failover was told after OnFailover(nil): %+v", got)
	}
}
