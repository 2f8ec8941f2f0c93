package node

import (
	"context"

	"github.com/layermesh/layermesh/consensus"
	"github.com/libp2p/go-libp2p/core/peer"
)

// knownPeersLoop hands the mesh the libp2p addresses of every member the Raft state
// lists, at start and after every applied change, so that its peers file also holds
// the members this node never met in gossip (they joined while it was down): after
// the next power cut it can dial them too. The mesh dials those gossip does not list
// alive, with a backoff.
func (c *Cluster) knownPeersLoop(ctx context.Context) {
	changes, stop := c.store.Watch()
	defer stop()
	for {
		for id, m := range c.store.View().Members {
			if id == c.self || m.State == consensus.MemberRemoved || m.State == consensus.MemberLeft {
				continue
			}
			if pid, err := peer.Decode(id); err == nil {
				c.mesh.AddKnownPeer(pid, m.Addrs)
			}
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-changes:
			if !ok {
				return
			}
		}
	}
}
