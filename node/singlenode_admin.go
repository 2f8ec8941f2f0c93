package node

// The admin answers of a single node: it is its own and only member, and the calls
// that need a cluster say so (501 not_cluster_mode).

import (
	"context"
	"fmt"
	"runtime"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/wire"
)

// modeSingleNode is what /v1/cluster reports until the node joins a cluster.
const modeSingleNode = "single-node"

// Ready reports the node's readiness layer by layer: the backend, the models found
// at start, and the cluster (which a single node does not need).
func (n *Node) Ready(ctx context.Context) []wire.ReadyCheck {
	checks := []wire.ReadyCheck{
		{Layer: "backend", Ready: true, Reason: "onnx runtime, provider " + string(n.backend.Provider())},
	}
	if n.modelsLoaded.Load() {
		n.mu.RLock()
		loaded, failed := len(n.models), len(n.failed)
		n.mu.RUnlock()
		reason := fmt.Sprintf("%d loaded", loaded)
		if failed > 0 {
			reason += fmt.Sprintf(", %d failed to load (see /v1/models)", failed)
		}
		checks = append(checks, wire.ReadyCheck{Layer: "models", Ready: true, Reason: reason})
	} else {
		checks = append(checks, wire.ReadyCheck{Layer: "models", Ready: false, Reason: "loading the models found at start"})
	}
	checks = append(checks, wire.ReadyCheck{Layer: "cluster", Ready: true, Reason: modeSingleNode + " mode"})
	return checks
}

func (n *Node) self() wire.NodeStatus {
	p := n.backend.Provider()
	acc := accelerator(p, n.cfg.GPUs)
	return wire.NodeStatus{
		Name: n.name, HTTPAddr: n.Addr(), State: "alive", Accel: accelLabel(string(p), acc.Device),
		GPUMemTotal: acc.MemTotal, GPUMemFree: acc.MemFree,
		Platform: platform(), Cores: runtime.NumCPU(), Models: n.modelNames(),
	}
}

// platform is this binary's GOOS/GOARCH, which a node advertises so that an operator
// of a mixed fleet (amd64 boxes, arm64 boards) sees which is which.
func platform() string { return runtime.GOOS + "/" + runtime.GOARCH }

// Cluster reports single-node mode: the node is its own and only member.
func (n *Node) Cluster(ctx context.Context) (wire.ClusterStatus, error) {
	return wire.ClusterStatus{Mode: modeSingleNode, Self: n.name, Version: Version, Nodes: []wire.NodeStatus{n.self()}}, nil
}

// Nodes lists this node only.
func (n *Node) Nodes(ctx context.Context) ([]wire.NodeStatus, error) {
	return []wire.NodeStatus{n.self()}, nil
}

// DrainNode has nowhere to move stages to outside a cluster.
func (n *Node) DrainNode(ctx context.Context, name string) error {
	return fmt.Errorf("%w: draining %s needs other nodes to take its stages", api.ErrNotClusterMode, name)
}

// RemoveNode has no cluster to remove a node from.
func (n *Node) RemoveNode(ctx context.Context, name string) error {
	return fmt.Errorf("%w: there is no cluster to remove %s from", api.ErrNotClusterMode, name)
}

// UndrainNode has no drained node outside a cluster.
func (n *Node) UndrainNode(ctx context.Context, name string) error {
	return fmt.Errorf("%w: nothing to undrain on a single node", api.ErrNotClusterMode)
}

// Diagnose has no peers to diagnose outside a cluster.
func (n *Node) Diagnose(ctx context.Context, targets []string) (wire.DoctorReport, error) {
	return wire.DoctorReport{}, fmt.Errorf("%w: a single node has no peers to diagnose", api.ErrNotClusterMode)
}

// JoinToken has no cluster to join.
func (n *Node) JoinToken(ctx context.Context) (wire.JoinToken, error) {
	return wire.JoinToken{}, fmt.Errorf("%w: start the node with --bootstrap to found a cluster others can join", api.ErrNotClusterMode)
}

// CreateToken needs the cluster state, where tokens are kept; a single node has its
// admin token only.
func (n *Node) CreateToken(ctx context.Context, scope api.Scope, name string) (wire.TokenCreated, error) {
	return wire.TokenCreated{}, fmt.Errorf("%w: tokens live in the cluster state; a single node has its admin token only", api.ErrNotClusterMode)
}

// ListTokens: see CreateToken.
func (n *Node) ListTokens(ctx context.Context) ([]wire.TokenInfo, error) {
	return nil, fmt.Errorf("%w: tokens live in the cluster state; a single node has its admin token only", api.ErrNotClusterMode)
}

// RevokeToken: see CreateToken.
func (n *Node) RevokeToken(ctx context.Context, id string) error {
	return fmt.Errorf("%w: tokens live in the cluster state; a single node has its admin token only", api.ErrNotClusterMode)
}
