package node

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/ort/gpu"
	"github.com/layermesh/layermesh/api/client"
)

// TestNodeShowsItsProvider starts a single node on the CPU provider with a GPU that
// NVML would have named: the GPU is not what the node runs on, so /metrics, GET /v2
// and /v1/nodes name the CPU provider and no GPU memory.
func TestNodeShowsItsProvider(t *testing.T) {
	b, err := ort.New(ort.Config{Provider: accel.ProviderCPU, IntraOpThreads: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("ONNX Runtime backend: %v", err)
	}
	gpus := []gpu.Device{{Index: 0, Name: "NVIDIA H200", TotalBytes: 150e9, FreeBytes: 140e9}}
	dataDir := t.TempDir()
	n, err := New(Config{Name: "acc", DataDir: dataDir, HTTPAddr: "127.0.0.1:0", Backend: b, IntraOpThreads: 1, GPUs: gpus, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	resp, err := http.Get(n.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `layermesh_accel_provider_info{device="",provider="cpu"} 1`; !strings.Contains(string(body), want) {
		t.Fatalf("/metrics lacks %s", want)
	}
	// The gauge counts the process. No generation runs beside this test and every
	// earlier one closed its sessions (TestMain checks the same at the end), so
	// nothing is held.
	if want := "layermesh_accel_held_bytes 0\n"; !strings.Contains(string(body), want) {
		t.Fatalf("/metrics lacks %q", want)
	}
	// NVML's devices are reported whatever the provider: they are the machine's.
	if want := `layermesh_gpu_memory_total_bytes{gpu="0",name="NVIDIA H200"} 1.5e+11`; !strings.Contains(string(body), want) {
		t.Fatalf("/metrics lacks %s", want)
	}
	token, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(n.URL(), client.WithToken(string(token)))
	if err != nil {
		t.Fatal(err)
	}
	md, err := c.ServerMetadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if md.Accelerator == nil || md.Accelerator.Provider != "cpu" || md.Accelerator.Device != "" || md.Accelerator.MemTotal != 0 {
		t.Fatalf("GET /v2 accelerator = %+v, want the cpu provider without a device", md.Accelerator)
	}
	st, err := c.Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 1 || st.Nodes[0].Accel != "cpu" || st.Nodes[0].GPUMemTotal != 0 {
		t.Fatalf("nodes = %+v, want one cpu node without GPU memory", st.Nodes)
	}
}

// TestGPUProviderNamesItsDevice: a node whose provider runs on the GPU names the GPU
// and its memory; one whose NVML saw nothing names only the provider.
func TestGPUProviderNamesItsDevice(t *testing.T) {
	h200 := []gpu.Device{{Name: "NVIDIA H200", TotalBytes: 150e9, FreeBytes: 140e9}}
	cases := []struct {
		p        accel.Provider
		gpus     []gpu.Device
		label    string
		meta     []string
		memTotal uint64
	}{
		{accel.ProviderCUDA, h200, "cuda (NVIDIA H200)", []string{"cuda", "NVIDIA H200"}, 150e9},
		{accel.ProviderTensorRT, h200, "tensorrt (NVIDIA H200)", []string{"tensorrt", "NVIDIA H200"}, 150e9},
		{accel.ProviderCUDA, nil, "cuda", []string{"cuda"}, 0},
		{accel.ProviderCPU, h200, "cpu", []string{"cpu"}, 0},
	}
	for _, c := range cases {
		a := accelerator(c.p, c.gpus)
		if got := accelLabel(a.Provider, a.Device); got != c.label || a.MemTotal != c.memTotal {
			t.Errorf("%s with %d GPUs: label %q mem %d, want %q %d", c.p, len(c.gpus), got, a.MemTotal, c.label, c.memTotal)
		}
		if got := accelMeta(c.p, c.gpus); strings.Join(got, "|") != strings.Join(c.meta, "|") {
			t.Errorf("%s: metadata accels %q, want %q", c.p, got, c.meta)
		}
	}
}
