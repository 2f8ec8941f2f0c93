package mesh

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/libp2p/go-libp2p/core/peer"
)

// pair starts two joined meshes.
func pair(t *testing.T) (*Mesh, *Mesh) {
	t.Helper()
	a := startMesh(t, testConfig(t, t.TempDir()))
	b := startMesh(t, testConfig(t, t.TempDir()))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Connect(ctx, addrInfo(t, b)); err != nil {
		t.Fatalf("connect: %v", err)
	}
	return a, b
}

type stagePath struct {
	name string
	call func(m *Mesh, ctx context.Context, p peer.ID, req *StageRequest) ([]tensor.Tensor, error)
}

var stagePaths = []stagePath{
	{"data", func(m *Mesh, ctx context.Context, p peer.ID, req *StageRequest) ([]tensor.Tensor, error) {
		return m.CallStage(ctx, p, req)
	}},
	{"stream", func(m *Mesh, ctx context.Context, p peer.ID, req *StageRequest) ([]tensor.Tensor, error) {
		ctx, cancel := stageContext(ctx, req)
		defer cancel()
		return m.callStageStream(ctx, p, req)
	}},
}

func TestStageRPC(t *testing.T) {
	a, b := pair(t)
	handlerErr := make(chan error, 10)
	b.HandleStage(func(ctx context.Context, req *StageRequest) ([]tensor.Tensor, error) {
		switch req.Model {
		case "double":
			x, err := req.Tensors[0].Float32s()
			if err != nil {
				return nil, err
			}
			for i := range x {
				x[i] *= 2
			}
			return []tensor.Tensor{tensor.FromFloat32("y", req.Tensors[0].Shape, x)}, nil
		case "flags":
			var drive int64
			if req.Drive {
				drive = 1
			}
			return []tensor.Tensor{tensor.FromInt64("f", []int64{2}, []int64{drive, int64(req.Stage)})}, nil
		case "missing":
			return nil, fmt.Errorf("%w: %s/%s#%d", ErrStageNotLoaded, req.Model, req.Version, req.Stage)
		case "block":
			<-ctx.Done()
			handlerErr <- ctx.Err()
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: unknown model %q", ErrBadRequest, req.Model)
	})
	in := make([]float32, 1*128*768)
	for i := range in {
		in[i] = float32(i%1000) * 0.5
	}
	for _, path := range stagePaths {
		t.Run(path.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			req := &StageRequest{RequestID: "r-" + path.name, Model: "double", Version: "1", Stage: 2,
				Tensors: []tensor.Tensor{tensor.FromFloat32("x", []int64{1, 128, 768}, in)}}
			for round := range 3 { // pooled connections are reused across calls
				out, err := path.call(a, ctx, b.ID(), req)
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				y, err := out[0].Float32s()
				if err != nil || len(y) != len(in) || out[0].Name != "y" {
					t.Fatalf("bad output: %v %d", err, len(y))
				}
				for i := range y {
					if y[i] != 2*in[i] {
						t.Fatalf("y[%d] = %v, want %v", i, y[i], 2*in[i])
					}
				}
			}

			// The drive flag and the stage index arrive as sent.
			for _, want := range []StageRequest{{Drive: true}, {Stage: 7}, {Drive: true, Stage: 1<<31 - 1}} {
				out, err := path.call(a, ctx, b.ID(), &StageRequest{RequestID: "rf", Model: "flags", Drive: want.Drive, Stage: want.Stage})
				if err != nil {
					t.Fatalf("flags: %v", err)
				}
				got, err := out[0].Int64s()
				if err != nil || got[0] != map[bool]int64{false: 0, true: 1}[want.Drive] || got[1] != int64(want.Stage) {
					t.Fatalf("sent drive=%v stage=%d, handler saw %v (%v)", want.Drive, want.Stage, got, err)
				}
			}

			_, err := path.call(a, ctx, b.ID(), &StageRequest{RequestID: "r2", Model: "missing", Version: "1", Stage: 3})
			var re *RemoteError
			if !errors.Is(err, ErrStageNotLoaded) || !errors.Is(err, ErrRemote) || !errors.As(err, &re) || re.Code != CodeStageNotLoaded || re.Peer != b.ID() {
				t.Fatalf("missing stage: got %v, want RemoteError CodeStageNotLoaded", err)
			}

			// The caller gives up: the server's handler context is cancelled.
			cctx, ccancel := context.WithCancel(ctx)
			time.AfterFunc(200*time.Millisecond, ccancel)
			start := time.Now()
			_, err = path.call(a, cctx, b.ID(), &StageRequest{RequestID: "r3", Model: "block"})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled call: got %v, want context.Canceled", err)
			}
			select {
			case herr := <-handlerErr:
				if !errors.Is(herr, context.Canceled) {
					t.Fatalf("server handler ended with %v, want context.Canceled", herr)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("server handler not cancelled 5s after the caller gave up")
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("cancel took %v", d)
			}

			// The deadline is enforced on both sides.
			_, err = path.call(a, ctx, b.ID(), &StageRequest{RequestID: "r4", Model: "block", Deadline: time.Now().Add(300 * time.Millisecond)})
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrDeadline) {
				t.Fatalf("deadline call: got %v, want a deadline error", err)
			}
			select {
			case herr := <-handlerErr:
				if !errors.Is(herr, context.DeadlineExceeded) && !errors.Is(herr, context.Canceled) {
					t.Fatalf("server handler ended with %v, want its deadline", herr)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("server handler still running 5s after the deadline")
			}
			// A request that arrives after its deadline is not run at all.
			_, err = path.call(a, ctx, b.ID(), &StageRequest{RequestID: "r5", Model: "double", Deadline: time.Now().Add(-time.Second)})
			if err == nil {
				t.Fatalf("expired request succeeded")
			}
		})
	}
}

