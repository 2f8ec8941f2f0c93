package consensus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/net/gostream"
)

// TestPartitionMinority cuts the leader off from both followers at the libp2p
// layer. Its write fails within the caller's deadline with an error that says
// why; the majority elects a leader and keeps taking writes; after the
// partition heals the old leader catches up and the minority's write is not
// in anyone's state.
func TestPartitionMinority(t *testing.T) {
	c := startCluster(t, 3, nil)
	c.waitVoters(10*time.Second, []int{0, 1, 2}, nil)
	old := c.waitLeader(5 * time.Second)
	c.partition(old)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.nodes[old].store.Apply(ctx, NewCommand(CatalogPut{Key: "minority", Value: "x"}))
	took := time.Since(start)
	if err == nil {
		t.Fatal("write on the minority side succeeded")
	}
	if !errors.Is(err, ErrNoLeader) && !errors.Is(err, ErrLeadershipLost) && !errors.Is(err, ErrTimeout) {
		t.Fatalf("minority write error does not say why: %v", err)
	}
	if errors.Is(err, ErrFailed) == errors.Is(err, ErrUnknownOutcome) {
		t.Fatalf("minority write error must wrap exactly one outcome class: %v", err)
	}
	if took > 5*time.Second {
		t.Fatalf("minority write took %v, not bounded by its 3s context", took)
	}
	t.Logf("minority write refused after %v: %v", took.Round(time.Millisecond), err)

	var majority []int
	for i := range c.nodes {
		if i != old {
			majority = append(majority, i)
		}
	}
	var newLeader int
	eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		for _, i := range majority {
			if c.nodes[i].store.IsLeader() {
				newLeader = i
				return nil
			}
		}
		return errors.New("majority has no leader")
	})
	other := majority[0]
	if other == newLeader {
		other = majority[1]
	}
	applyVia(t, c.nodes[other].store, CatalogPut{Key: "majority", Value: "y"})

	c.heal()
	// The old leader's peerstore still has the addresses; reconnecting is
	// raft's next heartbeat.
	eventually(t, 15*time.Second, 50*time.Millisecond, func() error {
		st := c.nodes[old].store.State()
		if st.Catalog["majority"] != "y" {
			return fmt.Errorf("old leader has not caught up: %v", st.Catalog)
		}
		return nil
	})
	for i := range c.nodes {
		st, err := c.nodes[i].store.Read(context.Background(), true)
		if err != nil {
			t.Fatalf("read on node %d after heal: %v", i, err)
		}
		if _, ok := st.Catalog["minority"]; ok {
			t.Fatalf("node %d holds the minority's unacknowledged write", i)
		}
	}
}

// TestRejectsNonMembers: a libp2p peer that is connected but not in the Raft
// configuration nor a member cannot forward writes or speak Raft.
func TestRejectsNonMembers(t *testing.T) {
	c := startCluster(t, 1, nil)
	c.addNode()
	stranger := newTestHost(t, c.nodes[1].key, nil)
	defer stranger.Close()
	target := c.nodes[0].host
	stranger.Peerstore().AddAddrs(target.ID(), target.Addrs(), peerstore.PermanentAddrTTL)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	data, err := EncodeCommand(NewCommand(CatalogPut{Key: "intruder", Value: "x"}))
	if err != nil {
		t.Fatal(err)
	}
	st, err := stranger.NewStream(ctx, target.ID(), ApplyProtocol)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.SetDeadline(time.Now().Add(3 * time.Second))
	if err := writeFrame(st, forwardRequest{Op: opApply, Command: data}); err != nil {
		t.Fatal(err)
	}
	var resp forwardResponse
	if err := readFrame(st, &resp); err == nil {
		t.Fatalf("non-member got an answer: %+v", resp)
	}
	st.Close()

	conn, err := gostream.Dial(ctx, stranger, target.ID(), RaftProtocol)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	// rpcRequestVote then garbage: an admitted conn would be decoded (and
	// answered with an error); a refused one is closed before anything is read.
	_, _ = conn.Write([]byte{1, 0x80})
	buf := make([]byte, 1)
	_, err = conn.Read(buf)
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("raft stream from a non-member was served or left open: %v", err)
	}
	conn.Close()

	if _, ok := c.nodes[0].store.State().Catalog["intruder"]; ok {
		t.Fatal("a non-member's write was applied")
	}
}

