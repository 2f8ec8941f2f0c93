// Package leaktest is the TestMain of the packages whose tests start libp2p hosts and
// ONNX Runtime sessions: it fails the package when a test leaves a goroutine behind,
// or a tensor held in the backend's memory between runs.
package leaktest

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// libp2pSingletons are go-libp2p's and its dependencies' process-wide goroutines,
// started once on first use and never stopped: not a host's, so not a leak.
var libp2pSingletons = []goleak.Option{
	goleak.IgnoreTopFunction("github.com/libp2p/go-libp2p/p2p/transport/tcpreuse.(*sampledConn).peek"),
	goleak.IgnoreAnyFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
	goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
	goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/host/resource-manager.(*resourceManager).background"),
}

// Main runs the tests, then fails the package on a goroutine left behind (beyond
// libp2p's singletons and ignore) or, when held is set, on bytes it says are still
// held once every test has closed its sessions. It does not return.
func Main(m *testing.M, held func() int64, ignore ...goleak.Option) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(append(libp2pSingletons, ignore...)...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
		if held != nil {
			if n := held(); n != 0 {
				fmt.Fprintf(os.Stderr, "%d bytes of tensors still held after the tests: a held value was never released\n", n)
				code = 1
			}
		}
	}
	os.Exit(code)
}
