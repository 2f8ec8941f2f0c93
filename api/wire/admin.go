package wire

import "time"

// NodeCapacity is what a node offers the planner and how much of it is taken.
type NodeCapacity struct {
	// MemBudget is the bytes the node may use for stages; MemFree what is left.
	MemBudget int64 `json:"mem_budget"`
	MemFree   int64 `json:"mem_free"`
	Cores     int   `json:"cores"`
	// Speed is the node's relative compute speed score.
	Speed float64 `json:"speed"`
}

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	// Scope is "admin" or "infer".
	Scope string `json:"scope"`
	// Name, when given, becomes the token's id; it must be unique.
	Name string `json:"name,omitempty"`
}

// TokenInfo describes an API token. The secret is never part of it: the cluster
// keeps only its sha256.
type TokenInfo struct {
	ID        string    `json:"id"`
	Scope     string    `json:"scope"`
	Created   time.Time `json:"created"`
	Revoked   bool      `json:"revoked"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

// TokenCreated is the answer to POST /v1/tokens: the only time the secret is shown.
type TokenCreated struct {
	TokenInfo
	Secret string `json:"secret"`
}

// TokenList is the body of GET /v1/tokens.
type TokenList struct {
	Tokens []TokenInfo `json:"tokens"`
}

// JoinToken is the body of GET /v1/join-token: what a new node needs to join.
type JoinToken struct {
	ClusterID string `json:"cluster_id"`
	// Secret is the cluster secret, for the joining node's --cluster-secret-file.
	Secret string `json:"secret"`
	// Seeds are the libp2p multiaddrs of the answering node, for --join.
	Seeds []string `json:"seeds"`
}

// PeerDiagnosis is one peer's line in GET /v1/doctor: why it can or cannot be seen.
type PeerDiagnosis struct {
	Target     string `json:"target"`
	PeerID     string `json:"peer_id,omitempty"`
	Name       string `json:"name,omitempty"`
	Discovered bool   `json:"discovered"`
	Reachable  bool   `json:"reachable"`
	Admitted   bool   `json:"admitted"`
	// State is memberlist's view of the peer (alive, suspect, dead, left) when known.
	State string `json:"state,omitempty"`
	// RTTMillis and BandwidthBytes are the link probe's figures, 0 when unknown.
	RTTMillis      float64 `json:"rtt_ms,omitempty"`
	BandwidthBytes float64 `json:"bandwidth_bytes_per_second,omitempty"`
	// Cause is empty when all is well, else the likely reason (secret mismatch, port
	// closed, unreachable, mDNS blocked, not discovered, ...); Detail is the error.
	Cause  string `json:"cause,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// DoctorReport is the body of GET /v1/doctor.
type DoctorReport struct {
	// Self is the name of the node that ran the checks.
	Self  string          `json:"self"`
	Peers []PeerDiagnosis `json:"peers"`
}

// CompressOptions are the compression a deploy asks for, sent as the upload's query
// parameters compress, block_size, symmetric, prune, prune_global, verify, max_error
// and min_agreement. A deploy carries no calibration set, so only the modes that need
// none are accepted: weight-only int8 and int4, dynamic int8, and pruning ranked by
// the filters' L1 norms. Static int8 is refused (400): compress it with meshctl
// compress --calib and deploy the result.
type CompressOptions struct {
	// Quantize is "", "int8", "int4" or "dynamic".
	Quantize string
	// BlockSize is the weight-only block length (0: the mode's default).
	BlockSize int
	// Symmetric drops the zero points.
	Symmetric bool
	// Prune is the fraction of channels removed; PruneGlobal ranks them over the
	// whole model instead of per layer.
	Prune       float64
	PruneGlobal bool
	// Verify is how many made-up inputs the original and compressed models are
	// compared on; MaxError and MinAgreement fail the deploy (422) past them.
	Verify       int
	MaxError     float64
	MinAgreement float64
}

// Enabled says whether the deploy compresses at all.
func (o CompressOptions) Enabled() bool { return o.Quantize != "" || o.Prune > 0 }

// Plan bases: the stages balance the FLOPs the planner counts, or the node times the
// deploying node measures in its own runtime.
const (
	PlanFLOPs    = "flops"
	PlanMeasured = "measured"
)

// PlanOptions say what a deploy's planner balances.
type PlanOptions struct {
	// Basis is PlanFLOPs ("" means it) or PlanMeasured.
	Basis string
	// Past is the past length, in positions, of the decode step a measured plan
	// times for a model with state pairs (query: plan_past); 0 means 1. Plan for
	// the contexts the model serves: a longer past weighs the KV cache more.
	Past int
}
