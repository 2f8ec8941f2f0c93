package wire

import "time"

// ErrorBody is the JSON body of every error the API returns.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// TensorMetadata describes one model input or output. A dim of -1 is dynamic.
type TensorMetadata struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
}

// ModelMetadata is the KServe v2 model metadata response.
type ModelMetadata struct {
	Name     string           `json:"name"`
	Versions []string         `json:"versions,omitempty"`
	Platform string           `json:"platform"`
	Inputs   []TensorMetadata `json:"inputs"`
	Outputs  []TensorMetadata `json:"outputs"`
}

// ServerMetadata is the KServe v2 server metadata response (GET /v2).
type ServerMetadata struct {
	Name       string   `json:"name"`
	Version    string   `json:"version"`
	Extensions []string `json:"extensions"`
	// Accelerator is layermesh's addition: the execution provider this node runs on.
	Accelerator *Accelerator `json:"accelerator,omitempty"`
}

// Accelerator names a node's execution provider and, for a GPU one, the device.
type Accelerator struct {
	Provider string `json:"provider"`         // cpu, cuda or tensorrt
	Device   string `json:"device,omitempty"` // GPU name, as NVML reports it
	// MemTotal and MemFree are the GPU's memory at node start; absent without NVML.
	MemTotal uint64 `json:"mem_total,omitempty"`
	MemFree  uint64 `json:"mem_free,omitempty"`
}

// ReadyCheck is one layer of the node's readiness.
type ReadyCheck struct {
	Layer  string `json:"layer"`
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"`
}

// Readiness is the body of GET /v2/health/ready and /v2/health/live.
type Readiness struct {
	Ready  bool         `json:"ready"`
	Checks []ReadyCheck `json:"checks,omitempty"`
}

// ModelReadiness is the body of GET /v2/models/{name}/ready.
type ModelReadiness struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	Ready   bool   `json:"ready"`
	Reason  string `json:"reason,omitempty"`
}

// ModelStatus is an admin view of one deployed model (GET /v1/models/{name}).
type ModelStatus struct {
	Name     string    `json:"name"`
	Version  string    `json:"version"`
	SHA256   string    `json:"sha256"`
	Size     int64     `json:"size"`
	Source   string    `json:"source"` // "model-dir" or "upload"
	Ready    bool      `json:"ready"`
	Reason   string    `json:"reason,omitempty"`
	LoadedAt time.Time `json:"loaded_at,omitzero"`
	// Stages is the plan: one entry per pipeline stage with the nodes serving it.
	Stages []StageStatus `json:"stages"`
	// Inputs and Outputs are the model's signature.
	Inputs  []TensorMetadata `json:"inputs"`
	Outputs []TensorMetadata `json:"outputs"`
	// Compression says how the deploy compressed the model; nil when it did not.
	Compression *Compression `json:"compression,omitempty"`
	// PlanPast is set when the deploy asked for a plan on node times the cutting
	// node measures (plan=measured), a decode step at this past (1 for a model
	// without state pairs); 0: a plan on FLOPs.
	PlanPast int `json:"plan_past,omitempty"`
}

// Compression is what a deploy's compression did: the mode, the model sizes
// before and after, and the verification figures (worst over the outputs).
type Compression struct {
	Quantize    string  `json:"quantize,omitempty"`
	Prune       float64 `json:"prune,omitempty"`
	NothingToDo bool    `json:"nothing_to_do,omitempty"`
	SizeBefore  int64   `json:"size_before"`
	SizeAfter   int64   `json:"size_after"`
	// VerifySamples is 0 when the deploy did not verify; MinTop1 is -1 when no
	// output has a top-1.
	VerifySamples int     `json:"verify_samples,omitempty"`
	MaxAbs        float64 `json:"max_abs,omitempty"`
	MaxRel        float64 `json:"max_rel,omitempty"`
	MinCosine     float64 `json:"min_cosine,omitempty"`
	MinTop1       float64 `json:"min_top1,omitempty"`
}

// StageStatus is one pipeline stage of a model and the nodes that serve it.
type StageStatus struct {
	Index    int      `json:"index"`
	Replicas []string `json:"replicas"`
	Ready    bool     `json:"ready"`
	// Size is the stage file's size in bytes (the compressed weights' when the
	// deploy compressed); 0 from a node that does not report it.
	Size int64 `json:"size,omitempty"`
}

// ModelList is the body of GET /v1/models.
type ModelList struct {
	Models []ModelStatus `json:"models"`
}

// NodeStatus is an admin view of one node.
type NodeStatus struct {
	Name     string `json:"name"`
	HTTPAddr string `json:"http_addr"`
	State    string `json:"state"` // alive, suspect, dead, draining, left
	Accel    string `json:"accel"`
	// Platform is the GOOS/GOARCH the node's binary runs as ("linux/arm64"); empty
	// for a member that is not live.
	Platform string `json:"platform,omitempty"`
	Cores    int    `json:"cores"`
	MemTotal uint64 `json:"mem_total,omitempty"`
	// GPUMemTotal and GPUMemFree are the node's GPU memory as NVML reported it at its
	// start; absent for a node without a GPU provider or without NVML.
	GPUMemTotal uint64   `json:"gpu_mem_total,omitempty"`
	GPUMemFree  uint64   `json:"gpu_mem_free,omitempty"`
	Models      []string `json:"models"`
	// The fields below are filled in cluster mode.
	// PeerID is the node's libp2p identity.
	PeerID string `json:"peer_id,omitempty"`
	// Health is memberlist's view from the answering node: alive, suspect, dead or
	// left; "unknown" when the node is not in its member list.
	Health string `json:"health,omitempty"`
	// Leader and Voter say the node's part in Raft.
	Leader bool `json:"leader,omitempty"`
	Voter  bool `json:"voter,omitempty"`
	// Capacity is what the node offers and has free.
	Capacity *NodeCapacity `json:"capacity,omitempty"`
	// Load is the node's inference requests in flight, as its metadata last said.
	Load int `json:"load"`
}

// NodeList is the body of GET /v1/nodes.
type NodeList struct {
	Nodes []NodeStatus `json:"nodes"`
}

// ClusterStatus is the body of GET /v1/cluster.
type ClusterStatus struct {
	// Mode is "single-node" or "cluster".
	Mode    string       `json:"mode"`
	Leader  string       `json:"leader,omitempty"`
	Term    uint64       `json:"term,omitempty"`
	Self    string       `json:"self"`
	Version string       `json:"version"`
	Nodes   []NodeStatus `json:"nodes"`
}
