package compress

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/layermesh/layermesh/partition"
)

// prune removes opts.Prune of the prunable channels of every coupled group of
// layers (or of the model, with PruneGlobal), the least important by
// opts.PruneCriterion, and returns how many channel classes it removed. With
// a calibration set and a backend, the removed channels' mean contributions
// move into the next layers' biases.
func prune(ctx context.Context, e *editor, opts Options, rep *Report) (int, error) {
	p := newPruner(e)
	p.analyse()
	var stats map[string]channelStat
	if opts.Backend != nil && len(opts.Calibration) > 0 {
		var err error
		if stats, err = p.channelStats(ctx, p.readTensors(), opts); err != nil {
			return 0, err
		}
	}
	var scores map[int]float64
	if opts.PruneCriterion == CriterionOutput {
		scores = p.outputScores(stats)
	}
	removed := p.choose(opts.Prune, opts.PruneGlobal, scores, rep)
	if len(removed) == 0 {
		return 0, nil
	}
	if stats != nil {
		p.compensate(stats, removed)
	}
	p.apply(removed)
	return len(removed), nil
}

// pruneInSteps prunes m in opts.PruneSteps global steps (one step per layer
// or without calibration) and merges the steps' reports per group of layers.
func pruneInSteps(ctx context.Context, m *partition.Model, opts Options, rep *Report) (int, error) {
	steps := 1
	if opts.PruneGlobal && opts.Backend != nil && len(opts.Calibration) > 0 {
		steps = cmp.Or(opts.PruneSteps, 8)
	}
	step := opts
	step.Prune = 1 - math.Pow(1-opts.Prune, 1/float64(steps))
	total := 0
	var pruned []PrunedGroup
	for range steps {
		e := newEditor(m.Proto)
		stepRep := &Report{}
		n, err := prune(ctx, e, step, stepRep)
		if err != nil {
			return 0, err
		}
		e.finish()
		total += n
		pruned = mergePruned(pruned, stepRep.Pruned)
		if rep.Kept == nil {
			rep.Kept = stepRep.Kept
		}
		if n == 0 {
			break
		}
	}
	rep.Pruned = append(rep.Pruned, pruned...)
	return total, nil
}

// mergePruned adds a step's groups to the earlier steps': a group keeps the
// channel count it had before the first step and sums what each step removed.
func mergePruned(into, step []PrunedGroup) []PrunedGroup {
	for _, g := range step {
		key := strings.Join(g.Layers, "\x00")
		i := slices.IndexFunc(into, func(h PrunedGroup) bool { return strings.Join(h.Layers, "\x00") == key })
		if i < 0 {
			into = append(into, g)
			continue
		}
		into[i].Removed += g.Removed
	}
	return into
}

// scoredClass is one class of coupled channels: removed together or not at all.
type scoredClass struct {
	root int
	// score sums the class's channels' L1 norms, each relative to its layer's
	// mean, so layers of different scales compare; or, by CriterionOutput, it
	// is the output error removing the class adds.
	score   float64
	blocked bool
}

// pruneGroup is a set of layers coupled through their channel classes.
type pruneGroup struct {
	layers []int // producer indexes
	// classes and, of them, the free (unblocked) ones, least important first.
	classes, free []scoredClass
}

// groups partitions the channel classes into groups of coupled layers.
func (p *pruner) groups(scores map[int]float64) []*pruneGroup {
	classes := map[int][]int{}
	for a := range p.parent {
		classes[p.find(a)] = append(classes[p.find(a)], a)
	}
	comp := make([]int, len(p.producers))
	for i := range comp {
		comp[i] = i
	}
	findComp := func(i int) int {
		for comp[i] != i {
			i = comp[i]
		}
		return i
	}
	for _, atoms := range classes {
		for _, a := range atoms {
			comp[findComp(p.atomProd[a])] = findComp(p.atomProd[atoms[0]])
		}
	}
	mean := make([]float64, len(p.producers))
	for i, pr := range p.producers {
		for _, v := range pr.norms {
			mean[i] += v / float64(len(pr.norms))
		}
	}
	byComp := map[int]*pruneGroup{}
	var out []*pruneGroup
	for i := range p.producers {
		c := findComp(i)
		if byComp[c] == nil {
			byComp[c] = &pruneGroup{}
			out = append(out, byComp[c])
		}
		byComp[c].layers = append(byComp[c].layers, i)
	}
	for root, atoms := range classes {
		sc := scoredClass{root: root}
		for _, a := range atoms {
			sc.blocked = sc.blocked || p.blocked[a]
			if m := mean[p.atomProd[a]]; m > 0 {
				sc.score += p.producers[p.atomProd[a]].norms[p.atomIdx[a]] / m
			}
		}
		if scores != nil {
			sc.score = scores[root]
		}
		g := byComp[findComp(p.atomProd[root])]
		g.classes = append(g.classes, sc)
		if !sc.blocked {
			g.free = append(g.free, sc)
		}
	}
	for _, g := range out {
		sort.Slice(g.free, func(i, j int) bool {
			if g.free[i].score != g.free[j].score {
				return g.free[i].score < g.free[j].score
			}
			return g.free[i].root < g.free[j].root
		})
	}
	return out
}

