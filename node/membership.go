package node

// How this node keeps its place in the cluster: its member record in Raft, its place
// in memberlist's gossip, and the suspicion memberlist reports.

import (
	"context"
	"runtime"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/internal/ctxtime"
	"github.com/layermesh/layermesh/mesh"
)

// joinLoop writes this node's member record until it is committed. A joining node
// cannot reach Raft before the leader adds it to the configuration, which the leader
// does for every node memberlist admits (reconcileMembers); until then the writes fail
// with "no leader" and are retried.
func (c *Cluster) joinLoop(ctx context.Context) {
	rec := consensus.Member{
		ID: c.self, Name: c.opts.Name, Addrs: c.mesh.Addrs(), HTTPAddr: c.opts.HTTPAddr,
		Capacity: consensus.Capacity{MemBudget: c.opts.MemBudget, Cores: runtime.NumCPU(), Speed: c.opts.Speed},
		State:    consensus.MemberAlive, StateSince: time.Now(),
	}
	backoff := 200 * time.Millisecond
	for {
		cur, ok := c.store.State().Members[c.self]
		if ok && sameMember(cur, rec) {
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := c.store.Read(rctx, true)
			cancel()
			if err == nil {
				c.caughtUp.Store(true)
				c.log.Info("member record in place and state caught up", "peer", c.self)
				return
			}
			c.log.Info("joining cluster: state not caught up yet", "err", err)
			if ctxtime.Sleep(ctx, backoff) != nil {
				return
			}
			continue
		}
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := c.store.Apply(actx, consensus.NewCommand(consensus.UpsertMember{Member: rec}))
		cancel()
		if err == nil {
			continue
		}
		c.log.Info("joining cluster: member record not committed yet", "err", err)
		if ctxtime.Sleep(ctx, backoff) != nil {
			return
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// rejoinInterval is how often a node checks that its gossip reaches every member the
// Raft state lists.
const rejoinInterval = 5 * time.Second

// rejoinLoop joins the gossip again through the members the Raft state lists when
// memberlist does not hold some of them alive. A node restarted without seeds (the
// founder, started again with --bootstrap) otherwise stays alone in its member list
// once the others have declared it dead, since they no longer gossip to it: it would
// see no stage of theirs and route nothing to them, although Raft reaches it. One
// successful join per round is enough; gossip brings the rest.
func (c *Cluster) rejoinLoop(ctx context.Context) {
	ctxtime.EveryTick(ctx, rejoinInterval, func() {
		live := c.view.LiveMembers()
		for id, m := range c.store.View().Members {
			if _, ok := live[id]; ok || id == c.self || m.State == consensus.MemberDead {
				continue
			}
			infos, err := peer.AddrInfosFromP2pAddrs(p2pAddrs(m.Addrs)...)
			if err != nil || len(infos) != 1 {
				continue
			}
			jctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			err = c.mesh.Connect(jctx, infos[0])
			cancel()
			if err == nil {
				c.log.Info("rejoined the gossip through a cluster member", "member", m.Name)
				break
			}
			c.log.Debug("rejoining the gossip", "member", m.Name, "err", err)
		}
	})
}

// p2pAddrs parses the multiaddrs that parse.
func p2pAddrs(addrs []string) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, a := range addrs {
		if m, err := ma.NewMultiaddr(a); err == nil {
			out = append(out, m)
		}
	}
	return out
}

func sameMember(a, b consensus.Member) bool {
	return a.Name == b.Name && a.HTTPAddr == b.HTTPAddr && a.Capacity == b.Capacity &&
		slices.Equal(a.Addrs, b.Addrs) && (a.State == consensus.MemberAlive || a.State == consensus.MemberDraining)
}

// expectLoop tells the store about every peer memberlist knows until it bootstraps.
func (c *Cluster) expectLoop(ctx context.Context) {
	for {
		for _, m := range c.mesh.Members() {
			if err := c.store.Expect(m.PeerID.String()); err != nil {
				c.log.Warn("bootstrap expect", "peer", m.PeerID.String(), "err", err)
			}
		}
		if ctxtime.Sleep(ctx, 500*time.Millisecond) != nil {
			return
		}
	}
}

// memberEventLoop keeps the suspect set and wakes the runtime (a replacement may be
// ready now) and the leader on every membership change.
func (c *Cluster) memberEventLoop(ctx context.Context) {
	events, stop := c.mesh.Subscribe()
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			id := ev.Member.PeerID.String()
			c.view.SetSuspect(id, ev.Type == mesh.MemberSuspect)
			c.runtime.Kick()
		}
	}
}
