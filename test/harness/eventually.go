package harness

import (
	"testing"
	"time"
)

// Eventually calls fn every `every` until it returns nil, and fails the test with fn's
// last error when `total` has passed. Conditions in a distributed system hold "soon",
// never "now"; this keeps every wait bounded and says what was still wrong.
func Eventually(t testing.TB, total, every time.Duration, fn func() error) {
	t.Helper()
	if err := Poll(total, every, fn); err != nil {
		t.Fatalf("not true within %v: %v", total, err)
	}
}

// Poll is Eventually without the test: it returns nil as soon as fn does, or fn's last
// error once total has passed.
func Poll(total, every time.Duration, fn func() error) error {
	deadline := time.Now().Add(total)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(every)
	}
}
