package node

// Cluster mode. When cluster settings are given, the HTTP API is served from the
// cluster part (*Cluster): models live in the Raft state and are served as placed
// stages, and the cluster admin calls make sense. The cluster part is started in Run,
// after HTTP is up, because joining can take a while and liveness must answer
// meanwhile; until it is up every model and cluster call answers "not ready" (503 with
// Retry-After) rather than pretend to be a single node.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/mesh"
)

// clusterServices serves api.ModelService, api.HealthService and api.ClusterService
// from the node's cluster part.
type clusterServices struct{ n *Node }

var (
	_ api.ModelService   = clusterServices{}
	_ api.HealthService  = clusterServices{}
	_ api.ClusterService = clusterServices{}
)

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
			capacity.MemFree = max(m.Capacity.MemBudget-c.runtime.UsedBytes(), 0)
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

// tokenWait bounds how long a token call waits for its change to reach this node's
// copy of the state, so that the next call here already sees it.
const tokenWait = 10 * time.Second

func (s clusterServices) CreateToken(ctx context.Context, scope api.Scope, name string) (wire.TokenCreated, error) {
	c, err := s.part()
	if err != nil {
		return wire.TokenCreated{}, err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return wire.TokenCreated{}, err
	}
	secret := hex.EncodeToString(raw)
	id := name
	if id == "" {
		id = "tok-" + secret[:8]
	}
	// A name taken twice at the same moment can still race here; the later write
	// replaces the earlier token, whose holder then gets 401 and asks again.
	if _, ok := c.store.State().Tokens[id]; ok {
		return wire.TokenCreated{}, fmt.Errorf("%w: token %s", api.ErrConflict, id)
	}
	tok := consensus.Token{ID: id, Hash: consensus.TokenHash(secret), Scope: consensus.TokenScope(scope), Created: nowUTC()}
	if err := c.control.Apply(ctx, consensus.NewCommand(consensus.PutToken{Token: tok})); err != nil {
		return wire.TokenCreated{}, err
	}
	if err := waitState(ctx, c, func(st *consensus.ClusterState) bool { _, ok := st.Tokens[id]; return ok }); err != nil {
		return wire.TokenCreated{}, err
	}
	s.n.log.Info("token created", "token", id, "scope", scope)
	return wire.TokenCreated{TokenInfo: tokenInfo(tok), Secret: secret}, nil
}

func (s clusterServices) ListTokens(ctx context.Context) ([]wire.TokenInfo, error) {
	c, err := s.part()
	if err != nil {
		return nil, err
	}
	toks := c.store.State().Tokens
	out := make([]wire.TokenInfo, 0, len(toks))
	for _, id := range slices.Sorted(maps.Keys(toks)) {
		out = append(out, tokenInfo(toks[id]))
	}
	return out, nil
}

func (s clusterServices) RevokeToken(ctx context.Context, id string) error {
	c, err := s.part()
	if err != nil {
		return err
	}
	if _, ok := c.store.State().Tokens[id]; !ok {
		return fmt.Errorf("%w: %s", api.ErrTokenNotFound, id)
	}
	if err := c.control.Apply(ctx, consensus.NewCommand(consensus.RevokeToken{ID: id, At: nowUTC()})); err != nil {
		return err
	}
	s.n.log.Info("token revoked", "token", id)
	return waitState(ctx, c, func(st *consensus.ClusterState) bool { return st.Tokens[id].Revoked })
}

func tokenInfo(t consensus.Token) wire.TokenInfo {
	return wire.TokenInfo{ID: t.ID, Scope: string(t.Scope), Created: t.Created, Revoked: t.Revoked, RevokedAt: t.RevokedAt}
}

