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
// Accept drops streams from peers that admit rejects, so a peer that is
// connected but not a member (one still in the join handshake) cannot speak
// Raft to us.
type streamLayer struct {
	host  host.Host
	admit func(peer.ID) bool
	net.Listener
}

func newStreamLayer(h host.Host, admit func(peer.ID) bool) (*streamLayer, error) {
	ln, err := gostream.Listen(h, RaftProtocol)
	if err != nil {
		return nil, fmt.Errorf("consensus: listen on %s: %w", RaftProtocol, err)
	}
	return &streamLayer{host: h, admit: admit, Listener: ln}, nil
}

// Accept implements net.Listener, skipping streams from peers not admitted.
func (l *streamLayer) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		id, err := peer.Decode(c.RemoteAddr().String())
		if err == nil && l.admit(id) {
			return c, nil
		}
		c.Close()
	}
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
