package main

import (
	"bytes"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort/gpu"
)

func TestAccelFlags(t *testing.T) {
	none := func(string) string { return "" }
	c, err := loadConfig([]string{"--accel", "cuda", "--ep-lib", "cuda=/opt/ort/libonnxruntime_providers_cuda.so",
		"--ep-option", "cuda:use_tf32=0", "--ep-option", "cuda:device_id=1", "--gpu-mem-budget", "40GiB"}, none, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	oc := backendConfig(c, nil)
	if oc.Provider != accel.ProviderCUDA || oc.PluginLibraries[accel.ProviderCUDA] != "/opt/ort/libonnxruntime_providers_cuda.so" ||
		oc.ProviderOptions[accel.ProviderCUDA]["use_tf32"] != "0" || oc.ProviderOptions[accel.ProviderCUDA]["device_id"] != "1" ||
		c.GPUMemBudget != 40<<30 {
		t.Fatalf("config %+v gives backend config %+v", c, oc)
	}
	for _, args := range [][]string{
		{"--ep-lib", "cuda"},
		{"--ep-lib", "vulkan=/x.so"},
		{"--ep-option", "use_tf32=0"},
		{"--ep-option", "cpu:x=1"},
		{"--gpu-mem-budget", "lots"},
	} {
		if _, err := loadConfig(args, none, io.Discard); err == nil {
			t.Errorf("%v must be a usage error", args)
		}
	}
}

func TestStageBudgetFollowsTheProvider(t *testing.T) {
	h200 := []gpu.Device{{Name: "NVIDIA H200", TotalBytes: 150e9, FreeBytes: 140e9}}
	cases := []struct {
		name      string
		p         accel.Provider
		mem, gmem byteSize
		gpus      []gpu.Device
		want      int64
	}{
		{"cpu keeps the host budget", accel.ProviderCPU, 2 << 30, 40 << 30, h200, 2 << 30},
		{"cuda offers the GPU budget", accel.ProviderCUDA, 2 << 30, 40 << 30, h200, 40 << 30},
		{"cuda defaults to 90% of free GPU memory", accel.ProviderCUDA, 2 << 30, 0, h200, 126e9},
		{"tensorrt without NVML falls back to the host budget", accel.ProviderTensorRT, 2 << 30, 0, nil, 2 << 30},
		{"an explicit GPU budget holds without NVML", accel.ProviderCUDA, 0, 8 << 30, nil, 8 << 30},
	}
	for _, c := range cases {
		got, from := stageBudget(&config{MemBudget: c.mem, GPUMemBudget: c.gmem}, c.p, c.gpus)
		if got != c.want || from == "" {
			t.Errorf("%s: %d (%s), want %d", c.name, got, from, c.want)
		}
	}
}

// TestExplicitGPUProviderWithoutPlugin runs meshnode as an operator would on this
// CPU-only machine: --accel cuda must stop with an error that names the missing plugin
// library and how to provide one; an --ep-lib that is no library names that file.
func TestExplicitGPUProviderWithoutPlugin(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--accel", "cuda"}, []string{"libonnxruntime_providers_cuda.so", "--ep-lib cuda=PATH"}},
		{[]string{"--accel", "tensorrt", "--ep-lib", "tensorrt=" + filepath.Join(t.TempDir(), "libmissing.so")}, []string{"libmissing.so", "does not load"}},
	} {
		var stderr bytes.Buffer
		args := append([]string{"--data-dir", t.TempDir(), "--http", "127.0.0.1:0"}, c.args...)
		if code := run(args, io.Discard, &stderr); code != 1 {
			t.Fatalf("%v: exit %d, want 1; stderr:\n%s", c.args, code, stderr.String())
		}
		for _, w := range c.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("%v: stderr does not say %q:\n%s", c.args, w, stderr.String())
			}
		}
	}
}

// TestGoProcs: on the CPU the node's Go scheduler keeps to the cores ONNX Runtime's
// intra-op threads leave (at least 1); on a GPU it has every core; --go-procs, then
// the GOMAXPROCS environment variable, win; a negative --go-procs is a usage error.
func TestGoProcs(t *testing.T) {
	none := func(string) string { return "" }
	for _, tc := range []struct {
		args   []string
		p      accel.Provider
		cores  int
		envSet bool
		want   int
	}{
		{[]string{"--threads", "1"}, accel.ProviderCPU, 2, false, 1},
		{[]string{"--threads", "2"}, accel.ProviderCPU, 8, false, 6},
		{[]string{"--threads", "2", "--session-pool", "3"}, accel.ProviderCPU, 8, false, 2},
		{[]string{"--threads", "8"}, accel.ProviderCPU, 8, false, 1},
		{[]string{"--threads", "2"}, accel.ProviderCUDA, 8, false, 8},
		{[]string{"--threads", "2"}, accel.ProviderTensorRT, 8, false, 8},
		{[]string{"--threads", "1"}, accel.ProviderCPU, 4, true, 4},
		{[]string{"--threads", "1", "--go-procs", "3"}, accel.ProviderCPU, 4, true, 3},
	} {
		c, err := loadConfig(tc.args, none, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if got, from := goProcs(c, tc.p, tc.cores, tc.envSet); got != tc.want || from == "" {
			t.Errorf("%v, %s, %d cores, GOMAXPROCS set %v: %d (%q), want %d", tc.args, tc.p, tc.cores, tc.envSet, got, from, tc.want)
		}
	}
	// The default threads are every core, which leaves the scheduler one.
	c, err := loadConfig(nil, none, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := goProcs(c, accel.ProviderCPU, c.Threads, false); got != 1 {
		t.Errorf("default threads on %d cores: %d scheduler threads, want 1", c.Threads, got)
	}
	if _, err := loadConfig([]string{"--go-procs", "-1"}, none, io.Discard); err == nil {
		t.Error("--go-procs -1 must be a usage error")
	}
}
