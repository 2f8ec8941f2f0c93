package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"
)

// PeersFileName is the file, in the data dir, that keeps the last known libp2p
// addresses of every member this node has seen, as serf keeps its snapshot. A node
// learns its peers' addresses only from gossip, and gossip starts from a seed; after a
// site-wide power cut the seed may stay down, and without this file the members that
// come back could not find each other, although they hold a Raft majority.
const PeersFileName = "peers.json"

const (
	// knownDialFirst and knownDialMax bound the backoff between dials of a known peer
	// that does not answer: a member down for good costs one dial a minute.
	knownDialFirst = 2 * time.Second
	knownDialMax   = time.Minute
	// knownTick is how often the known peers are checked against the member list.
	knownTick = time.Second
	// knownGossipProbe bounds the bare connection to a known peer's gossip port.
	knownGossipProbe = 2 * time.Second
)

// errJoinedWithoutPeer: the gossip was joined through a peer's old address, but the
// peer itself is not in it.
var errJoinedWithoutPeer = errors.New("mesh: joined the gossip there, but the peer is not in it")

// SourceKnown is the discovery source of a peer dialled from the peers file or given
// by AddKnownPeer, as Diagnose reports it.
const SourceKnown = "known"

// knownPeer is one entry of the peers file.
type knownPeer struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"` // libp2p multiaddrs without /p2p/
	// Gossip is the member's memberlist host:port, tried when its libp2p addresses do
	// not answer: a node started with --listen .../tcp/0 comes back on another libp2p
	// port but on the same --gossip-port.
	Gossip string    `json:"gossip,omitempty"`
	Seen   time.Time `json:"seen"` // when these addresses were last learned
}

type peersFile struct {
	Peers []knownPeer `json:"peers"`
}

// knownDial is the dial state of one known peer; only knownPeersLoop touches it.
type knownDial struct {
	next     time.Time
	backoff  time.Duration
	failing  bool // a failure was logged; the next success is logged too
	attempts int
}

// loadKnownPeers reads the peers file and puts every address into the peerstore for
// good, so that Raft, which dials by peer id, reaches the members of the last run
// before gossip has told anything. A missing file is an empty list; an unreadable one
// is logged and ignored, since gossip rebuilds it.
func (m *Mesh) loadKnownPeers() {
	path := filepath.Join(m.cfg.DataDir, PeersFileName)
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var f peersFile
	if err == nil {
		err = json.Unmarshal(raw, &f)
	}
	if err != nil {
		m.log.Warn("peers file unreadable; relying on seeds and gossip", "path", path, "err", err)
		return
	}
	for _, kp := range f.Peers {
		id, err := peer.Decode(kp.ID)
		if err != nil || id == m.id {
			continue
		}
		m.setKnown(id, kp.Addrs, kp.Gossip, kp.Seen)
	}
	m.log.Info("known peers loaded", "peers", len(f.Peers), "path", path)
}

// AddKnownPeer records addresses of a cluster member learned outside gossip (the Raft
// state's member records) when this node knows none for it, so that the node dials it
// while gossip does not list it alive, and keeps them in the peers file. Addresses
// already known are left alone: they came from the member's own gossip, which is
// fresher than a record it may not have rewritten yet after moving. addrs are libp2p
// multiaddrs, with or without /p2p/<id>.
func (m *Mesh) AddKnownPeer(id peer.ID, addrs []string) {
	if id == m.id {
		return
	}
	m.knownMu.Lock()
	_, ok := m.known[id]
	m.knownMu.Unlock()
	if !ok && m.setKnown(id, addrs, "", time.Now()) {
		m.kickKnown()
	}
}

// setKnown replaces id's known addresses and reports whether they changed. The
// peerstore's addresses for id are replaced too, so that nobody keeps dialling the
// address a member had before it moved.
func (m *Mesh) setKnown(id peer.ID, addrs []string, gossip string, seen time.Time) bool {
	clean := transportAddrs(addrs)
	if len(clean) == 0 {
		return false
	}
	m.knownMu.Lock()
	cur, ok := m.known[id]
	if gossip == "" {
		gossip = cur.Gossip
	}
	addrsChanged := !ok || !slices.Equal(cur.Addrs, clean)
	changed := addrsChanged || cur.Gossip != gossip
	m.known[id] = knownPeer{ID: id.String(), Addrs: clean, Gossip: gossip, Seen: seen}
	m.knownMu.Unlock()
	if addrsChanged && m.host != nil {
		var parsed []ma.Multiaddr
		for _, s := range clean {
			if a, err := ma.NewMultiaddr(s); err == nil {
				parsed = append(parsed, a)
			}
		}
		ps := m.host.Peerstore()
		ps.ClearAddrs(id)
		ps.AddAddrs(id, parsed, peerstore.PermanentAddrTTL)
	}
	return changed
}

// transportAddrs returns the parseable addresses without their /p2p/ part, sorted.
func transportAddrs(addrs []string) []string {
	var out []string
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		if transport, last := ma.SplitLast(a); last != nil && last.Protocol().Code == ma.P_P2P {
			a = transport
		}
		if a != nil && !slices.Contains(out, a.String()) {
			out = append(out, a.String())
		}
	}
	slices.Sort(out)
	return out
}

func (m *Mesh) kickKnown() {
	select {
	case m.knownKick <- struct{}{}:
	default:
	}
}

