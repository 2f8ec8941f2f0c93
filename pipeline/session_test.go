package pipeline

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/mesh"
	"github.com/layermesh/layermesh/partition"
	"github.com/layermesh/layermesh/partition/modelgen"
)

// sessionRuntime loads the with-past tiny GPT as one stage (the last: it samples) on
// a runtime whose budget leaves room for the stage and stateBudget bytes of state.
func sessionRuntime(t *testing.T, stateBudget int64, ttl time.Duration) (*StageRuntime, StageKey) {
	t.Helper()
	return batchingRuntime(t, stateBudget, ttl, 0)
}

// batchingRuntime is sessionRuntime with RuntimeConfig.MaxBatch set.
func batchingRuntime(t *testing.T, stateBudget int64, ttl time.Duration, maxBatch int) (*StageRuntime, StageKey) {
	t.Helper()
	return gptStageRuntime(t, testBackend(t), stateBudget, ttl, maxBatch)
}

// gptStageRuntime is batchingRuntime on backend be.
func gptStageRuntime(t *testing.T, be accel.Backend, stateBudget int64, ttl time.Duration, maxBatch int) (*StageRuntime, StageKey) {
	t.Helper()
	cfg := modelgen.GPTTiny
	cfg.WithPast = true
	path := writeTestGPT(t, cfg)
	out := filepath.Join(t.TempDir(), "stages")
	man, err := partition.Partition(path, out, partition.Options{Plan: partition.PlanOptions{Stages: 1}})
	if err != nil {
		t.Fatal(err)
	}
	s := man.Stages[0]
	blobs := dirBlobs{mu: &sync.Mutex{}, paths: map[string]string{s.SHA256: filepath.Join(out, s.File)}}
	var pairs []StatePair
	for _, p := range s.State {
		pairs = append(pairs, StatePair{In: p.In, Out: p.Out})
	}
	if len(pairs) != 2*cfg.Layers {
		t.Fatalf("stage owns %d state pairs", len(pairs))
	}
	key := StageKey{Model: "gen", Version: "1", Stage: 0}
	rt := NewStageRuntime(RuntimeConfig{Backend: be, MemBudget: 1000 + stateBudget, Blobs: blobs,
		SessionTTL: ttl, MaxBatch: maxBatch, Logger: testLogger(t, "rt")})
	t.Cleanup(rt.Close)
	rt.SetAssignments([]StageAssignment{{Key: key, Blob: s.SHA256, Size: s.Size, MemBytes: 1000, State: pairs}})
	eventually(t, 10*time.Second, func() error {
		if !rt.Serves(key) {
			return errors.New("stage not ready")
		}
		return nil
	})
	return rt, key
}

func step(rt *StageRuntime, key StageKey, session string, kind mesh.StepKind, pos int, ids ...int64) (int64, error) {
	in := []tensor.Tensor{tensor.FromInt64("input_ids", []int64{1, int64(len(ids))}, ids), Sampling{}.tensor()}
	out, err := rt.SessionStep(context.Background(), SessionStep{Session: session, Key: key, Step: kind, Pos: pos, Len: len(ids), Inputs: in})
	if err != nil || kind == mesh.StepClose {
		return 0, err
	}
	v, err := out[0].Int64s()
	if err != nil {
		return 0, err
	}
	return v[0], nil
}

