package node

// The cluster admin answers that describe the cluster as this node sees it: its
// readiness, the members with their stages. Changes to members are the control
// loop's (control/members.go).

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/layermesh/layermesh/api/wire"
)

// Ready reports the cluster layer's readiness: a leader is known and this node's member
// record is committed.
func (c *Cluster) Ready(ctx context.Context) []wire.ReadyCheck {
	check := wire.ReadyCheck{Layer: "cluster", Ready: true}
	switch {
	case c.store.Leader() == "":
		check.Ready, check.Reason = false, "no raft leader known"
	case !c.caughtUp.Load():
		check.Ready, check.Reason = false, "joining: member record not committed or state not caught up yet"
	}
	return []wire.ReadyCheck{check}
}

// Cluster describes the cluster as this node sees it.
func (c *Cluster) Cluster(ctx context.Context) (wire.ClusterStatus, error) {
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return wire.ClusterStatus{}, err
	}
	st := c.store.State()
	leader := c.store.Leader()
	if m, ok := st.Members[leader]; ok && m.Name != "" {
		leader = m.Name
	}
	return wire.ClusterStatus{Mode: "cluster", Leader: leader, Term: c.store.Stats().Term, Self: c.opts.Name, Nodes: nodes}, nil
}

// Nodes lists the members recorded in Raft with the stages each serves (its serving
// record, when it is from the run the member's metadata names).
func (c *Cluster) Nodes(ctx context.Context) ([]wire.NodeStatus, error) {
	st := c.store.State()
	live := c.view.LiveMembers()
	var out []wire.NodeStatus
	for _, id := range slices.Sorted(maps.Keys(st.Members)) {
		m := st.Members[id]
		ns := wire.NodeStatus{Name: m.Name, HTTPAddr: m.HTTPAddr, State: string(m.State), Cores: m.Capacity.Cores,
			MemTotal: uint64(max(m.Capacity.MemBudget, 0))}
		if meta, ok := live[id]; ok {
			if len(meta.Accels) > 0 {
				ns.Accel = accelLabel(meta.Accels[0], "")
			}
			if len(meta.Accels) > 1 {
				ns.Accel = accelLabel(meta.Accels[0], meta.Accels[1])
			}
			ns.GPUMemTotal, ns.GPUMemFree = uint64(max(meta.GPUMem, 0)), uint64(max(meta.GPUFree, 0))
			ns.Platform = meta.Platform
			if rec := st.Serving[id]; rec.Boot == meta.Boot {
				for _, s := range rec.Stages {
					state := "loading"
					if s.Ready {
						state = "ready"
					}
					ns.Models = append(ns.Models, fmt.Sprintf("%s@%s/stage%d (%s)", s.Model, s.Version, s.Stage, state))
				}
			}
		}
		out = append(out, ns)
	}
	return out, nil
}

func nowUTC() time.Time { return time.Now().UTC() }
