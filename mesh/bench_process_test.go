package mesh

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// benchPeerEnv makes the test binary act as the far end of a cross-process benchmark
// (see TestMain): sender and receiver in separate processes, as in a real cluster.
const (
	benchPeerEnv    = "LAYERMESH_BENCH_PEER"
	benchPeerSecEnv = "LAYERMESH_BENCH_PEER_SECURITY"
)

// runBenchPeer runs a mesh whose stage handler acknowledges with a tiny tensor, plus a
// raw TCP sink, prints their addresses, and exits when its stdin closes.
func runBenchPeer() int {
	dir, err := os.MkdirTemp("", "mesh-bench-peer-")
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	defer os.RemoveAll(dir)
	cfg := Config{
		DataDir:        dir,
		ListenAddrs:    []string{"/ip4/127.0.0.1/tcp/0"},
		GossipBindAddr: "127.0.0.1",
		ClusterID:      "test-cluster",
		Secret:         testSecret,
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		FastGossip:     true,
		ProbeInterval:  -1,
	}
	if os.Getenv(benchPeerSecEnv) == "noise" {
		cfg.Security = SecurityNoise
	}
	m, err := New(context.Background(), cfg)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	defer m.Close()
	ack := []tensor.Tensor{tensor.FromInt64("ok", []int64{1}, []int64{1})}
	m.HandleStage(func(ctx context.Context, req *StageRequest) ([]tensor.Tensor, error) {
		// A decode step's Pos is how long it computes, in microseconds: the peer keeps
		// its core busy that long, as a stage holder does.
		if req.Step == StepDecode {
			for end := time.Now().Add(time.Duration(req.Pos) * time.Microsecond); time.Now().Before(end); {
			}
		}
		return ack, nil
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveRaw(c, false)
		}
	}()
	fmt.Printf("READY %s %s\n", m.Addrs()[0], ln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// startBenchPeer re-executes the test binary as a benchmark peer.
func startBenchPeer(b *testing.B, security string) (peer.AddrInfo, string) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchPeerEnv+"=1", benchPeerSecEnv+"="+security)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("bench peer: %v", err)
	}
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "READY" {
		b.Fatalf("bench peer said %q", line)
	}
	a, err := ma.NewMultiaddr(f[1])
	if err != nil {
		b.Fatal(err)
	}
	ai, err := peer.AddrInfoFromP2pAddr(a)
	if err != nil {
		b.Fatal(err)
	}
	return *ai, f[2]
}

// BenchmarkThroughputProcesses is BenchmarkThroughput with the receiver in another
// process, the case a real cluster has: the same 25.7 MB tensor per iteration,
// interleaved with raw TCP to the same peer process.
func BenchmarkThroughputProcesses(b *testing.B) {
	logits := tensor.Tensor{Name: "logits", DType: tensor.Float32, Shape: []int64{1, 128, 50257}, Data: make([]byte, 4*128*50257)}
	for i := range logits.Data {
		logits.Data[i] = byte(i * 7)
	}
	for _, path := range []struct {
		name, security string
		call           func(ctx context.Context, a *Mesh, p peer.ID, req *StageRequest) ([]tensor.Tensor, error)
	}{
		{"data-tls", "tls", func(ctx context.Context, a *Mesh, p peer.ID, req *StageRequest) ([]tensor.Tensor, error) {
			return a.CallStage(ctx, p, req)
		}},
		{"libp2p-tls-yamux", "tls", func(ctx context.Context, a *Mesh, p peer.ID, req *StageRequest) ([]tensor.Tensor, error) {
			return a.callStageStream(ctx, p, req)
		}},
		{"libp2p-noise-yamux", "noise", func(ctx context.Context, a *Mesh, p peer.ID, req *StageRequest) ([]tensor.Tensor, error) {
			return a.callStageStream(ctx, p, req)
		}},
	} {
		b.Run(path.name, func(b *testing.B) {
			ai, rawAddr := startBenchPeer(b, path.security)
			cfg := testConfig(b, b.TempDir())
			if path.security == "noise" {
				cfg.Security = SecurityNoise
			}
			a := startMesh(b, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if err := a.Connect(ctx, ai); err != nil {
				b.Fatal(err)
			}
			raw := dialRaw(b, rawAddr)
			req := &StageRequest{RequestID: "bench", Model: "gpt2", Version: "1", Stage: 3, Tensors: []tensor.Tensor{logits}}
			for range 2 {
				if _, err := path.call(ctx, a, ai.ID, req); err != nil {
					b.Fatal(err)
				}
				raw.roundTrip(b, logits.Data, false)
			}
			measureThroughput(b, raw, logits.Data, func() error {
				_, err := path.call(ctx, a, ai.ID, req)
				return err
			})
		})
	}
}

// BenchmarkDecodeHopProcesses is one decode step's stage call to another process: a
// GPT-2-small hidden state of one token (1x1x768 fp32, 3 KiB) goes to a stage,
// interleaved with the same bytes over raw TCP to the same peer process. The peer
// answers at once (hot), or after keeping its core busy 10 ms as a stage holder does
// (after-compute: the caller has slept meanwhile, and a sleeping process wakes more
// slowly). added-us/op is what the mesh adds to a round trip: it is paid per remote
// stage in every generated token.
func BenchmarkDecodeHopProcesses(b *testing.B) {
	for _, c := range []struct {
		name    string
		compute time.Duration
	}{{"hot", 0}, {"after-compute", 10 * time.Millisecond}} {
		b.Run(c.name, func(b *testing.B) {
			x := tensor.FromFloat32("hidden", []int64{1, 1, 768}, make([]float32, 768))
			ai, rawAddr := startBenchPeer(b, "tls")
			a := startMesh(b, testConfig(b, b.TempDir()))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if err := a.Connect(ctx, ai); err != nil {
				b.Fatal(err)
			}
			raw := dialRaw(b, rawAddr)
			req := &StageRequest{RequestID: "bench", Model: "gpt2", Version: "1", Stage: 1, Tensors: []tensor.Tensor{x},
				Session: "s", Step: StepDecode, Pos: int(c.compute.Microseconds()), Len: 1}
			for range 20 {
				if _, err := a.CallStage(ctx, ai.ID, req); err != nil {
					b.Fatal(err)
				}
				raw.roundTrip(b, x.Data, false)
			}
			var rawT, meshT time.Duration
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				raw.roundTrip(b, x.Data, false)
				t1 := time.Now()
				if _, err := a.CallStage(ctx, ai.ID, req); err != nil {
					b.Fatal(err)
				}
				rawT += t1.Sub(t0)
				meshT += time.Since(t1) - c.compute
			}
			n := float64(b.N)
			b.ReportMetric(float64(rawT.Microseconds())/n, "raw-us/op")
			b.ReportMetric(float64(meshT.Microseconds())/n, "mesh-us/op")
			b.ReportMetric(float64((meshT-rawT).Microseconds())/n, "added-us/op")
		})
	}
}
