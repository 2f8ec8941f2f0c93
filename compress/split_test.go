package compress

import (
	"path/filepath"
	"testing"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition"
	"github.com/layermesh/layermesh/partition/modelgen"
)

// A compressed model is still a model partition can cut: its stages, run as a
// chain, give the compressed whole's outputs.
func TestCompressedModelSplitsIntoStagesThatChainToTheWhole(t *testing.T) {
	src := gptModel(t, smallGPT)
	for _, mode := range []string{QuantInt8, QuantInt4, QuantDynamic} {
		t.Run(mode, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "q.onnx")
			if _, err := Compress(t.Context(), src, dst, Options{Quantize: mode}); err != nil {
				t.Fatal(err)
			}
			checkSplit(t, dst, map[string][]int64{modelgen.GPTInput: {2, 8}}, []tensor.Tensor{prompts(2, 8, smallGPT.Vocab, 5)}, 3)
		})
	}
}

// checkSplit cuts the model at path into k stages and checks the chain against
// the whole within 1e-4.
func checkSplit(t *testing.T, path string, shapes map[string][]int64, inputs []tensor.Tensor, k int) {
	t.Helper()
	m, err := partition.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := partition.Analyze(m, shapes)
	if err != nil {
		t.Fatalf("analyze: %v", err)
	}
	plan, err := partition.Plan(g, partition.UniformDevices(k, 1<<40, 1), partition.PlanOptions{Stages: k})
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	dir := t.TempDir()
	man, err := partition.Extract(m, g, plan, dir)
	if err != nil {
		t.Fatalf("extract: %v", err)
	}
	rep, err := partition.Verify(t.Context(), backend(t), path, man, dir, inputs)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if len(man.Stages) != k || rep.MaxAbs > 1e-4 {
		t.Errorf("%d stages (want %d), chain differs from the whole by %g (> 1e-4)", len(man.Stages), k, rep.MaxAbs)
	}
	t.Logf("%d stages, max abs difference %.3g", len(man.Stages), rep.MaxAbs)
}
