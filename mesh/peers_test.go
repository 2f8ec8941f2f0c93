package mesh

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/layermesh/layermesh/internal/testports"
)

// TestKnownPeersRejoinWithoutTheSeed: three nodes join through node 0 alone; all
// three stop without a goodbye, and only nodes 1 and 2 come back, node 1 on its old
// address and node 2 on a new one, both with node 0 as their only seed, which stays
// down. Their peers files must bring them together again within 10 s, and node 1 must
// forget node 2's old address for the new one.
func TestKnownPeersRejoinWithoutTheSeed(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	ms := make([]*Mesh, 3)
	ms[0] = startMesh(t, testConfig(t, dirs[0]))
	seed := ms[0].Addrs()[0]
	for i := 1; i < 3; i++ {
		cfg := testConfig(t, dirs[i])
		cfg.Join = []string{seed}
		if i == 1 {
			// It comes back on this port: one below the ephemeral range, which no
			// connection on the machine takes while the node is down.
			cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/" + strconv.Itoa(testports.Loopback(t, false))}
		}
		ms[i] = startMesh(t, cfg)
	}
	eventually(t, 20*time.Second, 100*time.Millisecond, func() error { return allSeeAll(ms) })

	// Every node has written the other two into its peers file.
	for i, dir := range dirs {
		eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
			ids, err := peersInFile(dir)
			if err != nil {
				return err
			}
			for j, o := range ms {
				if j != i && !slices.Contains(ids, o.ID().String()) {
					return fmt.Errorf("node %d's peers file lacks node %d (has %v)", i, j, ids)
				}
			}
			return nil
		})
	}
	oldAddr1 := ms[1].listenAddrs()[0]
	oldAddr2 := ms[2].listenAddrs()[0]
	for _, m := range ms {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	}

	cfg1 := testConfig(t, dirs[1])
	cfg1.ListenAddrs = []string{oldAddr1}
	cfg1.Join = []string{seed}
	cfg2 := testConfig(t, dirs[2])
	cfg2.Join = []string{seed}
	restarted := time.Now()
	back := []*Mesh{startMesh(t, cfg1), startMesh(t, cfg2)}
	if back[1].listenAddrs()[0] == oldAddr2 {
		t.Fatalf("node 2 came back on its old address %s; the test needs a new one", oldAddr2)
	}
	eventually(t, 10*time.Second, 100*time.Millisecond, func() error { return allSeeAll(back) })
	t.Logf("nodes 1 and 2 see each other %v after their restart, without their seed", time.Since(restarted).Round(time.Millisecond))

	// Node 1 dials node 2 at its new address only.
	eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
		var got []string
		for _, a := range back[0].host.Peerstore().Addrs(back[1].ID()) {
			got = append(got, a.String())
		}
		if slices.Contains(got, oldAddr2) || !slices.Contains(got, back[1].listenAddrs()[0]) {
			return fmt.Errorf("node 1 holds %v for node 2, want its new address %s and not the old %s", got, back[1].listenAddrs()[0], oldAddr2)
		}
		return nil
	})
}

func peersInFile(dir string) ([]string, error) {
	raw, err := os.ReadFile(filepath.Join(dir, PeersFileName))
	if err != nil {
		return nil, err
	}
	var f peersFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, err
	}
	var ids []string
	for _, p := range f.Peers {
		if len(p.Addrs) == 0 {
			return nil, fmt.Errorf("peer %s has no address in the file", p.ID)
		}
		ids = append(ids, p.ID)
	}
	return ids, nil
}

// TestKnownPeersRejoinThroughGossipPort: two nodes come back on new libp2p ports (as
// with --listen .../tcp/0) but on their old gossip ports, with no seed at all. Their
// peers files name only libp2p addresses nobody listens on any more, and gossip
// addresses that answer again: they must find each other through the latter.
func TestKnownPeersRejoinThroughGossipPort(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir()}
	// Gossip ports below the ephemeral range, which no connection on the machine
	// takes while the nodes are down.
	gossipPorts := []int{testports.Loopback(t, true), testports.Loopback(t, true)}
	cfg := testConfig(t, dirs[0])
	cfg.GossipPort = gossipPorts[0]
	a := startMesh(t, cfg)
	cfg = testConfig(t, dirs[1])
	cfg.GossipPort = gossipPorts[1]
	cfg.Join = []string{a.Addrs()[0]}
	b := startMesh(t, cfg)
	eventually(t, 20*time.Second, 100*time.Millisecond, func() error { return allSeeAll([]*Mesh{a, b}) })
	for i, dir := range dirs {
		other := []*Mesh{b, a}[i]
		eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
			raw, err := os.ReadFile(filepath.Join(dir, PeersFileName))
			if err != nil {
				return err
			}
			var f peersFile
			if err := json.Unmarshal(raw, &f); err != nil {
				return err
			}
			for _, p := range f.Peers {
				if p.ID == other.ID().String() && p.Gossip == other.GossipAddr() {
					return nil
				}
			}
			return fmt.Errorf("peers file of node %d lacks %s at gossip %s: %s", i, shortID(other.ID()), other.GossipAddr(), raw)
		})
	}
	if got := []int{gossipPortOf(t, a), gossipPortOf(t, b)}; !slices.Equal(got, gossipPorts) {
		t.Fatalf("gossip on ports %v, want %v", got, gossipPorts)
	}
	for _, m := range []*Mesh{a, b} {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	}
	back := make([]*Mesh, 2)
	for i := range back {
		cfg := testConfig(t, dirs[i])
		cfg.GossipPort = gossipPorts[i]
		back[i] = startMesh(t, cfg)
	}
	eventually(t, 10*time.Second, 100*time.Millisecond, func() error { return allSeeAll(back) })
}

func gossipPortOf(t *testing.T, m *Mesh) int {
	t.Helper()
	_, port, err := net.SplitHostPort(m.GossipAddr())
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAddKnownPeerDialsAndGossipWins: a node told a member's addresses (as the node
// package does from the Raft state) dials it and joins, with no seed; once gossip has
// given the member's addresses, an older record handed in later does not replace them.
func TestAddKnownPeerDialsAndGossipWins(t *testing.T) {
	a := startMesh(t, testConfig(t, t.TempDir()))
	b := startMesh(t, testConfig(t, t.TempDir()))
	b.AddKnownPeer(a.ID(), a.Addrs())
	eventually(t, 10*time.Second, 100*time.Millisecond, func() error { return allSeeAll([]*Mesh{a, b}) })

	stale := "/ip4/127.0.0.1/tcp/9/p2p/" + a.ID().String()
	b.AddKnownPeer(a.ID(), []string{stale})
	for _, addr := range b.host.Peerstore().Addrs(a.ID()) {
		if addr.String() == "/ip4/127.0.0.1/tcp/9" {
			t.Fatalf("a stale record replaced the address gossip gave: %v", b.host.Peerstore().Addrs(a.ID()))
		}
	}
}
