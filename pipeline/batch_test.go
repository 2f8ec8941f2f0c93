package pipeline

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/mesh"
)

// batchPrompts are prompts of different lengths, so that a batch of their
// sessions pads every state but the longest.
var batchPrompts = [][]int64{{1, 2, 3}, {4, 5, 6, 7, 8, 9, 10}, {11}, {12, 13, 14, 15, 16}}

// TestDecodeBatchMatchesStepsAlone: the decode steps of 4 sessions at 4 different
// positions, queued on the with-past GPT's stage, first run alone as well as
// together (the check), then together only; every output of every session (logits,
// and each present key and value cut back to the session's own length) matches the
// step run alone, and the batched run is counted.
func TestDecodeBatchMatchesStepsAlone(t *testing.T) {
	rt, key := batchingRuntime(t, 1<<24, time.Minute, 4)
	toks := make([]int64, len(batchPrompts))
	for i, p := range batchPrompts {
		var err error
		if toks[i], err = step(rt, key, fmt.Sprint(i), mesh.StepPrefill, 0, p...); err != nil {
			t.Fatal(err)
		}
	}
	rt.mu.Lock()
	s := rt.stages[key]
	rt.mu.Unlock()
	if s.batch == nil {
		t.Fatal("the with-past GPT's stage does not batch")
	}
	items := func() []*batchItem {
		var out []*batchItem
		for i, p := range batchPrompts {
			rt.mu.Lock()
			sess := rt.sessions[sessionKey{id: fmt.Sprint(i), stage: key}]
			rt.mu.Unlock()
			in, err := sessionInputs(s.sess, s.a.State, sess, len(p), 1, []tensor.Tensor{tensor.FromInt64("input_ids", []int64{1, 1}, []int64{toks[i]})})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, &batchItem{inputs: in, past: len(p), steps: 1, done: make(chan struct{})})
		}
		return out
	}
	runQueued := func(batch []*batchItem) {
		s.batch.mu.Lock()
		s.batch.queue, s.batch.runners = slices.Clone(batch), 1
		s.batch.mu.Unlock()
		s.batch.loop(context.Background())
	}

	runQueued(items())
	if !s.batch.checked[1] || s.batch.off {
		t.Fatalf("after the first batch of different positions: checked %v, off %v", s.batch.checked, s.batch.off)
	}
	if st := rt.SessionStats().Batched; st.Runs != 0 {
		t.Fatalf("the checked batch answered with its batched rows: %+v", st)
	}
	batch := items()
	runQueued(batch)
	if st := rt.SessionStats().Batched; st.Runs != 1 || st.Steps != uint64(len(batch)) {
		t.Fatalf("batched runs %+v, want 1 run of %d steps", st, len(batch))
	}
	var worst float64
	for i, it := range batch {
		if it.err != nil {
			t.Fatalf("session %d: %v", i, it.err)
		}
		alone, err := s.sess.Run(context.Background(), it.inputs, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(alone) != len(it.out) {
			t.Fatalf("session %d: %d outputs batched, %d alone", i, len(it.out), len(alone))
		}
		for _, want := range alone {
			j := slices.IndexFunc(it.out, func(o tensor.Tensor) bool { return o.Name == want.Name })
			if j < 0 {
				t.Fatalf("session %d: no batched %q", i, want.Name)
			}
			if d := tensorDiff(it.out[j], want); d != "" {
				t.Fatalf("session %d, %q: %s", i, want.Name, d)
			}
			if want.DType == tensor.Float32 {
				g, _ := it.out[j].Float32s()
				w, _ := want.Float32s()
				for k := range w {
					worst = max(worst, math.Abs(float64(g[k]-w[k])))
				}
			}
		}
	}
	t.Logf("largest difference between a batched output and the step run alone: %g", worst)
}

// TestConcurrentSessionsGenerateAsAlone: 4 sessions at different positions step
// concurrently through SessionStep on a runtime that batches, and greedily generate
// the same tokens as the same sessions stepped one at a time on a runtime that does
// not. Batched logits differ from the step run alone in their last bits (about
// 3e-8, TestDecodeBatchMatchesStepsAlone) while the smallest lead of the greedy token
// over the next on these prompts is about 0.01, so the tokens must agree exactly,
// whichever steps happen to share a batch.
func TestConcurrentSessionsGenerateAsAlone(t *testing.T) {
	const steps = 8 // the longest prompt (7) and 8 steps stay within GPTTiny's context of 16
	generate := func(rt *StageRuntime, key StageKey, concurrent bool) [][]int64 {
		out := make([][]int64, len(batchPrompts))
		run := func(i int) {
			p := batchPrompts[i]
			tok, err := step(rt, key, fmt.Sprint(i), mesh.StepPrefill, 0, p...)
			for k := 0; err == nil && k < steps; k++ {
				out[i] = append(out[i], tok)
				tok, err = step(rt, key, fmt.Sprint(i), mesh.StepDecode, len(p)+k, tok)
			}
			if err != nil {
				t.Error(err)
			}
		}
		var wg sync.WaitGroup
		for i := range batchPrompts {
			if !concurrent {
				run(i)
				continue
			}
			wg.Go(func() { run(i) })
		}
		wg.Wait()
		return out
	}
	alone, aloneKey := sessionRuntime(t, 1<<24, time.Minute)
	want := generate(alone, aloneKey, false)
	rt, key := batchingRuntime(t, 1<<24, time.Minute, 4)
	got := generate(rt, key, true)
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Fatalf("session %d: batching runtime %v, one at a time %v", i, got[i], want[i])
		}
	}
	t.Logf("decode steps batched: %+v of %d", rt.SessionStats().Batched, steps*len(batchPrompts))
}
