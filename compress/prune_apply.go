package compress

import (
	"fmt"
	"sort"
)

// prune removes ratio of the prunable channels of every coupled group of
// layers, those of least L1 norm, and returns how many channel classes it removed.
func prune(e *editor, ratio float64, rep *Report) int {
	p := newPruner(e)
	p.analyse()
	removed := p.choose(ratio, rep)
	if len(removed) == 0 {
		return 0
	}
	p.apply(removed)
	return len(removed)
}

// choose picks the classes to remove: in each group of coupled layers,
// floor(ratio * classes) of the unblocked ones with the smallest score (the sum
// over the class's channels of their L1 norm relative to their layer's mean).
func (p *pruner) choose(ratio float64, rep *Report) map[int]bool {
	classes := map[int][]int{}
	for a := range p.parent {
		classes[p.find(a)] = append(classes[p.find(a)], a)
	}
	// Layers coupled through any class form one group.
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
	mean := make([]float64, len(p.producers))
	for i, pr := range p.producers {
		for _, v := range pr.norms {
			mean[i] += v / float64(len(pr.norms))
		}
	}
	type scored struct {
		root    int
		score   float64
		blocked bool
	}
	byComp := map[int][]scored{}
	for _, atoms := range classes {
		for _, a := range atoms {
			comp[findComp(p.atomProd[a])] = findComp(p.atomProd[atoms[0]])
		}
	}
	for root, atoms := range classes {
		sc := scored{root: root}
		for _, a := range atoms {
			sc.blocked = sc.blocked || p.blocked[a]
			if m := mean[p.atomProd[a]]; m > 0 {
				sc.score += p.producers[p.atomProd[a]].norms[p.atomIdx[a]] / m
			}
		}
		c := findComp(p.atomProd[root])
		byComp[c] = append(byComp[c], sc)
	}
	removed := map[int]bool{}
	comps := make([]int, 0, len(byComp))
	for c := range byComp {
		comps = append(comps, c)
	}
	sort.Ints(comps)
	for _, c := range comps {
		list := byComp[c]
		var free []scored
		for _, sc := range list {
			if !sc.blocked {
				free = append(free, sc)
			}
		}
		var layers []string
		for i, pr := range p.producers {
			if findComp(i) == c {
				layers = append(layers, pr.name)
			}
		}
		if len(free) == 0 {
			for i := range p.producers {
				if findComp(i) == c {
					rep.kept(p.e.graph.GetNode()[p.producers[i].node], "its output channels reach an op pruning cannot slice (or a graph output)")
				}
			}
			continue
		}
		k := min(int(ratio*float64(len(list))), len(free))
		if k >= len(list) {
			k = len(list) - 1
		}
		sort.Slice(free, func(i, j int) bool {
			if free[i].score != free[j].score {
				return free[i].score < free[j].score
			}
			return free[i].root < free[j].root
		})
		for _, sc := range free[:k] {
			removed[sc.root] = true
		}
		if k > 0 {
			rep.Pruned = append(rep.Pruned, PrunedGroup{Layers: layers, Channels: len(list), Removed: k})
		}
	}
	return removed
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
