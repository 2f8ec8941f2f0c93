package mesh

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"
)

const (
	metaUpdateTimeout = 5 * time.Second
	subscriberBuffer  = 1024
	// gossipRounds is how many gossip rounds a broadcast lasts in a small cluster.
	gossipRounds = 3
)

func encodeMeta(meta *NodeMeta) ([]byte, error) {
	raw, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("mesh: encode metadata: %w", err)
	}
	if len(raw) > MaxMetaBytes {
		return nil, fmt.Errorf("%w: %d bytes encoded, limit %d", ErrMetaTooLarge, len(raw), MaxMetaBytes)
	}
	return raw, nil
}

func decodeMeta(raw []byte) (NodeMeta, error) {
	var meta NodeMeta
	if len(raw) == 0 {
		return meta, nil
	}
	if len(raw) > MaxMetaBytes {
		return meta, fmt.Errorf("%w: %d bytes of metadata", ErrMetaTooLarge, len(raw))
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		return meta, fmt.Errorf("%w: metadata: %w", ErrMalformedFrame, err)
	}
	return meta, nil
}

func (m *Mesh) startGossip() error {
	var mc *memberlist.Config
	if m.cfg.FastGossip {
		mc = memberlist.DefaultLocalConfig()
	} else {
		mc = memberlist.DefaultLANConfig()
	}
	// memberlist sends each broadcast (a member suspect, dead, back on a new address)
	// RetransmitMult x ceil(log10(n+1)) times in all, piggybacks on probes of the failed
	// member itself included: in a cluster of under 10, 2 sends (local) or 4 (LAN). A
	// member that misses all of them hears of a death only when its own suspicion runs
	// out with no confirmation (18 s local, 24 s LAN), and refuses the member's return
	// on a new address until then. Enough sends for 3 gossip rounds make that rare.
	mc.RetransmitMult = max(mc.RetransmitMult, gossipRounds*mc.GossipNodes)
	mc.Name = m.id.String()
	mc.BindAddr = m.cfg.GossipBindAddr
	mc.BindPort = m.cfg.GossipPort
	mc.AdvertisePort = m.cfg.GossipPort
	mc.SecretKey = deriveKey(m.cfg.Secret, m.cfg.ClusterID, keyGossip)
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	mc.Delegate = &gossipDelegate{m: m}
	watch := newSuspicionWatch(m, mc.ProbeInterval)
	mc.Events = &eventDelegate{m: m, watch: watch}
	mc.Ping = watch
	mc.Logger = log.New(&slogWriter{log: m.log.With("subsystem", "memberlist")}, "", 0)
	// Peer ids are unforgeable, so a restarted node (same id, new port) may take over
	// its dead entry at once instead of being refused as a name conflict.
	mc.DeadNodeReclaimTime = time.Second
	mc.Conflict = &conflictDelegate{m: m}
	list, err := memberlist.Create(mc)
	if err != nil {
		return fmt.Errorf("mesh: memberlist: %w", err)
	}
	m.list = list
	watch.ping = func(name string, addr net.Addr) error {
		_, err := list.Ping(name, addr)
		return err
	}
	m.goRun(watch.run)
	return nil
}

// gossipDelegate serves our metadata to memberlist; we use no user messages.
type gossipDelegate struct{ m *Mesh }

func (d *gossipDelegate) NodeMeta(limit int) []byte {
	d.m.metaMu.Lock()
	defer d.m.metaMu.Unlock()
	if len(d.m.metaRaw) > limit {
		// UpdateMeta refuses oversized metadata, so this only guards memberlist's panic.
		return nil
	}
	return d.m.metaRaw
}
func (d *gossipDelegate) NotifyMsg([]byte)                           {}
func (d *gossipDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *gossipDelegate) LocalState(join bool) []byte                { return nil }
func (d *gossipDelegate) MergeRemoteState(buf []byte, join bool)     {}

// eventDelegate turns memberlist callbacks into MemberEvents. memberlist calls it with
// its own locks held, so it only converts and hands off. Each callback supersedes what
// the suspicion watch held against the member: memberlist has just heard from it (join,
// update) or given up on it (dead, left).
type eventDelegate struct {
	m     *Mesh
	watch *suspicionWatch
}