// TestBootstrapExpect: three nodes with BootstrapExpect=3 learn each other
// through Expect and form one cluster with three voters.
func TestBootstrapExpect(t *testing.T) {
	c := &testCluster{t: t, tweak: func(cfg *Config) { cfg.BootstrapExpect = 3 }}
	for i := 0; i < 3; i++ {
		c.addNode()
	}
	t.Cleanup(c.closeAll)
	for i := 0; i < 3; i++ {
		c.start(i, false)
	}
	// Nobody bootstraps before it knows three nodes.
	time.Sleep(3 * testElection)
	for i, n := range c.nodes {
		if l := n.store.Leader(); l != "" {
			t.Fatalf("node %d sees leader %s before BootstrapExpect was met", i, l)
		}
	}
	for i, n := range c.nodes {
		for j, o := range c.nodes {
			if i != j {
				if err := n.store.Expect(o.id); err != nil {
					t.Fatalf("Expect: %v", err)
				}
			}
		}
	}
	c.waitLeader(10 * time.Second)
	c.waitVoters(10*time.Second, []int{0, 1, 2}, nil)
	applyVia(t, c.nodes[0].store, CatalogPut{Key: "k", Value: "v"})
}

// TestWatchAndLeaderCh: watchers hear about applied changes, LeaderCh reports
// gaining leadership, and cancel closes the channels.
func TestWatchAndLeaderCh(t *testing.T) {
	c := startCluster(t, 3, nil)
	c.waitVoters(10*time.Second, []int{0, 1, 2}, nil)
	leader := c.waitLeader(5 * time.Second)
	f := c.follower(leader)
	w, cancelW := c.nodes[f].store.Watch()
	var leaderChs []<-chan bool
	for i, n := range c.nodes {
		if i != leader {
			ch, cancel := n.store.LeaderCh()
			defer cancel()
			leaderChs = append(leaderChs, ch)
		}
	}
	applyVia(t, c.nodes[leader].store, CatalogPut{Key: "w", Value: "1"})
	select {
	case <-w:
	case <-time.After(5 * time.Second):
		t.Fatal("follower's watcher not notified of an applied change")
	}
	if c.nodes[f].store.State().Catalog["w"] != "1" {
		t.Fatal("notified before the change was visible")
	}
	cancelW()
	if _, open := <-w; open {
		t.Fatal("Watch channel still open after cancel")
	}

	c.mu.Lock()
	c.nodes[leader].up = false
	c.mu.Unlock()
	if err := c.nodes[leader].store.Close(); err != nil {
		t.Fatal(err)
	}
	c.nodes[leader].host.Close()
	deadline := time.After(10 * time.Second)
	for got := false; !got; {
		select {
		case v := <-leaderChs[0]:
			got = v
		case v := <-leaderChs[1]:
			got = v
		case <-deadline:
			t.Fatal("no LeaderCh reported leadership after the leader closed")
		}
	}
}

// TestForwardAbandonsAFrozenLeader: a follower forwards a write to a leader that takes
// it and never answers (as a paused process would). Once leadership moves, the
// follower gives up on the old leader and the same request goes to the new one: the
// write is acknowledged soon after the change, not when the caller's deadline ends,
// and applied once.
func TestForwardAbandonsAFrozenLeader(t *testing.T) {
	c := startCluster(t, 3, nil)
	c.waitVoters(10*time.Second, []int{0, 1, 2}, nil)
	old := c.waitLeader(5 * time.Second)
	release := make(chan struct{})
	defer close(release)
	c.nodes[old].host.SetStreamHandler(ApplyProtocol, func(s network.Stream) {
		defer s.Reset()
		_, _ = io.Copy(io.Discard, s)
		<-release
	})
	follower := (old + 1) % 3
	type outcome struct {
		res Result
		err error
		at  time.Time
	}
	done := make(chan outcome, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		res, err := c.nodes[follower].store.Apply(ctx, NewCommand(CatalogPut{Key: "frozen", Value: "once"}))
		done <- outcome{res, err, time.Now()}
	}()
	time.Sleep(500 * time.Millisecond) // the write is now waiting on the old leader
	select {
	case o := <-done:
		t.Fatalf("the write finished while its leader was frozen: %+v", o)
	default:
	}
	moved := time.Now()
	if err := c.nodes[old].store.raft.LeadershipTransfer().Error(); err != nil {
		t.Fatalf("leadership transfer: %v", err)
	}
	o := <-done
	if o.err != nil {
		t.Fatalf("write after the leader changed: %v", o.err)
	}
	took := o.at.Sub(moved)
	t.Logf("acknowledged %v after the leadership moved (index %d, duplicate %v)", took.Round(time.Millisecond), o.res.Index, o.res.Duplicate)
	if took > 5*time.Second {
		t.Fatalf("acknowledged %v after the leadership moved: the follower kept waiting on the frozen leader", took)
	}
	for i := range c.nodes {
		eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
			if v := c.nodes[i].store.State().Catalog["frozen"]; v != "once" {
				return fmt.Errorf("node %d: %q", i, v)
			}
			return nil
		})
	}
}
