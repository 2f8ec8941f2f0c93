package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
)

// Decode batching. A decode step reads every weight of its stage to compute one
// token, so a stage bound by memory bandwidth computes several sessions' tokens in
// one run for little more than the cost of one. When RuntimeConfig.MaxBatch > 1,
// the decode steps that wait for a stage's ONNX Runtime session run together: each
// session's state is padded on the left to the longest past in the batch, the
// padding is masked out through attention_mask, and the outputs are cut back into
// each session's own. The state stays in the backend's memory throughout
// (accel.HeldStacker): the stack is one copy of each session's state, and the cut
// one copy of each new state, with no Go memory in between. Nothing waits to fill a
// batch: a run takes whatever steps are queued when the session comes free, so a
// lone session runs as before.
//
// Batching needs a model that takes its padding from attention_mask and its
// positions from position_ids (the Optimum decoder layout does both) and keeps the
// batch in the first dimension of every input and output. A stage whose inputs do
// not look like that never batches. One whose outputs do not follow, or whose
// batched rows differ from the same steps run alone, stops batching: until a batch
// of sessions at different positions has matched its steps run one by one, each
// batch is checked that way, and likewise for batches of sessions at one position.

// batchTolerance bounds how far a batched row may differ from the same step run
// alone during the check: the sums of a padded row run in another order, nothing
// more.
const batchTolerance = 1e-4

// inputRole is how a stage input is batched.
type inputRole int

const (
	roleRows  inputRole = iota // stacked along the first dimension
	roleState                  // a state input: padded along its length axis
	roleMask                   // attention_mask: padded with zeros
)

// batchLayout is how each of a stage's inputs and state outputs is batched.
type batchLayout struct {
	roles   map[string]inputRole
	lengths map[string]int // state input and output name -> length axis
}

// layoutFor says how a stage batches, or nil when its inputs do not allow it: it
// must read attention_mask [batch, length], have state pairs whose tensors carry
// the batch first and exactly one other dynamic (length) axis, and take every other
// input with a dynamic first dimension.
func layoutFor(sess accel.Session, pairs []StatePair) *batchLayout {
	if len(pairs) == 0 {
		return nil
	}
	l := &batchLayout{roles: map[string]inputRole{}, lengths: map[string]int{}}
	outShape := map[string][]int64{}
	for _, o := range sess.Outputs() {
		outShape[o.Name] = o.Shape
		if len(o.Shape) == 0 || o.Shape[0] >= 0 {
			return nil
		}
	}
	mask := false
	for _, in := range sess.Inputs() {
		if len(in.Shape) == 0 || in.Shape[0] >= 0 {
			return nil
		}
		i := slices.IndexFunc(pairs, func(p StatePair) bool { return p.In == in.Name })
		switch {
		case in.Name == attentionMaskInput:
			if len(in.Shape) != 2 {
				return nil
			}
			l.roles[in.Name], mask = roleMask, true
		case i >= 0:
			axis := lengthAxis(in.Shape)
			out, ok := outShape[pairs[i].Out]
			if axis < 0 || !ok || lengthAxis(out) != axis || len(out) != len(in.Shape) {
				return nil
			}
			l.roles[in.Name] = roleState
			l.lengths[in.Name], l.lengths[pairs[i].Out] = axis, axis
		default:
			l.roles[in.Name] = roleRows
		}
	}
	if !mask {
		return nil
	}
	return l
}

// batcherFor returns the stage's batcher, or nil when the runtime does not batch, the
// stage's inputs do not allow it, or its backend cannot hold and stack its state.
func (r *StageRuntime) batcherFor(sess accel.Session, a StageAssignment, held *heldRun) *stepBatcher {
	if r.cfg.MaxBatch < 2 || held == nil {
		return nil
	}
	stk, ok := sess.(accel.HeldStacker)
	if !ok {
		return nil
	}
	layout := layoutFor(sess, a.State)
	if layout == nil {
		return nil
	}
	return &stepBatcher{stk: stk, held: held, layout: layout, max: r.cfg.MaxBatch,
		limit: max(r.cfg.Session.PoolSize, 1), log: r.log.With("stage", a.Key.String()), stats: &r.batched}
}

// lengthAxis is the one dynamic axis of shape after the first, or -1.
func lengthAxis(shape []int64) int {
	axis := -1
	for i, d := range shape[1:] {
		if d < 0 {
			if axis >= 0 {
				return -1
			}
			axis = i + 1
		}
	}
	return axis
}

