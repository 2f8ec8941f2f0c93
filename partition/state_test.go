package partition

import (
	"slices"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/partition/modelgen"
)

// TestSplitGPTWithPastKeepsStateInStage: a with-past GPT split into 2, 3 and 4
// stages gives the whole model's logits and present tensors; each state pair is
// owned by exactly one stage, which reads its input and writes its output, and no
// cut carries a state tensor.
func TestSplitGPTWithPastKeepsStateInStage(t *testing.T) {
	cfg := modelgen.GPTTiny
	cfg.Layers, cfg.WithPast = 4, true
	path := writeGenerated(t, cfg, t.TempDir())
	inputs, err := cfg.ExampleInputs(1, 6, 3)
	if err != nil {
		t.Fatal(err)
	}
	// Sizes are planned for a past of 3 (the analysis takes no zero dims); the
	// chain runs a prefill step, past 0.
	shapes := map[string][]int64{}
	for _, in := range inputs {
		shapes[in.Name] = slices.Clone(in.Shape)
		if strings.HasPrefix(in.Name, "past_key_values.") {
			shapes[in.Name][2] = 3
		}
	}
	shapes[modelgen.GPTAttentionMask] = []int64{1, 9}
	checkSplits(t, path, shapes, inputs, []int{2, 3, 4})

	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, shapes)
	if err != nil {
		t.Fatal(err)
	}
	if g.ContextLen() != cfg.Context {
		t.Errorf("context length %d, want %d", g.ContextLen(), cfg.Context)
	}
	if len(g.State) != 2*cfg.Layers {
		t.Fatalf("detected %d state pairs, want %d: %v", len(g.State), 2*cfg.Layers, g.State)
	}
	isState := map[string]bool{}
	for _, p := range g.State {
		isState[p.In], isState[p.Out] = true, true
	}
	for _, c := range g.Cuts {
		if !c.Valid {
			continue
		}
		for _, name := range c.Crossing {
			if isState[name] {
				t.Errorf("valid cut %d carries state tensor %s", c.Position, name)
			}
		}
	}
	for _, k := range []int{2, 3, 4} {
		p, err := Plan(g, UniformDevices(k, 1<<40, 1e9), PlanOptions{Stages: k})
		if err != nil {
			t.Fatal(err)
		}
		man, err := Extract(m, g, p, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		owner := map[string]int{}
		for _, s := range man.Stages {
			for _, sp := range s.State {
				if prev, dup := owner[sp.In]; dup {
					t.Errorf("%d stages: %s owned by stages %d and %d", k, sp.In, prev, s.Index)
				}
				owner[sp.In] = s.Index
				hasIn := slices.ContainsFunc(s.Inputs, func(ts TensorSpec) bool { return ts.Name == sp.In })
				hasOut := slices.ContainsFunc(s.Outputs, func(ts TensorSpec) bool { return ts.Name == sp.Out })
				if !hasIn || !hasOut {
					t.Errorf("%d stages: stage %d owns %v but reads it %v, writes it %v", k, s.Index, sp, hasIn, hasOut)
				}
			}
			for _, in := range s.Inputs {
				if in.From >= 0 && (strings.HasPrefix(in.Name, "present.") || strings.HasPrefix(in.Name, "past_key_values.")) {
					t.Errorf("%d stages: stage %d receives state tensor %s from stage %d", k, s.Index, in.Name, in.From)
				}
			}
		}
		if len(owner) != len(g.State) || len(man.State) != len(g.State) {
			t.Errorf("%d stages: %d of %d pairs owned, manifest lists %d", k, len(owner), len(g.State), len(man.State))
		}
	}
}

func TestStatePairDetectionAndDeclaration(t *testing.T) {
	got := DetectStatePairs(
		[]string{"input_ids", "past_key_values.0.key", "past_key_values.0.value", "h0", "state", "past_key_values.1.key"},
		[]string{"logits", "present.0.key", "present.0.value", "hn", "stateN"})
	want := []StatePair{{"past_key_values.0.key", "present.0.key"}, {"past_key_values.0.value", "present.0.value"}, {"h0", "hn"}, {"state", "stateN"}}
	if !slices.Equal(got, want) {
		t.Errorf("detected %v, want %v", got, want)
	}
	if p, err := ParseStatePair("mem_in=mem_out"); err != nil || p != (StatePair{"mem_in", "mem_out"}) {
		t.Errorf("parse: %v %v", p, err)
	}
	for _, bad := range []string{"", "a", "=b", "a=", "a=b=c"} {
		if _, err := ParseStatePair(bad); err == nil {
			t.Errorf("ParseStatePair(%q) accepted", bad)
		}
	}
}
