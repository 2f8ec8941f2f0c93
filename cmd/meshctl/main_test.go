package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no goroutine outlives the tests: bench runs its load on worker
// goroutines that must all end with the command.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