// choose picks the classes to remove. Per layer, each group loses
// floor(ratio * classes) of its least important free classes; globally, the
// least important free classes of the whole model go until ratio of all the
// prunable classes are gone. Every group keeps at least one class.
func (p *pruner) choose(ratio float64, global bool, scores map[int]float64, rep *Report) map[int]bool {
	groups := p.groups(scores)
	take := make([]int, len(groups))
	total := 0
	type pick struct {
		group int
		sc    scoredClass
	}
	var pool []pick
	for gi, g := range groups {
		if len(g.free) == 0 {
			for _, pi := range g.layers {
				rep.kept(p.e.graph.GetNode()[p.producers[pi].node], "its output channels reach an op pruning cannot slice (or a graph output)")
			}
			continue
		}
		total += len(g.classes)
		take[gi] = min(alignedRemoval(len(g.classes), ratio), len(g.free), len(g.classes)-1)
		for _, sc := range g.free {
			pool = append(pool, pick{gi, sc})
		}
	}
	if global {
		sort.SliceStable(pool, func(i, j int) bool { return pool[i].sc.score < pool[j].sc.score })
		clear(take)
		for n, want := 0, int(ratio*float64(total)); n < want && len(pool) > 0; pool = pool[1:] {
			g := pool[0].group
			if take[g] < len(groups[g].classes)-1 {
				take[g]++
				n++
			}
		}
	}
	removed := map[int]bool{}
	for gi, g := range groups {
		for _, sc := range g.free[:take[gi]] {
			removed[sc.root] = true
		}
		if take[gi] > 0 {
			var names []string
			for _, pi := range g.layers {
				names = append(names, p.producers[pi].name)
			}
			rep.Pruned = append(rep.Pruned, PrunedGroup{Layers: names, Channels: len(g.classes), Removed: take[gi]})
		}
	}
	return removed
}

// channelAlign is the multiple per-layer pruning rounds a group's surviving
// channel count to: ONNX Runtime's blocked convolution kernels (NCHWc) take
// channel counts in multiples of 16 on AVX-512, and a layer left with another
// count falls back to a path slower than the unpruned layer (measured on the
// Fashion-MNIST CNN: 24 channels where 32 were ran the model 2x slower).
const channelAlign = 16

// alignedRemoval is how many of n channels per-layer pruning at ratio removes:
// the survivors rounded to the nearest multiple of channelAlign (at least
// one), when n is itself a multiple.
func alignedRemoval(n int, ratio float64) int {
	k := int(ratio * float64(n))
	if n%channelAlign != 0 || n <= channelAlign {
		return k
	}
	keep := int(math.Round(float64(n-k)/channelAlign)) * channelAlign
	return n - max(keep, channelAlign)
}

// keep returns the positions of t's channels that survive.
func (p *pruner) keep(t string, removed map[int]bool) []int {
	var out []int
	for k, a := range p.space[t] {
		if !removed[p.find(a)] {
			out = append(out, k)
		}
	}
	return out
}

// apply slices every recorded weight, writes the sliced copies as new
// initializers (a weight read elsewhere keeps its original), and fixes the
// group attribute of depthwise convolutions.
func (p *pruner) apply(removed map[int]bool) {
	type key struct{ node, input int }
	var order []key
	byKey := map[key][]weightSlice{}
	for _, s := range p.slices {
		k := key{s.node, s.input}
		if _, ok := byKey[k]; !ok {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], s)
	}
	nodes := p.e.graph.GetNode()
	for _, k := range order {
		in := nodes[k.node].GetInput()
		vals, dims, _ := p.e.floats(in[k.input])
		changed := false
		for _, s := range byKey[k] {
			kept := p.keep(s.tensor, removed)
			if len(kept) != int(dims[s.axis]) {
				vals, dims = sliceAxis(vals, dims, s.axis, kept)
				changed = true
			}
		}
		if changed {
			in[k.input] = p.e.addInit(floatInit(fmt.Sprintf("%s/pruned", in[k.input]), dims, vals))
		}
	}
	for _, i := range p.groupAttr {
		n := nodes[i]
		g := int64(len(p.keep(n.GetInput()[0], removed)))
		for _, a := range n.GetAttribute() {
			if a.GetName() == "group" {
				a.I = &g
			}
		}
	}
	for t := range p.space {
		p.e.staleInfo[t] = true
	}
}

// sliceAxis keeps the given positions of axis.
func sliceAxis(vals []float32, dims []int64, axis int, keep []int) ([]float32, []int64) {
	inner := 1
	for _, d := range dims[axis+1:] {
		inner *= int(d)
	}
	n := int(dims[axis])
	outer := len(vals) / (n * inner)
	out := make([]float32, 0, outer*len(keep)*inner)
	for o := range outer {
		for _, k := range keep {
			base := (o*n + k) * inner
			out = append(out, vals[base:base+inner]...)
		}
	}
	nd := append([]int64(nil), dims...)
	nd[axis] = int64(len(keep))
	return out, nd
}
