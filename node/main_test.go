package node

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: a closed
// cluster part must have stopped its loops, its runtime and its mesh.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Process-wide singletons of go-libp2p and its dependencies, started once on
		// first use and never stopped (as in mesh's TestMain).
		goleak.IgnoreTopFunction("github.com/libp2p/go-libp2p/p2p/transport/tcpreuse.(*sampledConn).peek"),
		goleak.IgnoreAnyFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/host/resource-manager.(*resourceManager).background"),
	)
}
