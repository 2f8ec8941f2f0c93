package mesh

import (
	"context"
	"strconv"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/libp2p/go-libp2p/core/peer"
)

// NodeMeta is what a node tells every other member about itself. It travels in
// memberlist's node metadata, which is capped at 512 bytes, so the JSON keys are short
// and nothing in it grows with the cluster's models: the stages a node serves are in
// the replicated state, tied to the run that reported them by Boot.
type NodeMeta struct {
	Name      string   `json:"n,omitempty"`
	PeerID    string   `json:"p,omitempty"`
	Addrs     []string `json:"a,omitempty"` // libp2p multiaddrs without the /p2p/ suffix
	DataPort  int      `json:"d,omitempty"` // port of the direct data listener
	HTTPAddr  string   `json:"h,omitempty"`
	MemBudget int64    `json:"mb,omitempty"` // bytes this node may use for stages
	FreeMem   int64    `json:"mf,omitempty"` // bytes free right now
	Cores     int      `json:"c,omitempty"`
	Accels    []string `json:"x,omitempty"`  // provider ("cpu", "cuda", ...), then the GPU's name if any
	GPUMem    int64    `json:"gm,omitempty"` // GPU memory at start, from NVML
	GPUFree   int64    `json:"gf,omitempty"` // free GPU memory at start, from NVML
	Platform  string   `json:"os,omitempty"` // GOOS/GOARCH of the node's binary: "linux/arm64"
	Speed     float64  `json:"s,omitempty"`  // measured speed score (GFLOP/s of a matmul)
	Load      int      `json:"l,omitempty"`  // requests in flight
	// Boot identifies this run of the node's process (random, drawn at start), so
	// that what an earlier run reported is not taken for this one's.
	Boot    string `json:"b,omitempty"`
	Leaving bool   `json:"lv,omitempty"` // set by Leave just before a graceful exit
}

// MaxMetaBytes is memberlist's limit on encoded node metadata.
const MaxMetaBytes = 512

// MemberState is a member's health as memberlist sees it.
type MemberState int

// Member states.
const (
	StateAlive MemberState = iota
	StateSuspect
	StateDead
	StateLeft
)

func (s MemberState) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return "unknown"
}

// Member is one node known to memberlist.
type Member struct {
	PeerID     peer.ID
	GossipAddr string // host:port of its memberlist listener
	State      MemberState
	Meta       NodeMeta
}

// MemberEventType says what happened to a member.
type MemberEventType int

// Member event types.
const (
	MemberJoin MemberEventType = iota
	MemberLeave
	MemberUpdate
	MemberSuspect
	MemberDead
)

func (t MemberEventType) String() string {
	switch t {
	case MemberJoin:
		return "join"
	case MemberLeave:
		return "leave"
	case MemberUpdate:
		return "update"
	case MemberSuspect:
		return "suspect"
	case MemberDead:
		return "dead"
	}
	return "unknown"
}

// MemberEvent is delivered to subscribers when a member changes.
type MemberEvent struct {
	Type   MemberEventType
	Member Member
}

// StageRequest asks a peer to run one stage of a model version on the given tensors.
type StageRequest struct {
	RequestID string
	Model     string
	Version   string
	Stage     int
	// Drive hands the whole request to the peer instead of one stage: it runs every
	// stage of the model version (its own locally, the rest through its peers) and
	// answers with the model's outputs. Stage is not used then.
	Drive bool
	// Deadline is when the caller stops waiting; the server cancels the handler then.
	Deadline time.Time
	Tensors  []tensor.Tensor
	// Outputs names the tensors wanted back; empty means all of the stage's outputs.
	Outputs []string
	// Session, when set, makes the call one step of a stateful session: the peer
	// keeps the stage's state between steps under this id. Step says which step, Pos
	// how many tokens the session had before it (the peer checks its state agrees)
	// and Len how many tokens it runs.
	Session string
	Step    StepKind
	Pos     int
	Len     int
}

// StepKind is the kind of a session step.
type StepKind uint8

// Session step kinds. A prefill starts (or restarts, replacing any state) a session
// at position 0 with a whole prompt; a decode runs the next tokens on the kept state;
// a close frees it.
const (
	StepNone StepKind = iota
	StepPrefill
	StepDecode
	StepClose
)

// String names the step kind in logs and metrics: "run" for a stateless request
// (StepNone), else "prefill", "decode" or "close".
func (k StepKind) String() string {
	switch k {
	case StepNone:
		return "run"
	case StepPrefill:
		return "prefill"
	case StepDecode:
		return "decode"
	case StepClose:
		return "close"
	}
	return "step" + strconv.Itoa(int(k))
}

// StageHandler runs a stage request; it must honour ctx, which is cancelled when the
// caller gives up or the deadline passes.
type StageHandler func(ctx context.Context, req *StageRequest) ([]tensor.Tensor, error)

// LinkStats is what the link probes last measured toward one peer.
type LinkStats struct {
	RTT       time.Duration
	Bandwidth float64 // bytes per second of a bulk transfer toward the peer
	Updated   time.Time
}

// Causes Diagnose reports when a peer cannot be reached or admitted.
const (
	CauseSecretMismatch  = "secret mismatch"
	CauseClusterMismatch = "different cluster id"
	CausePortClosed      = "port closed"
	CauseUnreachable     = "unreachable"
	CauseMDNSBlocked     = "mDNS blocked"
	CauseNotDiscovered   = "not discovered"
	CauseRateLimited     = "rate limited"
)

// PeerDiagnosis is Diagnose's answer for one peer.
type PeerDiagnosis struct {
	Target     string        // what was asked about (address, peer id or node name)
	PeerID     peer.ID       // empty when it could not be learned
	Name       string        // node name from metadata, if a member
	Discovered bool          // known to memberlist or found by a discovery mechanism
	Reachable  bool          // a libp2p connection could be made
	Admitted   bool          // the join handshake succeeded (or it is a member)
	State      string        // memberlist state when a member
	RTT        time.Duration // zero when unknown
	Bandwidth  float64       // bytes/s, zero when unknown
	Cause      string        // one of the Cause constants, empty when all is well
	Detail     string        // the underlying error text
}
