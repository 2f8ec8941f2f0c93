package mesh

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	yamuxmuxer "github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-yamux/v5"
)

// rawEcho is the baseline: a plain loopback TCP connection moving the same bytes with a
// u64 length prefix, answered either with the bytes (echo) or with one byte.
type rawEcho struct {
	conn net.Conn
	r    *bufio.Reader
}

// serveRaw is the receiving end of the baseline.
func serveRaw(c net.Conn, echo bool) {
	defer c.Close()
	br := bufio.NewReaderSize(c, dataBufSize)
	var buf []byte
	for {
		var l [8]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			return
		}
		n := binary.LittleEndian.Uint64(l[:])
		if uint64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		if _, err := io.ReadFull(br, buf[:n]); err != nil {
			return
		}
		reply := []byte{1}
		if echo {
			reply = append(l[:], buf[:n]...)
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}

func newRawEcho(b *testing.B, echo bool) *rawEcho {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		serveRaw(c, echo)
	}()
	re := dialRaw(b, ln.Addr().String())
	b.Cleanup(func() {
		re.conn.Close()
		ln.Close()
		<-done
	})
	return re
}

func dialRaw(b *testing.B, addr string) *rawEcho {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return &rawEcho{conn: c, r: bufio.NewReaderSize(c, dataBufSize)}
}

func (re *rawEcho) roundTrip(b *testing.B, payload []byte, echo bool) {
	var l [8]byte
	binary.LittleEndian.PutUint64(l[:], uint64(len(payload)))
	bufs := net.Buffers{l[:], payload}
	if _, err := bufs.WriteTo(re.conn); err != nil {
		b.Fatal(err)
	}
	if !echo {
		if _, err := re.r.ReadByte(); err != nil {
			b.Fatal(err)
		}
		return
	}
	if _, err := io.ReadFull(re.r, l[:]); err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, re.r, int64(binary.LittleEndian.Uint64(l[:]))); err != nil {
		b.Fatal(err)
	}
}

func benchPair(b *testing.B, path benchPath) (*Mesh, *Mesh) {
	mk := func() *Mesh {
		cfg := testConfig(b, b.TempDir())
		cfg.Security = path.sec
		cfg.PrivateNetwork = path.pnet
		return startMesh(b, cfg)
	}
	a, c := mk(), mk()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Connect(ctx, addrInfo(b, c)); err != nil {
		b.Fatal(err)
	}
	return a, c
}

type stageCall func(ctx context.Context, a, c *Mesh, req *StageRequest) ([]tensor.Tensor, error)

func viaData(ctx context.Context, a, c *Mesh, req *StageRequest) ([]tensor.Tensor, error) {
	return a.CallStage(ctx, c.ID(), req)
}

func viaStream(ctx context.Context, a, c *Mesh, req *StageRequest) ([]tensor.Tensor, error) {
	return a.callStageStream(ctx, c.ID(), req)
}

type benchPath struct {
	name   string
	sec    Security
	pnet   bool
	call   stageCall
	window uint32 // yamux stream window; 0 keeps libp2p's default
}

var benchPaths = []benchPath{
	{name: "data-tls", sec: SecurityTLS, call: viaData},
	{name: "libp2p-tls-yamux", sec: SecurityTLS, call: viaStream},
	{name: "libp2p-noise-yamux", sec: SecurityNoise, call: viaStream},
	{name: "libp2p-tls-yamux-16MiB-window", sec: SecurityTLS, call: viaStream, window: 16 << 20},
	{name: "libp2p-tls-yamux-pnet", sec: SecurityTLS, pnet: true, call: viaStream},
}

// withYamuxWindow sets libp2p's process-wide yamux stream window for hosts created
// while it is in effect.
func withYamuxWindow(b *testing.B, window uint32) {
	if window == 0 {
		return
	}
	cfg := (*yamux.Config)(yamuxmuxer.DefaultTransport)
	old := cfg.MaxStreamWindowSize
	cfg.MaxStreamWindowSize = window
	b.Cleanup(func() { cfg.MaxStreamWindowSize = old })
}