// knownPeersLoop keeps the peers file in step with gossip and dials the known peers
// that gossip does not list alive: at start, those of the last run (the seed may be
// gone), and later any member that dropped out of the member list, so that a cluster
// split by a lost seed heals without it. A peer that does not answer is dialled again
// after a backoff that doubles up to a minute, and logged once per failing streak.
func (m *Mesh) knownPeersLoop(ctx context.Context, events <-chan MemberEvent) {
	dials := make(map[peer.ID]*knownDial)
	tick := time.NewTicker(knownTick)
	defer tick.Stop()
	dirty := false
	var announce <-chan time.Time // armed by the first member joined; fires once
	announced := false
	m.dialKnown(ctx, dials)
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			if (ev.Type == MemberJoin || ev.Type == MemberUpdate) && ev.Member.PeerID != m.id {
				if m.setKnown(ev.Member.PeerID, ev.Member.Meta.Addrs, ev.Member.GossipAddr, time.Now()) {
					dirty = true
				}
				if !announced && announce == nil {
					announce = time.After(announceDelay)
				}
			}
			continue
		case <-announce:
			announce, announced = nil, true
			m.announceSelf()
			continue
		case <-m.knownKick:
			dirty = true
		case <-tick.C:
		}
		if dirty {
			if err := m.writeKnownPeers(); err != nil {
				m.log.Warn("peers file not written", "err", err)
			} else {
				dirty = false
			}
		}
		m.dialKnown(ctx, dials)
	}
}

// dialKnown dials, in parallel, the known peers that are due and not alive in gossip.
// Where the cluster state answers IsMember, only its members are dialled, so that a
// removed node is not brought back into the gossip from an old peers file.
func (m *Mesh) dialKnown(ctx context.Context, dials map[peer.ID]*knownDial) {
	m.knownMu.Lock()
	known := make([]knownPeer, 0, len(m.known))
	for _, kp := range m.known {
		known = append(known, kp)
	}
	m.knownMu.Unlock()
	isMember := m.isMember.Load()
	now := time.Now()
	type dialResult struct {
		id  peer.ID
		kp  knownPeer
		err error
	}
	results := make(chan dialResult, len(known))
	due := 0
	for _, kp := range known {
		id, err := peer.Decode(kp.ID)
		if err != nil || (isMember != nil && !(*isMember)(id)) {
			continue
		}
		d := dials[id]
		if d == nil {
			d = &knownDial{backoff: knownDialFirst}
			dials[id] = d
		}
		if m.memberAlive(id) {
			if d.failing {
				m.log.Info("known peer back in the member list", "peer", shortID(id), "after_attempts", d.attempts)
			}
			*d = knownDial{backoff: knownDialFirst}
			continue
		}
		if now.Before(d.next) {
			continue
		}
		d.attempts++
		due++
		ai := peer.AddrInfo{ID: id, Addrs: m.host.Peerstore().Addrs(id)}
		go func() { results <- dialResult{id: id, kp: kp, err: m.joinKnown(ctx, ai, kp.Gossip)} }()
	}
	for range due {
		r := <-results
		d := dials[r.id]
		if r.err == nil && !m.memberAlive(r.id) {
			// Joined through an address the peer no longer holds (another member
			// answers there now): no reason to dial it again at once.
			r.err = errJoinedWithoutPeer
		}
		if r.err == nil {
			m.log.Info("joined the gossip through a known peer", "peer", shortID(r.id), "attempts", d.attempts)
			*d = knownDial{backoff: knownDialFirst}
			continue
		}
		if !d.failing {
			m.log.Info("known peer unreachable; dialling it again with a backoff up to "+knownDialMax.String(),
				"peer", shortID(r.id), "addrs", strings.Join(r.kp.Addrs, ","), "err", r.err)
			d.failing = true
		}
		d.next = time.Now().Add(d.backoff)
		d.backoff = min(2*d.backoff, knownDialMax)
	}
}

// joinKnown joins the gossip through a known peer: over libp2p with the join
// handshake, or, when its libp2p addresses do not answer, straight through its last
// gossip address (memberlist's traffic is encrypted with the cluster key, so only a
// member answers there; it is admitted as a member of the Raft state).
func (m *Mesh) joinKnown(ctx context.Context, ai peer.AddrInfo, gossip string) error {
	err := m.connectAndJoin(ctx, ai, SourceKnown)
	if err == nil || gossip == "" || ctx.Err() != nil {
		return err
	}
	// A bare connection first: memberlist logs a warning for every join that fails,
	// and a peer that is down for good would get one every backoff period.
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, knownGossipProbe)
	conn, derr := d.DialContext(dctx, "tcp", gossip)
	cancel()
	if derr != nil {
		return fmt.Errorf("%w; gossip %s: %w", err, gossip, derr)
	}
	_ = conn.Close()
	if _, gerr := m.list.Join([]string{gossip}); gerr != nil {
		return fmt.Errorf("%w; gossip %s: %w", err, gossip, gerr)
	}
	return nil
}

// writeKnownPeers replaces the peers file atomically: a temporary file, fsynced, renamed
// over the old one, and the directory fsynced, so that a power cut leaves the old list
// or the new one, never a torn one.
func (m *Mesh) writeKnownPeers() error {
	m.knownMu.Lock()
	f := peersFile{Peers: make([]knownPeer, 0, len(m.known))}
	for _, kp := range m.known {
		f.Peers = append(f.Peers, kp)
	}
	m.knownMu.Unlock()
	slices.SortFunc(f.Peers, func(a, b knownPeer) int { return strings.Compare(a.ID, b.ID) })
	raw, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return writeFileSynced(filepath.Join(m.cfg.DataDir, PeersFileName), append(raw, '\n'))
}

// writeFileSynced writes data to path through a synced temporary file and a rename,
// then syncs the directory so that the rename itself survives a power cut.
func writeFileSynced(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("mesh: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("mesh: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("mesh: sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("mesh: sync %s: %w", dir, err)
	}
	return nil
}