func TestStageFrameLimits(t *testing.T) {
	old := headerReadTimeout
	headerReadTimeout = 300 * time.Millisecond
	defer func() { headerReadTimeout = old }()
	a, b := pair(t)
	b.HandleStage(func(ctx context.Context, req *StageRequest) ([]tensor.Tensor, error) {
		return req.Tensors, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// A tensor declaring far more payload than the limit is refused before any
	// allocation, with an error frame, and the connection is closed.
	d, _, err := a.pool.get(ctx, b.ID(), true)
	if err != nil {
		t.Fatal(err)
	}
	hdr, _ := encodeStageHeader(&StageRequest{RequestID: "big", Model: "m"})
	frame := append([]byte{kindStage}, hdr...)
	frame = append(frame, 'L', 'M', 'T', '1', 1, 0, 0, 0) // one tensor
	frame = append(frame, 1, 0, 'x', byte(tensor.Float32), 1)
	frame = binary.LittleEndian.AppendUint64(frame, 1<<40)     // dim
	frame = binary.LittleEndian.AppendUint64(frame, 4*(1<<40)) // payload: 4 TiB
	if _, err := d.Write(frame); err != nil || d.flush() != nil {
		t.Fatal(err)
	}
	_ = d.SetDeadline(time.Now().Add(5 * time.Second))
	err = readResponseStatus(d, b.ID())
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != CodeMalformed {
		t.Fatalf("oversized tensor: got %v, want CodeMalformed", err)
	}
	var one [1]byte
	if _, err := d.Read(one[:]); err == nil {
		t.Fatalf("connection still open after an oversized frame")
	}
	a.pool.discard(d)

	// A slow-loris peer that starts a header and stalls is cut off by the read
	// deadline, not held forever.
	d, _, err = a.pool.get(ctx, b.ID(), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Write([]byte{kindStage, 'L', 'M'}); err != nil || d.flush() != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = d.SetDeadline(time.Now().Add(5 * time.Second))
	err = readResponseStatus(d, b.ID())
	if !errors.As(err, &re) || re.Code != CodeMalformed {
		t.Fatalf("stalled header: got %v, want CodeMalformed after the read deadline", err)
	}
	if _, err := io.ReadFull(d, one[:]); err == nil {
		t.Fatalf("connection still open after a stalled header")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("stalled peer held for %v", el)
	}
	a.pool.discard(d)

	// The healthy path still works afterwards.
	out, err := a.CallStage(ctx, b.ID(), &StageRequest{RequestID: "ok", Tensors: []tensor.Tensor{tensor.FromInt64("t", []int64{2}, []int64{4, 5})}})
	if err != nil || len(out) != 1 {
		t.Fatalf("call after bad frames: %v", err)
	}
}

func TestLinkProbe(t *testing.T) {
	a, b := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, ok := a.Link(b.ID()); ok {
		t.Fatalf("link stats before any probe")
	}
	stats, err := a.ProbeLink(ctx, b.ID())
	if err != nil {
		t.Fatal(err)
	}
	if stats.RTT <= 0 || stats.RTT > time.Second || stats.Bandwidth < 1e6 {
		t.Fatalf("implausible loopback link: %+v", stats)
	}
	got, ok := a.Link(b.ID())
	if !ok || got != stats {
		t.Fatalf("Link = %+v, %v; want %+v", got, ok, stats)
	}
	t.Logf("loopback link: rtt %v, bandwidth %.0f MB/s", stats.RTT, stats.Bandwidth/1e6)
}

func TestLinkProbesStayFresh(t *testing.T) {
	cfgA := testConfig(t, t.TempDir())
	cfgA.ProbeInterval = 200 * time.Millisecond
	a := startMesh(t, cfgA)
	cfgB := testConfig(t, t.TempDir())
	cfgB.Join = []string{a.Addrs()[0]}
	b := startMesh(t, cfgB)
	var first LinkStats
	eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		s, ok := a.Link(b.ID())
		if !ok {
			return fmt.Errorf("no link stats yet")
		}
		first = s
		return nil
	})
	eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		s, _ := a.Link(b.ID())
		if !s.Updated.After(first.Updated) {
			return fmt.Errorf("link stats not refreshed since %v", first.Updated)
		}
		return nil
	})
}

// A pooled connection that broke while idle costs a retry, not a failed call.
func TestStaleDataConnRetried(t *testing.T) {
	a, b := pair(t)
	b.HandleStage(func(ctx context.Context, req *StageRequest) ([]tensor.Tensor, error) { return req.Tensors, nil })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := &StageRequest{RequestID: "s", Tensors: []tensor.Tensor{tensor.FromInt64("t", []int64{1}, []int64{9})}}
	if _, err := a.CallStage(ctx, b.ID(), req); err != nil {
		t.Fatal(err)
	}
	a.pool.mu.Lock()
	idle := a.pool.idle[b.ID()]
	a.pool.mu.Unlock()
	if len(idle) != 1 {
		t.Fatalf("%d idle connections after one call, want 1", len(idle))
	}
	// Break the pooled connection under the record layer (its sending side shut), as a
	// peer dropping an idle connection would leave it.
	_ = idle[0].raw.(*net.TCPConn).CloseWrite()
	time.Sleep(50 * time.Millisecond)
	if _, err := a.CallStage(ctx, b.ID(), req); err != nil {
		t.Fatalf("call on a broken pooled connection was not retried: %v", err)
	}
}
