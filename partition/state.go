package partition

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrStatePair means a declared state pair does not name a graph input and a graph
// output of the same type.
var ErrStatePair = errors.New("invalid state pair")

// StatePair is a model input and output that carry a session's state from one run to
// the next: the output of step t is fed back as the input of step t+1 (a decoder's
// past keys and values, an RNN's hidden state). The stage that reads In writes Out,
// and its node keeps the value between steps; no cut carries either.
type StatePair struct {
	In  string `json:"in"`
	Out string `json:"out"`
}

// stateRules are the naming conventions a state pair is detected by: an input with
// the prefix (or the exact name, when the prefix has no dot) pairs with the output
// named by swapping in the replacement. Optimum's decoder layout, the LSTM's h/c of
// ONNX exporters, and a plain state/stateN.
var stateRules = []struct{ in, out string }{
	{"past_key_values.", "present."},
	{"past_key_values_", "present_"},
	{"h0", "hn"},
	{"c0", "cn"},
	{"initial_h", "Y_h"},
	{"initial_c", "Y_c"},
	{"state", "stateN"},
}

// DetectStatePairs pairs inputs with outputs by the naming conventions of stateRules,
// in the order of inputs. A model without such names has none.
func DetectStatePairs(inputs, outputs []string) []StatePair {
	var out []StatePair
	for _, in := range inputs {
		for _, r := range stateRules {
			var want string
			switch {
			case strings.HasSuffix(r.in, ".") || strings.HasSuffix(r.in, "_"):
				rest, ok := strings.CutPrefix(in, r.in)
				if !ok || rest == "" {
					continue
				}
				want = r.out + rest
			case in == r.in:
				want = r.out
			default:
				continue
			}
			if slices.Contains(outputs, want) {
				out = append(out, StatePair{In: in, Out: want})
				break
			}
		}
	}
	return out
}

// ParseStatePair reads "IN=OUT", as `--state` gives it.
func ParseStatePair(s string) (StatePair, error) {
	in, out, ok := strings.Cut(s, "=")
	if !ok || in == "" || out == "" || strings.Contains(out, "=") {
		return StatePair{}, fmt.Errorf("%w: %q (want IN=OUT)", ErrStatePair, s)
	}
	return StatePair{In: in, Out: out}, nil
}

// SetState records the model's state pairs (nil: detect them by name) and makes every
// cut that would separate a pair's reads and writes invalid: a pair's input, every
// node from its first reader to the producer of its output, and every reader of that
// output stay in one stage. The pair's input never travels, so it stops counting in
// the bytes of the cuts before its reader.
func (g *Graph) SetState(pairs []StatePair) error {
	if pairs == nil {
		pairs = DetectStatePairs(g.Inputs, g.Outputs)
	}
	for _, p := range pairs {
		in, out := g.Values[p.In], g.Values[p.Out]
		switch {
		case in == nil || in.Kind != KindGraphInput:
			return fmt.Errorf("%w: %q is not a graph input", ErrStatePair, p.In)
		case out == nil || !slices.Contains(g.Outputs, p.Out) || out.Producer < 0:
			return fmt.Errorf("%w: %q is not an output a node of the graph computes", ErrStatePair, p.Out)
		case in.DType != 0 && out.DType != 0 && in.DType != out.DType:
			return fmt.Errorf("%w: %q is %v, %q is %v", ErrStatePair, p.In, in.DType, p.Out, out.DType)
		}
		lo, hi := out.Producer, out.Producer
		for _, c := range slices.Concat(in.Consumers, out.Consumers) {
			lo, hi = min(lo, c), max(hi, c)
		}
		for c := lo + 1; c <= hi; c++ {
			if g.Cuts[c].Valid {
				g.Cuts[c].Valid = false
				g.Cuts[c].Reason = fmt.Sprintf("inside state pair %s -> %s", p.In, p.Out)
			}
		}
		g.dropCrossing(p.In)
	}
	g.State = pairs
	return nil
}

// dropCrossing takes name out of every cut's crossing list and bytes.
func (g *Graph) dropCrossing(name string) {
	v := g.Values[name]
	for i := range g.Cuts {
		c := &g.Cuts[i]
		if k := slices.Index(c.Crossing, name); k >= 0 {
			c.Crossing = slices.Delete(c.Crossing, k, k+1)
			c.Bytes -= v.Bytes
		}
	}
}

// stageState returns the pairs whose input stage sm reads.
func (g *Graph) stageState(sm *StageManifest) []StatePair {
	var out []StatePair
	for _, p := range g.State {
		if slices.ContainsFunc(sm.Inputs, func(t TensorSpec) bool { return t.Name == p.In }) {
			out = append(out, p)
		}
	}
	return out
}

// ContextLen is a generative model's context length: the rows of the table that the
// position_ids input indexes (a Gather of a weight by position_ids, as GPT-2-style
// models embed positions). 0 when the model has no such table.
func (g *Graph) ContextLen() int {
	for _, nd := range g.Nodes {
		in := nd.Proto.GetInput()
		if nd.Proto.GetOpType() != "Gather" || len(in) < 2 || in[1] != "position_ids" {
			continue
		}
		if v := g.Values[in[0]]; v != nil && v.Kind == KindWeight && len(v.Shape) >= 1 && v.Shape[0] > 0 {
			return int(v.Shape[0])
		}
	}
	return 0
}
