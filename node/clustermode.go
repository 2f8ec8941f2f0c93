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
	"time"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/consensus"
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
	return c.ListModels(ctx)
}

func (s clusterServices) ModelStatus(ctx context.Context, name, version string) (wire.ModelStatus, error) {
	c, err := s.part()
	if err != nil {
		return wire.ModelStatus{}, err
	}
	return c.ModelStatus(ctx, name, version)
}

func (s clusterServices) Infer(ctx context.Context, req api.InferRequest) (api.InferResult, error) {
	c, err := s.part()
	if err != nil {
		return api.InferResult{}, err
	}
	return c.Infer(ctx, req)
}

func (s clusterServices) PutModel(ctx context.Context, name string, body io.Reader, opts api.DeployOptions) (wire.ModelStatus, error) {
	c, err := s.part()
	if err != nil {
		return wire.ModelStatus{}, err
	}
	return c.PutModel(ctx, name, body, opts)
}

func (s clusterServices) DeleteModel(ctx context.Context, name string) error {
	c, err := s.part()
	if err != nil {
		return err
	}
	return c.DeleteModel(ctx, name)
}

func (s clusterServices) Cluster(ctx context.Context) (wire.ClusterStatus, error) {
	c, err := s.part()
	if err != nil {
		return wire.ClusterStatus{}, err
	}
	return c.Cluster(ctx)
}

func (s clusterServices) Nodes(ctx context.Context) ([]wire.NodeStatus, error) {
	c, err := s.part()
	if err != nil {
		return nil, err
	}
	return c.Nodes(ctx)
}

func (s clusterServices) DrainNode(ctx context.Context, name string) error {
	c, err := s.part()
	if err != nil {
		return err
	}
	return c.DrainNode(ctx, name)
}

func (s clusterServices) RemoveNode(ctx context.Context, name string) error {
	c, err := s.part()
	if err != nil {
		return err
	}
	return c.RemoveNode(ctx, name)
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
	c, err := NewNodeCluster(ctx, n.cfg, n.name, n.Addr(), n.log)
	if err != nil {
		return fmt.Errorf("node: start cluster: %w", err)
	}
	n.cluster.Store(c)
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
		if t, ok := c.Store().State().TokenForSecret(token); ok {
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
