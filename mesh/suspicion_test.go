package mesh

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// gossipPair starts two meshes that see each other alive, with the given gossip timing.
func gossipPair(t *testing.T, fast bool) (*Mesh, *Mesh) {
	t.Helper()
	cfgA := testConfig(t, t.TempDir())
	cfgA.FastGossip = fast
	a := startMesh(t, cfgA)
	cfgB := testConfig(t, t.TempDir())
	cfgB.FastGossip = fast
	cfgB.Join = []string{a.Addrs()[0]}
	b := startMesh(t, cfgB)
	eventually(t, 30*time.Second, 100*time.Millisecond, func() error { return allSeeAll([]*Mesh{a, b}) })
	return a, b
}

// nextEventFor returns the next event about p, failing the test after timeout.
func nextEventFor(t *testing.T, events <-chan MemberEvent, p peer.ID, timeout time.Duration) MemberEvent {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case ev := <-events:
			if ev.Member.PeerID == p {
				return ev
			}
		case <-deadline:
			t.Fatalf("no event about %s within %v", shortID(p), timeout)
		}
	}
}

// A member whose memberlist stops without leaving (a crash as far as gossip knows) is
// reported suspect while memberlist still lists it, then dead. memberlist's LAN timings
// keep a suspect for 4 s before declaring it dead; the watch suspects after two missed
// rounds of one second each.
func TestSilentMemberIsSuspectedBeforeDeclaredDead(t *testing.T) {
	a, b := gossipPair(t, false)
	events, cancel := a.Subscribe()
	defer cancel()
	victim := b.ID()
	if err := b.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	ev := nextEventFor(t, events, victim, 30*time.Second)
	if ev.Type != MemberSuspect || ev.Member.State != StateSuspect {
		t.Fatalf("first event about the silent member: %s (%s), want suspect", ev.Type, ev.Member.State)
	}
	if mem, ok := a.Member(victim); !ok || mem.State != StateSuspect {
		t.Fatalf("member table holds %+v (present %v) after the suspicion, want it suspect", mem.State, ok)
	}
	if ev := nextEventFor(t, events, victim, 30*time.Second); ev.Type != MemberDead {
		t.Fatalf("event after the suspicion: %s, want dead", ev.Type)
	}
	if _, ok := a.Member(victim); ok {
		t.Fatalf("dead member still in the table")
	}
}

// A suspect that answers memberlist's ping again is reported alive. The watch under
// test pings through the real memberlist, first at an address where nothing answers
// (the member is silent to it), then at the member's own.
func TestSuspectThatAnswersAgainIsAlive(t *testing.T) {
	a, b := gossipPair(t, true)
	events, cancel := a.Subscribe()
	defer cancel()
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nowhere := silent.LocalAddr()
	silent.Close()
	own, err := net.ResolveUDPAddr("udp", b.GossipAddr())
	if err != nil {
		t.Fatal(err)
	}
	target := nowhere
	w := newSuspicionWatch(a, time.Nanosecond)
	w.ping = func(name string, _ net.Addr) error {
		_, err := a.list.Ping(name, target)
		return err
	}
	ctx := context.Background()
	for round := 1; round < suspectAfter; round++ {
		w.round(ctx)
		if mem, _ := a.Member(b.ID()); mem.State != StateAlive {
			t.Fatalf("suspect after %d missed round(s), want %d", round, suspectAfter)
		}
	}
	w.round(ctx)
	if ev := nextEventFor(t, events, b.ID(), 10*time.Second); ev.Type != MemberSuspect {
		t.Fatalf("after %d missed rounds: %s, want suspect", suspectAfter, ev.Type)
	}
	target = own
	w.round(ctx)
	ev := nextEventFor(t, events, b.ID(), 10*time.Second)
	if ev.Type != MemberUpdate || ev.Member.State != StateAlive {
		t.Fatalf("after an answer: %s (%s), want an update to alive", ev.Type, ev.Member.State)
	}
	if mem, _ := a.Member(b.ID()); mem.State != StateAlive {
		t.Fatalf("member table holds %s after the answer, want alive", mem.State)
	}
}