// batchItem is one session's decode step waiting for, or in, a batch.
type batchItem struct {
	caller context.Context   // the step's caller's: a step it gave up on is not run
	inputs []tensor.Tensor   // the step's inputs but its state
	state  []accel.HeldInput // the session's state, which stays its caller's
	past   int               // the session's state length before the step
	steps  int               // the tokens it runs: only steps of one length batch together
	// sampling is set for a step whose token is sampled here: its logits stay held
	// (logits), and only steps alike in this batch together.
	sampling bool
	stepResult
	err  error
	done chan struct{}
}

// BatchStats count the decode steps that ran batched.
type BatchStats struct {
	// Runs is the number of batched runs (two or more steps each), Steps the steps
	// they carried.
	Runs, Steps uint64
}

// stepBatcher queues one stage's decode steps and runs what is queued together.
// At most limit runs are in flight at once (the stage's ONNX Runtime sessions).
type stepBatcher struct {
	stk    accel.HeldStacker
	held   *heldRun // the state outputs a run keeps, and a step run alone
	layout *batchLayout
	max    int
	limit  int
	log    *slog.Logger
	stats  *batchCounters

	mu      sync.Mutex
	queue   []*batchItem
	runners int
	// checked[padded] is set once a batch of that kind (steps at different
	// positions, padded; or all at one position) matched its steps run alone.
	checked [2]bool
	off     bool // the model does not batch as laid out

	// beforeRun, when set (by tests), is called with each batch as it starts.
	beforeRun func([]*batchItem)
}

// batchCounters are a runtime's batching figures, shared by its stages.
type batchCounters struct{ runs, steps atomic.Uint64 }

// run queues a decode step and waits for its outputs, new state and, when sampling,
// held logits (heldRun.run's). A ctx that ends while the step waits takes it out of
// the queue. One that ends while its batch runs waits for that batch to end (one
// decode step of each of its sessions, and the same steps alone while a kind of
// batch is being checked) and frees what it made: the batch reads the session's
// state until then, and the caller frees that state once run returns.
func (b *stepBatcher) run(ctx context.Context, inputs []tensor.Tensor, state []accel.HeldInput, past, steps int, sampling bool) ([]tensor.Tensor, []accel.HeldInput, accel.Held, error) {
	it := &batchItem{caller: ctx, inputs: inputs, state: state, past: past, steps: steps, sampling: sampling, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, it)
	if b.runners < b.limit {
		b.runners++
		go b.loop(context.WithoutCancel(ctx))
	}
	b.mu.Unlock()
	select {
	case <-it.done:
		return it.out, it.next, it.logits, it.err
	case <-ctx.Done():
	}
	b.mu.Lock()
	queued := slices.Contains(b.queue, it)
	b.queue = slices.DeleteFunc(b.queue, func(q *batchItem) bool { return q == it })
	b.mu.Unlock()
	if !queued {
		<-it.done
		it.release()
	}
	return nil, nil, nil, ctx.Err()
}

// loop runs the queued steps, a batch at a time, until none is left.
func (b *stepBatcher) loop(ctx context.Context) {
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.runners--
			b.mu.Unlock()
			return
		}
		var batch, gone []*batchItem
		steps, sampling := b.queue[0].steps, b.queue[0].sampling
		b.queue = slices.DeleteFunc(b.queue, func(it *batchItem) bool {
			if err := it.caller.Err(); err != nil {
				it.err = err
				gone = append(gone, it)
				return true
			}
			take := len(batch) < b.max && it.steps == steps && it.sampling == sampling
			if take {
				batch = append(batch, it)
			}
			return take
		})
		b.mu.Unlock()
		for _, it := range gone {
			close(it.done)
		}
		if len(batch) == 0 {
			continue
		}
		if b.beforeRun != nil {
			b.beforeRun(batch)
		}
		b.runBatch(ctx, batch)
		for _, it := range batch {
			close(it.done)
		}
	}
}

