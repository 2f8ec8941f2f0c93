package pipeline

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/mesh"
)

// StateView is the replicated cluster state as the pipeline reads it (consensus.Store).
type StateView interface {
	View() *consensus.ClusterState
}

// Membership is memberlist's view of the members, as the pipeline reads it (mesh.Mesh).
type Membership interface {
	Members() []mesh.Member
	Link(p peer.ID) (mesh.LinkStats, bool)
}

// ClusterView answers which replicas serve what: live members (memberlist) whose
// serving record (Raft state, of the run their metadata names) has the stage ready,
// and this node from its runtime directly. It is the router's ReplicaView and
// PlanSource, the runtime's ReadyElsewhere, and the control loop's readiness view.
type ClusterView struct {
	self    string
	state   StateView
	members Membership
	local   atomic.Pointer[StageRuntime]

	mu      sync.Mutex
	suspect map[string]bool // peers memberlist reports suspect
}

// NewClusterView returns the view of node self; SetLocal names its runtime.
func NewClusterView(self string, state StateView, members Membership) *ClusterView {
	return &ClusterView{self: self, state: state, members: members, suspect: make(map[string]bool)}
}

// SetLocal names this node's stage runtime (built after the view, which it consults).
func (v *ClusterView) SetLocal(rt *StageRuntime) { v.local.Store(rt) }

func (v *ClusterView) servesLocally(k StageKey) bool {
	rt := v.local.Load()
	return rt != nil && rt.Serves(k)
}

// SetSuspect records memberlist's suspicion of a peer (true) or its clearing.
func (v *ClusterView) SetSuspect(id string, suspect bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if suspect {
		v.suspect[id] = true
	} else {
		delete(v.suspect, id)
	}
}

// Suspects returns a copy of the peers memberlist reports suspect.
func (v *ClusterView) Suspects() map[string]bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return maps.Clone(v.suspect)
}

// LiveMembers maps peer id -> metadata of the members memberlist holds alive.
func (v *ClusterView) LiveMembers() map[string]mesh.NodeMeta {
	out := make(map[string]mesh.NodeMeta)
	for _, m := range v.members.Members() {
		out[m.PeerID.String()] = m.Meta
	}
	return out
}

// servesReady says whether member id, in the run its metadata names, has reported
// stage k ready in the replicated state.
func servesReady(st *consensus.ClusterState, id string, meta mesh.NodeMeta, k StageKey) bool {
	return st.Serving[id].Serves(meta.Boot, k.Model, k.Version, k.Stage)
}

// Replicas lists the ready replicas of a stage for the router, with their RTT.
func (v *ClusterView) Replicas(model, version string, stage int) []Replica {
	k := StageKey{Model: model, Version: version, Stage: stage}
	suspect := v.Suspects()
	st := v.state.View()
	var out []Replica
	for _, m := range v.members.Members() {
		id := m.PeerID.String()
		if id == v.self {
			if v.servesLocally(k) {
				out = append(out, Replica{Node: id, Local: true})
			}
			continue
		}
		if suspect[id] || !servesReady(st, id, m.Meta, k) {
			continue
		}
		r := Replica{Node: id}
		if ls, ok := v.members.Link(m.PeerID); ok {
			r.RTT = ls.RTT
		}
		out = append(out, r)
	}
	return out
}

// ReadyElsewhere says whether the stage may go from this node: a live member other
// than this one serves it ready, or its model version is no longer deployed at all
// (deleted or superseded), so nobody will take it over.
func (v *ClusterView) ReadyElsewhere(k StageKey) bool {
	st := v.state.View()
	if _, ok := st.Models[consensus.ModelKey(k.Model, k.Version)]; !ok {
		return true
	}
	for id, meta := range v.LiveMembers() {
		if id != v.self && servesReady(st, id, meta, k) {
			return true
		}
	}
	return false
}

