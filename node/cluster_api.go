package node

// Cluster mode. When cluster settings are given, the HTTP API is served from the
// cluster part (*Cluster): models live in the Raft state and are served as placed
// stages, and the cluster admin calls make sense. The cluster part is started in Run,
// after HTTP is up, because joining can take a while and liveness must answer
// meanwhile; until it is up every model and cluster call answers "not ready" (503 with
// Retry-After) rather than pretend to be a single node.

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/mesh"
)

// clusterServices serves api.ModelService, api.HealthService and api.ClusterService
// from the node's cluster part.
type clusterServices struct{ n *Node }

var (
	_ api.ModelService   = clusterServices{}
	_ api.HealthService  = clusterServices{}
	_ api.ClusterService = clusterServices{}
	_ api.TextService    = clusterServices{}
	_ api.Generator      = clusterServices{}
)

// ModelText serves the tokenizer and chat template deployed with the model.
func (s clusterServices) ModelText(ctx context.Context, model, version string) (api.ModelText, error) {
	c, err := s.part()
	if err != nil {
		return api.ModelText{}, err
	}
	return c.text.ModelText(ctx, model, version)
}

func (s clusterServices) part() (*Cluster, error) {
	if c := s.n.cluster.Load(); c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("%w: joining the cluster", api.ErrNotReady)
}

func (s clusterServices) ListModels(ctx context.Context) ([]wire.ModelStatus, error) {
	c, err := s.part()
	if err != nil {
		return nil, err
	}
	return c.control.ListModels(ctx)
}

func (s clusterServices) ModelStatus(ctx context.Context, name, version string) (wire.ModelStatus, error) {
	c, err := s.part()
	if err != nil {
		return wire.ModelStatus{}, err
	}
	return c.control.ModelStatus(ctx, name, version)
}

func (s clusterServices) Infer(ctx context.Context, req api.InferRequest) (api.InferResult, error) {
	c, err := s.part()
	if err != nil {
		return api.InferResult{}, err
	}
	s.n.inferInFlight.Add(1)
	defer s.n.inferInFlight.Add(-1)
	return c.infer.Infer(ctx, req)
}

// Generate runs a generation through the model's stages (api.Generator).
func (s clusterServices) Generate(ctx context.Context, req api.GenerateRequest, emit func(api.GeneratedToken) error) (api.GenerateResult, error) {
	c, err := s.part()
	if err != nil {
		return api.GenerateResult{}, err
	}
	s.n.inferInFlight.Add(1)
	defer s.n.inferInFlight.Add(-1)
	return c.infer.Generate(ctx, req, emit)
}

// ModelContext returns a generative model's context length (api.Generator).
func (s clusterServices) ModelContext(ctx context.Context, model, version string) (int, error) {
	c, err := s.part()
	if err != nil {
		return 0, err
	}
	return c.infer.ModelContext(ctx, model, version)
}

func (s clusterServices) PutModel(ctx context.Context, name string, body io.Reader, opts api.DeployOptions) (wire.ModelStatus, error) {
	c, err := s.part()
	if err != nil {
		return wire.ModelStatus{}, err
	}
	return c.control.PutModel(ctx, name, body, opts)
}

func (s clusterServices) DeleteModel(ctx context.Context, name string) error {
	c, err := s.part()
	if err != nil {
		return err
	}
	return c.control.DeleteModel(ctx, name)
}

func (s clusterServices) Cluster(ctx context.Context) (wire.ClusterStatus, error) {
	c, err := s.part()
	if err != nil {
		return wire.ClusterStatus{}, err
	}
	st, err := c.Cluster(ctx)
	if err != nil {
		return wire.ClusterStatus{}, err
	}
	st.Version = Version
	describeNodes(c, st.Nodes)
	return st, nil
}

func (s clusterServices) Nodes(ctx context.Context) ([]wire.NodeStatus, error) {
	c, err := s.part()
	if err != nil {
		return nil, err
	}
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	describeNodes(c, nodes)
	return nodes, nil
}