// runBatch runs the steps of batch together when it can, else one by one.
func (b *stepBatcher) runBatch(ctx context.Context, batch []*batchItem) {
	padded := slices.ContainsFunc(batch, func(it *batchItem) bool { return it.past != batch[0].past })
	b.mu.Lock()
	off, checked := b.off, b.checked[boolIndex(padded)]
	b.mu.Unlock()
	if len(batch) == 1 || off {
		b.runEach(ctx, batch)
		return
	}
	together, err := b.runTogether(ctx, batch)
	if err != nil {
		b.runEach(ctx, batch)
		// Batching is to blame only when the steps alone succeed, but for those
		// whose caller has gone: a step that fails on its own explains the failure.
		succeeded := slices.ContainsFunc(batch, func(it *batchItem) bool { return it.err == nil })
		ownFailure := slices.ContainsFunc(batch, func(it *batchItem) bool { return it.err != nil && it.caller.Err() == nil })
		if succeeded && !ownFailure {
			b.stop("a batched run failed where single steps succeed", err)
		}
		return
	}
	if !checked {
		// Until checked, the steps run alone too and answer with those outputs.
		b.runEach(ctx, batch)
		failed := slices.ContainsFunc(batch, func(it *batchItem) bool { return it.err != nil })
		d := ""
		if !failed {
			d = rowsDiffer(batch, together)
		}
		for _, it := range together {
			it.release()
		}
		if failed {
			// A step that fails alone says nothing of batching; the next batch checks.
			return
		}
		if d != "" {
			b.stop("batched rows differ from the steps run alone", fmt.Errorf("%s", d))
			return
		}
		b.mu.Lock()
		b.checked[boolIndex(padded)] = true
		b.mu.Unlock()
		b.log.Info("decode batching checked: batched rows match the steps run alone", "steps", len(batch), "padded", padded)
		return
	}
	for i, it := range batch {
		it.stepResult, it.err = *together[i], nil
	}
	b.stats.runs.Add(1)
	b.stats.steps.Add(uint64(len(batch)))
}

func boolIndex(v bool) int {
	if v {
		return 1
	}
	return 0
}

// stop turns batching off for the stage, for good.
func (b *stepBatcher) stop(why string, err error) {
	b.mu.Lock()
	b.off = true
	b.mu.Unlock()
	b.log.Warn("decode batching turned off for the stage: "+why, "err", err)
}

// runEach runs each step alone, but a step whose caller has gone.
func (b *stepBatcher) runEach(ctx context.Context, batch []*batchItem) {
	for _, it := range batch {
		if it.err = it.caller.Err(); it.err == nil {
			it.out, it.next, it.logits, it.err = b.held.run(ctx, it.inputs, it.state, it.sampling)
		}
	}
}

// batching says whether the stage still batches: once off, its steps run as a
// stage's that does not batch, each on its own pool session.
func (b *stepBatcher) batching() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.off
}

// stepResult is what one step made, batched or alone.
type stepResult struct {
	out    []tensor.Tensor   // the outputs that are not state (nor held logits)
	next   []accel.HeldInput // the new state, named as the inputs it feeds next step
	logits accel.Held        // a sampling step's logits, the caller's to release
}

// release frees what a step made: its new state and logits.
func (r *stepResult) release() {
	releaseHeld(r.next)
	if r.logits != nil {
		r.logits.Release()
	}
	r.next, r.logits = nil, nil
}

// runTogether stacks the steps' inputs and state, runs them once and cuts the
// outputs and new state back into each step's. Sampling steps get their rows of the
// logits held in place (batchRow).
func (b *stepBatcher) runTogether(ctx context.Context, batch []*batchItem) ([]*stepResult, error) {
	longest := 0
	for _, it := range batch {
		longest = max(longest, it.past)
	}
	var in []tensor.Tensor
	for _, first := range batch[0].inputs {
		rows, err := rowsOf(batch, first.Name, func(it *batchItem) []tensor.Tensor { return it.inputs },
			func(t tensor.Tensor) string { return t.Name })
		if err != nil {
			return nil, err
		}
		var t tensor.Tensor
		switch b.layout.roles[first.Name] {
		case roleMask:
			t, err = stackRows(rows, 1, longest+int(rows[0].Shape[1])-batch[0].past)
		case roleRows:
			t, err = stackRows(rows, 0, 0)
		default:
			err = fmt.Errorf("state input %q was not held", first.Name)
		}
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", first.Name, err)
		}
		in = append(in, t)
	}
	var state []accel.HeldInput
	defer func() { releaseHeld(state) }()
	for _, first := range batch[0].state {
		rows, err := rowsOf(batch, first.Name, func(it *batchItem) []accel.HeldInput { return it.state },
			func(h accel.HeldInput) string { return h.Name })
		if err != nil {
			return nil, err
		}
		axis, ok := b.layout.lengths[first.Name]
		if !ok {
			return nil, fmt.Errorf("held input %q is not state", first.Name)
		}
		values := make([]accel.Held, len(rows))
		for i, r := range rows {
			values[i] = r.Value
		}
		v, err := b.stk.StackHeld(values, axis, longest)
		if err != nil {
			return nil, fmt.Errorf("state %q: %w", first.Name, err)
		}
		state = append(state, accel.HeldInput{Name: first.Name, Value: v})
	}
	keep := b.held.keep
	sampling := batch[0].sampling && b.held.logits != ""
	if sampling {
		keep = b.held.keepLogits
	}
	out, kept, err := b.stk.RunHeld(ctx, in, state, nil, keep)
	if err != nil {
		return nil, err
	}
	results := make([]*stepResult, len(batch))
	for i := range results {
		results[i] = &stepResult{}
	}
	if sampling {
		logits := kept[len(kept)-1]
		kept = kept[:len(kept)-1]
		if shape := logits.Shape(); len(shape) == 0 || shape[0] != int64(len(batch)) || logits.Bytes()%int64(len(batch)) != 0 {
			logits.Release()
			for _, v := range kept {
				v.Release()
			}
			return nil, fmt.Errorf("logits %s %v do not have the batch of %d first", logits.DType(), shape, len(batch))
		}
		left := new(atomic.Int32)
		left.Store(int32(len(batch)))
		for i, r := range results {
			r.logits = &batchRow{v: logits, i: i, n: len(batch), left: left}
		}
	}
	defer func() {
		for _, v := range kept {
			v.Release()
		}
	}()
	fail := func(err error) ([]*stepResult, error) {
		for _, r := range results {
			r.release()
		}
		return nil, err
	}
	for _, t := range out {
		for i, r := range results {
			row, err := cutRow(t, i, len(batch))
			if err != nil {
				return fail(fmt.Errorf("output %q: %w", t.Name, err))
			}
			r.out = append(r.out, row)
		}
	}
	for j, v := range kept {
		for i, it := range batch {
			c, err := b.stk.CutHeld(v, i, b.layout.lengths[keep[j]], longest-it.past)
			if err != nil {
				return fail(fmt.Errorf("state output %q: %w", keep[j], err))
			}
			results[i].next = append(results[i].next, accel.HeldInput{Name: b.held.ins[j], Value: c})
		}
	}
	return results, nil
}

