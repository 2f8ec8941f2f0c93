package consensus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func (c *testCluster) follower(leader int) int {
	for i, n := range c.nodes {
		if i != leader && n.up {
			return i
		}
	}
	c.t.Fatal("no follower")
	return -1
}

func applyVia(t testing.TB, s *Store, p Payload) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := s.Apply(ctx, NewCommand(p))
	if err != nil {
		t.Fatalf("apply %T: %v", p, err)
	}
	return r
}

// TestClusterFailover: a 3-node cluster on real libp2p elects a leader, takes
// writes through a follower, survives SIGKILL-equivalent leader loss (the
// failover time is logged for BENCHMARKS.md), lets the old leader rejoin and
// catch up, and refuses writes on a minority side with a clear error.
func TestClusterFailover(t *testing.T) {
	c := startCluster(t, 3, nil)
	c.waitVoters(10*time.Second, []int{0, 1, 2}, nil)
	leader := c.waitLeader(5 * time.Second)
	f := c.follower(leader)
	r := applyVia(t, c.nodes[f].store, CatalogPut{Key: "before", Value: "1"})
	if r.Index == 0 {
		t.Fatal("forwarded write returned no index")
	}

	// Forwarded FSM rejections keep their sentinel and class.
	_, err := c.nodes[f].store.Apply(context.Background(), NewCommand(CatalogPut{Key: "before", Value: "2", Mode: CatalogRegister}))
	if !errors.Is(err, ErrExists) || !errors.Is(err, ErrFailed) {
		t.Fatalf("forwarded register of existing key: %v, want ErrExists+ErrFailed", err)
	}
	// A forwarded PutModel brings back the version the leader's FSM allocated.
	applyVia(t, c.nodes[leader].store, PutModel{Model{Name: "m"}})
	if r := applyVia(t, c.nodes[f].store, PutModel{Model{Name: "m"}}); r.ModelVersion != "2" {
		t.Fatalf("forwarded PutModel allocated version %q, want 2", r.ModelVersion)
	}
	// A retried command (same request id) through another node is deduplicated.
	cmd := NewCommand(CatalogPut{Key: "counter", Value: "x"})
	r1, err := c.nodes[f].store.Apply(context.Background(), cmd)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c.nodes[leader].store.Apply(context.Background(), cmd)
	if err != nil || !r2.Duplicate || r2.Index != r1.Index {
		t.Fatalf("retry = %+v %v, want duplicate of index %d", r2, err, r1.Index)
	}
	// Linearizable read through a follower sees the write.
	st, err := c.nodes[f].store.Read(context.Background(), true)
	if err != nil || st.Catalog["before"] != "1" {
		t.Fatalf("linearizable read via follower: %v %v", st.Catalog, err)
	}

	var failovers []time.Duration
	for round := 0; round < 3; round++ {
		old := c.waitLeader(10 * time.Second)
		start := time.Now()
		c.kill(old)
		newLeader := c.waitLeader(15 * time.Second)
		d := time.Since(start)
		failovers = append(failovers, d)
		t.Logf("round %d: leader %d killed, node %d elected after %v", round, old, newLeader, d)
		if newLeader == old {
			t.Fatal("killed node still leader")
		}
		f := c.follower(newLeader)
		applyVia(t, c.nodes[f].store, CatalogPut{Key: fmt.Sprintf("after-%d", round), Value: "1"})
		// The old leader restarts from its data dir and catches up.
		c.start(old, false)
		eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
			st := c.nodes[old].store.State()
			if st.Catalog[fmt.Sprintf("after-%d", round)] != "1" || st.Catalog["before"] != "1" {
				return fmt.Errorf("restarted node has not caught up: %v", st.Catalog)
			}
			return nil
		})
	}
	slices.Sort(failovers)
	t.Logf("FAILOVER heartbeat=%v election=%v: min %v median %v max %v over %d kills",
		testHeartbeat, testElection, failovers[0], failovers[len(failovers)/2], failovers[len(failovers)-1], len(failovers))

	// Minority: kill two of three; the survivor cannot write.
	leader = c.waitLeader(10 * time.Second)
	survivor := c.follower(leader)
	for i := range c.nodes {
		if i != survivor {
			c.kill(i)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	start := time.Now()
	_, err = c.nodes[survivor].store.Apply(ctx, NewCommand(CatalogPut{Key: "minority", Value: "1"}))
	if err == nil {
		t.Fatal("write on a minority side succeeded")
	}
	if !errors.Is(err, ErrNoLeader) && !errors.Is(err, ErrLeadershipLost) && !errors.Is(err, ErrTimeout) {
		t.Fatalf("minority write error %v does not say why", err)
	}
	if errors.Is(err, ErrFailed) == errors.Is(err, ErrUnknownOutcome) {
		t.Fatalf("minority write error %v must wrap exactly one outcome class", err)
	}
	if time.Since(start) > 6*time.Second {
		t.Fatalf("minority write took %v, not bounded by its context", time.Since(start))
	}
	t.Logf("minority write refused after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if _, err := c.nodes[survivor].store.Read(ctx, true); err == nil {
		t.Fatal("linearizable read on a minority side succeeded")
	}
}

// TestFullRestart: 1000 acknowledged writes and a snapshot, every node stopped
// at once, all restarted from their data dirs: every write is there and the
// FSM is identical on every node.
func TestFullRestart(t *testing.T) {
	c := startCluster(t, 3, func(cfg *Config) {
		cfg.SnapshotThreshold = 400 // raft also snapshots by itself during the run
		cfg.SnapshotInterval = 500 * time.Millisecond
		cfg.TrailingLogs = 100
	})
	c.waitVoters(10*time.Second, []int{0, 1, 2}, nil)
	const writes = 1000
	var acked sync.Map
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			s := c.nodes[w%3].store
			for {
				i := next.Add(1)
				if i > writes {
					return
				}
				key, val := fmt.Sprintf("k%04d", i), fmt.Sprintf("v%d", i)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := s.Apply(ctx, NewCommand(CatalogPut{Key: key, Value: val}))
				cancel()
				if err != nil {
					errs <- fmt.Errorf("write %s: %w", key, err)
					return
				}
				acked.Store(key, val)
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i, n := range c.nodes {
		if err := n.store.Snapshot(); err != nil {
			t.Fatalf("snapshot on node %d: %v", i, err)
		}
	}
	// A few writes after the snapshot, so recovery needs snapshot + log tail.
	for i := 0; i < 20; i++ {
		key := fmt.Sprintf("tail%02d", i)
		applyVia(t, c.nodes[i%3].store, CatalogPut{Key: key, Value: "t"})
		acked.Store(key, "t")
	}
	for i, n := range c.nodes {
		snaps, err := raft.NewFileSnapshotStore(filepath.Join(n.dir, "raft"), 2, os.Stderr)
		if err != nil {
			t.Fatal(err)
		}
		if list, err := snaps.List(); err != nil || len(list) == 0 {
			t.Fatalf("node %d has no snapshot on disk: %v", i, err)
		}
	}

	for i := range c.nodes { // all at once: nobody hands anything over
		c.kill(i)
	}
	for i := range c.nodes {
		c.start(i, false)
	}
	leader := c.waitLeader(15 * time.Second)
	st, err := c.nodes[leader].store.Read(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	missing := 0
	acked.Range(func(k, v any) bool {
		if st.Catalog[k.(string)] != v.(string) {
			missing++
		}
		return true
	})
	if missing > 0 {
		t.Fatalf("%d acknowledged writes lost after full restart", missing)
	}
	if len(st.Catalog) != writes+20 {
		t.Fatalf("catalog has %d keys, want %d", len(st.Catalog), writes+20)
	}
	// Every node converges to the same FSM state (index included).
	_, want := c.nodes[leader].store.fsm.current()
	eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		var ref []byte
		for i, n := range c.nodes {
			s, applied := n.store.fsm.current()
			if applied < want {
				return fmt.Errorf("node %d applied %d < %d", i, applied, want)
			}
			b, err := json.Marshal(s)
			if err != nil {
				return err
			}
			if ref == nil {
				ref = b
			} else if !bytes.Equal(ref, b) {
				return fmt.Errorf("node %d state differs from node 0", i)
			}
		}
		return nil
	})
}

// TestVoterManagement: nodes 4 and 5 join as voters, the 6th as a non-voter; a
// voter dead past the timeout is removed and marked removed, and the
// non-voter is promoted in its place; a graceful leave removes the node.
func TestVoterManagement(t *testing.T) {
	c := startCluster(t, 3, nil)
	c.waitVoters(10*time.Second, []int{0, 1, 2}, nil)
	c.upsertMembers(0, 1, 2)
	for i := 3; i < 6; i++ {
		c.addNode()
		c.start(i, false)
		c.join(i)
		c.upsertMembers(i)
	}
	c.waitVoters(15*time.Second, []int{0, 1, 2, 3, 4}, []int{5})
	leader := c.waitLeader(5 * time.Second)
	st := c.nodes[leader].store.State()
	if !st.Members[c.nodes[4].id].Voter || st.Members[c.nodes[5].id].Voter {
		t.Fatalf("State() voter flags disagree with the configuration: %+v", st.Members)
	}
	stats := c.nodes[leader].store.Stats()
	if stats.Voters != 5 || stats.NonVoters != 1 || stats.State != "Leader" || stats.Term == 0 || stats.CommitIndex == 0 {
		t.Fatalf("leader stats = %+v", stats)
	}

	// Node 4 dies; the node layer reports it dead; after the timeout (set
	// through the replicated config) the leader removes it.
	victim := 4
	if victim == leader {
		victim = 3
	}
	applyVia(t, c.nodes[leader].store, SetConfig{ClusterConfig{ClusterID: "test", ReplicationFactor: 2, DeadNodeTimeout: time.Second}})
	c.kill(victim)
	leader = c.waitLeader(10 * time.Second)
	deadAt := time.Now()
	applyVia(t, c.nodes[leader].store, SetMemberState{ID: c.nodes[victim].id, State: MemberDead, At: deadAt})
	voters := []int{}
	for _, i := range []int{0, 1, 2, 3, 4} {
		if i != victim {
			voters = append(voters, i)
		}
	}
	voters = append(voters, 5) // promoted into the free voter seat
	c.waitVoters(15*time.Second, voters, nil)
	removedAfter := time.Since(deadAt)
	if removedAfter < time.Second {
		t.Fatalf("dead node removed after %v, before the 1s timeout", removedAfter)
	}
	leader = c.waitLeader(5 * time.Second)
	eventually(t, 5*time.Second, 50*time.Millisecond, func() error {
		if s := c.nodes[leader].store.State().Members[c.nodes[victim].id].State; s != MemberRemoved {
			return fmt.Errorf("dead member state %q, want removed", s)
		}
		return nil
	})
	t.Logf("dead voter removed %v after being reported dead (timeout 1s)", removedAfter.Round(time.Millisecond))

	// Graceful leave of the leader: leadership moves, it leaves the configuration.
	leaver := leader
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := c.nodes[leaver].store.Leave(ctx); err != nil {
		t.Fatalf("leave: %v", err)
	}
	c.mu.Lock()
	c.nodes[leaver].up = false
	c.mu.Unlock()
	if err := c.nodes[leaver].store.Close(); err != nil {
		t.Fatalf("close after leave: %v", err)
	}
	c.nodes[leaver].host.Close()
	newLeader := c.waitLeader(10 * time.Second)
	eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		if _, ok := suffrage(c.config(newLeader), c.nodes[leaver].id); ok {
			return errors.New("left node still in configuration")
		}
		if s := c.nodes[newLeader].store.State().Members[c.nodes[leaver].id].State; s != MemberLeft {
			return fmt.Errorf("left member state %q", s)
		}
		return nil
	})
}

