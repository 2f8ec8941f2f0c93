package mesh

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/goleak"

	"github.com/layermesh/layermesh/internal/leaktest"
)

func TestMain(m *testing.M) {
	if os.Getenv(benchPeerEnv) != "" {
		// Re-executed by a cross-process benchmark as its peer.
		os.Exit(runBenchPeer())
	}
	leaktest.Main(m, nil,
		// A probe memberlist had in flight when its Shutdown was called: Shutdown does
		// not wait for it, and it ends when its probe interval runs out.
		goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
	)
}

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// testLogger writes to the test log only when LAYERMESH_TEST_LOG is set; mesh logs are
// loud and the tests assert on behaviour, not on log lines.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("LAYERMESH_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	w := &testWriter{t: t}
	t.Cleanup(w.close)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter logs to t until the test ends. memberlist answers an indirect ping in a
// goroutine that Shutdown does not wait for, and t.Log after the end panics.
type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
}

// testConfig is a loopback-only config with fast failure detection.
func testConfig(t testing.TB, dir string) Config {
	return Config{
		DataDir:        dir,
		ListenAddrs:    []string{"/ip4/127.0.0.1/tcp/0"},
		GossipBindAddr: "127.0.0.1",
		ClusterID:      "test-cluster",
		Secret:         testSecret,
		Logger:         testLogger(t),
		FastGossip:     true,
		ProbeInterval:  -1,
	}
}

func startMesh(t testing.TB, cfg Config) *Mesh {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("mesh.New: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// eventually polls fn until it returns nil or total passes, then fails with fn's error.
func eventually(t testing.TB, total, every time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", total, err)
		}
		time.Sleep(every)
	}
}

func aliveSet(m *Mesh) map[peer.ID]bool {
	out := make(map[peer.ID]bool)
	for _, mem := range m.Members() {
		if mem.State == StateAlive {
			out[mem.PeerID] = true
		}
	}
	return out
}

// allSeeAll reports an error unless every mesh sees exactly the given ids alive.
func allSeeAll(ms []*Mesh) error {
	for _, m := range ms {
		alive := aliveSet(m)
		for _, o := range ms {
			if !alive[o.ID()] {
				return fmt.Errorf("node %s does not see %s alive (sees %d)", shortID(m.ID()), shortID(o.ID()), len(alive))
			}
		}
	}
	return nil
}
