package compress

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
)

// randomImages makes n calibration samples of [batch, 3, side, side] in [0, 1).
func randomImages(n, batch, side int, seed uint64) [][]tensor.Tensor {
	r := rand.New(rand.NewPCG(seed, 9))
	var out [][]tensor.Tensor
	for range n {
		v := make([]float32, batch*3*side*side)
		for i := range v {
			v[i] = r.Float32()
		}
		out = append(out, []tensor.Tensor{float32Tensor(modelgen.ResNetInput, []int64{int64(batch), 3, int64(side), int64(side)}, v)})
	}
	return out
}

func TestStaticInt8ResNetLoadsRunsAndSplits(t *testing.T) {
	m, err := modelgen.ResNet(modelgen.ResNetTiny)
	if err != nil {
		t.Fatal(err)
	}
	src := writeModel(t, m, "resnet.onnx")
	calib := randomImages(4, 2, 16, 1)
	for _, method := range []string{"minmax", "percentile"} {
		dst := filepath.Join(t.TempDir(), "q.onnx")
		rep, err := Compress(t.Context(), src, dst, Options{Quantize: QuantStatic, Calibration: calib, CalibrationMethod: method,
			Backend: backend(t), Verify: 6})
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		t.Logf("kept: %v", rep.Kept)
		t.Logf("%s: %d rewritten, %d kept, %d tensors calibrated, size %.3fx, error %.3g of the output scale, cosine %.5f",
			method, len(rep.Rewritten), len(rep.Kept), rep.Calibration.Tensors, rep.Ratio(), rep.Verify.MaxRel, rep.Verify.MinCosine)
		if len(rep.Rewritten) == 0 || rep.Verify.MinCosine < 0.99 {
			t.Errorf("%s: rewrote %v, cosine %.4f", method, rep.Rewritten, rep.Verify.MinCosine)
		}
		checkSplit(t, dst, map[string][]int64{modelgen.ResNetInput: {2, 3, 16, 16}}, calib[0], 2)
	}
}

func TestCalibrationSetOfTheWrongShapeIsRefused(t *testing.T) {
	m, err := modelgen.ResNet(modelgen.ResNetTiny)
	if err != nil {
		t.Fatal(err)
	}
	src := writeModel(t, m, "resnet.onnx")
	calibDir := t.TempDir()
	bad := randomImages(1, 1, 12, 1)[0][0] // 12x12 where the model takes 16x16
	f, err := os.Create(filepath.Join(calibDir, "0.npy"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tensor.WriteNPY(f, bad); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for name, opts := range map[string]Options{
		"folder":    {Quantize: QuantStatic, CalibrationDir: calibDir, Backend: backend(t)},
		"in memory": {Quantize: QuantStatic, Calibration: [][]tensor.Tensor{{bad}}, Backend: backend(t)},
		"two inputs": {Quantize: QuantStatic, Calibration: [][]tensor.Tensor{append(randomImages(1, 1, 16, 1)[0], randomImages(1, 1, 16, 1)[0]...)},
			Backend: backend(t)},
	} {
		dir := t.TempDir()
		_, err := Compress(t.Context(), src, filepath.Join(dir, "q.onnx"), opts)
		if !errors.Is(err, ErrCalibration) {
			t.Errorf("%s: %v, want ErrCalibration", name, err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: wrote %v", name, ents)
		}
		t.Logf("%s: %v", name, err)
	}
}

// A KServe v2 JSON request is a calibration sample too.
func TestCalibrationReadsKServeRequests(t *testing.T) {
	dir := t.TempDir()
	img := randomImages(1, 1, 16, 3)[0][0]
	vals, _ := img.Float32s()
	body := `{"inputs":[{"name":"image","shape":[1,3,16,16],"datatype":"FP32","data":` + strings.Join(strings.Fields(fmt.Sprint(vals)), ",") + `}]}`
	if err := os.WriteFile(filepath.Join(dir, "req.json"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	set, err := LoadCalibration(dir, []string{"image"})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := set[0][0].Float32s()
	if len(set) != 1 || len(got) != len(vals) || got[5] != vals[5] {
		t.Fatalf("read %d samples, %d values", len(set), len(got))
	}
	if _, err := LoadCalibration(dir, []string{"pixels"}); !errors.Is(err, ErrCalibration) {
		t.Errorf("request without the model's input: %v, want ErrCalibration", err)
	}
}