// ReadyReplicas lists the live nodes serving stage k of m ready.
func (v *ClusterView) ReadyReplicas(st *consensus.ClusterState, m consensus.Model, k int, live map[string]mesh.NodeMeta) []string {
	key := StageKey{Model: m.Name, Version: m.Version, Stage: k}
	var out []string
	for id, meta := range live {
		if (id == v.self && v.servesLocally(key)) || (id != v.self && servesReady(st, id, meta, key)) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// ModelReady says whether every stage of m has a ready replica among the live members.
func (v *ClusterView) ModelReady(st *consensus.ClusterState, m consensus.Model, live map[string]mesh.NodeMeta) bool {
	if _, ok := st.Placements[consensus.ModelKey(m.Name, m.Version)]; !ok {
		return false
	}
	for k := range m.Stages {
		if len(v.ReadyReplicas(st, m, k, live)) == 0 {
			return false
		}
	}
	return true
}

// ResolveVersion finds the model version asked for; "" means the newest version whose
// every stage has a ready replica, else the newest placed one. An unknown model or
// version wraps api.ErrModelNotFound.
func (v *ClusterView) ResolveVersion(st *consensus.ClusterState, name, version string) (consensus.Model, error) {
	if version != "" {
		m, ok := st.Models[consensus.ModelKey(name, version)]
		if !ok {
			return consensus.Model{}, fmt.Errorf("%w: %s version %s", api.ErrModelNotFound, name, version)
		}
		return m, nil
	}
	var versions []consensus.Model
	for _, m := range st.Models {
		if m.Name == name {
			versions = append(versions, m)
		}
	}
	if len(versions) == 0 {
		return consensus.Model{}, fmt.Errorf("%w: %s", api.ErrModelNotFound, name)
	}
	slices.SortFunc(versions, func(a, b consensus.Model) int { return versionNumber(b.Version) - versionNumber(a.Version) })
	live := v.LiveMembers()
	for _, m := range versions {
		if v.ModelReady(st, m, live) {
			return m, nil
		}
	}
	return versions[0], nil
}

func versionNumber(v string) int {
	n, _ := strconv.Atoi(v)
	return n
}

// RoutePlan derives the route plan of a model version from its committed manifest.
func (v *ClusterView) RoutePlan(model, version string) (RoutePlan, error) {
	st := v.state.View()
	m, ok := st.Models[consensus.ModelKey(model, version)]
	if !ok || len(m.Stages) == 0 {
		return RoutePlan{}, fmt.Errorf("%w: %s version %s", ErrUnknownModel, model, version)
	}
	plan := RoutePlan{Model: model, Version: version}
	for _, s := range m.Stages {
		plan.Stages = append(plan.Stages, RouteStage{Inputs: slices.Clone(s.Inputs), Outputs: slices.Clone(s.Outputs)})
		var outs []string
		for _, p := range s.State {
			outs = append(outs, p.Out)
		}
		plan.StageState = append(plan.StageState, outs)
		plan.Generative = plan.Generative || len(s.State) > 0
	}
	plan.ContextLen = m.Deploy.ContextLen
	for _, o := range m.Signature.Outputs {
		if n := len(o.Shape); plan.Vocab == 0 && o.DType == int32(tensor.Float32) && n == 3 && o.Shape[n-1] > 0 {
			plan.Vocab = int(o.Shape[n-1])
		}
	}
	for _, o := range m.Signature.Outputs {
		plan.Outputs = append(plan.Outputs, o.Name)
	}
	plan.DriveFromLast = signatureBytes(m.Signature.Outputs) > signatureBytes(m.Signature.Inputs)
	return plan, nil
}

// signatureBytes estimates the bytes of a set of tensors with every dynamic dim taken
// as 1: the same guess on both sides, enough to tell a GPT (ids in, logits out) from a
// CNN (image in, scores out).
func signatureBytes(specs []consensus.TensorSpec) int64 {
	var total int64
	for _, s := range specs {
		n := int64(max(tensor.DType(s.DType).Size(), 1))
		for _, d := range s.Shape {
			n *= max(d, 1)
		}
		total += n
	}
	return total
}
