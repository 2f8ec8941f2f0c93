package modelgen

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
)

// The models are checked through the project's own ONNX Runtime backend,
// the same path a node serves them through.

var (
	backendOnce sync.Once
	backend     accel.Backend
	backendErr  error
)

// ortBackend opens the CPU backend once per test binary; a test that needs
// it fails (never skips) when ONNX Runtime cannot be loaded.
func ortBackend(t *testing.T) accel.Backend {
	t.Helper()
	backendOnce.Do(func() {
		backend, backendErr = ort.New(ort.Config{
			Provider:       accel.ProviderCPU,
			IntraOpThreads: 1,
			Logger:         slog.New(slog.DiscardHandler),
		})
	})
	if backendErr != nil {
		t.Fatalf("ONNX Runtime unavailable (run `make setup` or set ORT_LIB): %v", backendErr)
	}
	return backend
}

// runORTTensors runs the model file on the inputs and returns the named
// outputs.
func runORTTensors(t *testing.T, path string, inputs []tensor.Tensor, outputs []string) []tensor.Tensor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sess, err := ortBackend(t).Open(ctx, path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	defer sess.Close()
	outs, err := sess.Run(ctx, inputs, outputs)
	if err != nil {
		t.Fatalf("run %s: %v", path, err)
	}
	return outs
}

// runORT runs the model file on the inputs and returns the named outputs as
// float32 values with their shapes.
func runORT(t *testing.T, path string, inputs []tensor.Tensor, outputs []string) ([][]float32, [][]int64) {
	t.Helper()
	outs := runORTTensors(t, path, inputs, outputs)
	var err error
	data := make([][]float32, len(outs))
	shapes := make([][]int64, len(outs))
	for i, o := range outs {
		if data[i], err = o.Float32s(); err != nil {
			t.Fatalf("output %s: %v", outputs[i], err)
		}
		shapes[i] = o.Shape
	}
	return data, shapes
}
