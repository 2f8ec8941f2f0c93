package consensus

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// badger v4.9.6 leaves these behind when Open fails after starting its
		// cache monitor (see badgerstore's TestMain); only TestOpenCorruptDir
		// triggers them.
		goleak.IgnoreTopFunction("github.com/dgraph-io/badger/v4.(*DB).monitorCache"),
		goleak.IgnoreTopFunction("github.com/dgraph-io/ristretto/v2/z.(*AllocatorPool).freeupAllocators"),
		// go-libp2p starts process-wide helpers once and never stops them.
		goleak.IgnoreAnyFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

// Test timing: fast enough that the suite stays short, slow enough that a
// loaded 2-core machine does not flap leadership.
const (
	testHeartbeat = 500 * time.Millisecond
	testElection  = 500 * time.Millisecond
	testLease     = 250 * time.Millisecond
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("CONSENSUS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testNode is one member of an in-process cluster: a real libp2p host on
// 127.0.0.1 with a persistent identity and a data dir that outlive restarts.
type testNode struct {
	key   crypto.PrivKey
	gater *partitionGater
	id    string
	dir   string
	host  host.Host
	store *Store
	up    bool
}

type testCluster struct {
	t     testing.TB
	mu    sync.Mutex
	nodes []*testNode
	tweak func(*Config)
}

func newTestHost(t testing.TB, key crypto.PrivKey, gater *partitionGater) host.Host {
	t.Helper()
	if gater == nil {
		gater = newPartitionGater()
	}
	h, err := libp2p.New(
		libp2p.Identity(key),
		libp2p.ConnectionGater(gater),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	)
	if err != nil {
		t.Fatalf("libp2p host: %v", err)
	}
	return h
}

// startCluster makes n nodes; node 0 bootstraps, the others are added through
// AddNode, and the call returns once all n are in the Raft configuration.
func startCluster(t testing.TB, n int, tweak func(*Config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, tweak: tweak}
	for i := 0; i < n; i++ {
		c.addNode()
	}
	t.Cleanup(c.closeAll)
	c.start(0, true)
	c.waitLeader(10 * time.Second)
	for i := 1; i < n; i++ {
		c.start(i, false)
		c.join(i)
	}
	return c
}

func (c *testCluster) addNode() int {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		c.t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := &testNode{key: key, id: id.String(), gater: newPartitionGater(), dir: c.t.TempDir()}
	c.nodes = append(c.nodes, n)
	return len(c.nodes) - 1
}

// start opens node i on a fresh host (a new port, the same identity) and tells
// every live host where it is, as the mesh layer would.
func (c *testCluster) start(i int, bootstrap bool) {
	c.t.Helper()
	n := c.nodes[i]
	n.host = newTestHost(c.t, n.key, n.gater)
	c.mu.Lock()
	for j, o := range c.nodes {
		if j == i || !o.up {
			continue
		}
		o.host.Peerstore().ClearAddrs(n.host.ID())
		o.host.Peerstore().AddAddrs(n.host.ID(), n.host.Addrs(), peerstore.PermanentAddrTTL)
		n.host.Peerstore().AddAddrs(o.host.ID(), o.host.Addrs(), peerstore.PermanentAddrTTL)
	}
	c.mu.Unlock()
	cfg := Config{
		DataDir:            n.dir,
		NodeID:             n.id,
		Host:               n.host,
		Bootstrap:          bootstrap,
		Logger:             testLogger(c.t).With("node", i),
		HeartbeatTimeout:   testHeartbeat,
		ElectionTimeout:    testElection,
		LeaderLeaseTimeout: testLease,
		ApplyTimeout:       8 * time.Second,
		ReconcileInterval:  200 * time.Millisecond,
	}
	if c.tweak != nil {
		c.tweak(&cfg)
	}
	s, err := Open(context.Background(), cfg)
	if err != nil {
		n.host.Close()
		c.t.Fatalf("open node %d: %v", i, err)
	}
	c.mu.Lock()
	n.store, n.up = s, true
	c.mu.Unlock()
}

// join admits node i through any live node and waits until the leader's
// configuration holds it.
func (c *testCluster) join(i int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	via := c.anyUp(i)
	if err := c.nodes[via].store.AddNode(ctx, c.nodes[i].id); err != nil {
		c.t.Fatalf("AddNode(%d) via %d: %v", i, via, err)
	}
}

func (c *testCluster) anyUp(except int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for j, n := range c.nodes {
		if j != except && n.up {
			return j
		}
	}
	c.t.Fatal("no live node")
	return -1
}

// kill is the in-process SIGKILL: the host goes away first (peers see every
// connection drop), then raft stops without a leadership transfer.
func (c *testCluster) kill(i int) {
	c.t.Helper()
	c.mu.Lock()
	n := c.nodes[i]
	if !n.up {
		c.mu.Unlock()
		return
	}
	n.up = false
	c.mu.Unlock()
	n.host.Close()
	n.store.closeOnce.Do(func() { n.store.closeErr = n.store.shutdown() })
}

func (c *testCluster) closeAll() {
	for i := range c.nodes {
		c.mu.Lock()
		n := c.nodes[i]
		up := n.up
		n.up = false
		c.mu.Unlock()
		if up {
			n.store.Close()
			n.host.Close()
		}
	}
}

func (c *testCluster) live() []*testNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*testNode
	for _, n := range c.nodes {
		if n.up {
			out = append(out, n)
		}
	}
	return out
}

// waitLeader waits until every live node agrees on one leader that is itself
// live, and returns its index.
func (c *testCluster) waitLeader(total time.Duration) int {
	c.t.Helper()
	var idx int
	eventually(c.t, total, 20*time.Millisecond, func() error {
		idx = -1
		var leader string
		for _, n := range c.live() {
			l := n.store.Leader()
			if l == "" || (leader != "" && l != leader) {
				return fmt.Errorf("no agreed leader (node %s sees %q)", n.id, l)
			}
			leader = l
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, n := range c.nodes {
			if n.up && n.id == leader && n.store.IsLeader() {
				idx = i
			}
		}
		if idx < 0 {
			return fmt.Errorf("leader %q is not a live leader", leader)
		}
		return nil
	})
	return idx
}

// eventually retries fn every `every` until it returns nil or total passes.
func eventually(t testing.TB, total, every time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true after %v: %v", total, err)
		}
		time.Sleep(every)
	}
}