// rowsDiffer compares each step's batched outputs, new state and logits with the
// same step run alone (it.out, it.next, it.logits): "" when every float differs by
// at most batchTolerance relative to the largest magnitude of its tensor and every
// other tensor is equal.
func rowsDiffer(batch []*batchItem, together []*stepResult) string {
	for i, it := range batch {
		if it.err != nil {
			return fmt.Sprintf("step %d alone: %v", i, it.err)
		}
		got, err := stepTensors(together[i])
		if err != nil {
			return fmt.Sprintf("step %d batched: %v", i, err)
		}
		want, err := stepTensors(&it.stepResult)
		if err != nil {
			return fmt.Sprintf("step %d alone: %v", i, err)
		}
		if len(got) != len(want) {
			return fmt.Sprintf("step %d: %d tensors batched, %d alone", i, len(got), len(want))
		}
		for _, w := range want {
			j := slices.IndexFunc(got, func(t tensor.Tensor) bool { return t.Name == w.Name })
			if j < 0 {
				return fmt.Sprintf("step %d: no batched %q", i, w.Name)
			}
			if d := tensorDiff(got[j], w); d != "" {
				return fmt.Sprintf("step %d, %q: %s", i, w.Name, d)
			}
		}
	}
	return ""
}

// stepTensors is all a step made, in Go memory: its outputs, its new state and its
// logits (named "logits").
func stepTensors(r *stepResult) ([]tensor.Tensor, error) {
	all := slices.Clone(r.out)
	for _, h := range r.next {
		t, err := h.Value.Tensor(h.Name)
		if err != nil {
			return nil, fmt.Errorf("state %q: %w", h.Name, err)
		}
		all = append(all, t)
	}
	if r.logits != nil {
		t, err := r.logits.Tensor("logits")
		if err != nil {
			return nil, fmt.Errorf("logits: %w", err)
		}
		all = append(all, t)
	}
	return all, nil
}

func tensorDiff(got, want tensor.Tensor) string {
	if !slices.Equal(got.Shape, want.Shape) || got.DType != want.DType {
		return fmt.Sprintf("%s %v, alone %s %v", got.DType, got.Shape, want.DType, want.Shape)
	}
	if want.DType != tensor.Float32 {
		if !slices.Equal(got.Data, want.Data) {
			return "values differ"
		}
		return ""
	}
	g, _ := got.Float32s()
	w, _ := want.Float32s()
	var scale, worst float64
	for k := range w {
		scale = max(scale, math.Abs(float64(w[k])))
		worst = max(worst, math.Abs(float64(g[k]-w[k])))
	}
	if worst > batchTolerance*max(scale, 1) {
		return fmt.Sprintf("differs by %g (largest magnitude %g)", worst, scale)
	}
	return ""
}