// describeNodes adds what an operator asks first about each node: its health as
// memberlist sees it, its part in Raft, its capacity and free memory, and its load.
func describeNodes(c *Cluster, nodes []wire.NodeStatus) {
	st := c.store.State()
	leader := c.store.Leader()
	byName := make(map[string]string, len(st.Members))
	for id, m := range st.Members {
		byName[m.Name] = id
	}
	health := make(map[string]string)
	metas := make(map[string]mesh.NodeMeta)
	for _, m := range c.mesh.Members() {
		health[m.PeerID.String()] = m.State.String()
		metas[m.PeerID.String()] = m.Meta
	}
	for i := range nodes {
		nd := &nodes[i]
		id, ok := byName[nd.Name]
		if !ok {
			continue
		}
		m := st.Members[id]
		nd.PeerID, nd.Leader, nd.Voter = id, id == leader, m.Voter
		nd.Health = "unknown"
		if h, ok := health[id]; ok {
			nd.Health = h
		}
		capacity := wire.NodeCapacity{MemBudget: m.Capacity.MemBudget, MemFree: m.Capacity.MemBudget, Cores: m.Capacity.Cores, Speed: m.Capacity.Speed}
		if id == c.self {
			nd.Health = "alive"
			// Session state (KV caches) counts against the budget as stages do.
			capacity.MemFree = max(m.Capacity.MemBudget-c.runtime.UsedBytes()-c.runtime.SessionStats().Bytes, 0)
		} else if meta, ok := metas[id]; ok {
			capacity.MemFree, nd.Load = meta.FreeMem, meta.Load
		}
		if id == c.self {
			nd.Load = c.mesh.Meta().Load
		}
		nd.Capacity = &capacity
	}
}

func (s clusterServices) DrainNode(ctx context.Context, name string) error {
	c, err := s.part()
	if err != nil {
		return err
	}
	return c.control.DrainNode(ctx, name)
}

func (s clusterServices) RemoveNode(ctx context.Context, name string) error {
	c, err := s.part()
	if err != nil {
		return err
	}
	return c.control.RemoveNode(ctx, name)
}

func (s clusterServices) UndrainNode(ctx context.Context, name string) error {
	c, err := s.part()
	if err != nil {
		return err
	}
	return c.control.UndrainNode(ctx, name)
}

// doctorTimeout bounds a diagnosis: each unreachable peer costs a dial timeout.
const doctorTimeout = 30 * time.Second

func (s clusterServices) Diagnose(ctx context.Context, targets []string) (wire.DoctorReport, error) {
	c, err := s.part()
	if err != nil {
		return wire.DoctorReport{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, doctorTimeout)
	defer cancel()
	rep := wire.DoctorReport{Self: s.n.name}
	for _, d := range c.mesh.Diagnose(ctx, targets) {
		pd := wire.PeerDiagnosis{
			Target: d.Target, Name: d.Name, Discovered: d.Discovered, Reachable: d.Reachable, Admitted: d.Admitted,
			State: d.State, RTTMillis: float64(d.RTT.Microseconds()) / 1000, BandwidthBytes: d.Bandwidth,
			Cause: d.Cause, Detail: d.Detail,
		}
		if d.PeerID != "" {
			pd.PeerID = d.PeerID.String()
		}
		rep.Peers = append(rep.Peers, pd)
	}
	return rep, nil
}

func (s clusterServices) JoinToken(ctx context.Context) (wire.JoinToken, error) {
	c, err := s.part()
	if err != nil {
		return wire.JoinToken{}, err
	}
	// Read, never create: the secret this node runs with was read or made at start.
	path := c.opts.SecretFile
	if path == "" {
		path = filepath.Join(c.opts.DataDir, secretFileName)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return wire.JoinToken{}, fmt.Errorf("node: cluster secret: %w", err)
	}
	secret := strings.TrimSpace(string(b))
	return wire.JoinToken{ClusterID: clusterID([]byte(secret)), Secret: secret, Seeds: c.Addrs()}, nil
}

// Ready is the backend's check followed by the cluster part's own checks.
func (s clusterServices) Ready(ctx context.Context) []wire.ReadyCheck {
	checks := []wire.ReadyCheck{
		{Layer: "backend", Ready: true, Reason: "onnx runtime, provider " + string(s.n.backend.Provider())},
	}
	c := s.n.cluster.Load()
	if c == nil {
		return append(checks, wire.ReadyCheck{Layer: "cluster", Ready: false, Reason: "joining the cluster"})
	}
	return append(checks, c.Ready(ctx)...)
}
