package consensus

import (
	"maps"
	"slices"
	"time"
)

// MemberState is a member's health and lifecycle as the node layer reports it.
type MemberState string

// Member states. The node layer sets alive/suspect/dead from memberlist,
// draining and left from admin actions; the leader sets removed once a member
// has been dead past the dead-node timeout and was taken out of the Raft
// configuration.
const (
	MemberAlive    MemberState = "alive"
	MemberSuspect  MemberState = "suspect"
	MemberDead     MemberState = "dead"
	MemberDraining MemberState = "draining"
	MemberLeft     MemberState = "left"
	MemberRemoved  MemberState = "removed"
)

func (s MemberState) valid() bool {
	switch s {
	case MemberAlive, MemberSuspect, MemberDead, MemberDraining, MemberLeft, MemberRemoved:
		return true
	}
	return false
}

// Capacity is what a node offers to the planner.
type Capacity struct {
	MemBudget int64   `json:"mem_budget"` // bytes the node may use for stages
	Cores     int     `json:"cores"`
	Speed     float64 `json:"speed"` // measured speed score, higher is faster
}

// Member is one node of the cluster as recorded in Raft.
type Member struct {
	ID         string      `json:"id"` // libp2p peer id, also the Raft server id and address
	Name       string      `json:"name"`
	Addrs      []string    `json:"addrs"` // libp2p multiaddrs
	HTTPAddr   string      `json:"http_addr"`
	Capacity   Capacity    `json:"capacity"`
	State      MemberState `json:"state"`
	StateSince time.Time   `json:"state_since"` // set by the proposer, never by the FSM
	Voter      bool        `json:"voter"`       // filled in by Store.State from the Raft configuration; not replicated
}

// TensorSpec describes one input or output of a model or stage.
type TensorSpec struct {
	Name  string  `json:"name"`
	DType int32   `json:"dtype"` // ONNX TensorProto data type number
	Shape []int64 `json:"shape"` // -1 for a dynamic dimension
}

// Signature is a model's input/output contract.
type Signature struct {
	Inputs  []TensorSpec `json:"inputs"`
	Outputs []TensorSpec `json:"outputs"`
}

// StageManifest describes one pipeline stage's ONNX file.
type StageManifest struct {
	Index      int      `json:"index"`
	SHA256     string   `json:"sha256"` // hex, the blob id
	Size       int64    `json:"size"`
	Inputs     []string `json:"inputs"`
	Outputs    []string `json:"outputs"`
	ParamBytes int64    `json:"param_bytes"`
	// State are the state pairs the stage owns: its node keeps each pair's value
	// between a session's steps. A model with any runs as a session.
	State []StatePair `json:"state,omitempty"`
}

// StatePair is a stage input and output that carry a session's state from one step
// to the next (partition.StatePair).
type StatePair struct {
	In  string `json:"in"`
	Out string `json:"out"`
}

// DeployInfo is what a deploy records with its manifest: the figures placement
// needs that the stage files do not carry.
type DeployInfo struct {
	Replicas   int     `json:"replicas"`    // replicas asked per stage; 0: the cluster's default
	StageMem   []int64 `json:"stage_mem"`   // per stage: parameter bytes plus activation allowance
	StageFLOPs []int64 `json:"stage_flops"` // per stage: compute cost the planner balances
	Cutter     string  `json:"cutter"`      // peer id of the node that cut the stages and holds their blobs
	// ContextLen is a generative model's context length in tokens (its position
	// table's rows); 0 when unknown or not generative.
	ContextLen int `json:"context_len,omitempty"`
	// PlanPast is set when the deploy asked the planner to balance node times the
	// cutter measures (a decode step at this past for a model with state pairs, 1
	// for one without) instead of FLOPs; 0: FLOPs.
	PlanPast int `json:"plan_past,omitempty"`
	// Compression is set when the deploy compressed the upload before cutting it:
	// the stages are cut from the compressed model, SourceSHA256 stays the upload's.
	Compression *CompressionInfo `json:"compression,omitempty"`
	// Request identifies what the deploy was asked for (the upload's bytes and the
	// options, hashed by the deploying node). A PutModel whose model has the Request
	// of a version already there applies as that version: a deploy retried on another
	// node, after its first try was committed but not answered, creates nothing new.
	Request string `json:"request,omitempty"`
}

