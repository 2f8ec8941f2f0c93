package mesh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	drouting "github.com/libp2p/go-libp2p/p2p/discovery/routing"
	"github.com/libp2p/zeroconf/v2"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Discovery sources, as Diagnose reports them.
const (
	SourceSeed = "seed"
	SourceMDNS = "mdns"
	SourceDHT  = "dht"
)

const (
	seedRetryAlone  = 2 * time.Second
	seedRetryMember = 15 * time.Second
	mdnsBrowseCycle = 20 * time.Second
)

// dhtCycle is how often the DHT rendezvous re-advertises and searches; a var so tests
// can shorten it.
var dhtCycle = time.Minute

func (m *Mesh) startDiscovery(ctx context.Context) error {
	if len(m.cfg.Join) > 0 {
		m.goRun(m.seedLoop)
	}
	if m.cfg.MDNS {
		svc, err := m.startMDNS()
		if err != nil {
			return err
		}
		m.mdns = svc
	}
	if m.cfg.DHT {
		// Server mode: a LAN cluster has no public peers, so every member must answer
		// queries. The protocol prefix keeps this DHT apart from the public one and from
		// other clusters'.
		sum := sha256.Sum256([]byte(m.cfg.ClusterID))
		prefix := protocol.ID("/layermesh/" + hex.EncodeToString(sum[:5]))
		d, err := dht.New(m.host, dht.Mode(dht.ModeServer), dht.ProtocolPrefix(prefix))
		if err != nil {
			return fmt.Errorf("mesh: dht: %w", err)
		}
		m.dht = d
		m.goRun(m.dhtLoop)
	}
	return nil
}

// ParseSeed reads a --join seed: a multiaddr with /p2p/ID gives the peer directly; a
// multiaddr without it or host:port gives only an address whose peer id must be learned.
func ParseSeed(s string) (ai peer.AddrInfo, hostport string, err error) {
	if !strings.HasPrefix(s, "/") {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return ai, "", fmt.Errorf("%w: seed %q: %w", ErrConfig, s, err)
		}
		return ai, s, nil
	}
	a, err := ma.NewMultiaddr(s)
	if err != nil {
		return ai, "", fmt.Errorf("%w: seed %q: %w", ErrConfig, s, err)
	}
	if info, err := peer.AddrInfoFromP2pAddr(a); err == nil {
		return *info, "", nil
	}
	na, err := manet.ToNetAddr(a)
	if err != nil {
		return ai, "", fmt.Errorf("%w: seed %q: %w", ErrConfig, s, err)
	}
	return ai, na.String(), nil
}

// resolveSeed turns a seed into an AddrInfo, learning the peer id if needed.
func (m *Mesh) resolveSeed(ctx context.Context, s string) (peer.AddrInfo, error) {
	ai, hostport, err := ParseSeed(s)
	if err != nil || hostport == "" {
		return ai, err
	}
	id, err := m.learnPeerID(ctx, hostport)
	if err != nil {
		return ai, err
	}
	tcpAddr, err := net.ResolveTCPAddr("tcp", hostport)
	if err != nil {
		return ai, fmt.Errorf("%w: seed %q: %w", ErrConfig, s, err)
	}
	addr, err := manet.FromNetAddr(tcpAddr)
	if err != nil {
		return ai, err
	}
	return peer.AddrInfo{ID: id, Addrs: []ma.Multiaddr{addr}}, nil
}