// BenchmarkStageRPC_1x128x768 moves one GPT-2-small hidden state (384 KiB fp32) to a
// stage and back, and the same bytes over raw loopback TCP in the same run; the
// reported added-us/op is the mesh's cost over raw TCP.
func BenchmarkStageRPC_1x128x768(b *testing.B) {
	hidden := make([]float32, 128*768)
	x := tensor.FromFloat32("hidden", []int64{1, 128, 768}, hidden)
	for _, path := range benchPaths[:3] {
		b.Run(path.name, func(b *testing.B) {
			a, c := benchPair(b, path)
			c.HandleStage(func(ctx context.Context, req *StageRequest) ([]tensor.Tensor, error) {
				return req.Tensors, nil
			})
			raw := newRawEcho(b, true)
			ctx := context.Background()
			req := &StageRequest{RequestID: "bench", Model: "gpt2", Version: "1", Stage: 1, Tensors: []tensor.Tensor{x}}
			for range 5 { // warm pools and windows
				if _, err := path.call(ctx, a, c, req); err != nil {
					b.Fatal(err)
				}
				raw.roundTrip(b, x.Data, true)
			}
			var rawT, meshT time.Duration
			b.SetBytes(2 * int64(len(x.Data)))
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				raw.roundTrip(b, x.Data, true)
				t1 := time.Now()
				if _, err := path.call(ctx, a, c, req); err != nil {
					b.Fatal(err)
				}
				rawT += t1.Sub(t0)
				meshT += time.Since(t1)
			}
			n := float64(b.N)
			b.ReportMetric(float64(rawT.Microseconds())/n, "raw-us/op")
			b.ReportMetric(float64(meshT.Microseconds())/n, "mesh-us/op")
			b.ReportMetric(float64((meshT-rawT).Microseconds())/n, "added-us/op")
		})
	}
}

// BenchmarkThroughput moves one 1x128x50257 fp32 tensor (25.7 MB, GPT-2 logits) per
// iteration to a stage, interleaved with the same bytes over raw loopback TCP, and
// reports both rates and their ratio.
func BenchmarkThroughput(b *testing.B) {
	logits := tensor.Tensor{Name: "logits", DType: tensor.Float32, Shape: []int64{1, 128, 50257}, Data: make([]byte, 4*128*50257)}
	for i := range logits.Data {
		logits.Data[i] = byte(i * 7)
	}
	for _, path := range benchPaths {
		b.Run(path.name, func(b *testing.B) {
			withYamuxWindow(b, path.window)
			a, c := benchPair(b, path)
			ack := []tensor.Tensor{tensor.FromInt64("ok", []int64{1}, []int64{1})}
			c.HandleStage(func(ctx context.Context, req *StageRequest) ([]tensor.Tensor, error) {
				return ack, nil
			})
			raw := newRawEcho(b, false)
			ctx := context.Background()
			req := &StageRequest{RequestID: "bench", Model: "gpt2", Version: "1", Stage: 3, Tensors: []tensor.Tensor{logits}}
			for range 2 {
				if _, err := path.call(ctx, a, c, req); err != nil {
					b.Fatal(err)
				}
				raw.roundTrip(b, logits.Data, false)
			}
			measureThroughput(b, raw, logits.Data, func() error {
				_, err := path.call(ctx, a, c, req)
				return err
			})
		})
	}
}

// measureThroughput interleaves the baseline and the mesh path per iteration, so both
// see the same machine load, and reports both rates, their ratio and CPU per byte.
func measureThroughput(b *testing.B, raw *rawEcho, payload []byte, call func() error) {
	var rawT, meshT, rawCPU, meshCPU time.Duration
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	for range b.N {
		c0, t0 := cpuTime(), time.Now()
		raw.roundTrip(b, payload, false)
		c1, t1 := cpuTime(), time.Now()
		if err := call(); err != nil {
			b.Fatal(err)
		}
		rawT += t1.Sub(t0)
		meshT += time.Since(t1)
		rawCPU += c1 - c0
		meshCPU += cpuTime() - c1
	}
	bytes := float64(len(payload)) * float64(b.N)
	b.ReportMetric(bytes/rawT.Seconds()/1e6, "raw-MB/s")
	b.ReportMetric(bytes/meshT.Seconds()/1e6, "mesh-MB/s")
	b.ReportMetric(rawT.Seconds()/meshT.Seconds(), "ratio")
	// CPU per byte tells cost apart from contention on a shared machine, where
	// wall-clock rates swing. In-process it counts both ends; across processes only
	// the sender's.
	b.ReportMetric(float64(rawCPU.Nanoseconds())/bytes, "raw-cpu-ns/B")
	b.ReportMetric(float64(meshCPU.Nanoseconds())/bytes, "mesh-cpu-ns/B")
}

// cpuTime is the user+system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
