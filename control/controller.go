package control

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/mesh"
)

// missingGrace is how long a member recorded alive may be absent from memberlist before
// the leader records it dead. memberlist itself has already waited out its suspicion
// timeout by then; the grace covers a leader whose own memberlist is still converging
// (just started, just elected), which would otherwise declare healthy nodes dead and
// move their stages for nothing.
const missingGrace = 2 * time.Second

// leaderState is the leader's placement loop state. It lives on every node but acts
// only while the node leads.
type leaderState struct {
	mu        sync.Mutex
	missing   map[string]time.Time // member id -> first seen absent from memberlist
	errs      map[string]string    // model key -> why it could not be placed, or placement warnings
	leadSince time.Time
}

// PlacementError is the last reason the controller could not place the model, or the
// warnings of its last placement (stages short of replicas), if any.
func (c *Controller) PlacementError(key string) string {
	c.leader.mu.Lock()
	defer c.leader.mu.Unlock()
	return c.leader.errs[key]
}

// leaderLoop reconciles member states and placements whenever the Raft state or the
// membership changes, and every second, while this node leads.
func (c *Controller) leaderLoop(ctx context.Context) {
	changes, stopWatch := c.store.Watch()
	defer stopWatch()
	events, stopEvents := c.cfg.Events.Subscribe()
	defer stopEvents()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if c.store.IsLeader() {
			c.leader.mu.Lock()
			if c.leader.leadSince.IsZero() {
				c.leader.leadSince = time.Now()
			}
			c.leader.mu.Unlock()
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			c.reconcileMembers(rctx)
			c.reconcilePlacements(rctx)
			cancel()
		} else {
			c.leader.mu.Lock()
			c.leader.leadSince = time.Time{}
			clear(c.leader.missing)
			c.leader.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-events:
		case <-tick.C:
		}
	}
}

// reconcileMembers records memberlist's view of liveness in Raft: a member gone from
// memberlist for missingGrace becomes dead, a dead one seen again becomes alive.
// Draining, left and removed are admin decisions and stay.
func (c *Controller) reconcileMembers(ctx context.Context) {
	st := c.store.State()
	live := c.view.LiveMembers()
	now := time.Now()
	// memberlist admits only nodes holding the cluster secret: the leader brings each
	// into the Raft configuration, after which the node writes its own member record.
	for id := range live {
		if m, ok := st.Members[id]; ok && m.State != consensus.MemberRemoved && m.State != consensus.MemberLeft {
			continue
		}
		if err := c.store.AddNode(ctx, id); err != nil {
			c.log.Warn("adding node to raft", "peer", id, "err", err)
		}
	}
	for id, m := range st.Members {
		_, isLive := live[id]
		c.leader.mu.Lock()
		if isLive || id == c.cfg.Self {
			delete(c.leader.missing, id)
		} else if _, ok := c.leader.missing[id]; !ok {
			c.leader.missing[id] = now
		}
		since, absent := c.leader.missing[id]
		leadFor := now.Sub(c.leader.leadSince)
		c.leader.mu.Unlock()
		var next consensus.MemberState
		switch {
		case (isLive || id == c.cfg.Self) && (m.State == consensus.MemberDead || m.State == consensus.MemberSuspect):
			next = consensus.MemberAlive
		case absent && now.Sub(since) >= missingGrace && leadFor >= missingGrace &&
			(m.State == consensus.MemberAlive || m.State == consensus.MemberSuspect || m.State == consensus.MemberDraining):
			next = consensus.MemberDead
		default:
			continue
		}
		if _, err := c.store.Apply(ctx, consensus.NewCommand(consensus.SetMemberState{ID: id, State: next, At: now})); err != nil {
			c.log.Warn("recording member state", "peer", id, "state", next, "err", err)
			continue
		}
		c.log.Info("member state recorded", "peer", id, "name", m.Name, "state", next)
	}
}

