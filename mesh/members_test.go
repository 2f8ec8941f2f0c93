package mesh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// seedForms gives node i's seed address in a different accepted form each time, so
// all three forms are exercised: full multiaddr, multiaddr without /p2p/, host:port.
func seedForms(m *Mesh, i int) string {
	full := m.Addrs()[0]
	bare := strings.Split(full, "/p2p/")[0]
	switch i % 3 {
	case 0:
		return full
	case 1:
		return bare
	}
	a, _ := ma.NewMultiaddr(bare)
	na, _ := manet.ToNetAddr(a)
	return na.String()
}

func TestSeedsDiscoveryKillRestart(t *testing.T) {
	const n = 5
	dirs := make([]string, n)
	ms := make([]*Mesh, n)
	for i := range n {
		dirs[i] = t.TempDir()
		cfg := testConfig(t, dirs[i])
		if i > 0 {
			cfg.Join = []string{seedForms(ms[0], i)}
		}
		ms[i] = startMesh(t, cfg)
	}
	eventually(t, 30*time.Second, 200*time.Millisecond, func() error { return allSeeAll(ms) })

	// Every member's metadata carries its peer id, addresses and data port.
	for _, mem := range ms[1].Members() {
		if mem.Meta.PeerID != mem.PeerID.String() || len(mem.Meta.Addrs) == 0 || mem.Meta.DataPort == 0 {
			t.Fatalf("incomplete metadata for %s: %+v", mem.PeerID, mem.Meta)
		}
	}

	// Each node joined through node 0 alone, yet knows every other member's libp2p
	// addresses from gossip, so it can dial any of them once node 0 is gone.
	for _, m := range ms {
		for _, other := range ms {
			if other == m {
				continue
			}
			known := m.host.Peerstore().Addrs(other.ID())
			for _, want := range other.listenAddrs() {
				if !slices.ContainsFunc(known, func(a ma.Multiaddr) bool { return a.String() == want }) {
					t.Fatalf("%s's peerstore lacks %s's address %s (has %v)", shortID(m.ID()), shortID(other.ID()), want, known)
				}
			}
		}
	}

	events, cancel := ms[1].Subscribe()
	defer cancel()
	victim := ms[4]
	victimID := victim.ID()
	if err := victim.Close(); err != nil { // no graceful leave: a crash as far as gossip knows
		t.Fatalf("close: %v", err)
	}
	var suspected bool
	deadline := time.After(30 * time.Second)
wait:
	for {
		select {
		case ev := <-events:
			if ev.Member.PeerID != victimID {
				continue
			}
			switch ev.Type {
			case MemberSuspect:
				suspected = true
			case MemberDead:
				break wait
			case MemberLeave:
				t.Fatalf("killed node reported as a graceful leave")
			}
		case <-deadline:
			t.Fatalf("killed node %s not reported dead within 30s", shortID(victimID))
		}
	}
	t.Logf("killed node reported dead (suspect event seen first: %v)", suspected)

	// Restart on the same data dir: same peer id, on new ports (GossipPort 0), at once,
	// while the others' entries for it are alive, suspect or freshly dead, so each of
	// them first refuses its new address. Every member must see it alive within 10 s.
	cfg := testConfig(t, dirs[4])
	cfg.Join = []string{ms[2].Addrs()[0]}
	ms[4] = startMesh(t, cfg)
	restarted := time.Now()
	if ms[4].ID() != victimID {
		t.Fatalf("restarted node has peer id %s, want %s", ms[4].ID(), victimID)
	}
	eventually(t, 10*time.Second, 100*time.Millisecond, func() error { return allSeeAll(ms) })
	t.Logf("restarted node seen alive by every member %v after its restart", time.Since(restarted).Round(time.Millisecond))
}

func TestUpdateMetaGossips(t *testing.T) {
	a := startMesh(t, testConfig(t, t.TempDir()))
	cfg := testConfig(t, t.TempDir())
	cfg.Join = []string{a.Addrs()[0]}
	b := startMesh(t, cfg)
	eventually(t, 20*time.Second, 100*time.Millisecond, func() error { return allSeeAll([]*Mesh{a, b}) })
	err := b.UpdateMeta(func(meta *NodeMeta) {
		meta.Load = 7
		meta.Boot = "run-2"
	})
	if err != nil {
		t.Fatalf("UpdateMeta: %v", err)
	}
	eventually(t, 20*time.Second, 100*time.Millisecond, func() error {
		mem, ok := a.Member(b.ID())
		if !ok || mem.Meta.Load != 7 || mem.Meta.Boot != "run-2" {
			return fmt.Errorf("metadata not propagated: %+v", mem.Meta)
		}
		return nil
	})
	err = b.UpdateMeta(func(meta *NodeMeta) { meta.HTTPAddr = strings.Repeat("x", 600) })
	if !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("oversized metadata: got %v, want ErrMetaTooLarge", err)
	}
	if b.Meta().HTTPAddr != "" {
		t.Fatalf("refused metadata change was applied")
	}
}

