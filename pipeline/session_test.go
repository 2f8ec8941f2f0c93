package pipeline

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"sync"
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
	rt := NewStageRuntime(RuntimeConfig{Backend: testBackend(t), MemBudget: 1000 + stateBudget, Blobs: blobs,
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
	rt, key := sessionRuntime(t, 1, 300*time.Millisecond)
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
	eventually(t, 5*time.Second, func() error {
		if st := rt.SessionStats(); st.Sessions != 0 || st.Bytes != 0 || st.Expired != 1 {
			return errors.New("idle session not expired")
		}
		return nil
	})
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
