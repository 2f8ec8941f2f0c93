package pipeline

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/mesh"
)

// startMeshPair starts two real meshes (libp2p on 127.0.0.1, memberlist, the join
// handshake) and joins them, as the mesh's own stage tests do.
func startMeshPair(t *testing.T) (*mesh.Mesh, *mesh.Mesh) {
	t.Helper()
	start := func() *mesh.Mesh {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m, err := mesh.New(ctx, mesh.Config{
			DataDir: t.TempDir(), ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, GossipBindAddr: "127.0.0.1",
			ClusterID: "pipeline-test", Secret: []byte("0123456789abcdef0123456789abcdef"),
			Logger: testLogger(t, "mesh"), FastGossip: true, ProbeInterval: -1,
		})
		if err != nil {
			t.Fatalf("mesh.New: %v", err)
		}
		t.Cleanup(func() { _ = m.Close() })
		return m
	}
	a, b := start(), start()
	addr, err := ma.NewMultiaddr(b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	ai, err := peer.AddrInfoFromP2pAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Connect(ctx, *ai); err != nil {
		t.Fatalf("connect: %v", err)
	}
	return a, b
}

// failingStages answers every stage call and every drive with the error its model
// name selects.
type failingStages map[string]error

func (f failingStages) RunStage(ctx context.Context, model, version string, stage int, inputs []tensor.Tensor, outputs []string) ([]tensor.Tensor, error) {
	return nil, f[model]
}

func (f failingStages) Drive(ctx context.Context, req Request) ([]tensor.Tensor, error) {
	return nil, f[req.Model]
}

// TestStageRPCKeepsErrorMeaning: an error raised on the serving node reaches the
// calling node's router with the same sentinel, over the real stage RPC between two
// libp2p hosts, and the API answers it with the same code it would give the error
// raised locally. One case per code the pipeline maps.
func TestStageRPCKeepsErrorMeaning(t *testing.T) {
	caller, server := startMeshPair(t)
	cases := []struct {
		model     string
		drive     bool
		err       error
		is        error
		code      api.Code
		retryable bool
		// peerLag marks an error that means less on the caller than where it arose.
		peerLag bool
	}{
		{"shape", false, fmt.Errorf("%w: %w: input x dim 1 is 3, the model takes 4", accel.ErrInputMismatch, accel.ErrShapeMismatch),
			accel.ErrShapeMismatch, api.CodeShapeMismatch, false, false},
		{"dtype", false, fmt.Errorf("%w: %w: input x is INT64", accel.ErrInputMismatch, accel.ErrDTypeMismatch),
			accel.ErrDTypeMismatch, api.CodeDTypeMismatch, false, false},
		{"input", false, fmt.Errorf("%w: input x missing", accel.ErrInputMismatch), accel.ErrInputMismatch, api.CodeInputMismatch, false, false},
		{"unsupported", false, fmt.Errorf("%w: input m is a map", accel.ErrUnsupportedInput), accel.ErrUnsupportedInput, api.CodeUnsupportedType, false, false},
		{"notserved", false, fmt.Errorf("%w: m@1/0", ErrStageNotServed), ErrStageNotServed, api.CodeInternal, true, false},
		// A driver that does not know the version lags behind: another one is tried.
		{"unknown", true, fmt.Errorf("%w: m version 9", ErrUnknownModel), ErrStageNotServed, api.CodeInternal, true, true},
		{"noreplica", true, &NoReplicaError{Model: "m", Version: "1", Stage: 1}, ErrNoReplica, api.CodeNoReplica, true, false},
		{"stagefailed", true, fmt.Errorf("%w: stage 1 of m after 8 attempts", ErrStageFailed), ErrStageFailed, api.CodeNoReplica, true, false},
		{"timeout", true, fmt.Errorf("stage 1: %w (after 2 failed attempts; last error: reset)", context.DeadlineExceeded),
			context.DeadlineExceeded, api.CodeTimeout, true, false},
		{"garbage", false, fmt.Errorf("%w: output \"y\" missing", ErrBadStageResponse), ErrBadStageResponse, api.CodeInternal, true, false},
	}
	stages := failingStages{}
	for _, c := range cases {
		stages[c.model] = c.err
	}
	server.HandleStage(StageServer{Driver: stages, Local: stages}.Handle)
	call := MeshCaller{Transport: caller}
	for _, c := range cases {
		t.Run(c.model, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := call.CallStage(ctx, server.ID().String(), StageCall{
				Request: Request{ID: "r1", Model: c.model, Version: "1",
					Inputs: []tensor.Tensor{tensor.FromFloat32("x", []int64{1}, []float32{1})}},
				Stage: 1, Drive: c.drive,
			})
			if err == nil {
				t.Fatal("the peer's error was lost")
			}
			if !errors.Is(err, c.is) {
				t.Fatalf("got %v, want an error matching %v", err, c.is)
			}
			if got := api.Classify(toAPI(err)).Code; got != c.code {
				t.Fatalf("API code %s, want %s (err %v)", got, c.code, err)
			}
			if local := api.Classify(toAPI(c.err)).Code; local != c.code && !c.peerLag {
				t.Fatalf("the local error answers %s, the remote one %s", local, c.code)
			}
			if got := retryable(ctx, err); got != c.retryable {
				t.Fatalf("retryable = %v, want %v", got, c.retryable)
			}
			var re *mesh.RemoteError
			if !errors.As(err, &re) || re.Peer != server.ID() {
				t.Fatalf("the decoded error lost the peer's RemoteError: %v", err)
			}
		})
	}
}
