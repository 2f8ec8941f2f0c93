package ctxtime

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestSleepEndsWithItsContext(t *testing.T) {
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("a sleep that ran its course returned %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled sleep returned %v", err)
	}
	if time.Since(start) > time.Second {
		t.Fatal("a cancelled sleep waited")
	}
}

func TestEveryTickStopsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan struct{}, 16)
	done := make(chan struct{})
	go func() {
		EveryTick(ctx, time.Millisecond, func() {
			select { // never blocks EveryTick: a tick the reader missed is fine
			case calls <- struct{}{}:
			default:
			}
		})
		close(done)
	}()
	for range 3 {
		<-calls
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("EveryTick went on after its context ended")
	}
}
