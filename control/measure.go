package control

import (
	"context"
	"fmt"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/partition"
)

// measureCosts makes the planner balance node times measured on this node's backend
// instead of FLOPs (deploy option plan=measured): each node's median time in a decode
// step at past positions for a model with state pairs, in a run at the analysed
// shapes for one without. FLOPs miss what a decode step spends beyond arithmetic: the
// executor's work between many small operators and the KV cache each attention block
// copies and reads, which a longer past makes heavier. Every device's share is scaled
// by its speed score against this node's.
func (c *Controller) measureCosts(ctx context.Context, name string, g *partition.Graph, past int, tmpDir string, st *consensus.ClusterState) error {
	prof, ok := c.cfg.Backend.(accel.NodeProfiler)
	if !ok {
		return fmt.Errorf("deploy %s: %w: plan=%s: this node has no runtime that can time a model's nodes", name, api.ErrBadRequest, api.PlanMeasured)
	}
	if n := g.ContextLen(); n > 0 && past >= n {
		return fmt.Errorf("deploy %s: %w: plan past %d must be below the model's context of %d", name, api.ErrBadRequest, past, n)
	}
	self, ok := st.Members[c.cfg.Self]
	if !ok || !(self.Capacity.Speed > 0) {
		return fmt.Errorf("deploy %s: plan=%s: this node has no speed score yet", name, api.PlanMeasured)
	}
	if free := self.Capacity.MemBudget - usedBytes(st, "")[c.cfg.Self]; g.ParamBytes > free {
		return fmt.Errorf("deploy %s: %w: plan=%s runs the whole model on this node: its %s of weights exceed the %s free here",
			name, ErrInsufficientCapacity, api.PlanMeasured, partition.FormatBytes(g.ParamBytes), partition.FormatBytes(free))
	}
	inputs, err := g.DecodeInputs(int64(past), partition.VerifySeed)
	if err != nil {
		return fmt.Errorf("deploy %s: plan=%s: %w", name, api.PlanMeasured, err)
	}
	costs, err := partition.MeasureNodeCosts(ctx, prof, g, inputs, c.cfg.Session, partition.DefaultMeasureWarmup, partition.DefaultMeasureRuns, tmpDir)
	if err != nil && ctx.Err() == nil {
		// The model does not run on made-up inputs of these shapes, or the profile
		// misses its heavy nodes: the FLOP plan is what is left to ask for.
		return fmt.Errorf("deploy %s: %w: plan=%s cannot time this model (deploy with plan=%s): %w", name, api.ErrBadRequest, api.PlanMeasured, api.PlanFLOPs, err)
	}
	if err != nil {
		return fmt.Errorf("deploy %s: plan=%s: %w", name, api.PlanMeasured, err)
	}
	if err := g.SetMeasuredCosts(costs.Seconds, self.Capacity.Speed*1e9); err != nil {
		return fmt.Errorf("deploy %s: plan=%s: %w", name, api.PlanMeasured, err)
	}
	c.log.Info("deploy: planning on measured node times", "model", name, "past", past, "nodes", len(costs.Seconds),
		"run_ms", costs.Run*1e3, "kernels_ms", costs.Kernels*1e3)
	return nil
}
