// Package ctxtime holds the two timing helpers that the request path, the control loop
// and the node's wiring share: a sleep and a ticker loop that end with their context,
// so that no goroutine waits past its owner's shutdown.
package ctxtime

import (
	"context"
	"time"
)

// Sleep waits d, or until ctx ends, and then returns ctx's error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// EveryTick calls fn every d until ctx ends, the first time after d.
func EveryTick(ctx context.Context, d time.Duration, fn func()) {
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		fn()
	}
}
