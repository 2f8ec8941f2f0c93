package node

import (
	"context"
	"math"
	"os"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
)

// TestMeasureSpeed runs the start-up benchmark on the real ONNX Runtime backend: the
// score is a positive, finite rate, and it leaves no model file behind in the data
// dir. Its cost at start-up is bounded by construction (speedBudget of timed runs) and
// only logged here: a wall-clock bound would fail on a busy machine, not on a slow
// benchmark.
func TestMeasureSpeed(t *testing.T) {
	dir := t.TempDir()
	start := time.Now()
	gflops, err := MeasureSpeed(context.Background(), testBackend(t), accel.SessionOptions{IntraOpThreads: 1}, dir)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("MeasureSpeed: %v", err)
	}
	if !(gflops > 0) || math.IsInf(gflops, 0) {
		t.Fatalf("speed score %v GFLOP/s, want positive and finite", gflops)
	}
	t.Logf("speed score %.1f GFLOP/s at 1 intra-op thread, measured in %v", gflops, took)
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("benchmark left %d files in the data dir: %v", len(left), left[0].Name())
	}
}
