package pipeline

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
)

// blockingPublisher stands for the membership metadata under Report: every publish
// blocks until released, as memberlist's UpdateNode does while its broadcast waits on
// the network.
type blockingPublisher struct {
	release chan struct{}

	mu        sync.Mutex
	calls     int
	firstCall time.Time
	last      []ServedStage
}

func (p *blockingPublisher) publish(s []ServedStage) {
	p.mu.Lock()
	p.calls++
	if p.firstCall.IsZero() {
		p.firstCall = time.Now()
	}
	p.last = s
	p.mu.Unlock()
	<-p.release
}

func tinyInputs() ([]tensor.Tensor, error) { return modelgen.GPTTiny.ExampleInputs(1, 4, 1) }

// TestRuntimeLoadsAndUnloadsWhileReportBlocks: a metadata publish that blocks (until
// the test releases it) delays only the publishing; the runtime still loads a stage,
// serves it, and unloads it when it is no longer assigned, all while that one
// publish is still blocked.
func TestRuntimeLoadsAndUnloadsWhileReportBlocks(t *testing.T) {
	as, blobs := splitTiny(t)
	pub := &blockingPublisher{release: make(chan struct{})}
	rt := NewStageRuntime(RuntimeConfig{
		Backend: testBackend(t), Blobs: blobs, Report: pub.publish,
		ReadyElsewhere: func(StageKey) bool { return true },
		RetryInterval:  50 * time.Millisecond, Logger: testLogger(t, "rt"),
	})
	defer rt.Close()
	defer close(pub.release)

	rt.SetAssignments(as[:1])
	eventually(t, 30*time.Second, func() error {
		if !rt.Serves(as[0].Key) {
			return errors.New("stage 0 not loaded while a publish blocks")
		}
		return nil
	})
	in, err := tinyInputs()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.RunStage(context.Background(), "tiny", "1", 0, in, nil); err != nil {
		t.Fatalf("run stage 0 while a publish blocks: %v", err)
	}
	rt.SetAssignments(nil)
	eventually(t, 30*time.Second, func() error {
		if rt.Serves(as[0].Key) || len(rt.Served()) != 0 {
			return errors.New("stage 0 not unloaded while a publish blocks")
		}
		return nil
	})
	pub.mu.Lock()
	calls, first := pub.calls, pub.firstCall
	pub.mu.Unlock()
	if calls != 1 || first.IsZero() {
		t.Fatalf("%d publishes started, want exactly one (still blocked)", calls)
	}
	// Once the publish returns, the changes made meanwhile are published in one go.
	// (last is what a publish was asked to carry, recorded when it starts.)
	pub.release <- struct{}{}
	eventually(t, 5*time.Second, func() error {
		pub.mu.Lock()
		defer pub.mu.Unlock()
		if pub.calls < 2 || pub.last == nil || len(pub.last) != 0 {
			return errors.New("the final state (nothing served) not published after the block")
		}
		return nil
	})
}

// TestRuntimeAnswersWhileReadyElsewhereBlocks: the runtime's lock is not held while
// it asks whether another node serves a stage, so a slow answer (a state read that
// waits) blocks neither runs nor status calls.
func TestRuntimeAnswersWhileReadyElsewhereBlocks(t *testing.T) {
	as, blobs := splitTiny(t)
	asked := make(chan struct{}, 1)
	release := make(chan struct{})
	rt := NewStageRuntime(RuntimeConfig{
		Backend: testBackend(t), Blobs: blobs,
		ReadyElsewhere: func(StageKey) bool {
			select {
			case asked <- struct{}{}:
			default:
			}
			<-release
			return true
		},
		HandoverTimeout: time.Hour, RetryInterval: 50 * time.Millisecond, Logger: testLogger(t, "rt"),
	})
	defer rt.Close()
	// Released on every way out, so that a failing run still closes the runtime.
	unblock := sync.OnceFunc(func() { close(release) })
	defer unblock()

	rt.SetAssignments(as[:1])
	eventually(t, 10*time.Second, func() error {
		if !rt.Serves(as[0].Key) {
			return errors.New("stage 0 not loaded")
		}
		return nil
	})
	rt.SetAssignments(nil)
	select {
	case <-asked:
	case <-time.After(5 * time.Second):
		t.Fatal("ReadyElsewhere never asked for the unassigned stage")
	}
	in, err := tinyInputs()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_ = rt.Served()
		_ = rt.UsedBytes()
		_, err := rt.RunStage(context.Background(), "tiny", "1", 0, in, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run while ReadyElsewhere blocks: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the runtime blocked its callers while ReadyElsewhere was asked")
	}
	unblock()
	eventually(t, 5*time.Second, func() error {
		if rt.Serves(as[0].Key) {
			return errors.New("stage 0 not unloaded once ready elsewhere")
		}
		return nil
	})
}
