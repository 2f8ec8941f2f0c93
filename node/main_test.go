package node

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/layermesh/layermesh/accel/ort"
)

// TestMain fails the package when a test leaves a goroutine behind (a closed cluster
// part must have stopped its loops, its runtime and its mesh) or a tensor held in
// ONNX Runtime's memory.
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
		// Every node's sessions are closed or expired by the end, and with them
		// every tensor held in ONNX Runtime's memory.
		if n := ort.HeldBytes(); n != 0 {
			fmt.Fprintf(os.Stderr, "%d bytes of tensors still held in ONNX Runtime after the tests: a held value was never released\n", n)
			code = 1
		}
	}
	os.Exit(code)
}
