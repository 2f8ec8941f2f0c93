package control

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"time"

	"github.com/layermesh/layermesh/consensus"
)

// servingWriteTimeout bounds one commit of this node's serving record; a failed one
// is tried again on the next wake-up.
const servingWriteTimeout = 5 * time.Second

// SetServed records what this node's runtime serves now, for servingLoop to commit.
// It only stores and signals: it never waits on Raft.
func (c *Controller) SetServed(refs []consensus.ServedRef) {
	refs = slices.Clone(refs)
	slices.SortFunc(refs, compareServedRefs)
	c.servedMu.Lock()
	c.served = refs
	c.servedMu.Unlock()
	select {
	case c.servedKick <- struct{}{}:
	default:
	}
}

func compareServedRefs(a, b consensus.ServedRef) int {
	return cmp.Or(strings.Compare(a.Model, b.Model), strings.Compare(a.Version, b.Version), cmp.Compare(a.Stage, b.Stage))
}

// servingLoop keeps this node's consensus.Serving record equal to what the runtime
// serves, in this run: after every runtime change, every state change (a restore, a
// new leader) and every 2 s it compares and, when they differ, commits the record.
// Routers take a stage as ready on a node only from that record, so it has no size
// limit (membership metadata has 512 bytes).
func (c *Controller) servingLoop(ctx context.Context) {
	c.everyChange(ctx, c.servedKick, func() {
		c.servedMu.Lock()
		want := consensus.Serving{Boot: c.cfg.Boot, Stages: c.served}
		c.servedMu.Unlock()
		have, ok := c.store.View().Serving[c.cfg.Self]
		if ok && have.Boot == want.Boot && slices.Equal(have.Stages, want.Stages) {
			return
		}
		wctx, cancel := context.WithTimeout(ctx, servingWriteTimeout)
		defer cancel()
		err := c.Apply(wctx, consensus.NewCommand(consensus.ReportServing{Node: c.cfg.Self, Serving: want}))
		if err != nil && ctx.Err() == nil {
			c.log.Debug("committing the served stages; will try again", "stages", len(want.Stages), "err", err)
		}
	})
}

// Assignment is one stage the committed placements give a node.
type Assignment struct {
	Model, Version string
	Stage          int
	// Blob is the sha256 of the stage's ONNX file, Size its length.
	Blob string
	Size int64
	// MemBytes is what the loaded stage counts against the memory budget.
	MemBytes int64
}

// WatchAssignments calls fn with the stages the committed placements give this node,
// now and after every change of the state, until ctx ends.
func (c *Controller) WatchAssignments(ctx context.Context, fn func([]Assignment)) {
	c.everyChange(ctx, nil, func() { fn(assignmentsFor(c.store.State(), c.cfg.Self)) })
}

// assignmentsFor lists the stages the committed placements give node self.
func assignmentsFor(st *consensus.ClusterState, self string) []Assignment {
	var out []Assignment
	for key, pl := range st.Placements {
		model, ok := st.Models[key]
		if !ok {
			continue
		}
		ann := deployFigures(model)
		for k, reps := range pl.Stages {
			if k >= len(model.Stages) || !slices.Contains(reps, self) {
				continue
			}
			sm := model.Stages[k]
			out = append(out, Assignment{
				Model: model.Name, Version: model.Version, Stage: k,
				Blob: sm.SHA256, Size: sm.Size, MemBytes: ann.memBytes(model, k),
			})
		}
	}
	return out
}
