package compress

import (
	"context"
	"fmt"
	"sort"

	"github.com/layermesh/layermesh/accel/tensor"
)

// channelStat is one tensor's per-channel mean and variance over the
// calibration set.
type channelStat struct{ mean, variance []float64 }

// readTensors are the tensors whose channels a Conv or Gemm reads (the ones
// compensation and the output criterion need statistics of), sorted.
func (p *pruner) readTensors() []string {
	need := map[string]bool{}
	for _, s := range p.slices {
		if s.compensate {
			need[s.tensor] = true
		}
	}
	names := make([]string, 0, len(need))
	for t := range need {
		names = append(names, t)
	}
	sort.Strings(names)
	return names
}

// compensate moves the mean contribution of every removed input channel into
// the bias of the layer that read it: a channel that is gone reads as its
// calibration-set mean instead of as 0. Without retraining this keeps the
// next layer's pre-activations centred where they were, which is most of
// what pruning costs in accuracy.
func (p *pruner) compensate(stats map[string]channelStat, removed map[int]bool) {
	for _, s := range p.slices {
		if s.compensate && len(p.keep(s.tensor, removed)) < len(p.space[s.tensor]) {
			p.moveIntoBias(s, stats[s.tensor].mean, removed)
		}
	}
}

// outputScores scores each class by the squared error its removal (with
// compensation) adds to the layers that read it: for every reader and every
// channel of the class, the channel's variance times the sum of the squared
// weights that read it.
func (p *pruner) outputScores(stats map[string]channelStat) map[int]float64 {
	scores := map[int]float64{}
	for _, s := range p.slices {
		if !s.compensate {
			continue
		}
		w, dims, _ := p.e.floatAt(p.e.graph.GetNode()[s.node].GetInput()[s.input])
		ch := int(dims[s.axis])
		inner := 1
		for _, d := range dims[s.axis+1:] {
			inner *= int(d)
		}
		sq := make([]float64, ch)
		for idx := range product(dims) {
			v := float64(w(int(idx)))
			sq[(int(idx)/inner)%ch] += v * v
		}
		for k, a := range p.space[s.tensor] {
			scores[p.find(a)] += stats[s.tensor].variance[k] * sq[k]
		}
	}
	return scores
}

// moveIntoBias adds, for each output o of s's node, the sum over the removed
// input channels c of mean[c] times the weights joining c to o.
func (p *pruner) moveIntoBias(s weightSlice, mean []float64, removed map[int]bool) {
	n := p.e.graph.GetNode()[s.node]
	w, dims, _ := p.e.floats(n.GetInput()[1])
	outAxis := 0
	if n.GetOpType() == "Gemm" {
		outAxis = 1 - s.axis
	}
	gone := make([]bool, dims[s.axis])
	for k, a := range p.space[s.tensor] {
		gone[k] = removed[p.find(a)]
	}
	stride := func(axis int) int {
		st := 1
		for _, d := range dims[axis+1:] {
			st *= int(d)
		}
		return st
	}
	inStride, outStride := stride(s.axis), stride(outAxis)
	delta := make([]float64, dims[outAxis])
	for idx, v := range w {
		if c := (idx / inStride) % int(dims[s.axis]); gone[c] {
			delta[(idx/outStride)%int(dims[outAxis])] += float64(v) * mean[c]
		}
	}
	bias := make([]float32, len(delta))
	if b, _, ok := p.e.floats(at(n.GetInput(), 2)); ok {
		copy(bias, b)
	}
	for o := range bias {
		bias[o] += float32(delta[o])
	}
	name := at(n.GetInput(), 2)
	if name == "" {
		name = n.GetInput()[1] + "/bias"
		for len(n.Input) < 3 {
			n.Input = append(n.Input, "")
		}
		// The new bias follows the layer's own pruned outputs.
		p.slices = append(p.slices, weightSlice{node: s.node, input: 2, axis: 0, tensor: n.GetOutput()[0]})
	}
	n.Input[2] = p.e.addInit(floatInit(name+"/compensated", []int64{int64(len(bias))}, bias))
}

// channelStats runs the model on the calibration set and returns each
// tensor's mean and variance along its channel axis.
func (p *pruner) channelStats(ctx context.Context, names []string, opts Options) (map[string]channelStat, error) {
	sums := make([][]float64, len(names))
	sqs := make([][]float64, len(names))
	counts := make([]float64, len(names))
	err := runExposed(ctx, p.e, names, opts, func(outs []tensor.Tensor) error {
		for i, o := range outs {
			vals, err := o.Float32s()
			axis := len(o.Shape) + p.axis[names[i]]
			if err != nil || axis < 0 || int(o.Shape[axis]) != len(p.space[names[i]]) {
				return fmt.Errorf("compress: prune: %q is %v, not %d channels on axis %d", names[i], o.Shape, len(p.space[names[i]]), axis)
			}
			ch := int(o.Shape[axis])
			inner := 1
			for _, d := range o.Shape[axis+1:] {
				inner *= int(d)
			}
			if sums[i] == nil {
				sums[i], sqs[i] = make([]float64, ch), make([]float64, ch)
			}
			for k, v := range vals {
				c := (k / inner) % ch
				sums[i][c] += float64(v)
				sqs[i][c] += float64(v) * float64(v)
			}
			counts[i] += float64(len(vals) / ch)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]channelStat, len(names))
	for i, t := range names {
		st := channelStat{mean: make([]float64, len(sums[i])), variance: make([]float64, len(sums[i]))}
		for c := range sums[i] {
			st.mean[c] = sums[i][c] / counts[i]
			st.variance[c] = max(sqs[i][c]/counts[i]-st.mean[c]*st.mean[c], 0)
		}
		out[t] = st
	}
	return out, nil
}
