package node

import (
	"context"
	"fmt"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/partition"
	"github.com/layermesh/layermesh/pipeline"
)

// Generation on a single node: a model with state pairs runs as a session on its own
// ORT session, the state kept in the generation's loop (pipeline.GenerateLocal).

var _ api.Generator = (*Node)(nil)

// generativeInfo detects a loaded model's state pairs by name and, for a generative
// model, its context length (the rows of its position table).
func generativeInfo(path string, sess accel.Session) ([]pipeline.StatePair, int) {
	names := func(infos []accel.TensorInfo) []string {
		out := make([]string, len(infos))
		for i, t := range infos {
			out[i] = t.Name
		}
		return out
	}
	var pairs []pipeline.StatePair
	for _, p := range partition.DetectStatePairs(names(sess.Inputs()), names(sess.Outputs())) {
		pairs = append(pairs, pipeline.StatePair{In: p.In, Out: p.Out})
	}
	if len(pairs) == 0 {
		return nil, 0
	}
	pm, err := partition.Load(path)
	if err != nil {
		return pairs, 0
	}
	g, err := partition.Analyze(pm, nil)
	if err != nil {
		return pairs, 0
	}
	return pairs, g.ContextLen()
}

// vocabOf is the last dim of a model's first [batch, seq, vocab] float output.
func vocabOf(outputs []accel.TensorInfo) int {
	for _, o := range outputs {
		if n := len(o.Shape); o.DType == tensor.Float32 && n == 3 && o.Shape[n-1] > 0 {
			return int(o.Shape[n-1])
		}
	}
	return 0
}

// Generate runs a generation on a loaded model with state pairs (api.Generator).
func (n *Node) Generate(ctx context.Context, req api.GenerateRequest, emit func(api.GeneratedToken) error) (api.GenerateResult, error) {
	m, err := n.lookup(req.Model, req.Version)
	if err != nil {
		return api.GenerateResult{}, err
	}
	if len(m.state) == 0 {
		return api.GenerateResult{}, fmt.Errorf("%w: %s has no state pairs (past_key_values.*/present.*)", api.ErrNotGenerative, m.name)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return api.GenerateResult{}, fmt.Errorf("model %s: %w", m.name, accel.ErrSessionClosed)
	}
	if err := pipeline.CheckGenerate(req, m.contextLen, vocabOf(m.sess.Outputs())); err != nil {
		return api.GenerateResult{}, err
	}
	return pipeline.GenerateLocal(ctx, m.sess, m.state, m.contextLen, req, emit)
}

// ModelContext returns a generative model's context length (api.Generator); 0 when
// the model does not say.
func (n *Node) ModelContext(ctx context.Context, model, version string) (int, error) {
	m, err := n.lookup(model, version)
	if err != nil {
		return 0, err
	}
	if len(m.state) == 0 {
		return 0, fmt.Errorf("%w: %s has no state pairs", api.ErrNotGenerative, m.name)
	}
	return m.contextLen, nil
}
