package mesh

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
)

// isAdmitted reports whether p may speak protocols other than the join handshake: it
// passed the handshake in this process, or the cluster state lists it as a member.
func (m *Mesh) isAdmitted(p peer.ID) bool {
	if p == m.id {
		return true
	}
	m.admitMu.Lock()
	ok := m.admitted[p]
	m.admitMu.Unlock()
	if ok {
		return true
	}
	isMember := m.isMember.Load()
	return isMember != nil && (*isMember)(p)
}

// SetIsMember replaces Config.IsMember. The cluster state that answers it (Raft) runs
// on this mesh's host, so it usually exists only after New returns.
func (m *Mesh) SetIsMember(fn func(peer.ID) bool) {
	if fn == nil {
		m.isMember.Store(nil)
		return
	}
	m.isMember.Store(&fn)
}

func (m *Mesh) admit(p peer.ID) {
	m.admitMu.Lock()
	m.admitted[p] = true
	delete(m.failures, p)
	m.admitMu.Unlock()
}

// maxJoinFailures is how many failed handshakes a peer id may accumulate before the
// connection gater stops accepting its connections for blockDuration.
const (
	maxJoinFailures = 20
	blockDuration   = time.Minute
)

func (m *Mesh) recordFailure(p peer.ID) {
	m.admitMu.Lock()
	m.failures[p]++
	m.admitMu.Unlock()
}

func (m *Mesh) blocked(p peer.ID) bool {
	m.admitMu.Lock()
	defer m.admitMu.Unlock()
	return m.failures[p] >= maxJoinFailures
}

// joinLimiter is a token bucket per remote IP for the join handshake: a peer id costs
// nothing to mint, an address does.
type joinLimiter struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func (m *Mesh) allowJoin(ip string) bool {
	m.admitMu.Lock()
	l, ok := m.limiters[ip]
	if !ok {
		l = &joinLimiter{tokens: float64(m.cfg.JoinRate), last: time.Now()}
		m.limiters[ip] = l
	}
	m.admitMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	l.tokens += now.Sub(l.last).Minutes() * float64(m.cfg.JoinRate)
	if l.tokens > float64(m.cfg.JoinRate) {
		l.tokens = float64(m.cfg.JoinRate)
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// gatedHost is the host handed to other packages: every stream handler registered
// through it first checks admission, so a protocol added later (Raft) cannot forget to.
type gatedHost struct {
	host.Host
	m *Mesh
}

func (g *gatedHost) SetStreamHandler(pid protocol.ID, h network.StreamHandler) {
	g.Host.SetStreamHandler(pid, g.m.gate(pid, h))
}

func (g *gatedHost) SetStreamHandlerMatch(pid protocol.ID, match func(protocol.ID) bool, h network.StreamHandler) {
	g.Host.SetStreamHandlerMatch(pid, match, g.m.gate(pid, h))
}

// gate wraps a handler so a stream from a peer that is not admitted is reset with a
// logged reason before the handler sees it.
func (m *Mesh) gate(pid protocol.ID, h network.StreamHandler) network.StreamHandler {
	return func(s network.Stream) {
		p := s.Conn().RemotePeer()
		if !m.isAdmitted(p) {
			m.log.Warn("stream refused: peer not admitted", "protocol", pid, "peer", p.String())
			_ = s.Reset()
			return
		}
		h(s)
	}
}

// gater is the libp2p connection gater. Non-members must be able to connect (the join
// handshake runs over libp2p), so it only shuts out peer ids that keep failing it.
type gater struct{ m *Mesh }

func (g *gater) InterceptPeerDial(peer.ID) bool               { return true }
func (g *gater) InterceptAddrDial(peer.ID, ma.Multiaddr) bool { return true }
func (g *gater) InterceptAccept(network.ConnMultiaddrs) bool  { return true }
func (g *gater) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	if g.m.blocked(p) {
		g.m.log.Warn("connection refused: too many failed join handshakes", "peer", p.String())
		return false
	}
	return true
}
func (g *gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }
