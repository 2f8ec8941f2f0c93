// Package api is layermesh's HTTP server: the KServe v2 / Open Inference Protocol
// (JSON tensors and the binary tensor data extension), the admin API under /v1 and
// /metrics. It only speaks HTTP: every call goes to the small interfaces declared
// here (ModelService, HealthService, ClusterService, TokenVerifier), which node.Node
// implements. Errors from those services are mapped to a status and a stable code in
// exactly one place (errors.go).
package api

import (
	"context"
	"io"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/wire"
)

// InferRequest is one inference call as the API hands it to the ModelService.
type InferRequest struct {
	Model string
	// Version is the model version asked for; "" means the latest.
	Version string
	// ID is the client's request id, echoed in the response.
	ID     string
	Inputs []tensor.Tensor
	// Outputs names the outputs wanted, in order; empty means all of the model's.
	Outputs []string
}

// InferResult is the answer to an InferRequest.
type InferResult struct {
	// Version is the model version that answered.
	Version string
	Outputs []tensor.Tensor
}

// DeployOptions are the query parameters of PUT /v1/models/{name}.
type DeployOptions struct {
	// Stages is the number of pipeline stages; 0 lets the planner choose.
	Stages int
	// Replicas is how many nodes serve each stage; 0 means the cluster default.
	Replicas int
	// State declares the model's state pairs, each "IN=OUT" (query: state, repeatable);
	// none lets the deploy detect them by name. A model with state pairs runs as a
	// session (generation).
	State []string
	// Size is the upload's declared length (Content-Length), -1 when unknown. The
	// body is already limited by the API; Size lets the service refuse early.
	Size int64
	// Tokenizer is the model's tokenizer.json, already checked to be byte-level BPE;
	// nil for a model that does not generate text.
	Tokenizer []byte
	// ChatTemplate is the Go template chat messages are rendered with, already checked
	// to parse; "" means tokenizer.DefaultChatTemplate.
	ChatTemplate string
	// Compress asks the deploy to compress the model before it plans; the zero
	// value deploys the upload as it is.
	Compress CompressOptions
	// Plan is what the planner balances across stages (query: plan).
	Plan PlanOptions
}

// Plan bases (wire.PlanFLOPs, wire.PlanMeasured).
const (
	PlanFLOPs    = wire.PlanFLOPs
	PlanMeasured = wire.PlanMeasured
)

// PlanOptions say what a deploy's planner balances (wire.PlanOptions).
type PlanOptions = wire.PlanOptions

// MaxPlanPast bounds plan_past: a million positions, beyond any context a model is
// built for. The deploying node also refuses a past whose made-up KV cache would not
// fit its free memory.
const MaxPlanPast = 1 << 20

// CompressOptions are the compression a deploy asks for (wire.CompressOptions).
type CompressOptions = wire.CompressOptions

// ModelService owns the models: their metadata, inference and deployment.
type ModelService interface {
	// ListModels returns every model the node knows, ready or not.
	ListModels(ctx context.Context) ([]wire.ModelStatus, error)
	// ModelStatus describes one model; version "" means the latest. An unknown model
	// or version is an error wrapping ErrModelNotFound.
	ModelStatus(ctx context.Context, name, version string) (wire.ModelStatus, error)
	// Infer runs a model. Inputs are validated against the model's signature by the
	// backend; errors wrap the sentinels that Classify knows.
	Infer(ctx context.Context, req InferRequest) (InferResult, error)
	// PutModel stores and loads the ONNX model read from body under name, replacing
	// any earlier one only once the new one has loaded. Read errors from body are
	// returned wrapped (so an *http.MaxBytesError becomes 413).
	PutModel(ctx context.Context, name string, body io.Reader, opts DeployOptions) (wire.ModelStatus, error)
	// DeleteModel unloads name and forgets it.
	DeleteModel(ctx context.Context, name string) error
}

// HealthService reports the node's readiness, layer by layer.
type HealthService interface {
	// Ready returns one check per layer (backend, models, cluster, ...). The node is
	// ready when every check is.
	Ready(ctx context.Context) []wire.ReadyCheck
}

// ClusterService answers the cluster admin calls. A node outside a cluster returns
// errors wrapping ErrNotClusterMode where a call makes no sense alone.
type ClusterService interface {
	Cluster(ctx context.Context) (wire.ClusterStatus, error)
	Nodes(ctx context.Context) ([]wire.NodeStatus, error)
	// DrainNode moves the node's stages elsewhere and stops giving it new ones.
	DrainNode(ctx context.Context, name string) error
	// RemoveNode takes the node out of the cluster.
	RemoveNode(ctx context.Context, name string) error
	// UndrainNode lets a drained node take stages again (the end of a maintenance).
	UndrainNode(ctx context.Context, name string) error
	// Diagnose says, for each target (node name, peer id or address; none means every
	// peer known), whether it is discovered, reachable and admitted, and why not.
	Diagnose(ctx context.Context, targets []string) (wire.DoctorReport, error)
	// JoinToken returns what a new node needs to join: the secret and seed addresses.
	JoinToken(ctx context.Context) (wire.JoinToken, error)

	// CreateToken makes a new API token of the given scope; name "" picks an id. The
	// secret is in the answer only; the cluster keeps its hash. A name in use is an
	// error wrapping ErrConflict.
	CreateToken(ctx context.Context, scope Scope, name string) (wire.TokenCreated, error)
	// ListTokens lists the tokens, revoked ones included, without secrets.
	ListTokens(ctx context.Context) ([]wire.TokenInfo, error)
	// RevokeToken revokes the token with that id; an unknown id wraps ErrTokenNotFound.
	RevokeToken(ctx context.Context, id string) error
}

// Scope is what a token may do.
type Scope string

// Token scopes. An admin token may also infer.
const (
	ScopeAdmin Scope = "admin"
	ScopeInfer Scope = "infer"
)

// TokenVerifier checks bearer tokens. The token store is the node's business (its
// admin token file on a single node, the Raft state in a cluster); the API only asks
// what a token may do.
type TokenVerifier interface {
	// VerifyToken returns the token's scope, or an error wrapping ErrUnauthorized
	// for an unknown or revoked token.
	VerifyToken(ctx context.Context, token string) (Scope, error)
}
