package consensus

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/net/gostream"
)

// Protocol ids on the libp2p host.
const (
	// RaftProtocol carries raft's NetworkTransport.
	RaftProtocol protocol.ID = "/layermesh/raft/1"
	// ApplyProtocol carries writes, reads and membership changes forwarded from
	// a follower to the leader.
	ApplyProtocol protocol.ID = "/layermesh/raft-apply/1"
)

// streamLayer is a raft.StreamLayer over libp2p streams: a raft ServerAddress
// is a peer id, and libp2p finds, authenticates and encrypts the connection.
type streamLayer struct {
	host host.Host
	net.Listener
}

func newStreamLayer(h host.Host) (*streamLayer, error) {
	ln, err := gostream.Listen(h, RaftProtocol)
	if err != nil {
		return nil, fmt.Errorf("consensus: listen on %s: %w", RaftProtocol, err)
	}
	return &streamLayer{host: h, Listener: ln}, nil
}

// Dial implements raft.StreamLayer.
func (l *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	id, err := peer.Decode(string(address))
	if err != nil {
		return nil, fmt.Errorf("consensus: raft address %q is not a peer id: %w", address, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return gostream.Dial(ctx, l.host, id, RaftProtocol)
}