// reconcilePlacements places every model version whose committed placement differs
// from what Place computes now, and drops versions superseded by a ready newer one.
func (c *Controller) reconcilePlacements(ctx context.Context) {
	st := c.store.State()
	live := c.view.LiveMembers()
	keys := slices.Sorted(maps.Keys(st.Models))
	for _, key := range keys {
		m := st.Models[key]
		if len(m.Stages) == 0 {
			continue
		}
		req := c.placementRequest(st, key, m, live)
		res, err := Place(req)
		c.leader.mu.Lock()
		switch {
		case err != nil:
			if c.leader.errs[key] != err.Error() {
				c.log.Error("cannot place model", "model", key, "err", err)
			}
			c.leader.errs[key] = err.Error()
		case len(res.Warnings) > 0:
			c.leader.errs[key] = strings.Join(res.Warnings, "; ")
		default:
			delete(c.leader.errs, key)
		}
		c.leader.mu.Unlock()
		if err != nil {
			continue
		}
		prev, placed := st.Placements[key]
		target := res.Replicas
		if placed && slices.EqualFunc(prev.Stages, target, slices.Equal) {
			// Stable: give idle or returning nodes work, one replica at a time and only
			// once every placed replica is ready, so no stage is ever left short.
			next, moved := Rebalance(req, prev.Stages)
			if !moved || !c.allPlacedReady(st, m, prev.Stages, live) {
				continue
			}
			target = next
		}
		cmd := consensus.NewCommand(consensus.SetPlacement{
			Placement:     consensus.Placement{Model: m.Name, Version: m.Version, Stages: target},
			ExpectedEpoch: prev.Epoch,
		})
		r, err := c.store.Apply(ctx, cmd)
		if err != nil {
			if !errors.Is(err, consensus.ErrEpochMismatch) {
				c.log.Warn("committing placement", "model", key, "err", err)
			}
			continue
		}
		c.log.Info("placement committed", "model", key, "epoch", r.Epoch, "stages", target,
			"moved", res.Moved, "warnings", res.Warnings, "rebalance", placed && res.Moved == 0)
		st = c.store.State()
	}
	c.dropSuperseded(ctx, st, live)
}

// placementRequest builds Place's input from the Raft state and memberlist.
func (c *Controller) placementRequest(st *consensus.ClusterState, key string, m consensus.Model, live map[string]mesh.NodeMeta) PlacementRequest {
	info := deployFigures(m)
	used := usedBytes(st, key)
	req := PlacementRequest{Replicas: info.replicas(c.cfg.Replicas)}
	for k := range m.Stages {
		req.Stages = append(req.Stages, PlacementStage{
			MemBytes: info.memBytes(m, k), Cost: info.cost(m, k), Blob: m.Stages[k].SHA256,
		})
	}
	suspect := c.view.Suspects()
	for id, mem := range st.Members {
		pm := PlacementMember{ID: id, MemBudget: mem.Capacity.MemBudget, Used: used[id], Speed: mem.Capacity.Speed,
			Blobs: make(map[string]bool)}
		meta, isLive := live[id]
		switch {
		case mem.State == consensus.MemberDraining:
			pm.State = MemberDraining
		case mem.State != consensus.MemberAlive && mem.State != consensus.MemberSuspect:
			pm.State = MemberDead
		case !isLive && id != c.cfg.Self:
			// Recorded alive but gone from memberlist: keep what it has until it is
			// recorded dead, give it nothing new.
			pm.State = MemberSuspect
		case suspect[id] || mem.State == consensus.MemberSuspect:
			pm.State = MemberSuspect
		default:
			pm.State = MemberAlive
		}
		for k := range m.Stages {
			if st.Serving[id].Serves(meta.Boot, m.Name, m.Version, k) || id == info.Cutter {
				pm.Blobs[m.Stages[k].SHA256] = true
			}
		}
		req.Members = append(req.Members, pm)
	}
	slices.SortFunc(req.Members, func(a, b PlacementMember) int { return strings.Compare(a.ID, b.ID) })
	if pl, ok := st.Placements[key]; ok && len(pl.Stages) == len(m.Stages) {
		req.Previous = pl.Stages
	}
	return req
}

// dropSuperseded deletes the older versions of a model once a newer version serves:
// a redeploy replaces the model without a moment where neither version answers.
func (c *Controller) dropSuperseded(ctx context.Context, st *consensus.ClusterState, live map[string]mesh.NodeMeta) {
	newestReady := make(map[string]int)
	for _, m := range st.Models {
		if v := versionNumber(m.Version); v > newestReady[m.Name] && c.view.ModelReady(st, m, live) {
			newestReady[m.Name] = v
		}
	}
	for _, m := range st.Models {
		if v := versionNumber(m.Version); v < newestReady[m.Name] {
			cmd := consensus.NewCommand(consensus.DeleteModel{Name: m.Name, Version: m.Version})
			if _, err := c.store.Apply(ctx, cmd); err != nil {
				c.log.Warn("dropping superseded version", "model", m.Name, "version", m.Version, "err", err)
				continue
			}
			c.log.Info("superseded version dropped", "model", m.Name, "version", m.Version,
				"by", strconv.Itoa(newestReady[m.Name]))
		}
	}
}

// allPlacedReady says whether every node the placement names serves its stage ready.
func (c *Controller) allPlacedReady(st *consensus.ClusterState, m consensus.Model, stages [][]string, live map[string]mesh.NodeMeta) bool {
	for k, reps := range stages {
		ready := c.view.ReadyReplicas(st, m, k, live)
		for _, id := range reps {
			if !slices.Contains(ready, id) {
				return false
			}
		}
	}
	return true
}

func versionNumber(v string) int {
	n, _ := strconv.Atoi(v)
	return n
}
