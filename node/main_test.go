package node

import (
	"testing"

	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/internal/leaktest"
)

// TestMain fails the package when a test leaves a goroutine behind (a closed cluster
// part must have stopped its loops, its runtime and its mesh) or a tensor held in
// ONNX Runtime's memory (every node's sessions are closed or expired by the end).
func TestMain(m *testing.M) { leaktest.Main(m, ort.HeldBytes) }
