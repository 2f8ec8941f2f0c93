// Package pipeline is the request path of a cluster node: the inference service at
// the API boundary (service.go), the router that drives a request through a model's
// stages with retries and failover (router.go), the drive protocol over the mesh's
// stage RPC with its error mapping (protocol.go, errors.go), the stage runtime that
// loads and runs the stages placed on this node (runtime.go), the view of which
// replicas are ready (view.go) and their metrics.
//
// It reads the replicated state and memberlist through small interfaces (StateView,
// Membership, StageTransport) and writes nothing to Raft: what to serve comes from
// the control package's placements, wired in by package node.
package pipeline
