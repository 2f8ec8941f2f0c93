package compress

import (
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
)

// The Fashion-MNIST CNN (testdata/fashion_cnn.onnx, made by
// scripts/train_fashion_cnn.py) and Debian's dataset-fashion-mnist, which
// make setup installs.
const (
	fashionDir   = "/usr/share/datasets/fashion-mnist"
	fashionModel = "testdata/fashion_cnn.onnx"
)

// fashionTotal is how many test images accuracy runs on.
var (
	fashionTotal = 10000
)

// readIDX reads a gzipped IDX file (the MNIST format): big-endian dims, then
// uint8 data.
func readIDX(t testing.TB, name string) ([]byte, []int) {
	t.Helper()
	f, err := os.Open(filepath.Join(fashionDir, name))
	if err != nil {
		t.Fatalf("Fashion-MNIST (apt install dataset-fashion-mnist, or make setup): %v", err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 4 || data[2] != 0x08 {
		t.Fatalf("%s: not an IDX file of uint8", name)
	}
	ndim := int(data[3])
	dims := make([]int, ndim)
	size := 1
	for i := range dims {
		dims[i] = int(binary.BigEndian.Uint32(data[4+4*i:]))
		size *= dims[i]
	}
	body := data[4+4*ndim:]
	if len(body) != size {
		t.Fatalf("%s: %d bytes of data for dims %v", name, len(body), dims)
	}
	return body, dims
}

// fashionImages returns images [from, to) of a split as [n, 1, 28, 28]
// float32 pixels / 255 (what the model was trained on) and their labels.
func fashionImages(t testing.TB, split string, from, to int) (tensor.Tensor, []byte) {
	t.Helper()
	px, dims := readIDX(t, split+"-images-idx3-ubyte.gz")
	labels, _ := readIDX(t, split+"-labels-idx1-ubyte.gz")
	side := dims[1] * dims[2]
	vals := make([]float32, (to-from)*side)
	for i := range vals {
		vals[i] = float32(px[from*side+i]) / 255
	}
	return float32Tensor("image", []int64{int64(to - from), 1, int64(dims[1]), int64(dims[2])}, vals), labels[from:to]
}

// writeCalibration writes n samples of batch training images as .npy files.
func writeCalibration(t testing.TB, n, batch int) string {
	t.Helper()
	dir := t.TempDir()
	for i := range n {
		img, _ := fashionImages(t, "train", i*batch, (i+1)*batch)
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%03d.npy", i)))
		if err != nil {
			t.Fatal(err)
		}
		if err := tensor.WriteNPY(f, img); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// accuracy is the model's top-1 accuracy on the whole Fashion-MNIST test set.
func accuracy(t testing.TB, path string) float64 {
	t.Helper()
	ctx := t.Context()
	s, err := backend(t).Open(ctx, path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer s.Close()
	total, batch := fashionTotal, 500
	right := 0
	for from := 0; from < total; from += batch {
		img, labels := fashionImages(t, "t10k", from, from+batch)
		out, err := s.Run(ctx, []tensor.Tensor{img}, nil)
		if err != nil {
			t.Fatalf("run %s: %v", path, err)
		}
		logits, _ := out[0].Float32s()
		for i := range batch {
			if argmax32(logits[i*10:(i+1)*10]) == int(labels[i]) {
				right++
			}
		}
	}
	return float64(right) / float64(total)
}

// fashionPrune is the filter pruning the Fashion-MNIST CNN is held to (and
// BenchmarkFashionCNN times as prune-30 and prune-50): per layer group by
// filter L1 norm, survivors rounded to multiples of 16 channels, the removed
// channels' calibration-set means moved into the next layers' biases. Nothing
// is fine-tuned after pruning.
func fashionPrune(ratio float64, calib string) Options {
	return Options{Prune: ratio, CalibrationDir: calib}
}

// The trained Fashion-MNIST CNN on its 10,000 test images: static int8 stays
// within half a point of float32, and 30% filter pruning (fashionPrune) within
// two points. Nothing is fine-tuned after pruning: it holds because the model
// was trained with a network-slimming penalty on its BatchNorm scales
// (scripts/train_fashion_cnn.py) that drives half of each layer group's
// channels to a near-constant output, which L1 pruning removes and
// compensation moves into the next biases. Dynamic int8, 50% pruning and the
// global pruning variants (by L1 norm, by output error) are measured and
// logged; each pruned model must still load, run and be smaller.
func TestFashionMNISTAccuracyAfterCompression(t *testing.T) {
	calib := writeCalibration(t, 8, 64)
	base := accuracy(t, fashionModel)
	t.Logf("float32: %.2f%%", 100*base)
	static := Options{Quantize: QuantStatic, CalibrationDir: calib}
	global := func(r float64, criterion string) Options {
		return Options{Prune: r, PruneGlobal: true, PruneCriterion: criterion, CalibrationDir: calib}
	}
	cases := []struct {
		name    string
		opts    Options
		maxDrop float64 // in points; < 0: measured and logged only
	}{
		{"static int8 minmax", static, 0.5},
		{"static int8 percentile", Options{Quantize: QuantStatic, CalibrationDir: calib, CalibrationMethod: "percentile"}, 0.5},
		{"dynamic int8", Options{Quantize: QuantDynamic}, -1},
		{"prune 30% l1 per layer", fashionPrune(0.3, calib), 2},
		{"prune 50% l1 per layer", fashionPrune(0.5, calib), -1},
		{"prune 30% l1 global", global(0.3, CriterionL1), -1},
		{"prune 30% output global", global(0.3, CriterionOutput), -1},
		{"prune 50% output global", global(0.5, CriterionOutput), -1},
	}
	for _, tc := range cases {
		dst := filepath.Join(t.TempDir(), "c.onnx")
		tc.opts.Backend = backend(t)
		rep, err := Compress(t.Context(), fashionModel, dst, tc.opts)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		acc := accuracy(t, dst)
		drop := 100 * (base - acc)
		t.Logf("%s: %.2f%% (%+.2f points), size %.3fx, %d rewritten, %d kept, %d pruned groups", tc.name, 100*acc, -drop, rep.Ratio(), len(rep.Rewritten), len(rep.Kept), len(rep.Pruned))
		if tc.maxDrop >= 0 && drop > tc.maxDrop {
			t.Errorf("%s: accuracy %.2f%% is %.2f points below float32's %.2f%% (allowed %.1f)", tc.name, 100*acc, drop, 100*base, tc.maxDrop)
		}
		if tc.opts.Prune > 0 && (len(rep.Pruned) == 0 || rep.Ratio() >= 1) {
			t.Errorf("%s: nothing pruned (%+v, size %.3fx)", tc.name, rep.Pruned, rep.Ratio())
		}
	}
}

// The compressed Fashion-MNIST CNN (static int8, and 30% pruning) still cuts
// into stages that chain to the compressed whole.
func TestFashionCNNCompressedSplitsIntoStages(t *testing.T) {
	calib := writeCalibration(t, 2, 16)
	img, _ := fashionImages(t, "t10k", 0, 4)
	for name, opts := range map[string]Options{
		"static int8": {Quantize: QuantStatic, CalibrationDir: calib},
		"prune 30%":   fashionPrune(0.3, calib),
	} {
		dst := filepath.Join(t.TempDir(), "c.onnx")
		opts.Backend = backend(t)
		if _, err := Compress(t.Context(), fashionModel, dst, opts); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checkSplit(t, dst, map[string][]int64{"image": {4, 1, 28, 28}}, []tensor.Tensor{img}, 3)
	}
}
