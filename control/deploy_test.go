package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/mesh"
)

// TestDeployWaitingForAnotherGivesUpWithItsContext: deploys on one node run one at a
// time, and a deploy waiting for the one before it returns as soon as its request's
// context ends (504 timeout), having read its body but written nothing to Raft.
func TestDeployWaitingForAnotherGivesUpWithItsContext(t *testing.T) {
	dir := t.TempDir()
	blobs, err := mesh.OpenBlobStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// No Raft store: a deploy that got past the semaphore would touch it and panic.
	c := New(Config{Self: "self", DataDir: dir, Blobs: blobs, CaughtUp: func() bool { return true },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})

	// The deploy before it holds the slot (it is cutting a model).
	if err := c.deploys.acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	body := strings.NewReader("not looked at before the slot is free")
	start := time.Now()
	_, err = c.PutModel(ctx, "waiting", body, api.DeployOptions{Size: -1})
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the context's deadline", err)
	}
	if code := api.Classify(err).Code; code != api.CodeTimeout {
		t.Fatalf("API code %s, want %s", code, api.CodeTimeout)
	}
	if took > 3*time.Second {
		t.Fatalf("gave up after %v, long after its context ended", took)
	}
	if body.Len() != 0 {
		t.Fatalf("the body was not read before waiting: %d bytes left", body.Len())
	}

	// Once the slot is free, a waiting deploy takes it.
	c.deploys.release()
	if err := c.deploys.acquire(context.Background()); err != nil {
		t.Fatalf("slot not free after release: %v", err)
	}
	c.deploys.release()
}

// staleStore is a RaftStore whose local copy still lists a model that the leader's
// state no longer has: another node's delete committed first.
type staleStore struct {
	RaftStore
	local *consensus.ClusterState
}

func (s staleStore) State() *consensus.ClusterState { return s.local }

func (s staleStore) Apply(ctx context.Context, cmd consensus.Command) (consensus.Result, error) {
	return consensus.Result{}, fmt.Errorf("leader: %w: %w: model gone", consensus.ErrFailed, consensus.ErrNotFound)
}

// TestDeleteOfAModelAnotherNodeDeletedIsNotFound: a delete that races another node's
// delete of the same model answers 404 model_not_found, not 500, even when this node's
// copy of the state still lists the model.
func TestDeleteOfAModelAnotherNodeDeletedIsNotFound(t *testing.T) {
	local := &consensus.ClusterState{Models: map[string]consensus.Model{
		consensus.ModelKey("gone", "1"): {Name: "gone", Version: "1"},
	}}
	c := New(Config{Self: "self", DataDir: t.TempDir(), Store: staleStore{local: local},
		CaughtUp: func() bool { return true }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	err := c.DeleteModel(context.Background(), "gone")
	if code := api.Classify(err).Code; code != api.CodeModelNotFound {
		t.Fatalf("delete answered %s (%v), want %s", code, err, api.CodeModelNotFound)
	}
}
