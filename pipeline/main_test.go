package pipeline

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/internal/leaktest"
	"github.com/layermesh/layermesh/partition/modelgen"
)

// TestMain fails the package when a test leaves a goroutine behind (the runtime's
// loops, the router's attempts and the meshes of the RPC tests must all stop) or a
// tensor held in ONNX Runtime's memory (every session's state must be released).
func TestMain(m *testing.M) { leaktest.Main(m, ort.HeldBytes) }

var (
	ortOnce    sync.Once
	ortBackend accel.Backend
	ortErr     error
)

func testBackend(t *testing.T) accel.Backend {
	t.Helper()
	ortOnce.Do(func() {
		ortBackend, ortErr = ort.New(ort.Config{IntraOpThreads: 1, Provider: accel.ProviderCPU})
	})
	if ortErr != nil {
		t.Fatalf("ONNX Runtime is required for this test and did not load: %v", ortErr)
	}
	return ortBackend
}

// writeTestGPT writes a small GPT and returns its path.
func writeTestGPT(t *testing.T, cfg modelgen.GPTConfig) string {
	t.Helper()
	m, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "gpt.onnx")
	if err := modelgen.WriteFile(m, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func testLogger(t *testing.T, name string) *slog.Logger {
	if os.Getenv("LAYERMESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", name)
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// eventually polls fn every 50 ms until it returns nil, failing after total.
func eventually(t *testing.T, total time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", total, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