func (c *testCluster) config(i int) raft.Configuration {
	return c.nodes[i].store.raft.GetConfiguration().Configuration()
}

func suffrage(conf raft.Configuration, id string) (raft.ServerSuffrage, bool) {
	for _, s := range conf.Servers {
		if string(s.ID) == id {
			return s.Suffrage, true
		}
	}
	return 0, false
}

// waitVoters waits until the leader's configuration has exactly these voters
// and non-voters (by node index).
func (c *testCluster) waitVoters(total time.Duration, voters, nonVoters []int) {
	c.t.Helper()
	eventually(c.t, total, 50*time.Millisecond, func() error {
		l := c.waitLeaderQuick()
		if l < 0 {
			return errors.New("no leader")
		}
		conf := c.config(l)
		if len(conf.Servers) != len(voters)+len(nonVoters) {
			return fmt.Errorf("configuration has %d servers, want %d", len(conf.Servers), len(voters)+len(nonVoters))
		}
		for _, i := range voters {
			if s, ok := suffrage(conf, c.nodes[i].id); !ok || s != raft.Voter {
				return fmt.Errorf("node %d is not a voter (%v %v)", i, s, ok)
			}
		}
		for _, i := range nonVoters {
			if s, ok := suffrage(conf, c.nodes[i].id); !ok || s != raft.Nonvoter {
				return fmt.Errorf("node %d is not a non-voter (%v %v)", i, s, ok)
			}
		}
		return nil
	})
}

func (c *testCluster) waitLeaderQuick() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range c.nodes {
		if n.up && n.store.IsLeader() {
			return i
		}
	}
	return -1
}

// upsertMembers writes a member record for every node, as the node layer does.
func (c *testCluster) upsertMembers(idx ...int) {
	c.t.Helper()
	for _, i := range idx {
		via := c.anyUp(-1)
		m := Member{ID: c.nodes[i].id, Name: fmt.Sprintf("node%d", i), State: MemberAlive}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := c.nodes[via].store.Apply(ctx, NewCommand(UpsertMember{m})); err != nil {
			cancel()
			c.t.Fatalf("upsert member %d: %v", i, err)
		}
		cancel()
	}
}

// partitionGater cuts a node off from chosen peers at the libp2p layer: no
// dial out, no secured connection in. With the existing connections closed,
// that is a real network partition between in-process hosts.
type partitionGater struct {
	mu      sync.RWMutex
	blocked map[peer.ID]bool
}

func newPartitionGater() *partitionGater {
	return &partitionGater{blocked: map[peer.ID]bool{}}
}

func (g *partitionGater) allowed(p peer.ID) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return !g.blocked[p]
}

func (g *partitionGater) set(p peer.ID, blocked bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if blocked {
		g.blocked[p] = true
	} else {
		delete(g.blocked, p)
	}
}

func (g *partitionGater) InterceptPeerDial(p peer.ID) bool                 { return g.allowed(p) }
func (g *partitionGater) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool { return g.allowed(p) }
func (g *partitionGater) InterceptAccept(network.ConnMultiaddrs) bool      { return true }
func (g *partitionGater) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return g.allowed(p)
}
func (g *partitionGater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}

// partition separates the nodes in side from all others, both ways.
func (c *testCluster) partition(side ...int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	in := map[int]bool{}
	for _, i := range side {
		in[i] = true
	}
	for i, a := range c.nodes {
		for j, b := range c.nodes {
			if in[i] == in[j] {
				continue
			}
			bid, _ := peer.Decode(b.id)
			a.gater.set(bid, true)
			if a.up {
				_ = a.host.Network().ClosePeer(bid)
			}
		}
	}
}

// heal removes every partition.
func (c *testCluster) heal() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.nodes {
		for _, b := range c.nodes {
			bid, _ := peer.Decode(b.id)
			a.gater.set(bid, false)
		}
	}
}