func (e *eventDelegate) NotifyJoin(n *memberlist.Node) {
	e.watch.forget(n.Name)
	e.m.emit(MemberJoin, n)
}

// NotifyLeave covers both a graceful leave and a death. memberlist's Node.State is not
// kept up to date in callbacks, so a leaving node says so in its metadata first
// (Leave sets NodeMeta.Leaving) and everything else counts as dead.
func (e *eventDelegate) NotifyLeave(n *memberlist.Node) {
	e.watch.forget(n.Name)
	if meta, err := decodeMeta(n.Meta); err == nil && meta.Leaving {
		e.m.emit(MemberLeave, n)
		return
	}
	e.m.emit(MemberDead, n)
}
func (e *eventDelegate) NotifyUpdate(n *memberlist.Node) {
	e.watch.forget(n.Name)
	e.m.emit(MemberUpdate, n)
}

// toMember copies what a member record needs out of n. memberlist rewrites its Node
// structs in place under its own lock, so n may be read only while memberlist holds
// that lock: inside its event callbacks, which is the only place this is called.
func (m *Mesh) toMember(n *memberlist.Node, state MemberState) Member {
	mem := Member{
		GossipAddr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		State:      state,
	}
	if id, err := peer.Decode(n.Name); err == nil {
		mem.PeerID = id
	}
	meta, err := decodeMeta(n.Meta)
	if err != nil {
		m.log.Warn("member metadata unreadable", "member", n.Name, "err", err)
	}
	mem.Meta = meta
	return mem
}

// emit records a membership change memberlist reports through a callback and hands it
// to subscribers. The member table is this package's own copy of memberlist's view,
// taken in the callbacks, so Members never reads memberlist's Node structs.
func (m *Mesh) emit(t MemberEventType, n *memberlist.Node) {
	state := StateAlive
	switch t {
	case MemberDead:
		state = StateDead
	case MemberLeave:
		state = StateLeft
	}
	mem := m.toMember(n, state)
	m.membersMu.Lock()
	switch t {
	case MemberJoin, MemberUpdate:
		m.members[n.Name] = mem
	case MemberDead, MemberLeave:
		delete(m.members, n.Name)
	}
	if n.Name == m.id.String() && state == StateAlive {
		m.selfGossip = mem.GossipAddr
	}
	m.membersMu.Unlock()
	if t == MemberJoin || t == MemberUpdate {
		m.rememberAddrs(mem)
	}
	m.publish(MemberEvent{Type: t, Member: mem})
}

// rememberAddrs puts a member's libp2p addresses, from its metadata, into the host's
// peerstore for good. Raft and stage calls dial members by peer id, and a node that
// joined through one seed otherwise knows no address of the others: once the node it
// joined through dies, the survivors could not even reach each other to elect a leader.
// It runs before subscribers hear of the member, so they may dial it at once. The
// addresses stay after the member dies, so that the same identity restarted on the
// same port is reachable again before gossip hears of it.
func (m *Mesh) rememberAddrs(mem Member) {
	if mem.PeerID == "" || mem.PeerID == m.id || m.host == nil {
		return
	}
	var addrs []ma.Multiaddr
	for _, s := range mem.Meta.Addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			m.log.Debug("member address unreadable", "member", shortID(mem.PeerID), "addr", s, "err", err)
			continue
		}
		if transport, last := ma.SplitLast(a); last != nil && last.Protocol().Code == ma.P_P2P {
			a = transport
		}
		if a != nil {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) > 0 {
		m.host.Peerstore().AddAddrs(mem.PeerID, addrs, peerstore.PermanentAddrTTL)
	}
}

// publish hands ev to every subscriber without blocking.
func (m *Mesh) publish(ev MemberEvent) {
	t := ev.Type
	m.log.Debug("member event", "event", t.String(), "member", shortID(ev.Member.PeerID), "state", ev.Member.State.String())
	m.subsMu.Lock()
	defer m.subsMu.Unlock()
	for _, ch := range m.subs {
		select {
		case ch <- ev:
		default:
			m.log.Warn("member event dropped: subscriber not keeping up", "event", t.String())
		}
	}
}

