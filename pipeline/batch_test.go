package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/mesh"
)

// batchPrompts are prompts of different lengths, so that a batch of their
// sessions pads every state but the longest.
var batchPrompts = [][]int64{{1, 2, 3}, {4, 5, 6, 7, 8, 9, 10}, {11}, {12, 13, 14, 15, 16}}

// TestDecodeBatchMatchesStepsAlone: the decode steps of 4 sessions at 4 different
// positions, queued on the with-past GPT's stage, first run alone as well as
// together (the check), then together only, without sampling (the logits copied
// out) and with it (each step's row of the logits held in place); everything every
// step made (its logits, and each present key and value cut back to the session's
// own length, held) matches the step run alone, and the batched runs are counted.
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
	items := func(sampling bool) []*batchItem {
		var out []*batchItem
		for i, p := range batchPrompts {
			rt.mu.Lock()
			sess := rt.sessions[sessionKey{id: fmt.Sprint(i), stage: key}]
			rt.mu.Unlock()
			in, err := sessionInputs(s.sess, s.a.State, sess, len(p), 1, []tensor.Tensor{tensor.FromInt64("input_ids", []int64{1, 1}, []int64{toks[i]})})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, &batchItem{caller: context.Background(), inputs: in, state: sess.held, past: len(p), steps: 1, sampling: sampling, done: make(chan struct{})})
		}
		return out
	}
	runQueued := func(batch []*batchItem) {
		s.batch.mu.Lock()
		s.batch.queue, s.batch.runners = slices.Clone(batch), 1
		s.batch.mu.Unlock()
		s.batch.loop(context.Background())
	}

	checks := items(false)
	runQueued(checks)
	for _, it := range checks {
		it.release()
	}
	if !s.batch.checked[1] || s.batch.off {
		t.Fatalf("after the first batch of different positions: checked %v, off %v", s.batch.checked, s.batch.off)
	}
	if st := rt.SessionStats().Batched; st.Runs != 0 {
		t.Fatalf("the checked batch answered with its batched rows: %+v", st)
	}
	var worst float64
	for runs, sampling := range []bool{false, true} {
		batch := items(sampling)
		runQueued(batch)
		if st := rt.SessionStats().Batched; st.Runs != uint64(runs+1) || st.Steps != uint64((runs+1)*len(batch)) {
			t.Fatalf("sampling %v: batched runs %+v, want %d runs of %d steps", sampling, st, runs+1, len(batch))
		}
		for i, it := range batch {
			if it.err != nil {
				t.Fatalf("session %d: %v", i, it.err)
			}
			if (it.logits != nil) != sampling {
				t.Fatalf("session %d, sampling %v: held logits %v", i, sampling, it.logits)
			}
			rest, next, logits, err := s.held.run(context.Background(), it.inputs, it.state, sampling)
			if err != nil {
				t.Fatal(err)
			}
			alone := &stepResult{out: rest, next: next, logits: logits}
			got, err := stepTensors(&it.stepResult)
			if err != nil {
				t.Fatal(err)
			}
			want, err := stepTensors(alone)
			if err != nil {
				t.Fatal(err)
			}
			alone.release()
			it.release()
			if len(want) != len(got) || len(next) == 0 {
				t.Fatalf("session %d: %d tensors batched, %d alone (%d state)", i, len(got), len(want), len(next))
			}
			for _, w := range want {
				j := slices.IndexFunc(got, func(o tensor.Tensor) bool { return o.Name == w.Name })
				if j < 0 {
					t.Fatalf("session %d: no batched %q", i, w.Name)
				}
				if d := tensorDiff(got[j], w); d != "" {
					t.Fatalf("session %d, %q: %s", i, w.Name, d)
				}
				if w.DType == tensor.Float32 {
					g, _ := got[j].Float32s()
					v, _ := w.Float32s()
					for k := range v {
						worst = max(worst, math.Abs(float64(g[k]-v[k])))
					}
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

// cancelKey carries a step's cancel func to the batcher's beforeRun in
// TestCancelledBatchedStepsFreeEverything.
type cancelKey struct{}

// TestCancelledBatchedStepsFreeEverything: 4 sessions step concurrently on a batching
// stage, and every so often a step's caller gives up: before the step is taken from
// the queue (a deadline already past), or once its batch has started (cancelled from
// the batcher's beforeRun). A step given up loses its session, which starts again;
// the others go on. Once every session is closed the stage holds nothing: no state
// bytes counted, and none left in ONNX Runtime's memory.
func TestCancelledBatchedStepsFreeEverything(t *testing.T) {
	before := ort.HeldBytes()
	rt, key := batchingRuntime(t, 1<<24, time.Minute, 4)
	rt.mu.Lock()
	b := rt.stages[key].batch
	rt.mu.Unlock()
	var inBatches atomic.Int64 // steps given up in a batch of several
	b.beforeRun = func(batch []*batchItem) {
		cancelled := false
		for _, it := range batch {
			if cancel, ok := it.caller.Value(cancelKey{}).(context.CancelFunc); ok {
				cancel()
				cancelled = true
				if len(batch) > 1 {
					inBatches.Add(1)
				}
			}
		}
		if cancelled {
			// Time for the callers to see it while their batch still runs.
			time.Sleep(2 * time.Millisecond)
		}
	}
	var wg sync.WaitGroup
	var queued, running, completed atomic.Int64
	for i, p := range batchPrompts {
		wg.Go(func() {
			id := fmt.Sprint(i)
			defer step(rt, key, id, mesh.StepClose, 0)
			for round := range 12 {
				tok, err := step(rt, key, id, mesh.StepPrefill, 0, p...)
				if err != nil {
					t.Error(err)
					return
				}
				// The longest prompt (7) and 8 steps stay within GPTTiny's context of 16.
				for k := range 8 {
					ctx, cancel := context.WithCancel(context.Background())
					switch (7*k + 3*i + round) % 13 {
					case 0:
						ctx, cancel = context.WithDeadline(ctx, time.Now().Add(-time.Second))
					case 6:
						ctx = context.WithValue(ctx, cancelKey{}, cancel)
					}
					in := []tensor.Tensor{tensor.FromInt64("input_ids", []int64{1, 1}, []int64{tok}), Sampling{}.tensor()}
					out, err := rt.SessionStep(ctx, SessionStep{Session: id, Key: key, Step: mesh.StepDecode, Pos: len(p) + k, Len: 1, Inputs: in})
					cancel()
					if errors.Is(err, context.DeadlineExceeded) {
						queued.Add(1)
						break
					}
					if errors.Is(err, context.Canceled) {
						running.Add(1)
						break
					}
					if err != nil {
						t.Errorf("session %s, step %d: %v", id, k, err)
						return
					}
					completed.Add(1)
					v, err := out[0].Int64s()
					if err != nil {
						t.Error(err)
						return
					}
					tok = v[0]
				}
			}
		})
	}
	wg.Wait()
	batched := rt.SessionStats().Batched
	t.Logf("steps given up while queued %d, while their batch ran %d (%d in a batch of several); completed %d; batched %+v",
		queued.Load(), running.Load(), inBatches.Load(), completed.Load(), batched)
	if queued.Load() == 0 || running.Load() == 0 || inBatches.Load() == 0 || completed.Load() == 0 || batched.Runs == 0 {
		t.Fatal("the test needs steps of each kind, and batched runs")
	}
	if st := rt.SessionStats(); st.Sessions != 0 || st.Bytes != 0 {
		t.Fatalf("after every session closed: %+v", st)
	}
	if n := ort.HeldBytes() - before; n != 0 {
		t.Fatalf("%d bytes left held in ONNX Runtime after every session closed", n)
	}
}

// TestGoneStepIsNotRun: a queued decode step whose caller has gone is dropped when
// the batcher takes its batch, answered with the caller's error and never run, while
// the step queued beside it runs.
func TestGoneStepIsNotRun(t *testing.T) {
	rt, key := batchingRuntime(t, 1<<24, time.Minute, 4)
	rt.mu.Lock()
	s := rt.stages[key]
	rt.mu.Unlock()
	var items []*batchItem
	for i, p := range batchPrompts[:2] {
		tok, err := step(rt, key, fmt.Sprint(i), mesh.StepPrefill, 0, p...)
		if err != nil {
			t.Fatal(err)
		}
		rt.mu.Lock()
		sess := rt.sessions[sessionKey{id: fmt.Sprint(i), stage: key}]
		rt.mu.Unlock()
		in, err := sessionInputs(s.sess, s.a.State, sess, len(p), 1, []tensor.Tensor{tensor.FromInt64("input_ids", []int64{1, 1}, []int64{tok})})
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, &batchItem{caller: context.Background(), inputs: in, state: sess.held, past: len(p), steps: 1, done: make(chan struct{})})
	}
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	items[0].caller = gone
	var ran [][]*batchItem
	s.batch.beforeRun = func(batch []*batchItem) { ran = append(ran, slices.Clone(batch)) }
	s.batch.mu.Lock()
	s.batch.queue, s.batch.runners = slices.Clone(items), 1
	s.batch.mu.Unlock()
	s.batch.loop(context.Background())
	for _, it := range items {
		<-it.done
	}
	defer items[1].release()
	if !errors.Is(items[0].err, context.Canceled) || items[0].out != nil || items[0].next != nil {
		t.Fatalf("the gone step: err %v, %d outputs, %d state", items[0].err, len(items[0].out), len(items[0].next))
	}
	if items[1].err != nil || len(items[1].next) == 0 {
		t.Fatalf("the step beside it: err %v, %d state", items[1].err, len(items[1].next))
	}
	if len(ran) != 1 || len(ran[0]) != 1 || ran[0][0] != items[1] {
		t.Fatalf("batches run: %v, want only the step beside it", ran)
	}
}

// memHeld is an accel.Held in Go memory, for batchRow's test.
type memHeld struct {
	data     []byte
	shape    []int64
	released int
}

func (m *memHeld) DType() tensor.DType { return tensor.Float32 }
func (m *memHeld) Shape() []int64      { return slices.Clone(m.shape) }
func (m *memHeld) Bytes() int64        { return int64(len(m.data)) }
func (m *memHeld) Release()            { m.released++ }
func (m *memHeld) Tensor(name string) (tensor.Tensor, error) {
	return tensor.Tensor{Name: name, DType: tensor.Float32, Shape: m.Shape(), Data: slices.Clone(m.data)}, nil
}
func (m *memHeld) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// TestBatchRowReadsItsOwnRow: each step's row of held [3, 2, 4] logits reads its own
// 32 bytes at any offset, short reads end in io.EOF, a released row reads nothing,
// and the batch's value is released once, with its last row.
func TestBatchRowReadsItsOwnRow(t *testing.T) {
	v := &memHeld{shape: []int64{3, 2, 4}, data: make([]byte, 96)}
	for i := range v.data {
		v.data[i] = byte(i)
	}
	left := new(atomic.Int32)
	left.Store(3)
	rows := make([]*batchRow, 3)
	for i := range rows {
		rows[i] = &batchRow{v: v, i: i, n: 3, left: left}
	}
	r := rows[1]
	if !slices.Equal(r.Shape(), []int64{1, 2, 4}) || r.Bytes() != 32 {
		t.Fatalf("row shape %v, %d bytes", r.Shape(), r.Bytes())
	}
	p := make([]byte, 8)
	if n, err := r.ReadAt(p, 24); n != 8 || err != nil || p[0] != 56 || p[7] != 63 {
		t.Fatalf("ReadAt(8 bytes, 24) = %d, %v, %v", n, err, p)
	}
	if n, err := r.ReadAt(p, 28); n != 4 || !errors.Is(err, io.EOF) || p[0] != 60 {
		t.Fatalf("ReadAt past the row's end = %d, %v, %v", n, err, p[:n])
	}
	if n, err := r.ReadAt(p, 32); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("ReadAt at the row's end = %d, %v", n, err)
	}
	if _, err := r.ReadAt(p, -1); err == nil {
		t.Fatal("ReadAt at -1 read")
	}
	whole, err := rows[2].Tensor("logits")
	if err != nil || whole.Data[0] != 64 || len(whole.Data) != 32 {
		t.Fatalf("row 2 as a tensor: %v, %v", whole.Data, err)
	}
	r.Release()
	r.Release()
	if _, err := r.ReadAt(p, 0); !errors.Is(err, accel.ErrSessionClosed) {
		t.Fatalf("ReadAt after Release: %v", err)
	}
	rows[0].Release()
	if v.released != 0 {
		t.Fatal("the batch's value was released before its last row")
	}
	if n, err := rows[2].ReadAt(p, 0); n != 8 || err != nil || p[0] != 64 {
		t.Fatalf("the last row after the others' release: %d, %v", n, err)
	}
	rows[2].Release()
	if v.released != 1 {
		t.Fatalf("the batch's value released %d times, want once with its last row", v.released)
	}
}
