package mesh

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/layermesh/layermesh/internal/ctxtime"
)

const (
	// suspectAfter is how many probe rounds in a row a member may miss before it is
	// suspect: one lost UDP datagram is not a failing node.
	suspectAfter = 2
	// maxParallelPings bounds the pings of one round.
	maxParallelPings = 8
)

// suspicionWatch reports members that stop answering (MemberSuspect) and members that
// answer again. memberlist v0.7 keeps its own suspect state private: it lives in an
// unexported record, and the Node.State field that Members and the event callbacks
// hand out is never updated after a node is first seen. So the mesh derives suspicion
// from the probe results memberlist's API does expose: the acks of memberlist's own
// probes (its PingDelegate) and Memberlist.Ping, one probe over memberlist's transport
// under the gossip key. Each round, one memberlist probe interval, pings every member
// that has not acked within the interval; a member that misses suspectAfter rounds in
// a row is suspect until it acks again or memberlist reports it joined, updated, dead
// or gone. memberlist's own failure detection still decides death.
type suspicionWatch struct {
	m     *Mesh
	every time.Duration
	// ping probes one member; it is memberlist's Ping once the list exists.
	ping func(name string, addr net.Addr) error

	mu       sync.Mutex
	lastAck  map[string]time.Time
	misses   map[string]int
	suspects map[string]bool
}

func newSuspicionWatch(m *Mesh, every time.Duration) *suspicionWatch {
	return &suspicionWatch{
		m:        m,
		every:    every,
		lastAck:  make(map[string]time.Time),
		misses:   make(map[string]int),
		suspects: make(map[string]bool),
	}
}

// AckPayload adds nothing to memberlist's acks.
func (w *suspicionWatch) AckPayload() []byte { return nil }

// NotifyPingComplete is memberlist's report of an ack to one of its own probes.
func (w *suspicionWatch) NotifyPingComplete(other *memberlist.Node, _ time.Duration, _ []byte) {
	w.answered(other.Name)
}

// run pings the members due for it every interval until ctx ends.
func (w *suspicionWatch) run(ctx context.Context) {
	ctxtime.EveryTick(ctx, w.every, func() {
		if !w.m.left.Load() {
			w.round(ctx)
		}
	})
}

// round pings, in parallel, every member other than this node that has not acked
// within the interval, and records each answer or silence.
func (w *suspicionWatch) round(ctx context.Context) {
	var wg sync.WaitGroup
	slots := make(chan struct{}, maxParallelPings)
	for _, mem := range w.due() {
		addr, err := net.ResolveUDPAddr("udp", mem.GossipAddr)
		if err != nil {
			continue
		}
		name := mem.PeerID.String()
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			err := w.ping(name, addr)
			if ctx.Err() != nil {
				// Closing: the list is shutting down under the ping.
				return
			}
			if err != nil {
				w.missed(name)
			} else {
				w.answered(name)
			}
		}()
	}
	wg.Wait()
}

// due lists the members to ping this round.
func (w *suspicionWatch) due() []Member {
	members := w.m.Members()
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	out := members[:0]
	for _, mem := range members {
		if mem.PeerID == w.m.id || mem.PeerID == "" {
			continue
		}
		if now.Sub(w.lastAck[mem.PeerID.String()]) < w.every {
			continue
		}
		out = append(out, mem)
	}
	return out
}

// answered records an ack from name; a suspect that answers is alive again.
func (w *suspicionWatch) answered(name string) {
	w.mu.Lock()
	w.lastAck[name] = time.Now()
	delete(w.misses, name)
	wasSuspect := w.suspects[name]
	delete(w.suspects, name)
	w.mu.Unlock()
	if wasSuspect {
		w.m.setMemberState(name, StateAlive, MemberUpdate)
	}
}

// missed records a probe round name did not answer.
func (w *suspicionWatch) missed(name string) {
	w.mu.Lock()
	w.misses[name]++
	becomes := w.misses[name] >= suspectAfter && !w.suspects[name]
	if becomes {
		w.suspects[name] = true
	}
	w.mu.Unlock()
	if becomes {
		w.m.setMemberState(name, StateSuspect, MemberSuspect)
	}
}

// forget drops what the watch knows of name: memberlist has just reported it joined,
// updated, dead or gone, which supersedes any suspicion.
func (w *suspicionWatch) forget(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.lastAck, name)
	delete(w.misses, name)
	delete(w.suspects, name)
}