// TestSessionStateBudgetTTLAndClose: a stage keeps each session's state between
// steps and counts its bytes; when the budget is spent a new session is refused
// with kv_exhausted while the running one goes on; a decode at the wrong position
// is a lost session; close and the idle TTL free the state, back to zero bytes.
func TestSessionStateBudgetTTLAndClose(t *testing.T) {
	// The TTL is an hour so that no pause of a busy machine between two steps expires
	// a session; expiry is driven below as the runtime's loop drives it, with a clock
	// past the TTL.
	rt, key := sessionRuntime(t, 1, time.Hour)
	tok, err := step(rt, key, "a", mesh.StepPrefill, 0, 1, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	st := rt.SessionStats()
	if st.Sessions != 1 || st.Bytes <= 0 {
		t.Fatalf("after a prefill: %+v", st)
	}
	if _, err := step(rt, key, "b", mesh.StepPrefill, 0, 4); !errors.Is(err, api.ErrKVExhausted) || api.Classify(err).Code != api.CodeKVExhausted {
		t.Fatalf("second session on a spent budget: %v", err)
	}
	if _, err := step(rt, key, "a", mesh.StepDecode, 3, tok); err != nil {
		t.Fatalf("running session refused: %v", err)
	}
	if grown := rt.SessionStats().Bytes; grown <= st.Bytes {
		t.Fatalf("state did not grow with the context: %d then %d bytes", st.Bytes, grown)
	}
	if _, err := step(rt, key, "a", mesh.StepDecode, 9, tok); !errors.Is(err, ErrSessionLost) {
		t.Fatalf("decode at the wrong position: %v", err)
	}
	if st := rt.SessionStats(); st.Sessions != 0 || st.Bytes != 0 {
		t.Fatalf("a failed step kept the state: %+v", st)
	}
	if _, err := step(rt, key, "b", mesh.StepPrefill, 0, 4); err != nil {
		t.Fatalf("new session after the state was freed: %v", err)
	}
	if _, err := step(rt, key, "b", mesh.StepClose, 0); err != nil {
		t.Fatal(err)
	}
	if st := rt.SessionStats(); st.Sessions != 0 || st.Bytes != 0 {
		t.Fatalf("after close: %+v", st)
	}
	if _, err := step(rt, key, "c", mesh.StepPrefill, 0, 5, 6); err != nil {
		t.Fatal(err)
	}
	rt.expireSessions(time.Now())
	if st := rt.SessionStats(); st.Sessions != 1 || st.Expired != 0 {
		t.Fatalf("a session expired before its TTL: %+v", st)
	}
	rt.expireSessions(time.Now().Add(2 * time.Hour))
	if st := rt.SessionStats(); st.Sessions != 0 || st.Bytes != 0 || st.Expired != 1 {
		t.Fatalf("idle session not expired: %+v", st)
	}
}

// TestSessionStepsMatchWholeSequence: greedy tokens from a prefill and decode steps
// on the runtime are those of the plain GPT recomputed over the whole sequence.
func TestSessionStepsMatchWholeSequence(t *testing.T) {
	rt, key := sessionRuntime(t, 1<<20, time.Minute)
	plain := writeTestGPT(t, modelgen.GPTTiny)
	sess, err := testBackend(t).Open(context.Background(), plain, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	seq := []int64{3, 14, 15, 92, 65}
	tok, err := step(rt, key, "s", mesh.StepPrefill, 0, seq...)
	for i := 0; err == nil && len(seq) < modelgen.GPTTiny.Context; i++ {
		out, rerr := sess.Run(context.Background(), []tensor.Tensor{tensor.FromInt64("input_ids", []int64{1, int64(len(seq))}, seq)}, nil)
		if rerr != nil {
			t.Fatal(rerr)
		}
		logits, _ := out[0].Float32s()
		vocab := modelgen.GPTTiny.Vocab
		want := Sampling{}.Sample(logits[(len(seq)-1)*vocab:])
		if int64(want) != tok {
			t.Fatalf("step %d: session %d, recomputed %d", i, tok, want)
		}
		seq = append(seq, tok)
		tok, err = step(rt, key, "s", mesh.StepDecode, len(seq)-1, tok)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestSamplingRepeatsBySeedAndIndex(t *testing.T) {
	logits := make([]float32, 50)
	for i := range logits {
		logits[i] = float32((i*7)%13) / 3
	}
	s := Sampling{Temperature: 0.8, TopK: 20, TopP: 0.9, Seed: 42}
	var a, b []int32
	for i := range 40 {
		s.Index = i
		a = append(a, s.Sample(logits))
		b = append(b, s.Sample(logits))
	}
	if !slices.Equal(a, b) {
		t.Fatal("the same seed and index drew different tokens")
	}
	distinct := map[int32]bool{}
	for _, tok := range a {
		distinct[tok] = true
	}
	if len(distinct) < 2 {
		t.Fatalf("sampling at temperature 0.8 always drew %v", a)
	}
	if g := (Sampling{}).Sample(logits); logits[g] != slices.Max(logits) {
		t.Fatalf("greedy drew %d", g)
	}
	top1 := Sampling{Temperature: 1, TopK: 1, Seed: 1}
	if g := top1.Sample(logits); logits[g] != slices.Max(logits) {
		t.Fatalf("top-k 1 drew %d", g)
	}
	f := stopFilter{stops: [][]int32{{7, 8, 9}}}
	var got []int32
	for _, tok := range []int32{1, 7, 8, 2, 7, 8, 9, 5} {
		stop, ready := f.push(tok)
		for _, r := range ready {
			got = append(got, r.ID)
		}
		if stop {
			break
		}
	}
	if !slices.Equal(got, []int32{1, 7, 8, 2}) {
		t.Fatalf("stop filter emitted %v", got)
	}
}

// heldCounter wraps a backend so that every value its sessions keep in ONNX Runtime
// is counted while it lives; a gate, when set, holds each RunHeld until it is
// closed.
type heldCounter struct {
	accel.Backend
	live atomic.Int64
	gate atomic.Pointer[chan struct{}]
	runs atomic.Int64
	// lastKept is how many values the last RunHeld kept.
	lastKept atomic.Int64
}

func (c *heldCounter) Open(ctx context.Context, path string, opts accel.SessionOptions) (accel.Session, error) {
	s, err := c.Backend.Open(ctx, path, opts)
	if err != nil {
		return nil, err
	}
	return &countedSession{Session: s, c: c}, nil
}

type countedSession struct {
	accel.Session
	c *heldCounter
}

func (s *countedSession) RunHeld(ctx context.Context, inputs []tensor.Tensor, held []accel.HeldInput, names, keep []string) ([]tensor.Tensor, []accel.Held, error) {
	s.c.runs.Add(1)
	if g := s.c.gate.Load(); g != nil {
		<-*g
	}
	inner := make([]accel.HeldInput, len(held))
	for i, h := range held {
		inner[i] = accel.HeldInput{Name: h.Name, Value: h.Value.(*countedHeld).Held}
	}
	out, kept, err := s.Session.(accel.HeldRunner).RunHeld(ctx, inputs, inner, names, keep)
	s.c.lastKept.Store(int64(len(kept)))
	for i, v := range kept {
		s.c.live.Add(1)
		kept[i] = &countedHeld{Held: v, c: s.c}
	}
	return out, kept, err
}

type countedHeld struct {
	accel.Held
	c    *heldCounter
	once sync.Once
}

func (h *countedHeld) Release() {
	h.once.Do(func() { h.c.live.Add(-1) })
	h.Held.Release()
}

// TestSessionStateHeldAndReleased: a stage keeps each session's state in ONNX
// Runtime's memory, one value per state pair, and releases it when the next step
// replaces it, on close, on a failed step, on expiry, on close of the runtime, and,
// for a session closed while its step runs, when that step ends.
func TestSessionStateHeldAndReleased(t *testing.T) {
	counter := &heldCounter{Backend: testBackend(t)}
	// An hour's TTL: the expiry below is driven by hand, with a clock past it.
	rt, key := gptStageRuntime(t, counter, 1<<30, time.Hour, 0)
	want := int64(2 * modelgen.GPTTiny.Layers) // a key and a value per layer
	live := func(what string, n int64) {
		t.Helper()
		if got := counter.live.Load(); got != n {
			t.Fatalf("%s: %d values held in ONNX Runtime, want %d", what, got, n)
		}
	}

	tok, err := step(rt, key, "a", mesh.StepPrefill, 0, 1, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	live("after a prefill", want)
	for pos := 3; pos < 6; pos++ {
		if tok, err = step(rt, key, "a", mesh.StepDecode, pos, tok); err != nil {
			t.Fatal(err)
		}
		live("after a decode step", want)
		// The logits were held too, their last row sampled in place, and released.
		if got := counter.lastKept.Load(); got != want+1 {
			t.Fatalf("a sampling step kept %d values, want the %d of the state and the logits", got, want)
		}
	}
	if st := rt.SessionStats(); st.Sessions != 1 || st.Bytes <= 0 {
		t.Fatalf("held state not counted: %+v", st)
	}
	if counter.runs.Load() != 4 {
		t.Fatalf("%d steps ran through RunHeld, want 4", counter.runs.Load())
	}
	if _, err := step(rt, key, "a", mesh.StepClose, 0); err != nil {
		t.Fatal(err)
	}
	live("after close", 0)

	if _, err := step(rt, key, "b", mesh.StepPrefill, 0, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := step(rt, key, "b", mesh.StepDecode, 7, 1); !errors.Is(err, ErrSessionLost) {
		t.Fatalf("decode at the wrong position: %v", err)
	}
	live("after a step out of place", 0)

	if _, err := step(rt, key, "c", mesh.StepPrefill, 0, 5); err != nil {
		t.Fatal(err)
	}
	if _, err := step(rt, key, "c", mesh.StepPrefill, 0, 5, 6); err != nil {
		t.Fatal(err)
	}
	live("after a prefill replaced a session", want)
	rt.expireSessions(time.Now().Add(2 * time.Hour))
	live("after the TTL", 0)

	// A session closed while its step runs: the step ends normally and its state,
	// old and new, is released then.
	tok, err = step(rt, key, "d", mesh.StepPrefill, 0, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	counter.gate.Store(&gate)
	done := make(chan error, 1)
	go func() {
		_, err := step(rt, key, "d", mesh.StepDecode, 2, tok)
		done <- err
	}()
	eventually(t, 5*time.Second, func() error {
		if counter.runs.Load() != 9 {
			return errors.New("the decode step has not reached ONNX Runtime")
		}
		return nil
	})
	if _, err := step(rt, key, "d", mesh.StepClose, 0); err != nil {
		t.Fatal(err)
	}
	live("while the closed session's step runs", want)
	counter.gate.Store(nil)
	close(gate)
	if err := <-done; err != nil {
		t.Fatalf("the running step: %v", err)
	}
	live("after the closed session's step ended", 0)
	if st := rt.SessionStats(); st.Sessions != 0 || st.Bytes != 0 {
		t.Fatalf("after the closed session's step: %+v", st)
	}

	if _, err := step(rt, key, "e", mesh.StepPrefill, 0, 3); err != nil {
		t.Fatal(err)
	}
	rt.Close()
	live("after the runtime closed", 0)
}

// readerAtHeld is held logits that answer ReadAt as io.ReaderAt allows at the end of
// the data: the bytes and io.EOF together. Only what sampleLastRow reads is real.
type readerAtHeld struct {
	accel.Held
	shape []int64
	data  []byte
}

func (h *readerAtHeld) DType() tensor.DType { return tensor.Float32 }
func (h *readerAtHeld) Shape() []int64      { return h.shape }
func (h *readerAtHeld) Bytes() int64        { return int64(len(h.data)) }
func (h *readerAtHeld) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(h.data)) {
		return 0, io.EOF
	}
	n := copy(p, h.data[off:])
	if off+int64(n) == int64(len(h.data)) {
		return n, io.EOF
	}
	return n, nil
}

// TestSampleLastRowReadsOnlyTheLastRow: the token comes from the last position's row
// (the other rows' largest logit is elsewhere), a full read that ends with io.EOF is
// a read, and logits of the wrong size or type are refused.
func TestSampleLastRowReadsOnlyTheLastRow(t *testing.T) {
	rows := [][]float32{{9, 0, 0, 0}, {0, 9, 0, 0}, {0, 0, 1, 5}}
	var flat []float32
	for _, r := range rows {
		flat = append(flat, r...)
	}
	logits := tensor.FromFloat32("logits", []int64{1, 3, 4}, flat)
	h := &readerAtHeld{shape: logits.Shape, data: logits.Data}
	out, err := sampleLastRow(h, Sampling{})
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := out[0].Int64s(); len(v) != 1 || v[0] != 3 {
		t.Fatalf("sampled %v, want token 3 (the last row's largest logit)", v)
	}
	if _, err := sampleLastRow(&readerAtHeld{shape: []int64{1, 3, 5}, data: logits.Data}, Sampling{}); !errors.Is(err, ErrBadStageResponse) {
		t.Fatalf("logits shorter than their shape: %v, want ErrBadStageResponse", err)
	}
	if _, err := sampleLastRow(&readerAtHeld{shape: []int64{3, 4}, data: logits.Data}, Sampling{}); !errors.Is(err, ErrBadStageResponse) {
		t.Fatalf("logits of rank 2: %v, want ErrBadStageResponse", err)
	}
}