// seedLoop keeps trying the seeds: often while this node knows nobody, rarely after,
// so a seed that starts later or a healed partition still gets joined. A seed given as
// host:port is resolved to a peer id once and re-resolved only when joining it fails.
//
// A seed that stays down (the node it first joined through, gone for good after a
// power cut) is logged once, when it starts failing, and once when it answers again;
// the node finds its other peers through its peers file meanwhile (peers.go).
func (m *Mesh) seedLoop(ctx context.Context) {
	resolved := make(map[string]peer.AddrInfo)
	failing := make(map[string]bool)
	failed := func(s string, err error) {
		if !failing[s] {
			m.log.Info("seed join failed; trying it again quietly", "seed", s, "err", err)
			failing[s] = true
			return
		}
		m.log.Debug("seed join failed", "seed", s, "err", err)
	}
	for {
		for _, s := range m.cfg.Join {
			ai, ok := resolved[s]
			if !ok {
				var err error
				if ai, err = m.resolveSeed(ctx, s); err != nil {
					failed(s, err)
					continue
				}
				resolved[s] = ai
			}
			if ai.ID == m.id || (m.memberAlive(ai.ID) && m.isAdmitted(ai.ID)) {
				continue
			}
			if err := m.connectAndJoin(ctx, ai, SourceSeed); err != nil {
				failed(s, err)
				delete(resolved, s)
				continue
			}
			if failing[s] {
				m.log.Info("seed answers again", "seed", s)
				delete(failing, s)
			}
		}
		wait := seedRetryMember
		if m.list.NumMembers() <= 1 {
			wait = seedRetryAlone
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// mdnsServiceName scopes mDNS to the cluster: nodes of other clusters on the same LAN
// never even see each other's announcements.
func mdnsServiceName(clusterID string) string {
	sum := sha256.Sum256([]byte(clusterID))
	return "_lm-" + hex.EncodeToString(sum[:5]) + "._udp"
}

type mdnsService struct {
	server *zeroconf.Server
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (s *mdnsService) close() {
	s.cancel()
	s.server.Shutdown()
	s.wg.Wait()
}

func (m *Mesh) mdnsInterfaces() ([]net.Interface, error) {
	var out []net.Interface
	for _, name := range m.cfg.MDNSInterfaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return nil, fmt.Errorf("%w: mDNS interface %q: %w", ErrConfig, name, err)
		}
		out = append(out, *ifi)
	}
	return out, nil
}

func (m *Mesh) startMDNS() (*mdnsService, error) {
	ifaces, err := m.mdnsInterfaces()
	if err != nil {
		return nil, err
	}
	addrs, err := m.host.Network().InterfaceListenAddresses()
	if err != nil {
		return nil, fmt.Errorf("mesh: mdns: %w", err)
	}
	var ips, txt []string
	for _, a := range addrs {
		if ip, err := manet.ToIP(a); err == nil {
			ips = append(ips, ip.String())
		}
		txt = append(txt, "dnsaddr="+a.String()+"/p2p/"+m.id.String())
	}
	txt = append(txt, "cluster="+m.cfg.ClusterID)
	service := mdnsServiceName(m.cfg.ClusterID)
	server, err := zeroconf.RegisterProxy(m.id.String(), service, "local", m.dataPort, m.id.String(), ips, txt, ifaces)
	if err != nil {
		return nil, fmt.Errorf("mesh: mdns register: %w (is multicast enabled on the interface?)", err)
	}
	ctx, cancel := context.WithCancel(m.ctx)
	s := &mdnsService{server: server, cancel: cancel}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		m.browseMDNS(ctx, service, ifaces)
	}()
	return s, nil
}

// browseMDNS browses in cycles: zeroconf reports each instance once per browse, so a
// fresh browse now and then rediscovers a peer whose first contact failed.
func (m *Mesh) browseMDNS(ctx context.Context, service string, ifaces []net.Interface) {
	for ctx.Err() == nil {
		cycle, cancel := context.WithTimeout(ctx, mdnsBrowseCycle)
		entries := make(chan *zeroconf.ServiceEntry, 64)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for e := range entries {
				m.mdnsFound(cycle, e)
			}
		}()
		var opts []zeroconf.ClientOption
		if len(ifaces) > 0 {
			opts = append(opts, zeroconf.SelectIfaces(ifaces))
		}
		err := zeroconf.Browse(cycle, service, "local", entries, opts...)
		if err != nil {
			m.log.Warn("mdns browse failed", "err", err)
			close(entries)
		}
		<-done
		<-cycle.Done()
		cancel()
	}
}

func (m *Mesh) mdnsFound(ctx context.Context, e *zeroconf.ServiceEntry) {
	var addrs []ma.Multiaddr
	cluster := ""
	for _, t := range e.Text {
		if v, ok := strings.CutPrefix(t, "cluster="); ok {
			cluster = v
		}
		if v, ok := strings.CutPrefix(t, "dnsaddr="); ok {
			if a, err := ma.NewMultiaddr(v); err == nil {
				addrs = append(addrs, a)
			}
		}
	}
	if cluster != m.cfg.ClusterID {
		return
	}
	infos, err := peer.AddrInfosFromP2pAddrs(addrs...)
	if err != nil {
		return
	}
	for _, ai := range infos {
		if ai.ID == m.id {
			continue
		}
		m.noteSource(ai.ID, SourceMDNS)
		if m.memberAlive(ai.ID) && m.isAdmitted(ai.ID) {
			continue
		}
		if err := m.connectAndJoin(ctx, ai, SourceMDNS); err != nil {
			m.log.Info("mdns peer join failed", "peer", ai.ID.String(), "err", err)
		}
	}
}

// dhtLoop advertises this node under the cluster's rendezvous key and joins whoever
// else advertises it. The DHT itself is bootstrapped from already connected peers
// (seeds), since a private cluster has no public bootstrap nodes.
func (m *Mesh) dhtLoop(ctx context.Context) {
	rendezvous := "layermesh/" + m.cfg.ClusterID
	disc := drouting.NewRoutingDiscovery(m.dht)
	for {
		if err := m.dht.Bootstrap(ctx); err != nil {
			m.log.Debug("dht bootstrap", "err", err)
		}
		cycle, cancel := context.WithTimeout(ctx, dhtCycle)
		if _, err := disc.Advertise(cycle, rendezvous); err != nil {
			m.log.Debug("dht advertise", "err", err)
		}
		found, err := disc.FindPeers(cycle, rendezvous)
		if err == nil {
			for ai := range found {
				if ai.ID == m.id || len(ai.Addrs) == 0 || (m.memberAlive(ai.ID) && m.isAdmitted(ai.ID)) {
					continue
				}
				if err := m.connectAndJoin(cycle, ai, SourceDHT); err != nil {
					m.log.Debug("dht peer join failed", "peer", ai.ID.String(), "err", err)
				}
			}
		}
		<-cycle.Done()
		cancel()
		if ctx.Err() != nil {
			return
		}
	}
}
