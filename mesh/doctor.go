package mesh

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Diagnose answers "why can't I see node X" for each target: a peer id, a node name, a
// multiaddr or host:port. With no targets it diagnoses every peer this node has heard
// of. Each answer says whether the peer was discovered, whether a connection could be
// made, whether the join handshake admits it, the link's RTT and bandwidth, and the
// likely cause when something fails.
func (m *Mesh) Diagnose(ctx context.Context, targets []string) []PeerDiagnosis {
	if len(targets) == 0 {
		seen := map[peer.ID]bool{m.id: true}
		for _, mem := range m.Members() {
			if !seen[mem.PeerID] {
				seen[mem.PeerID] = true
				targets = append(targets, mem.PeerID.String())
			}
		}
		m.peersMu.Lock()
		for p := range m.peers {
			if !seen[p] {
				seen[p] = true
				targets = append(targets, p.String())
			}
		}
		m.peersMu.Unlock()
	}
	out := make([]PeerDiagnosis, 0, len(targets))
	for _, t := range targets {
		out = append(out, m.diagnose(ctx, t))
	}
	return out
}

func (m *Mesh) diagnose(ctx context.Context, target string) PeerDiagnosis {
	d := PeerDiagnosis{Target: target}
	ai, ok := m.resolveTarget(ctx, target, &d)
	if !ok {
		return d
	}
	d.PeerID = ai.ID
	if mem, ok := m.Member(ai.ID); ok {
		d.Discovered, d.Name, d.State = true, mem.Meta.Name, mem.State.String()
	}
	if r, ok := m.peerRecord(ai.ID); ok && len(r.sources) > 0 {
		d.Discovered = true
	}
	if len(ai.Addrs) == 0 && len(m.host.Peerstore().Addrs(ai.ID)) == 0 {
		d.Cause = CauseNotDiscovered
		if m.cfg.MDNS && !m.anyFoundBy(SourceMDNS) {
			d.Cause = CauseMDNSBlocked
		}
		return d
	}
	if err := m.host.Connect(ctx, ai); err != nil {
		d.Cause, d.Detail = causeOfDialError(err), err.Error()
		return d
	}
	d.Reachable = true
	if _, err := m.joinPeer(ctx, ai.ID); err != nil {
		d.Detail = err.Error()
		switch {
		case errors.Is(err, ErrSecretMismatch):
			d.Cause = CauseSecretMismatch
		case errors.Is(err, ErrClusterMismatch):
			d.Cause = CauseClusterMismatch
		case errors.Is(err, ErrRateLimited):
			d.Cause = CauseRateLimited
		default:
			d.Cause = CauseUnreachable
		}
		return d
	}
	d.Admitted = true
	if stats, err := m.ProbeLink(ctx, ai.ID); err == nil {
		d.RTT, d.Bandwidth = stats.RTT, stats.Bandwidth
	} else {
		d.Detail = err.Error()
		d.Cause = CauseUnreachable
	}
	return d
}

// resolveTarget turns a target into an AddrInfo; on failure it fills the diagnosis.
func (m *Mesh) resolveTarget(ctx context.Context, target string, d *PeerDiagnosis) (peer.AddrInfo, bool) {
	if id, err := peer.Decode(target); err == nil {
		return peer.AddrInfo{ID: id}, true
	}
	for _, mem := range m.Members() {
		if mem.Meta.Name == target {
			return peer.AddrInfo{ID: mem.PeerID}, true
		}
	}
	ai, hostport, err := ParseSeed(target)
	if err != nil {
		d.Cause, d.Detail = CauseNotDiscovered, "not a member name, peer id or address: "+err.Error()
		return ai, false
	}
	if hostport == "" {
		return ai, true
	}
	resolved, err := m.resolveSeed(ctx, hostport)
	if err != nil {
		d.Cause, d.Detail = causeOfDialError(err), err.Error()
		return ai, false
	}
	d.Reachable = true
	return resolved, true
}

func (m *Mesh) anyFoundBy(source string) bool {
	m.peersMu.Lock()
	defer m.peersMu.Unlock()
	for _, r := range m.peers {
		if r.sources[source] {
			return true
		}
	}
	return false
}

func causeOfDialError(err error) string {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return CausePortClosed
	}
	var oe *net.OpError
	if errors.As(err, &oe) && errors.Is(oe.Err, syscall.ECONNREFUSED) {
		return CausePortClosed
	}
	if strings.Contains(err.Error(), "connection refused") {
		// libp2p's dialer flattens the refusals of its attempts into text.
		return CausePortClosed
	}
	return CauseUnreachable
}
