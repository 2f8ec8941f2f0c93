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
// each session's own. Nothing waits to fill a batch: a run takes whatever steps are
// queued when the session comes free, so a lone session runs as before.
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

// batcherFor returns the stage's batcher, or nil when the runtime does not batch or
// the stage's inputs do not allow it.
func (r *StageRuntime) batcherFor(sess accel.Session, a StageAssignment) *stepBatcher {
	if r.cfg.MaxBatch < 2 {
		return nil
	}
	layout := layoutFor(sess, a.State)
	if layout == nil {
		return nil
	}
	return &stepBatcher{sess: sess, layout: layout, max: r.cfg.MaxBatch,
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
	inputs []tensor.Tensor
	past   int // the session's state length before the step
	steps  int // the tokens it runs: only steps of one length batch together
	out    []tensor.Tensor
	err    error
	done   chan struct{}
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
	sess   accel.Session
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
}

// batchCounters are a runtime's batching figures, shared by its stages.
type batchCounters struct{ runs, steps atomic.Uint64 }

// run queues a decode step and waits for its outputs. A ctx that ends while the
// step waits takes it out of the queue; one that ends during its batch's run
// returns at once and leaves the outputs unread.
func (b *stepBatcher) run(ctx context.Context, inputs []tensor.Tensor, past, steps int) ([]tensor.Tensor, error) {
	it := &batchItem{inputs: inputs, past: past, steps: steps, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, it)
	if b.runners < b.limit {
		b.runners++
		go b.loop(context.WithoutCancel(ctx))
	}
	b.mu.Unlock()
	select {
	case <-it.done:
		return it.out, it.err
	case <-ctx.Done():
		b.mu.Lock()
		b.queue = slices.DeleteFunc(b.queue, func(q *batchItem) bool { return q == it })
		b.mu.Unlock()
		return nil, ctx.Err()
	}
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
		var batch []*batchItem
		steps := b.queue[0].steps
		b.queue = slices.DeleteFunc(b.queue, func(it *batchItem) bool {
			take := len(batch) < b.max && it.steps == steps
			if take {
				batch = append(batch, it)
			}
			return take
		})
		b.mu.Unlock()
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
	outs, err := b.runTogether(ctx, batch)
	if err != nil {
		b.runEach(ctx, batch)
		if batch[0].err == nil {
			b.stop("a batched run failed where single steps succeed", err)
		}
		return
	}
	if !checked {
		// Until checked, the steps run alone too and answer with those outputs.
		b.runEach(ctx, batch)
		if d := rowsDiffer(batch, outs); d != "" {
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
		it.out, it.err = outs[i], nil
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

func (b *stepBatcher) runEach(ctx context.Context, batch []*batchItem) {
	for _, it := range batch {
		it.out, it.err = b.sess.Run(ctx, it.inputs, nil)
	}
}

// runTogether stacks the steps' inputs, runs them once and cuts the outputs back
// into each step's.
func (b *stepBatcher) runTogether(ctx context.Context, batch []*batchItem) ([][]tensor.Tensor, error) {
	longest := 0
	for _, it := range batch {
		longest = max(longest, it.past)
	}
	var in []tensor.Tensor
	for _, first := range batch[0].inputs {
		rows := make([]tensor.Tensor, len(batch))
		for i, it := range batch {
			j := slices.IndexFunc(it.inputs, func(t tensor.Tensor) bool { return t.Name == first.Name })
			if j < 0 {
				return nil, fmt.Errorf("step %d has no input %q", i, first.Name)
			}
			rows[i] = it.inputs[j]
		}
		var t tensor.Tensor
		var err error
		switch b.layout.roles[first.Name] {
		case roleState:
			t, err = stackPadded(rows, b.layout.lengths[first.Name], longest, func(i int) int { return longest - batch[i].past })
		case roleMask:
			t, err = stackPadded(rows, 1, longest+int(rows[0].Shape[1])-batch[0].past, func(i int) int { return longest - batch[i].past })
		default:
			t, err = stackPadded(rows, 0, 0, nil)
		}
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", first.Name, err)
		}
		in = append(in, t)
	}
	out, err := b.sess.Run(ctx, in, nil)
	if err != nil {
		return nil, err
	}
	outs := make([][]tensor.Tensor, len(batch))
	for _, t := range out {
		for i, it := range batch {
			var row tensor.Tensor
			if axis, ok := b.layout.lengths[t.Name]; ok {
				row, err = unpadRow(t, i, len(batch), axis, longest-it.past)
			} else {
				row, err = unpadRow(t, i, len(batch), -1, 0)
			}
			if err != nil {
				return nil, fmt.Errorf("output %q: %w", t.Name, err)
			}
			outs[i] = append(outs[i], row)
		}
	}
	return outs, nil
}

// stackPadded stacks rows (each with a first dimension of 1) along the first
// dimension. With axis > 0, each row's length along axis is padded to length with
// pad(i) zeros in front: a row's data lies at the end of its padded span.
func stackPadded(rows []tensor.Tensor, axis, length int, pad func(int) int) (tensor.Tensor, error) {
	first := rows[0]
	shape := slices.Clone(first.Shape)
	if len(shape) == 0 || first.DType == tensor.String {
		return tensor.Tensor{}, fmt.Errorf("%s tensor of shape %v does not stack", first.DType, shape)
	}
	if axis > 0 {
		shape[axis] = int64(length)
	}
	shape[0] = int64(len(rows))
	size := first.DType.Size()
	total, err := tensor.ByteSize(first.DType, shape)
	if err != nil {
		return tensor.Tensor{}, err
	}
	data := make([]byte, total)
	rowBytes := int(total) / len(rows)
	for i, r := range rows {
		if len(r.Shape) != len(shape) || r.Shape[0] != 1 || r.DType != first.DType {
			return tensor.Tensor{}, fmt.Errorf("row %d is %s %v, not like %s %v", i, r.DType, r.Shape, first.DType, first.Shape)
		}
		for d := 1; d < len(shape); d++ {
			if d != axis && r.Shape[d] != shape[d] {
				return tensor.Tensor{}, fmt.Errorf("row %d has shape %v, others %v", i, r.Shape, first.Shape)
			}
		}
		dst := data[i*rowBytes : (i+1)*rowBytes]
		if axis <= 0 {
			copy(dst, r.Data)
			continue
		}
		if int(r.Shape[axis])+pad(i) != length {
			return tensor.Tensor{}, fmt.Errorf("row %d: length %d with %d padding is not %d", i, r.Shape[axis], pad(i), length)
		}
		inner := size
		for _, d := range shape[axis+1:] {
			inner *= int(d)
		}
		outer := 1
		for _, d := range shape[1:axis] {
			outer *= int(d)
		}
		src, have := int(r.Shape[axis])*inner, length*inner
		for o := range outer {
			copy(dst[o*have+pad(i)*inner:(o+1)*have], r.Data[o*src:(o+1)*src])
		}
	}
	return tensor.Tensor{Name: first.Name, DType: first.DType, Shape: shape, Data: data}, nil
}

// unpadRow cuts row i of n out of a batched output; with axis > 0 it also drops the
// row's first pad positions along axis.
func unpadRow(t tensor.Tensor, i, n, axis, pad int) (tensor.Tensor, error) {
	if len(t.Shape) == 0 || t.Shape[0] != int64(n) || t.DType == tensor.String {
		return tensor.Tensor{}, fmt.Errorf("%s %v does not have the batch of %d first", t.DType, t.Shape, n)
	}
	rowBytes := len(t.Data) / n
	src := t.Data[i*rowBytes : (i+1)*rowBytes]
	shape := slices.Clone(t.Shape)
	shape[0] = 1
	if axis <= 0 {
		return tensor.Tensor{Name: t.Name, DType: t.DType, Shape: shape, Data: slices.Clone(src)}, nil
	}
	length := int(shape[axis])
	if pad > length {
		return tensor.Tensor{}, fmt.Errorf("%v has no %d padding positions on axis %d", t.Shape, pad, axis)
	}
	shape[axis] = int64(length - pad)
	inner := t.DType.Size()
	for _, d := range shape[axis+1:] {
		inner *= int(d)
	}
	outer := 1
	for _, d := range shape[1:axis] {
		outer *= int(d)
	}
	keep, have := (length-pad)*inner, length*inner
	data := make([]byte, 0, outer*keep)
	for o := range outer {
		data = append(data, src[o*have+pad*inner:(o+1)*have]...)
	}
	return tensor.Tensor{Name: t.Name, DType: t.DType, Shape: shape, Data: data}, nil
}

// rowsDiffer compares each step's batched outputs with the same step run alone
// (it.out): "" when every float differs by at most batchTolerance relative to the
// largest magnitude of its tensor and every other tensor is equal.
func rowsDiffer(batch []*batchItem, outs [][]tensor.Tensor) string {
	for i, it := range batch {
		if it.err != nil {
			return fmt.Sprintf("step %d alone: %v", i, it.err)
		}
		for _, want := range it.out {
			j := slices.IndexFunc(outs[i], func(t tensor.Tensor) bool { return t.Name == want.Name })
			if j < 0 {
				return fmt.Sprintf("step %d: no batched %q", i, want.Name)
			}
			if d := tensorDiff(outs[i][j], want); d != "" {
				return fmt.Sprintf("step %d, %q: %s", i, want.Name, d)
			}
		}
	}
	return ""
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
