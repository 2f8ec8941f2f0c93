package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/sec"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Mesh is one node's network layer. Create it with New; Close releases everything.
//
// Lock order: every mutex below is a leaf. No method holds two of them at once, and
// none is held while calling into libp2p, memberlist or a subscriber.
type Mesh struct {
	cfg   Config
	log   *slog.Logger
	key   crypto.PrivKey
	id    peer.ID
	host  host.Host
	gated *gatedHost
	ident *libp2ptls.Identity
	sec   sec.SecureTransport // used to learn a seed's peer id from host:port

	joinKey []byte
	psk     pnet.PSK

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
	// left is set once Leave has told memberlist: past it memberlist may drop this
	// node from its own member map, and UpdateNode must not be called.
	left atomic.Bool

	isMember atomic.Pointer[func(peer.ID) bool]
	admitMu  sync.Mutex
	admitted map[peer.ID]bool
	failures map[peer.ID]int
	limiters map[string]*joinLimiter

	peersMu sync.Mutex
	peers   map[peer.ID]*peerRecord

	list *memberlist.Memberlist
	// membersMu guards the member table: copies of memberlist's records taken in its
	// event callbacks (keyed by memberlist name, the peer id), so that nothing reads
	// the Node structs memberlist keeps rewriting under its own lock.
	membersMu  sync.Mutex
	members    map[string]Member
	selfGossip string // host:port of our memberlist listener, from our own join event

	// returningMu guards returning: members whose new gossip address memberlist
	// refused, to be push-pulled once their old entry is dead (reclaim.go).
	returningMu   sync.Mutex
	returning     map[string]returningMember
	returningKick chan struct{}

	// knownMu guards known: the last known addresses of every member seen, kept in the
	// peers file (peers.go).
	knownMu   sync.Mutex
	known     map[peer.ID]knownPeer
	knownKick chan struct{}

	metaMu  sync.Mutex
	meta    NodeMeta
	metaRaw []byte

	subsMu  sync.Mutex
	subs    map[int]chan MemberEvent
	nextSub int

	dataLn   net.Listener
	dataPort int
	pool     *connPool

	stageHandler atomic.Pointer[StageHandler]
	blobs        *BlobStore
	blobServed   atomic.Int64
	// blobServing counts the chunk requests being served now.
	blobServing atomic.Int64

	linksMu sync.Mutex
	links   map[peer.ID]LinkStats

	mdns *mdnsService
	dht  *dht.IpfsDHT
}

// peerRecord is what we learned about one peer outside memberlist: how it was found,
// its ports from the join handshake, and the last failure, for Diagnose.
type peerRecord struct {
	ip         string
	gossipPort int
	dataPort   int
	sources    map[string]bool
	lastErr    error
	joined     time.Time
}

// New starts a node's network layer: the libp2p host, the data listener, memberlist,
// the protocol handlers, discovery and link probes. ctx bounds start-up only; the mesh
// runs until Close.
func New(ctx context.Context, cfg Config) (*Mesh, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	key, err := loadIdentity(c.DataDir)
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("mesh: identity: %w", err)
	}
	m := &Mesh{
		cfg:           c,
		log:           c.Logger.With("component", "mesh", "self", shortID(id)),
		key:           key,
		id:            id,
		joinKey:       deriveKey(c.Secret, c.ClusterID, keyJoin),
		admitted:      make(map[peer.ID]bool),
		failures:      make(map[peer.ID]int),
		limiters:      make(map[string]*joinLimiter),
		peers:         make(map[peer.ID]*peerRecord),
		subs:          make(map[int]chan MemberEvent),
		members:       make(map[string]Member),
		returning:     make(map[string]returningMember),
		returningKick: make(chan struct{}, 1),
		known:         make(map[peer.ID]knownPeer),
		knownKick:     make(chan struct{}, 1),
		links:         make(map[peer.ID]LinkStats),
	}
	m.SetIsMember(c.IsMember)
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if err := m.start(ctx); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func (m *Mesh) start(ctx context.Context) error {
	var err error
	if m.ident, err = libp2ptls.NewIdentity(m.key); err != nil {
		return fmt.Errorf("mesh: tls identity: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(m.key),
		libp2p.ListenAddrStrings(m.cfg.ListenAddrs...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DefaultMuxers,
		libp2p.ConnectionGater(&gater{m: m}),
		libp2p.DisableRelay(),
	}
	switch m.cfg.Security {
	case SecurityNoise:
		opts = append(opts, libp2p.Security(noise.ID, noise.New))
		m.sec, err = noise.New(noise.ID, m.key, nil)
	default:
		opts = append(opts, libp2p.Security(libp2ptls.ID, libp2ptls.New))
		m.sec, err = libp2ptls.New(libp2ptls.ID, m.key, nil)
	}
	if err != nil {
		return fmt.Errorf("mesh: security transport: %w", err)
	}
	if m.cfg.PrivateNetwork {
		m.psk = pnet.PSK(deriveKey(m.cfg.Secret, m.cfg.ClusterID, keyPSK))
		opts = append(opts, libp2p.PrivateNetwork(m.psk))
	}
	if m.host, err = libp2p.New(opts...); err != nil {
		return fmt.Errorf("mesh: libp2p host: %w", err)
	}
	m.gated = &gatedHost{Host: m.host, m: m}
	if err := m.startData(); err != nil {
		return err
	}
	if m.blobs, err = OpenBlobStore(filepath.Join(m.cfg.DataDir, "blobs")); err != nil {
		return err
	}
	m.meta = m.cfg.Meta
	m.meta.PeerID = m.id.String()
	m.meta.Addrs = m.listenAddrs()
	m.meta.DataPort = m.dataPort
	if m.meta.Name == "" {
		m.meta.Name = m.id.String()
	}
	if m.metaRaw, err = encodeMeta(&m.meta); err != nil {
		return err
	}
	m.registerProtocols()
	if err := m.startGossip(); err != nil {
		return err
	}
	m.goRun(m.reclaimLoop)
	// The peers of the last run go into the peerstore before anything dials, and the
	// loop hears every member event from the first join on.
	m.loadKnownPeers()
	memberEvents, _ := m.Subscribe()
	m.goRun(func(ctx context.Context) { m.knownPeersLoop(ctx, memberEvents) })
	if err := m.startDiscovery(ctx); err != nil {
		return err
	}
	if m.cfg.ProbeInterval > 0 {
		m.goRun(m.probeLoop)
	}
	m.log.Info("mesh started", "peer", m.id.String(), "addrs", m.Addrs(), "gossip", m.GossipAddr(), "data_port", m.dataPort)
	return nil
}

// goRun runs fn in a goroutine that Close waits for.
func (m *Mesh) goRun(fn func(ctx context.Context)) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		fn(m.ctx)
	}()
}