// TestCloseTransfersLeadership: a leader that closes cleanly hands leadership
// over, so the others have a leader without waiting out an election.
func TestCloseTransfersLeadership(t *testing.T) {
	c := startCluster(t, 3, nil)
	c.waitVoters(10*time.Second, []int{0, 1, 2}, nil)
	leader := c.waitLeader(5 * time.Second)
	start := time.Now()
	c.mu.Lock()
	c.nodes[leader].up = false
	c.mu.Unlock()
	if err := c.nodes[leader].store.Close(); err != nil {
		t.Fatal(err)
	}
	c.nodes[leader].host.Close()
	next := c.waitLeader(10 * time.Second)
	t.Logf("clean close of leader %d: node %d leads %v later", leader, next, time.Since(start).Round(time.Millisecond))
	applyVia(t, c.nodes[c.follower(next)].store, CatalogPut{Key: "k", Value: "v"})
}

// TestOpenCorruptDir: a damaged badger directory makes Open refuse with
// ErrCorruptStore and a message naming the directory, not a panic.
func TestOpenCorruptDir(t *testing.T) {
	c := &testCluster{t: t}
	c.addNode()
	t.Cleanup(c.closeAll)
	c.start(0, true)
	c.waitLeader(10 * time.Second)
	applyVia(t, c.nodes[0].store, CatalogPut{Key: "k", Value: "v"})
	c.kill(0)
	manifest := filepath.Join(c.nodes[0].dir, "raft", "log", "MANIFEST")
	if err := os.WriteFile(manifest, bytes.Repeat([]byte{0xba, 0xad}, 100), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newTestHost(t, c.nodes[0].key, nil)
	defer h.Close()
	s, err := Open(context.Background(), Config{DataDir: c.nodes[0].dir, NodeID: h.ID().String(), Host: h, Logger: testLogger(t)})
	if err == nil {
		s.Close()
		t.Fatal("Open accepted a corrupted raft store")
	}
	if !errors.Is(err, ErrCorruptStore) {
		t.Fatalf("Open error %v does not wrap ErrCorruptStore", err)
	}
	t.Logf("Open refused: %v", err)
}

func TestOpenConfigErrors(t *testing.T) {
	c := &testCluster{t: t}
	c.addNode()
	h := newTestHost(t, c.nodes[0].key, nil)
	defer h.Close()
	c.addNode()
	other := newTestHost(t, c.nodes[1].key, nil)
	defer other.Close()
	for _, cfg := range []Config{
		{NodeID: h.ID().String(), Host: h},
		{DataDir: t.TempDir(), Host: h},
		{DataDir: t.TempDir(), NodeID: other.ID().String(), Host: h},
	} {
		if _, err := Open(context.Background(), cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("Open(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
}

// heldFuture is a raft.Future that resolves when released: what raft does with a
// future it still holds, except that raft never resolves one still queued when it
// shuts down (hashicorp/raft#498), which is what settleFutures works around.
type heldFuture struct{ release chan struct{} }

func (f heldFuture) Error() error { <-f.release; return nil }

// TestCloseSettlesFutures: Close lets raft resolve the futures this node still
// waits on (a write whose caller gave up) before raft shuts down, so no waiter is
// left blocked, and gives up on one that is not resolved within its limit, saying so.
func TestCloseSettlesFutures(t *testing.T) {
	c := startCluster(t, 1, nil)
	s := c.nodes[0].store
	late := heldFuture{release: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := s.waitFuture(ctx, late); !errors.Is(err, ErrTimeout) {
		t.Fatalf("waitFuture past its context: %v, want ErrTimeout", err)
	}
	if n := s.waiting.Load(); n != 1 {
		t.Fatalf("%d waiters after the caller gave up, want 1", n)
	}
	resolve := 300 * time.Millisecond
	time.AfterFunc(resolve, func() { close(late.release) })
	start := time.Now()
	c.closeAll()
	if took := time.Since(start); took < resolve/2 {
		t.Errorf("Close returned after %v, before the future it waited on resolved", took)
	}
	if n := s.waiting.Load(); n != 0 {
		t.Errorf("%d waiters left blocked after Close", n)
	}

	// A future that nothing resolves: shutdown waits its limit, then goes on.
	c = startCluster(t, 1, nil)
	s = c.nodes[0].store
	never := heldFuture{release: make(chan struct{})}
	defer close(never.release) // the test's own cleanup: no goroutine outlives it
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	if err := s.waitFuture(ctx2, never); !errors.Is(err, ErrTimeout) {
		t.Fatalf("waitFuture past its context: %v, want ErrTimeout", err)
	}
	limit := s.cfg.LeaderLeaseTimeout + 2*s.cfg.ElectionTimeout
	start = time.Now()
	c.closeAll()
	if took := time.Since(start); took < limit {
		t.Errorf("Close returned after %v, before its %v limit for an unresolved future", took, limit)
	}
	if n := s.waiting.Load(); n != 1 {
		t.Errorf("%d waiters after Close gave up on an unresolved future, want 1", n)
	}
}
