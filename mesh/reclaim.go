package mesh

import (
	"context"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// A member that restarts on a new gossip address (a new port, a new DHCP lease) while
// the others still hold its old entry alive or suspect, or dead for less than
// memberlist's DeadNodeReclaimTime, is refused by each of them: memberlist logs
// "Conflicting address" and drops the alive message. The message is retransmitted only
// a few times, all within the first few hundred milliseconds, so once those members
// declare the old entry dead nothing tells them about the new one but their next
// push-pull with a member that has it (every 15 s with a random member, which may not
// have it either). Restarted members were seen alive again after 15 to 30+ s, or not at
// all within a test's 30 s.
//
// reclaimLoop closes that gap: every refused address is remembered, and once this
// node's memberlist no longer holds the old entry alive, it push-pulls with the new
// address, which merges the member's own alive record into the dead entry.
const (
	// reclaimRetry is how often a refused member is tried again; memberlist takes the
	// new address only once its dead entry is older than DeadNodeReclaimTime (1 s).
	reclaimRetry = 500 * time.Millisecond
	// reclaimGiveUp drops a refused address not taken by then: the old entry is still
	// alive (a genuine conflict) or the new address died too.
	reclaimGiveUp = 2 * time.Minute
)

// returningMember is a member whose alive message memberlist refused for a
// conflicting address.
type returningMember struct {
	gossipAddr string
	since      time.Time
}

// conflictDelegate hears memberlist's refusals of a known member's new address.
// memberlist calls it with its node lock held, so it only records and wakes the loop.
type conflictDelegate struct{ m *Mesh }

func (d *conflictDelegate) NotifyConflict(existing, other *memberlist.Node) {
	addr := net.JoinHostPort(other.Addr.String(), strconv.Itoa(int(other.Port)))
	d.m.returningMu.Lock()
	prev, ok := d.m.returning[other.Name]
	if !ok || prev.gossipAddr != addr {
		d.m.returning[other.Name] = returningMember{gossipAddr: addr, since: time.Now()}
	}
	d.m.returningMu.Unlock()
	select {
	case d.m.returningKick <- struct{}{}:
	default:
	}
}

var _ memberlist.ConflictDelegate = (*conflictDelegate)(nil)

// announceDelay is how long after its first join a node announces itself to every
// member directly: long enough for the push-pull with its seed to list them all.
const announceDelay = time.Second

// announceSelf push-pulls once with every member listed. memberlist spreads a node's
// alive message by gossip alone, retransmitted a few times to random members, so a
// member may never hear that this node restarted on a new address: after declaring
// the old entry dead it would wait for a push-pull that happens to bring the news. A
// direct push-pull makes each member either take the new address at once or refuse it
// as a conflict, which its reclaimLoop then resolves.
func (m *Mesh) announceSelf() {
	var addrs []string
	for _, mem := range m.Members() {
		if mem.PeerID != m.id && mem.GossipAddr != "" {
			addrs = append(addrs, mem.GossipAddr)
		}
	}
	if len(addrs) == 0 {
		return
	}
	n, err := m.list.Join(addrs)
	m.log.Debug("announced to every member", "members", len(addrs), "reached", n, "err", err)
}

// reclaimLoop push-pulls with each refused member's new address until memberlist holds
// it alive there, retrying while the old entry is still alive or too freshly dead.
func (m *Mesh) reclaimLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.returningKick:
		}
		for m.reclaimRound(ctx) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(reclaimRetry):
			}
		}
	}
}

// reclaimRound tries every refused member once and reports whether any is left.
func (m *Mesh) reclaimRound(ctx context.Context) bool {
	m.returningMu.Lock()
	pending := make(map[string]returningMember, len(m.returning))
	for name, r := range m.returning {
		pending[name] = r
	}
	m.returningMu.Unlock()
	for name, r := range pending {
		if ctx.Err() != nil {
			return false
		}
		m.membersMu.Lock()
		mem, listed := m.members[name]
		m.membersMu.Unlock()
		switch {
		case listed && mem.GossipAddr == r.gossipAddr:
			m.log.Info("member back on a new gossip address", "member", name, "gossip", r.gossipAddr,
				"after", time.Since(r.since).Round(time.Millisecond).String())
			m.forgetReturning(name, r)
		case time.Since(r.since) > reclaimGiveUp:
			m.log.Warn("member's new gossip address never taken; its old entry is still alive", "member", name, "gossip", r.gossipAddr)
			m.forgetReturning(name, r)
		case !listed:
			// The old entry is dead here: merging the member's own state takes the new
			// address once the entry is old enough; until then memberlist refuses again.
			if _, err := m.list.Join([]string{r.gossipAddr}); err != nil {
				m.log.Debug("push-pull with returning member", "member", name, "gossip", r.gossipAddr, "err", err)
			}
		}
	}
	m.returningMu.Lock()
	defer m.returningMu.Unlock()
	return len(m.returning) > 0
}

// forgetReturning drops name's refused address unless a newer one replaced it meanwhile.
func (m *Mesh) forgetReturning(name string, r returningMember) {
	m.returningMu.Lock()
	defer m.returningMu.Unlock()
	if cur, ok := m.returning[name]; ok && cur == r {
		delete(m.returning, name)
	}
}
