package pipeline

// The drive protocol: how a request and its stages travel over the mesh's stage RPC.
// A stage call asks a peer to run one stage it serves; a drive call hands it the whole
// request, which it runs as the driver (its own stages locally, the others by stage
// calls) before answering with the client's outputs. Errors cross in both directions
// through one mapping (toWire on the serving side, fromWire on the calling side).

import (
	"context"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/mesh"
)

// StageTransport is the mesh's stage RPC as the pipeline uses it.
type StageTransport interface {
	CallStage(ctx context.Context, p peer.ID, req *mesh.StageRequest) ([]tensor.Tensor, error)
}

// MeshCaller adapts the mesh's stage RPC to the router's StageCaller.
type MeshCaller struct{ Transport StageTransport }

// CallStage sends call to node and decodes the peer's error into pipeline and accel
// sentinels (fromWire).
func (mc MeshCaller) CallStage(ctx context.Context, node string, call StageCall) ([]tensor.Tensor, error) {
	p, err := peer.Decode(node)
	if err != nil {
		return nil, fmt.Errorf("stage call to %q: %w", node, err)
	}
	req := &mesh.StageRequest{
		RequestID: call.ID, Model: call.Model, Version: call.Version, Stage: call.Stage, Drive: call.Drive,
		Tensors: call.Inputs, Outputs: call.Outputs, Session: call.Session, Step: call.Step, Pos: call.Pos, Len: call.Len,
	}
	if call.Drive {
		// The wire's stage index is never negative and means nothing in a hand-over.
		req.Stage = 0
	}
	out, err := mc.Transport.CallStage(ctx, p, req)
	return out, fromWire(err)
}

// Driver runs a whole request handed over by a peer (the Router).
type Driver interface {
	Drive(ctx context.Context, req Request) ([]tensor.Tensor, error)
}

// StageServer answers peers' stage RPCs: one stage from the local runtime, or a whole
// request handed over to this node as driver.
type StageServer struct {
	Driver Driver
	Local  LocalStages
	// Sessions runs session steps (requests with a session id); nil refuses them.
	Sessions LocalSessions
}

// LocalSessions runs session steps on the stages this node serves (StageRuntime).
type LocalSessions interface {
	SessionStep(ctx context.Context, step SessionStep) ([]tensor.Tensor, error)
}

// Handle is the mesh's stage handler (mesh.StageHandler).
func (s StageServer) Handle(ctx context.Context, req *mesh.StageRequest) ([]tensor.Tensor, error) {
	if req.Drive {
		out, err := s.Driver.Drive(ctx, Request{ID: req.RequestID, Model: req.Model, Version: req.Version,
			Inputs: req.Tensors, Outputs: req.Outputs})
		return out, toWire(err)
	}
	if req.Session != "" {
		if s.Sessions == nil {
			return nil, toWire(fmt.Errorf("%w: this node runs no sessions", ErrStageNotServed))
		}
		out, err := s.Sessions.SessionStep(ctx, SessionStep{Session: req.Session, Step: req.Step, Pos: req.Pos, Len: req.Len,
			Key: StageKey{Model: req.Model, Version: req.Version, Stage: req.Stage}, Inputs: req.Tensors, Outputs: req.Outputs})
		return out, toWire(err)
	}
	out, err := s.Local.RunStage(ctx, req.Model, req.Version, req.Stage, req.Tensors, req.Outputs)
	return out, toWire(err)
}
