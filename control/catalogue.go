package control

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/mesh"
)

// ListModels describes every deployed model version.
func (c *Controller) ListModels(ctx context.Context) ([]wire.ModelStatus, error) {
	st, err := c.readCatalogue(ctx)
	if err != nil {
		return nil, err
	}
	live := c.view.LiveMembers()
	keys := slices.Sorted(maps.Keys(st.Models))
	out := make([]wire.ModelStatus, 0, len(keys))
	for _, k := range keys {
		out = append(out, c.status(st, st.Models[k], live))
	}
	return out, nil
}

// ModelStatus describes one model version ("" means the one Infer would use).
func (c *Controller) ModelStatus(ctx context.Context, name, version string) (wire.ModelStatus, error) {
	if !c.cfg.CaughtUp() {
		return wire.ModelStatus{}, fmt.Errorf("%w: cluster state not caught up since start", api.ErrNotReady)
	}
	st, err := c.readCatalogue(ctx)
	if err != nil {
		return wire.ModelStatus{}, err
	}
	m, err := c.view.ResolveVersion(st, name, version)
	if err != nil {
		return wire.ModelStatus{}, err
	}
	return c.status(st, m, c.view.LiveMembers()), nil
}

// readCatalogue is a linearizable read of the cluster state for the model catalogue
// answers: a model whose upload was acknowledged is listed by every node from then on,
// even a follower that has not applied the entry yet or an old leader just resumed
// from a pause. A node that cannot reach the majority answers 503. Inference keeps
// reading the local state: it needs placements, not a fresh catalogue.
func (c *Controller) readCatalogue(ctx context.Context) (*consensus.ClusterState, error) {
	ctx, cancel := context.WithTimeout(ctx, writeRetryBudget)
	defer cancel()
	st, err := c.store.Read(ctx, true)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot confirm the cluster state with a majority: %w", api.ErrNotReady, err)
	}
	return st, nil
}

func (c *Controller) status(st *consensus.ClusterState, m consensus.Model, live map[string]mesh.NodeMeta) wire.ModelStatus {
	s := wire.ModelStatus{Name: m.Name, Version: m.Version, SHA256: m.SourceSHA256, Size: m.SourceSize, Source: "upload",
		LoadedAt: m.Created, Compression: compressionStatus(m.Deploy.Compression), PlanPast: m.Deploy.PlanPast}
	for _, in := range m.Signature.Inputs {
		s.Inputs = append(s.Inputs, tensorMeta(in))
	}
	for _, out := range m.Signature.Outputs {
		s.Outputs = append(s.Outputs, tensorMeta(out))
	}
	pl, placed := st.Placements[consensus.ModelKey(m.Name, m.Version)]
	s.Ready = placed
	for k := range m.Stages {
		ss := wire.StageStatus{Index: k, Size: m.Stages[k].Size}
		if placed && k < len(pl.Stages) {
			ss.Replicas = c.names(st, pl.Stages[k])
		}
		ss.Ready = len(c.view.ReadyReplicas(st, m, k, live)) > 0
		s.Ready = s.Ready && ss.Ready
		s.Stages = append(s.Stages, ss)
	}
	switch {
	case !placed:
		s.Reason = "waiting for placement"
		if reason := c.PlacementError(consensus.ModelKey(m.Name, m.Version)); reason != "" {
			s.Reason = reason
		}
	case !s.Ready:
		s.Reason = "stages loading"
	default:
		// Serving, but possibly with fewer replicas than asked for.
		s.Reason = c.PlacementError(consensus.ModelKey(m.Name, m.Version))
	}
	return s
}

func tensorMeta(t consensus.TensorSpec) wire.TensorMetadata {
	return wire.TensorMetadata{Name: t.Name, Datatype: tensor.DType(t.DType).KServe(), Shape: slices.Clone(t.Shape)}
}

// names maps peer ids to member names where known.
func (c *Controller) names(st *consensus.ClusterState, ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id
		if m, ok := st.Members[id]; ok && m.Name != "" {
			out[i] = m.Name
		}
	}
	return out
}

// ModelTextInfo is the text side of the model version generation would use: its
// tokenizer blob and chat template. It reads the local state, as inference does. A
// model deployed without a tokenizer wraps api.ErrNotGenerative.
func (c *Controller) ModelTextInfo(ctx context.Context, name, version string) (consensus.TextInfo, string, error) {
	m, err := c.view.ResolveVersion(c.store.View(), name, version)
	if err != nil {
		return consensus.TextInfo{}, "", err
	}
	if m.Text == nil {
		return consensus.TextInfo{}, "", fmt.Errorf("%w: %s version %s was deployed without a tokenizer", api.ErrNotGenerative, name, m.Version)
	}
	return *m.Text, m.Version, nil
}
