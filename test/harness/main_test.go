package harness

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test of the harness leaves a goroutine behind: proxies,
// forwarders and process waiters all have to stop with their test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