// waitState waits until this node's copy of the state satisfies ok: a write forwarded
// to the leader is committed before this node has applied it.
func waitState(ctx context.Context, c *Cluster, ok func(*consensus.ClusterState) bool) error {
	ctx, cancel := context.WithTimeout(ctx, tokenWait)
	defer cancel()
	changes, stop := c.store.Watch()
	defer stop()
	for !ok(c.store.State()) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: the change was committed but has not reached this node yet", api.ErrNotReady)
		case <-changes:
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
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

// startCluster starts the cluster part once HTTP is serving.
func (n *Node) startCluster(ctx context.Context) error {
	// The cluster's components name themselves (component=cluster, raft, mesh, ...);
	// they get the node's name, not n.log's component=node, so that a JSON line has
	// one component key.
	base := n.cfg.Logger
	if base == nil {
		base = slog.Default()
	}
	c, err := NewNodeCluster(ctx, n.cfg, n.name, n.Addr(), base.With("node", n.name))
	if err != nil {
		return fmt.Errorf("node: start cluster: %w", err)
	}
	if err := c.RegisterMetrics(n.reg); err != nil {
		_ = c.Close()
		return fmt.Errorf("node: cluster metrics: %w", err)
	}
	if err := registerClusterMetrics(n.reg, c); err != nil {
		_ = c.Close()
		return fmt.Errorf("node: cluster metrics: %w", err)
	}
	n.cluster.Store(c)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.publishLoad(ctx, c)
	}()
	if n.cfg.Cluster.founding() {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.publishAdminToken(ctx, c)
		}()
	}
	return nil
}

// Tokens in cluster mode are the cluster's: their sha256 lives in the Raft state, so
// every node accepts the same tokens and a revocation reaches all of them. A node that
// founds the cluster (--bootstrap or --bootstrap-expect) publishes the admin token it
// wrote to <data-dir>/admin.token; a joining node has no token of its own.

// adminTokenID names the published admin token of the node called name.
func adminTokenID(name string) string { return "admin@" + name }

// founding reports whether this node may found the cluster and so owns an admin token.
func (c ClusterConfig) founding() bool { return c.Bootstrap || c.BootstrapExpect > 0 }

// verifyClusterToken checks token against the replicated tokens, and against this
// node's own admin token while the cluster state is not reachable yet (so the operator
// of a founding node can use its token from the first second).
func (n *Node) verifyClusterToken(token string) (api.Scope, error) {
	if c := n.cluster.Load(); c != nil {
		if t, ok := c.Store().View().TokenForSecret(token); ok {
			if t.Revoked {
				return "", fmt.Errorf("%w: token %s was revoked", api.ErrUnauthorized, t.ID)
			}
			return api.Scope(t.Scope), nil
		}
	}
	if n.tokens != nil {
		return n.tokens.verify(token)
	}
	return "", fmt.Errorf("%w: token not recognised", api.ErrUnauthorized)
}

// publishAdminToken commits this founding node's admin token to the cluster state,
// retrying until it is there or ctx ends (the first leader election takes a moment).
func (n *Node) publishAdminToken(ctx context.Context, c *Cluster) {
	if n.tokens == nil {
		return
	}
	id, hash := adminTokenID(n.name), n.tokens.hashHex()
	for {
		if t, ok := c.Store().State().Tokens[id]; ok && t.Hash == hash && !t.Revoked {
			return
		}
		if t, ok := c.Store().State().Tokens[id]; ok && t.Revoked {
			n.log.Warn("this node's admin token was revoked; not publishing it again", "token", id)
			return
		}
		cmd := consensus.NewCommand(consensus.PutToken{Token: consensus.Token{
			ID: id, Hash: hash, Scope: consensus.ScopeAdmin, Created: time.Now().UTC(),
		}})
		_, err := c.Store().Apply(ctx, cmd)
		if err == nil {
			n.log.Info("admin token published to the cluster", "token", id)
			return
		}
		n.log.Debug("publishing the admin token failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// loadInterval is how often a changed load is published in the node's membership
// metadata: often enough for status pages, rare enough not to flood the gossip.
const loadInterval = 2 * time.Second

// publishLoad keeps the node's metadata Load equal to its inference requests in
// flight, so that every node's status shows every node's load.
func (n *Node) publishLoad(ctx context.Context, c *Cluster) {
	tick := time.NewTicker(loadInterval)
	defer tick.Stop()
	last := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		load := int(n.inferInFlight.Load())
		if load == last {
			continue
		}
		if err := c.mesh.UpdateMeta(func(m *mesh.NodeMeta) { m.Load = load }); err != nil {
			n.log.Debug("publishing load", "err", err)
			continue
		}
		last = load
	}
}
