package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/consensus"
)

// Service is the cluster's inference entry: it resolves the model version, validates
// the request against the model's signature (the one place a cluster checks a
// client's inputs; the stages' sessions check again only what reaches them) and
// routes it through the stages. It implements the Infer part of api.ModelService.
type Service struct {
	state    StateView
	view     *ClusterView
	router   *Router
	caughtUp func() bool
}

// NewService returns the inference service; caughtUp says whether this node's state
// has caught up with the leader's since start (until then a model may look missing).
func NewService(state StateView, view *ClusterView, router *Router, caughtUp func() bool) *Service {
	return &Service{state: state, view: view, router: router, caughtUp: caughtUp}
}

// Infer answers one inference request of the API.
func (s *Service) Infer(ctx context.Context, req api.InferRequest) (api.InferResult, error) {
	if !s.caughtUp() {
		return api.InferResult{}, fmt.Errorf("%w: cluster state not caught up since start", api.ErrNotReady)
	}
	st := s.state.View()
	m, err := s.view.ResolveVersion(st, req.Model, req.Version)
	if err != nil {
		return api.InferResult{}, err
	}
	if err := CheckSignature(m.Signature, req.Inputs, req.Outputs); err != nil {
		return api.InferResult{}, err
	}
	out, err := s.router.Infer(ctx, Request{Model: m.Name, Version: m.Version, Inputs: req.Inputs, Outputs: req.Outputs})
	if err != nil {
		return api.InferResult{}, toAPI(err)
	}
	return api.InferResult{Version: m.Version, Outputs: out}, nil
}

// toAPI is the pipeline's one mapping onto the API's sentinels. A stage with no
// replica, or whose every replica failed, is 503 with Retry-After (the placement may
// heal); a deadline, even one that passed after failed attempts, is the context's
// error (504 timeout); input errors keep their accel sentinels (shape_mismatch,
// dtype_mismatch, input_mismatch), however many hops away they arose.
func toAPI(err error) error {
	switch {
	case errors.Is(err, ErrNoReplica), errors.Is(err, ErrStageFailed):
		return fmt.Errorf("%w: %w", api.ErrNoReplica, err)
	case errors.Is(err, ErrUnknownModel):
		return fmt.Errorf("%w: %w", api.ErrModelNotFound, err)
	}
	return err
}

// CheckSignature rejects inputs the model cannot take before any stage sees them:
// unknown, missing or repeated names, a wrong dtype, rank or fixed dim, and unknown
// output names.
func CheckSignature(sig consensus.Signature, inputs []tensor.Tensor, outputs []string) error {
	seen := make(map[string]bool, len(inputs))
	for _, t := range inputs {
		i := slices.IndexFunc(sig.Inputs, func(s consensus.TensorSpec) bool { return s.Name == t.Name })
		if i < 0 {
			return fmt.Errorf("%w: unknown input %q", accel.ErrInputMismatch, t.Name)
		}
		if seen[t.Name] {
			return fmt.Errorf("%w: input %q given twice", accel.ErrInputMismatch, t.Name)
		}
		seen[t.Name] = true
		if err := checkInput(sig.Inputs[i], t); err != nil {
			return err
		}
	}
	for _, s := range sig.Inputs {
		if !seen[s.Name] {
			return fmt.Errorf("%w: input %q missing", accel.ErrInputMismatch, s.Name)
		}
	}
	for _, name := range outputs {
		if !slices.ContainsFunc(sig.Outputs, func(s consensus.TensorSpec) bool { return s.Name == name }) {
			return fmt.Errorf("%w: unknown output %q", accel.ErrInputMismatch, name)
		}
	}
	return nil
}

