package modelgen

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/layermesh/layermesh/accel/tensor"
	ort "github.com/yalue/onnxruntime_go"
)

// The accel ORT backend was not committed when these tests were written, so
// they drive onnxruntime_go directly; the point here is to check the models,
// and a second, independent path to ONNX Runtime does that as well.

var (
	ortOnce sync.Once
	ortErr  error
)

// ortLibPath finds the ONNX Runtime library the way the project does: ORT_LIB,
// or third_party/onnxruntime/current/libonnxruntime.so.1 in a parent folder.
func ortLibPath() (string, error) {
	if p := os.Getenv("ORT_LIB"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "third_party", "onnxruntime", "current", "libonnxruntime.so.1")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("libonnxruntime.so.1 not found: set ORT_LIB or run `make setup`")
		}
		dir = parent
	}
}

// initORT starts the ONNX Runtime environment once per test binary; a test
// that needs it fails (never skips) when the library is missing.
func initORT(t *testing.T) {
	t.Helper()
	ortOnce.Do(func() {
		var lib string
		lib, ortErr = ortLibPath()
		if ortErr != nil {
			return
		}
		ort.SetSharedLibraryPath(lib)
		ortErr = ort.InitializeEnvironment()
	})
	if ortErr != nil {
		t.Fatalf("ONNX Runtime unavailable: %v", ortErr)
	}
}

// runORT runs the model file on the inputs and returns every graph output as
// float32 values with its shape.
func runORT(t *testing.T, path string, inputs []tensor.Tensor, outputs []string) ([][]float32, [][]int64) {
	t.Helper()
	initORT(t)
	names := make([]string, len(inputs))
	vals := make([]ort.Value, len(inputs))
	for i, in := range inputs {
		names[i] = in.Name
		var err error
		switch in.DType {
		case tensor.Float32:
			f, _ := in.Float32s()
			vals[i], err = ort.NewTensor(ort.NewShape(in.Shape...), f)
		case tensor.Int64:
			v, _ := in.Int64s()
			vals[i], err = ort.NewTensor(ort.NewShape(in.Shape...), v)
		default:
			t.Fatalf("runORT: unsupported input dtype %v", in.DType)
		}
		if err != nil {
			t.Fatalf("input %s: %v", in.Name, err)
		}
		defer vals[i].Destroy()
	}
	opts, err := ort.NewSessionOptions()
	if err != nil {
		t.Fatal(err)
	}
	defer opts.Destroy()
	if err := opts.SetIntraOpNumThreads(1); err != nil {
		t.Fatal(err)
	}
	sess, err := ort.NewDynamicAdvancedSession(path, names, outputs, opts)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	defer sess.Destroy()
	outs := make([]ort.Value, len(outputs))
	if err := sess.Run(vals, outs); err != nil {
		t.Fatalf("run %s: %v", path, err)
	}
	data := make([][]float32, len(outs))
	shapes := make([][]int64, len(outs))
	for i, o := range outs {
		defer o.Destroy()
		ft, ok := o.(*ort.Tensor[float32])
		if !ok {
			t.Fatalf("output %s is %T, want float32 tensor", outputs[i], o)
		}
		data[i] = append([]float32(nil), ft.GetData()...)
		shapes[i] = append([]int64(nil), ft.GetShape()...)
	}
	return data, shapes
}
