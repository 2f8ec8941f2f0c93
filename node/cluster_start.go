package node

// Starting the cluster part from a running node, and the node's own contribution to
// its membership metadata (its load).

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/layermesh/layermesh/mesh"
)

// startCluster starts the cluster part once HTTP is serving.
func (n *Node) startCluster(ctx context.Context) error {
	// The cluster's components name themselves (component=cluster, raft, mesh, ...);
	// they get the node's name, not n.log's component=node, so that a JSON line has
	// one component key.
	base := n.cfg.Logger
	if base == nil {
		base = slog.Default()
	}
	c, err := NewNodeCluster(ctx, n.cfg, n.name, n.Addr(), base.With("node", n.name))
	if err != nil {
		return fmt.Errorf("node: start cluster: %w", err)
	}
	if err := c.RegisterMetrics(n.reg); err != nil {
		_ = c.Close()
		return fmt.Errorf("node: cluster metrics: %w", err)
	}
	if err := registerClusterMetrics(n.reg, c); err != nil {
		_ = c.Close()
		return fmt.Errorf("node: cluster metrics: %w", err)
	}
	n.cluster.Store(c)
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		c.runEvents(ctx, n.events)
	}()
	go func() {
		defer n.wg.Done()
		n.publishLoad(ctx, c)
	}()
	if n.cfg.Cluster.founding() {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.publishAdminToken(ctx, c)
		}()
	}
	return nil
}

// loadInterval is how often a changed load is published in the node's membership
// metadata: often enough for status pages, rare enough not to flood the gossip.
const loadInterval = 2 * time.Second

// publishLoad keeps the node's metadata Load equal to its inference requests in
// flight, so that every node's status shows every node's load.
func (n *Node) publishLoad(ctx context.Context, c *Cluster) {
	tick := time.NewTicker(loadInterval)
	defer tick.Stop()
	last := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		load := int(n.inferInFlight.Load())
		if load == last {
			continue
		}
		if err := c.mesh.UpdateMeta(func(m *mesh.NodeMeta) { m.Load = load }); err != nil {
			n.log.Debug("publishing load", "err", err)
			continue
		}
		last = load
	}
}
