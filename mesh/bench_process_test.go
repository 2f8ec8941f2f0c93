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
	m.HandleStage(func(ctx context.Context, req *StageRequest) ([]tensor.Tensor, error) { return ack, nil })
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