// Close leaves nothing running: discovery, probes, memberlist (without a graceful
// leave; call Leave first for that), listeners, pooled connections and the host.
func (m *Mesh) Close() error {
	if !m.closed.CompareAndSwap(false, true) {
		return nil
	}
	m.cancel()
	var errs []error
	if m.mdns != nil {
		m.mdns.close()
	}
	if m.dht != nil {
		errs = append(errs, m.dht.Close())
	}
	if m.list != nil {
		errs = append(errs, m.list.Shutdown())
	}
	if m.dataLn != nil {
		_ = m.dataLn.Close()
	}
	if m.pool != nil {
		m.pool.closeAll()
	}
	if m.host != nil {
		errs = append(errs, m.host.Close())
	}
	m.wg.Wait()
	m.subsMu.Lock()
	for k, ch := range m.subs {
		close(ch)
		delete(m.subs, k)
	}
	m.subsMu.Unlock()
	return errors.Join(errs...)
}

// Leave announces a graceful departure to the other members, then the caller closes.
// The metadata is marked first so others report a leave, not a death.
func (m *Mesh) Leave(timeout time.Duration) error {
	if m.list == nil {
		return ErrClosed
	}
	if err := m.UpdateMeta(func(meta *NodeMeta) { meta.Leaving = true }); err != nil {
		m.log.Warn("could not mark metadata as leaving", "err", err)
	}
	m.left.Store(true)
	return m.list.Leave(timeout)
}

// ID is this node's peer id.
func (m *Mesh) ID() peer.ID { return m.id }

// Host is the libp2p host for other packages' protocols (consensus runs Raft on it).
// Stream handlers set through it only ever see admitted peers.
func (m *Mesh) Host() host.Host { return m.gated }

// Addrs are this node's full libp2p multiaddrs, each ending in /p2p/<id>.
func (m *Mesh) Addrs() []string {
	var out []string
	for _, a := range m.host.Addrs() {
		out = append(out, a.String()+"/p2p/"+m.id.String())
	}
	return out
}

// listenAddrs are the host's addresses without the /p2p/ suffix, for metadata.
func (m *Mesh) listenAddrs() []string {
	var out []string
	for _, a := range m.host.Addrs() {
		out = append(out, a.String())
	}
	return out
}

// GossipAddr is host:port of this node's memberlist listener.
func (m *Mesh) GossipAddr() string {
	m.membersMu.Lock()
	defer m.membersMu.Unlock()
	return m.selfGossip
}

// Connect dials a peer over libp2p and runs the join handshake, so both sides admit
// each other and the peer's memberlist is joined.
func (m *Mesh) Connect(ctx context.Context, ai peer.AddrInfo) error {
	return m.connectAndJoin(ctx, ai, "connect")
}

// Blobs is the node's blob store, served to admitted peers.
func (m *Mesh) Blobs() *BlobStore { return m.blobs }

// BlobBytesServed counts blob bytes this node has sent to peers since start.
func (m *Mesh) BlobBytesServed() int64 { return m.blobServed.Load() }

// dataHost is the IP the data listener binds to: the host of the first libp2p listen
// address, so a node told to listen on loopback never opens a wider port.
func (m *Mesh) dataHost() string {
	a, err := ma.NewMultiaddr(m.cfg.ListenAddrs[0])
	if err != nil {
		return "0.0.0.0"
	}
	na, err := manet.ToNetAddr(a)
	if err != nil {
		return "0.0.0.0"
	}
	if t, ok := na.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	return "0.0.0.0"
}

func shortID(p peer.ID) string {
	s := p.String()
	if len(s) > 8 {
		return s[len(s)-8:]
	}
	return s
}