// TestMDNSDiscovery runs mDNS on loopback only. Linux leaves the MULTICAST flag off on
// lo, and go-libp2p's own mdns package only uses flagged interfaces, so it finds nothing
// there; naming the interface explicitly (Config.MDNSInterfaces, which the zeroconf
// library honours) works without the flag and without root.
func TestMDNSDiscovery(t *testing.T) {
	const n = 5
	ms := make([]*Mesh, n)
	for i := range n {
		cfg := testConfig(t, t.TempDir())
		cfg.MDNS = true
		cfg.MDNSInterfaces = []string{"lo"}
		ms[i] = startMesh(t, cfg)
	}
	// A node of another cluster on the same loopback must not be found.
	other := testConfig(t, t.TempDir())
	other.ClusterID = "other-cluster"
	other.MDNS = true
	other.MDNSInterfaces = []string{"lo"}
	stranger := startMesh(t, other)

	eventually(t, 40*time.Second, 200*time.Millisecond, func() error { return allSeeAll(ms) })
	for _, m := range ms {
		if aliveSet(m)[stranger.ID()] {
			t.Fatalf("node of another cluster joined through mDNS")
		}
	}
	found := 0
	for _, m := range ms {
		if m.anyFoundBy(SourceMDNS) {
			found++
		}
	}
	if found == 0 {
		t.Fatalf("members joined but none through mDNS")
	}
	if len(aliveSet(stranger)) != 1 {
		t.Fatalf("stranger sees %d members, want only itself", len(aliveSet(stranger)))
	}
}

// TestDHTRendezvous: two nodes that share only a libp2p connection to a third (no
// handshake, no gossip, no mDNS) find each other through the DHT rendezvous.
func TestDHTRendezvous(t *testing.T) {
	old := dhtCycle
	dhtCycle = 2 * time.Second
	defer func() { dhtCycle = old }()
	var ms []*Mesh
	for range 3 {
		cfg := testConfig(t, t.TempDir())
		cfg.DHT = true
		ms = append(ms, startMesh(t, cfg))
	}
	hub := ms[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range ms[1:] {
		if err := m.host.Connect(ctx, addrInfo(t, hub)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 45*time.Second, 200*time.Millisecond, func() error { return allSeeAll(ms) })
	viaDHT := 0
	for _, m := range ms {
		if m.anyFoundBy(SourceDHT) {
			viaDHT++
		}
	}
	if viaDHT == 0 {
		t.Fatalf("members joined but none through the DHT")
	}
}

func TestGracefulLeaveIsNotDeath(t *testing.T) {
	a := startMesh(t, testConfig(t, t.TempDir()))
	cfg := testConfig(t, t.TempDir())
	cfg.Join = []string{a.Addrs()[0]}
	b := startMesh(t, cfg)
	eventually(t, 20*time.Second, 100*time.Millisecond, func() error { return allSeeAll([]*Mesh{a, b}) })
	events, cancel := a.Subscribe()
	defer cancel()
	if err := b.Leave(5 * time.Second); err != nil {
		t.Fatalf("leave: %v", err)
	}
	_ = b.Close()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Member.PeerID != b.ID() {
				continue
			}
			switch ev.Type {
			case MemberLeave:
				return
			case MemberDead:
				t.Fatalf("graceful leave reported as a death")
			}
		case <-deadline:
			t.Fatalf("no leave event within 20s")
		}
	}
}

// Noise security and a host:port seed (peer id learned through the security
// handshake alone), and the private-network option keeping out a node without it.
func TestNoiseAndPrivateNetwork(t *testing.T) {
	mk := func(sec Security, pnet bool, join ...string) *Mesh {
		cfg := testConfig(t, t.TempDir())
		cfg.Security, cfg.PrivateNetwork, cfg.Join = sec, pnet, join
		return startMesh(t, cfg)
	}
	hostPort := func(m *Mesh) string { return seedForms(m, 2) }

	a := mk(SecurityNoise, false)
	b := mk(SecurityNoise, false, hostPort(a))
	eventually(t, 20*time.Second, 100*time.Millisecond, func() error { return allSeeAll([]*Mesh{a, b}) })

	p := mk(SecurityTLS, true)
	q := mk(SecurityTLS, true, hostPort(p))
	eventually(t, 20*time.Second, 100*time.Millisecond, func() error { return allSeeAll([]*Mesh{p, q}) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	outsider := mk(SecurityTLS, false)
	if err := outsider.Connect(ctx, addrInfo(t, p)); err == nil {
		t.Fatalf("node without the private-network key connected to one with it")
	}
}