// CompressionInfo is what a deploy's compression did and how close the compressed
// model stayed to the upload on the verification inputs.
type CompressionInfo struct {
	// The options the deploy asked for (the same-deploy check compares them).
	Quantize     string  `json:"quantize,omitempty"`
	BlockSize    int     `json:"block_size,omitempty"`
	Symmetric    bool    `json:"symmetric,omitempty"`
	Prune        float64 `json:"prune,omitempty"`
	PruneGlobal  bool    `json:"prune_global,omitempty"`
	Verify       int     `json:"verify,omitempty"`
	MaxError     float64 `json:"max_error,omitempty"`
	MinAgreement float64 `json:"min_agreement,omitempty"`
	// NothingToDo means no node could be compressed: the upload was cut as it is.
	NothingToDo bool `json:"nothing_to_do,omitempty"`
	// SizeBefore and SizeAfter are the model file sizes.
	SizeBefore int64 `json:"size_before"`
	SizeAfter  int64 `json:"size_after"`
	// The verification figures, the worst over all outputs; VerifySamples is 0
	// when the deploy did not verify. MinTop1 is -1 when no output has a top-1.
	VerifySamples int     `json:"verify_samples,omitempty"`
	MaxAbs        float64 `json:"max_abs,omitempty"`
	MaxRel        float64 `json:"max_rel,omitempty"`
	MinCosine     float64 `json:"min_cosine,omitempty"`
	MinTop1       float64 `json:"min_top1,omitempty"`
}

// Model is one version of a deployed model.
type Model struct {
	Name         string          `json:"name"`
	Version      string          `json:"version"`
	SourceSHA256 string          `json:"source_sha256"` // hex, the blob id of the uploaded ONNX file
	SourceSize   int64           `json:"source_size"`
	Signature    Signature       `json:"signature"`
	Stages       []StageManifest `json:"stages"`
	Created      time.Time       `json:"created"`
	Deploy       DeployInfo      `json:"deploy"`
	// Text is set for a model deployed to generate text; nil for any other.
	Text *TextInfo `json:"text,omitempty"`
}

// TextInfo is what a text-generating model is deployed with besides its graph. The
// tokenizer is a blob like the stages (entry nodes fetch it from a holder); the chat
// template, a few KB, travels in the state.
type TextInfo struct {
	TokenizerSHA256 string `json:"tokenizer_sha256"` // hex, the blob id of its tokenizer.json
	TokenizerSize   int64  `json:"tokenizer_size"`
	ChatTemplate    string `json:"chat_template,omitempty"` // "": the default template
}

// ModelKey identifies a model version in ClusterState.Models and Placements.
func ModelKey(name, version string) string { return name + "@" + version }

// Placement maps each stage of one model version to the nodes serving it.
type Placement struct {
	Model   string     `json:"model"`
	Version string     `json:"version"`
	Stages  [][]string `json:"stages"` // Stages[i] = replica node ids of stage i
	Epoch   uint64     `json:"epoch"`  // bumped by every committed SetPlacement
}

// Serving is what one node reports it serves: the stages it has loaded or is loading.
// Boot identifies the node's process run (it also advertises it in its membership
// metadata): a record from an earlier run of a restarted node does not match, so
// readers ignore it until the new run reports.
type Serving struct {
	Boot   string      `json:"boot"`
	Stages []ServedRef `json:"stages"`
}

// ServedRef is one stage of one model version on a node.
type ServedRef struct {
	Model   string `json:"model"`
	Version string `json:"version"`
	Stage   int    `json:"stage"`
	Ready   bool   `json:"ready"`
}

// Serves says whether the record, from the node run boot, has the stage ready.
func (s Serving) Serves(boot, model, version string, stage int) bool {
	if s.Boot == "" || s.Boot != boot {
		return false
	}
	for _, r := range s.Stages {
		if r.Ready && r.Stage == stage && r.Model == model && r.Version == version {
			return true
		}
	}
	return false
}

// ClusterConfig holds cluster-wide settings.
type ClusterConfig struct {
	ClusterID         string        `json:"cluster_id"`
	ReplicationFactor int           `json:"replication_factor"`
	DeadNodeTimeout   time.Duration `json:"dead_node_timeout"` // 0: Config.DeadNodeTimeout applies
}

// TokenScope is what an API token allows.
type TokenScope string

// Token scopes.
const (
	ScopeAdmin TokenScope = "admin"
	ScopeInfer TokenScope = "infer"
)

// Token is an API token; only its sha256 hash is stored.
type Token struct {
	ID        string     `json:"id"`
	Hash      string     `json:"hash"` // hex sha256 of the secret
	Scope     TokenScope `json:"scope"`
	Created   time.Time  `json:"created"`
	Revoked   bool       `json:"revoked"`
	RevokedAt time.Time  `json:"revoked_at"`
}

