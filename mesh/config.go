package mesh

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Security selects the libp2p channel security of the control connections.
type Security int

const (
	// SecurityTLS is TLS 1.3 with AES-GCM, hardware accelerated on the CPUs we target.
	SecurityTLS Security = iota
	// SecurityNoise is the Noise XX handshake with ChaCha20-Poly1305; slower here, kept
	// for peers whose CPUs lack AES instructions.
	SecurityNoise
)

// Config describes one node's network layer. Zero values pick the defaults noted on
// each field.
type Config struct {
	// DataDir holds identity.key, blobs/ and peers.json (the last known addresses of
	// every member, see PeersFileName). Required.
	DataDir string
	// ListenAddrs are libp2p multiaddrs; default /ip4/0.0.0.0/tcp/0.
	ListenAddrs []string
	// GossipBindAddr is memberlist's bind address; default 0.0.0.0.
	GossipBindAddr string
	// GossipPort is memberlist's port (TCP and UDP); 0 picks a free one.
	GossipPort int
	// DataPort is the port of the direct data listener (bulk tensors and blobs); 0
	// picks a free one. It binds on the host of the first ListenAddrs entry.
	DataPort int
	// ClusterID scopes mDNS and the DHT rendezvous and salts every derived key. Required.
	ClusterID string
	// Secret is the cluster secret. Required, at least 16 bytes.
	Secret []byte
	// Join lists seed peers: a multiaddr with or without /p2p/ID, or host:port of a
	// libp2p TCP listener.
	Join []string
	// MDNS turns on multicast DNS discovery on the local network.
	MDNS bool
	// MDNSInterfaces limits mDNS to these interface names; empty means every
	// multicast-capable interface that is up.
	MDNSInterfaces []string
	// DHT turns on Kademlia DHT rendezvous under the cluster id.
	DHT bool
	// Meta is this node's initial metadata (PeerID and Addrs are filled in by New).
	Meta NodeMeta
	// Logger receives everything the mesh logs; default slog.Default().
	Logger *slog.Logger
	// Security picks TLS (default) or Noise for libp2p connections.
	Security Security
	// PrivateNetwork wraps every libp2p connection in a pre-shared-key layer derived
	// from the secret. Off by default: it encrypts everything a second time.
	PrivateNetwork bool
	// IsMember reports whether the cluster state lists p as a member; such peers are
	// admitted without a handshake in this process. Nil admits only handshaken peers.
	IsMember func(p peer.ID) bool
	// FastGossip uses memberlist's local-network timings (failure detected in seconds
	// instead of tens of seconds); meant for one-host clusters and tests.
	FastGossip bool
	// ProbeInterval is how often link probes refresh RTT and bandwidth; default 10s,
	// negative turns probes off.
	ProbeInterval time.Duration
	// MaxTensorBytes bounds the tensor payload one stage frame may declare; default 2 GiB.
	MaxTensorBytes int64
	// JoinRate is how many join handshakes one remote IP may start per minute (peer ids
	// cost nothing to mint, addresses do); default 60, enough for a rack of nodes
	// behind one NAT joining at once.
	JoinRate int
}

const (
	defaultListen        = "/ip4/0.0.0.0/tcp/0"
	defaultProbeInterval = 10 * time.Second
	defaultMaxTensor     = 2 << 30
	defaultJoinRate      = 60
	minSecretLen         = 16
)

func (c *Config) withDefaults() (Config, error) {
	out := *c
	if out.DataDir == "" {
		return out, fmt.Errorf("%w: DataDir is required", ErrConfig)
	}
	if out.ClusterID == "" {
		return out, fmt.Errorf("%w: ClusterID is required", ErrConfig)
	}
	if len(out.Secret) < minSecretLen {
		return out, fmt.Errorf("%w: secret of %d bytes, need at least %d", ErrConfig, len(out.Secret), minSecretLen)
	}
	if len(out.ListenAddrs) == 0 {
		out.ListenAddrs = []string{defaultListen}
	}
	if out.GossipBindAddr == "" {
		out.GossipBindAddr = "0.0.0.0"
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.ProbeInterval == 0 {
		out.ProbeInterval = defaultProbeInterval
	}
	if out.MaxTensorBytes <= 0 {
		out.MaxTensorBytes = defaultMaxTensor
	}
	if out.JoinRate <= 0 {
		out.JoinRate = defaultJoinRate
	}
	return out, nil
}
