package control

import (
	"context"
	"fmt"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
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
	// Causes are quoted (%v), not wrapped: the API's code is the one given here,
	// not whichever runtime error the measurement met.
	bad := func(format string, args ...any) error {
		return fmt.Errorf("deploy %s: %w: plan=%s: %s", name, api.ErrBadRequest, api.PlanMeasured, fmt.Sprintf(format, args...))
	}
	prof, ok := c.cfg.Backend.(accel.NodeProfiler)
	if !ok {
		return bad("this node has no runtime that can time a model's nodes")
	}
	if n := g.ContextLen(); n > 0 && past >= n {
		return bad("plan past %d must be below the model's context of %d", past, n)
	}
	self, ok := st.Members[c.cfg.Self]
	if !ok || !(self.Capacity.Speed > 0) {
		return fmt.Errorf("deploy %s: %w: plan=%s: this node has no speed score yet", name, api.ErrNotReady, api.PlanMeasured)
	}
	shapes, err := g.DecodeShapes(int64(past))
	if err != nil {
		return bad("%v", err)
	}
	// The runs hold the whole model and made-up inputs of this past on this node.
	need := g.ParamBytes
	for _, in := range g.InputSpecs() {
		n, err := tensor.ByteSize(in.DType, shapes[in.Name])
		if err != nil {
			return bad("input %q at past %d: %v", in.Name, past, err)
		}
		need += n
	}
	if free := self.Capacity.MemBudget - usedBytes(st, "")[c.cfg.Self]; need > free {
		return fmt.Errorf("deploy %s: %w: plan=%s runs the whole model on this node with a past of %d: it needs %s, %s are free here",
			name, ErrInsufficientCapacity, api.PlanMeasured, past, partition.FormatBytes(need), partition.FormatBytes(free))
	}
	inputs, err := g.DecodeInputs(int64(past), partition.VerifySeed)
	if err != nil {
		return bad("%v", err)
	}
	costs, err := partition.MeasureNodeCosts(ctx, prof, g, inputs, c.cfg.Session, partition.DefaultMeasureWarmup, partition.DefaultMeasureRuns, tmpDir)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("deploy %s: plan=%s: %w", name, api.PlanMeasured, ctx.Err())
		}
		// The model does not run on made-up inputs of these shapes, or the profile
		// misses its heavy nodes: the FLOP plan is what is left to ask for.
		return bad("cannot time this model (deploy with plan=%s): %v", api.PlanFLOPs, err)
	}
	if err := g.SetMeasuredCosts(costs.Seconds, self.Capacity.Speed*1e9); err != nil {
		return bad("%v", err)
	}
	c.log.Info("deploy: planning on measured node times", "model", name, "past", past, "nodes", len(costs.Seconds),
		"run_ms", costs.Run*1e3, "kernels_ms", costs.Kernels*1e3)
	return nil
}