// ClusterState is the whole replicated state. Values handed out by Store are
// private copies; change the cluster only through Store.Apply.
type ClusterState struct {
	Config     ClusterConfig        `json:"config"`
	Members    map[string]Member    `json:"members"`    // by peer id
	Models     map[string]Model     `json:"models"`     // by ModelKey(name, version)
	Placements map[string]Placement `json:"placements"` // by ModelKey(name, version)
	Tokens     map[string]Token     `json:"tokens"`     // by token id
	Catalog    map[string]string    `json:"catalog"`    // small key/value catalogue; model figures live in Model.Deploy
	Serving    map[string]Serving   `json:"serving"`    // by peer id: the stages each node reports
	// ModelVersions holds, per model name, the highest version number ever
	// allocated. PutModel allocates the next one, so a deleted version's number is
	// never handed out again (nodes may still serve its stages for a moment, and a
	// reused number would route requests to them) without keeping the deleted
	// version in the state.
	ModelVersions map[string]uint64 `json:"model_versions"`
	// LegacyDeploys holds format-1 deploy annotations (see migrate.go) whose
	// manifest has not been applied yet, by ModelKey. A format-2 command never
	// adds to it.
	LegacyDeploys map[string]DeployInfo `json:"legacy_deploys,omitempty"`
	// Index is the Raft log index of the last applied entry that changed or
	// could have changed this state.
	Index uint64 `json:"index"`
}

// NewClusterState returns an empty state with every map allocated.
func NewClusterState() *ClusterState {
	return &ClusterState{
		Members:    map[string]Member{},
		Models:     map[string]Model{},
		Placements: map[string]Placement{},
		Tokens:     map[string]Token{},
		Catalog:    map[string]string{},
		Serving:    map[string]Serving{},

		ModelVersions: map[string]uint64{},
	}
}

// Clone returns a deep copy that shares no memory with s.
func (s *ClusterState) Clone() *ClusterState {
	if s == nil {
		return nil
	}
	c := &ClusterState{Config: s.Config, Index: s.Index}
	c.Members = make(map[string]Member, len(s.Members))
	for k, m := range s.Members {
		c.Members[k] = m.Clone()
	}
	c.Models = make(map[string]Model, len(s.Models))
	for k, m := range s.Models {
		c.Models[k] = m.Clone()
	}
	c.Placements = make(map[string]Placement, len(s.Placements))
	for k, p := range s.Placements {
		c.Placements[k] = p.Clone()
	}
	c.Tokens = maps.Clone(s.Tokens)
	if c.Tokens == nil {
		c.Tokens = map[string]Token{}
	}
	c.Catalog = maps.Clone(s.Catalog)
	if c.Catalog == nil {
		c.Catalog = map[string]string{}
	}
	c.Serving = make(map[string]Serving, len(s.Serving))
	for k, v := range s.Serving {
		v.Stages = slices.Clone(v.Stages)
		c.Serving[k] = v
	}
	c.ModelVersions = maps.Clone(s.ModelVersions)
	if c.ModelVersions == nil {
		c.ModelVersions = map[string]uint64{}
	}
	if len(s.LegacyDeploys) > 0 {
		c.LegacyDeploys = make(map[string]DeployInfo, len(s.LegacyDeploys))
		for k, d := range s.LegacyDeploys {
			c.LegacyDeploys[k] = d.Clone()
		}
	}
	return c
}

// Clone returns a deep copy of m.
func (m Member) Clone() Member {
	m.Addrs = slices.Clone(m.Addrs)
	return m
}

// Clone returns a deep copy of m.
func (m Model) Clone() Model {
	m.Signature = Signature{Inputs: cloneSpecs(m.Signature.Inputs), Outputs: cloneSpecs(m.Signature.Outputs)}
	if m.Stages != nil {
		st := make([]StageManifest, len(m.Stages))
		for i, s := range m.Stages {
			s.Inputs = slices.Clone(s.Inputs)
			s.Outputs = slices.Clone(s.Outputs)
			st[i] = s
		}
		m.Stages = st
	}
	m.Deploy = m.Deploy.Clone()
	return m
}

// Clone returns a deep copy of d.
func (d DeployInfo) Clone() DeployInfo {
	d.StageMem = slices.Clone(d.StageMem)
	d.StageFLOPs = slices.Clone(d.StageFLOPs)
	return d
}

func cloneSpecs(in []TensorSpec) []TensorSpec {
	if in == nil {
		return nil
	}
	out := make([]TensorSpec, len(in))
	for i, t := range in {
		t.Shape = slices.Clone(t.Shape)
		out[i] = t
	}
	return out
}

// Clone returns a deep copy of p.
func (p Placement) Clone() Placement {
	if p.Stages != nil {
		st := make([][]string, len(p.Stages))
		for i, r := range p.Stages {
			st[i] = slices.Clone(r)
		}
		p.Stages = st
	}
	return p
}