// Subscribe delivers member events until cancel is called or the mesh closes. Events a
// subscriber does not drain (more than 1024 behind) are dropped with a warning rather
// than stall failure detection.
func (m *Mesh) Subscribe() (<-chan MemberEvent, func()) {
	ch := make(chan MemberEvent, subscriberBuffer)
	m.subsMu.Lock()
	id := m.nextSub
	m.nextSub++
	if m.closed.Load() {
		close(ch)
	} else {
		m.subs[id] = ch
	}
	m.subsMu.Unlock()
	return ch, func() {
		m.subsMu.Lock()
		defer m.subsMu.Unlock()
		if c, ok := m.subs[id]; ok {
			delete(m.subs, id)
			close(c)
		}
	}
}

// Members lists the members memberlist has not declared dead or left, this node
// included, ordered by peer id. Their State is StateSuspect while this node's probes
// go unanswered (see suspicionWatch), StateAlive otherwise. The records are copies;
// their slices are shared between callers and must not be modified.
func (m *Mesh) Members() []Member {
	m.membersMu.Lock()
	out := make([]Member, 0, len(m.members))
	for _, mem := range m.members {
		out = append(out, mem)
	}
	m.membersMu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(string(a.PeerID), string(b.PeerID)) })
	return out
}

// setMemberState records the state the suspicion watch found for a member still in
// the table, and tells subscribers with an event of type t.
func (m *Mesh) setMemberState(name string, state MemberState, t MemberEventType) {
	m.membersMu.Lock()
	mem, ok := m.members[name]
	if ok {
		mem.State = state
		m.members[name] = mem
	}
	m.membersMu.Unlock()
	if ok {
		m.publish(MemberEvent{Type: t, Member: mem})
	}
}

// Member returns one member by peer id.
func (m *Mesh) Member(p peer.ID) (Member, bool) {
	m.membersMu.Lock()
	defer m.membersMu.Unlock()
	mem, ok := m.members[p.String()]
	return mem, ok
}

// memberAlive reports whether memberlist holds p as a live member: alive or suspect,
// since only memberlist declares it dead.
func (m *Mesh) memberAlive(p peer.ID) bool {
	mem, ok := m.Member(p)
	return ok && (mem.State == StateAlive || mem.State == StateSuspect)
}

// Meta returns this node's current metadata.
func (m *Mesh) Meta() NodeMeta {
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	return m.meta
}

// UpdateMeta changes this node's metadata and gossips it. If the result would not fit
// memberlist's 512-byte limit the change is refused with ErrMetaTooLarge and the old
// metadata stays. After Leave or Close the change is kept locally, gossiped to no
// one, and ErrClosed returned.
func (m *Mesh) UpdateMeta(fn func(*NodeMeta)) error {
	m.metaMu.Lock()
	next := m.meta
	next.Addrs = append([]string(nil), m.meta.Addrs...)
	next.Accels = append([]string(nil), m.meta.Accels...)
	fn(&next)
	next.PeerID = m.id.String()
	next.DataPort = m.dataPort
	raw, err := encodeMeta(&next)
	if err != nil {
		m.metaMu.Unlock()
		return err
	}
	m.meta, m.metaRaw = next, raw
	m.metaMu.Unlock()
	if m.left.Load() || m.closed.Load() {
		// Nobody is told any more: the node has left or is closed.
		return ErrClosed
	}
	if err := m.list.UpdateNode(metaUpdateTimeout); err != nil {
		return fmt.Errorf("mesh: broadcast metadata: %w", err)
	}
	return nil
}

// slogWriter bridges memberlist's standard logger into slog, mapping its "[LEVEL]"
// prefixes to slog levels. It only logs: membership comes from memberlist's delegates.
type slogWriter struct {
	log *slog.Logger
}

func (w *slogWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			level, line = l, strings.TrimSpace(rest)
			break
		}
	}
	w.log.Log(context.Background(), level, line)
	return len(p), nil
}

var _ io.Writer = (*slogWriter)(nil)
