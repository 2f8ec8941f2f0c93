package pipeline

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/partition"
	"github.com/layermesh/layermesh/partition/modelgen"
)

// dirBlobs serves stage files already on disk, named by their manifest hash; it
// stands in for the peers a node would pull from, which the cluster tests cover.
type dirBlobs struct {
	mu    *sync.Mutex
	paths map[string]string
}

func (d dirBlobs) Path(hash string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.paths[hash]
}

func (d dirBlobs) set(hash, path string) {
	d.mu.Lock()
	d.paths[hash] = path
	d.mu.Unlock()
}

func (d dirBlobs) Fetch(ctx context.Context, hash string, size int64) error {
	p := d.Path(hash)
	if p == "" {
		return fmt.Errorf("blob %s: not held", hash)
	}
	_, err := os.Stat(p)
	return err
}

// splitTiny cuts the tiny GPT into two stage files and returns their assignments.
func splitTiny(t *testing.T) ([]StageAssignment, dirBlobs) {
	t.Helper()
	path := writeTestGPT(t, modelgen.GPTTiny)
	out := filepath.Join(t.TempDir(), "stages")
	man, err := partition.Partition(path, out, partition.Options{Plan: partition.PlanOptions{Stages: 2}})
	if err != nil {
		t.Fatal(err)
	}
	blobs := dirBlobs{mu: &sync.Mutex{}, paths: map[string]string{}}
	var as []StageAssignment
	for _, s := range man.Stages {
		blobs.paths[s.SHA256] = filepath.Join(out, s.File)
		as = append(as, StageAssignment{Key: StageKey{Model: "tiny", Version: "1", Stage: s.Index},
			Blob: s.SHA256, Size: s.Size, MemBytes: 1000})
	}
	return as, blobs
}

type reports struct {
	mu   sync.Mutex
	last []ServedStage
}

func (r *reports) set(s []ServedStage) {
	r.mu.Lock()
	r.last = s
	r.mu.Unlock()
}

func (r *reports) ready() map[int]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[int]bool{}
	for _, s := range r.last {
		if s.Ready {
			out[s.Key.Stage] = true
		}
	}
	return out
}

func TestRuntimeBudgetAndHandover(t *testing.T) {
	as, blobs := splitTiny(t)
	rep := &reports{}
	var elsewhere sync.Map
	rt := NewStageRuntime(RuntimeConfig{
		Backend: testBackend(t), MemBudget: 1500, Blobs: blobs, Report: rep.set,
		ReadyElsewhere:  func(k StageKey) bool { _, ok := elsewhere.Load(k); return ok },
		HandoverTimeout: time.Hour, RetryInterval: 50 * time.Millisecond, Logger: testLogger(t, "rt"),
	})
	defer rt.Close()

	// Two stages of 1000 bytes on a budget of 1500: the first loads, the second is refused.
	rt.SetAssignments(as)
	eventually(t, 10*time.Second, func() error {
		if !rep.ready()[0] {
			return errors.New("stage 0 not ready")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	if rt.Serves(as[1].Key) || rt.UsedBytes() > 1500 {
		t.Fatalf("budget exceeded: serves stage 1 %v, used %d", rt.Serves(as[1].Key), rt.UsedBytes())
	}
	in, err := modelgen.GPTTiny.ExampleInputs(1, 4, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.RunStage(context.Background(), "tiny", "1", 0, in, nil); err != nil {
		t.Fatalf("run stage 0: %v", err)
	}
	if _, err := rt.RunStage(context.Background(), "tiny", "1", 1, nil, nil); !errors.Is(err, ErrStageNotServed) {
		t.Fatalf("stage 1 not loaded here: got %v", err)
	}

	// Stage 0 is moved away: it stays while nobody else serves it (make before break),
	// except that an assigned stage needing its memory wins.
	rt.SetAssignments(nil)
	time.Sleep(300 * time.Millisecond)
	if !rt.Serves(as[0].Key) {
		t.Fatal("unassigned stage unloaded before a replacement was ready")
	}
	elsewhere.Store(as[0].Key, true)
	rt.Kick()
	eventually(t, 5*time.Second, func() error {
		if rt.Serves(as[0].Key) || rt.UsedBytes() != 0 {
			return fmt.Errorf("stage 0 still held (%d bytes)", rt.UsedBytes())
		}
		return nil
	})

	elsewhere.Delete(as[0].Key)
	rt.SetAssignments(as[:1])
	eventually(t, 10*time.Second, func() error {
		if !rt.Serves(as[0].Key) {
			return errors.New("stage 0 not back")
		}
		return nil
	})
	rt.SetAssignments(as[1:]) // stage 0 waits for a handover, but stage 1 needs the memory
	eventually(t, 10*time.Second, func() error {
		if !rt.Serves(as[1].Key) || rt.Serves(as[0].Key) {
			return fmt.Errorf("serves 0: %v, 1: %v", rt.Serves(as[0].Key), rt.Serves(as[1].Key))
		}
		return nil
	})
}

func TestRuntimeRetriesFailedLoad(t *testing.T) {
	as, blobs := splitTiny(t)
	missing := as[0]
	missing.Blob = "0000000000000000000000000000000000000000000000000000000000000000"
	rep := &reports{}
	rt := NewStageRuntime(RuntimeConfig{Backend: testBackend(t), Blobs: blobs, Report: rep.set,
		RetryInterval: 50 * time.Millisecond, Logger: testLogger(t, "rt")})
	defer rt.Close()
	rt.SetAssignments([]StageAssignment{missing})
	time.Sleep(300 * time.Millisecond)
	if rt.Serves(missing.Key) || len(rt.Served()) != 0 {
		t.Fatalf("a stage whose blob cannot be fetched is reported: %v", rt.Served())
	}
	// The blob shows up (a holder came back): the next retry loads it.
	blobs.set(missing.Blob, blobs.Path(as[0].Blob))
	eventually(t, 10*time.Second, func() error {
		if !rt.Serves(missing.Key) {
			return errors.New("not loaded after the blob appeared")
		}
		return nil
	})
}
