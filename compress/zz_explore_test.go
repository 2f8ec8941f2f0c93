package compress

import (
	"path/filepath"
	"testing"
)

func TestExplorePrune(t *testing.T) {
	fashionTotal = 2000
	calib := writeCalibration(t, 8, 64)
	t.Logf("base %.2f", 100*accuracy(t, fashionModel))
	for _, global := range []bool{true} {
		for _, r := range []float64{0.1, 0.2, 0.3} {
			dst := filepath.Join(t.TempDir(), "c.onnx")
			rep, err := Compress(t.Context(), fashionModel, dst, Options{Prune: r, PruneGlobal: global, Backend: backend(t), CalibrationDir: calib})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("global %v %.2f: %.2f%% size %.3f %+v", global, r, 100*accuracy(t, dst), rep.Ratio(), rep.Pruned)
		}
	}
}
