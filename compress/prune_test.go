package compress

import (
	"path/filepath"
	"testing"

	"github.com/layermesh/layermesh/partition/modelgen"
)

func TestPruningShrinksResNetGPTAndStaysValid(t *testing.T) {
	resnet, err := modelgen.ResNet(modelgen.ResNetConfig{Width: 16, Blocks: []int{1, 1}, ImageSize: 16, Classes: 10, Stem: 1, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	models := []struct {
		name   string
		path   string
		shapes map[string][]int64
	}{
		{"resnet", writeModel(t, resnet, "resnet.onnx"), map[string][]int64{modelgen.ResNetInput: {2, 3, 16, 16}}},
		{"gpt", gptModel(t, smallGPT), map[string][]int64{modelgen.GPTInput: {2, 8}}},
	}
	for _, m := range models {
		for _, ratio := range []float64{0.3, 0.5, 0.95} {
			dst := filepath.Join(t.TempDir(), "p.onnx")
			rep, err := Compress(t.Context(), m.path, dst, Options{Prune: ratio, Backend: backend(t), Verify: 2, InputShapes: m.shapes})
			if err != nil {
				t.Fatalf("%s %.2f: %v", m.name, ratio, err)
			}
			removed := 0
			for _, g := range rep.Pruned {
				removed += g.Removed
			}
			t.Logf("%s prune %.2f: %d groups, %d channels removed, size %.3fx, output cosine %.4f; kept %d layers",
				m.name, ratio, len(rep.Pruned), removed, rep.Ratio(), rep.Verify.MinCosine, len(rep.Kept))
			if removed == 0 || rep.Ratio() >= 1 {
				t.Errorf("%s %.2f: nothing pruned: %+v", m.name, ratio, rep.Pruned)
			}
			checkSplit(t, dst, m.shapes, nil, 2)
		}
	}
}
