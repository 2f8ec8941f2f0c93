package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/api/wire"
)

// TestNodeTableShowsAccelerators: the ACCEL column names the provider and the GPU; a
// node without GPU memory to report shows "—" in the GPU column.
func TestNodeTableShowsAccelerators(t *testing.T) {
	var buf bytes.Buffer
	tw := newTable(&buf)
	nodeTable(tw, []wire.NodeStatus{
		{Name: "gpu-node", State: "alive", Accel: "cuda (NVIDIA H200)", GPUMemTotal: 150 << 30, GPUMemFree: 140 << 30, Cores: 16},
		{Name: "cpu-node", State: "alive", Accel: "cpu", Cores: 4},
	})
	if err := tw.Flush(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "ACCEL") || !strings.Contains(lines[0], "GPU MEM FREE/TOTAL") {
		t.Fatalf("table:\n%s", buf.String())
	}
	if gpuRow := lines[1]; !strings.Contains(gpuRow, "cuda (NVIDIA H200)") || !strings.Contains(gpuRow, humanBytes(140<<30)+"/"+humanBytes(150<<30)) {
		t.Errorf("GPU node row lacks its device or memory: %q", gpuRow)
	}
	if cpuRow := lines[2]; !strings.Contains(cpuRow, " cpu ") || !strings.Contains(cpuRow, "—") {
		t.Errorf("CPU node row must show cpu and — for GPU memory: %q", cpuRow)
	}
}
