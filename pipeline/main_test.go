package pipeline

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/partition/modelgen"
)

// TestMain fails the package when a test leaves a goroutine behind (the runtime's
// loops, the router's attempts and the meshes of the RPC tests must all stop) or a
// tensor held in ONNX Runtime's memory (every session's state must be released).
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(
			// Process-wide singletons of go-libp2p and its dependencies, started once
			// on first use and never stopped (as in mesh's TestMain).
			goleak.IgnoreTopFunction("github.com/libp2p/go-libp2p/p2p/transport/tcpreuse.(*sampledConn).peek"),
			goleak.IgnoreAnyFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
			goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
			goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/host/resource-manager.(*resourceManager).background"),
		); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
		if n := ort.HeldBytes(); n != 0 {
			fmt.Fprintf(os.Stderr, "%d bytes of tensors still held in ONNX Runtime after the tests: a held value was never released\n", n)
			code = 1
		}
	}
	os.Exit(code)
}

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