// checkInput checks one input tensor against its spec: dtype, rank, fixed dims, data.
func checkInput(spec consensus.TensorSpec, t tensor.Tensor) error {
	if int32(t.DType) != spec.DType {
		return fmt.Errorf("%w: %w: input %q is %s, the model takes %s", accel.ErrInputMismatch, accel.ErrDTypeMismatch,
			t.Name, t.DType, tensor.DType(spec.DType))
	}
	if len(t.Shape) != len(spec.Shape) {
		return fmt.Errorf("%w: %w: input %q has rank %d, the model takes %d", accel.ErrInputMismatch, accel.ErrShapeMismatch,
			t.Name, len(t.Shape), len(spec.Shape))
	}
	for d, want := range spec.Shape {
		if want >= 0 && t.Shape[d] != want {
			return fmt.Errorf("%w: %w: input %q dim %d is %d, the model takes %d", accel.ErrInputMismatch, accel.ErrShapeMismatch,
				t.Name, d, t.Shape[d], want)
		}
	}
	return t.Validate()
}

// maxGenerateTokens bounds max_tokens for a model whose context length is unknown.
const maxGenerateTokens = 1 << 16

var _ api.Generator = (*Service)(nil)

// Generate runs a generation (api.Generator): the model must have state pairs, the
// prompt must leave room in the context, and max_tokens must be 1..context. A
// generation that reaches the end of the context stops with "length".
func (s *Service) Generate(ctx context.Context, req api.GenerateRequest, emit func(api.GeneratedToken) error) (api.GenerateResult, error) {
	plan, err := s.generativePlan(req.Model, req.Version)
	if err != nil {
		return api.GenerateResult{}, err
	}
	if err := CheckGenerate(req, plan.ContextLen, plan.Vocab); err != nil {
		return api.GenerateResult{}, err
	}
	res, err := s.router.Generate(ctx, plan, req, emit)
	return res, toAPI(err)
}

// CheckGenerate refuses a generation request the model cannot run: an empty prompt,
// a prompt that fills the context (api.ErrContextExceeded), max_tokens outside
// 1..context (api.ErrInvalidMaxTokens), token ids outside the vocabulary, sampling
// figures out of range. contextLen and vocab are 0 when unknown.
func CheckGenerate(req api.GenerateRequest, contextLen, vocab int) error {
	limit := maxGenerateTokens
	if contextLen > 0 {
		limit = contextLen
	}
	switch {
	case len(req.Prompt) == 0:
		return fmt.Errorf("%w: empty prompt", api.ErrBadRequest)
	case len(req.Prompt) >= limit:
		return fmt.Errorf("%w: prompt of %d tokens, model %s has a context of %d", api.ErrContextExceeded, len(req.Prompt), req.Model, limit)
	case req.MaxTokens < 1 || req.MaxTokens > limit:
		return fmt.Errorf("%w: %d (want 1..%d)", api.ErrInvalidMaxTokens, req.MaxTokens, limit)
	case req.Temperature < 0 || req.TopK < 0 || req.TopP < 0 || req.TopP > 1:
		return fmt.Errorf("%w: temperature and top_k must not be negative, top_p must be in [0, 1]", api.ErrBadRequest)
	}
	for _, id := range req.Prompt {
		if id < 0 || (vocab > 0 && int(id) >= vocab) {
			return fmt.Errorf("%w: token id %d outside the vocabulary (%d)", api.ErrBadRequest, id, vocab)
		}
	}
	return nil
}

// ModelContext returns the context length of a generative model's version ("" means
// the newest) (api.Generator); 0 when the model does not say.
func (s *Service) ModelContext(ctx context.Context, model, version string) (int, error) {
	plan, err := s.generativePlan(model, version)
	if err != nil {
		return 0, err
	}
	return plan.ContextLen, nil
}

// generativePlan resolves a model version and its route plan, which must be
// generative.
func (s *Service) generativePlan(model, version string) (RoutePlan, error) {
	if !s.caughtUp() {
		return RoutePlan{}, fmt.Errorf("%w: cluster state not caught up since start", api.ErrNotReady)
	}
	m, err := s.view.ResolveVersion(s.state.View(), model, version)
	if err != nil {
		return RoutePlan{}, err
	}
	plan, err := s.view.RoutePlan(m.Name, m.Version)
	if err != nil {
		return RoutePlan{}, toAPI(err)
	}
	if !plan.Generative {
		return RoutePlan{}, fmt.Errorf("%w: %s has no state pairs (past_key_values.*/present.*, or --state at deploy)", api.ErrNotGenerative, m.Name)
	}
	return plan, nil
}
