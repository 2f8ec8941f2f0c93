package ort

import (
	"bufio"
	"bytes"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/accel"
)

func TestEPDevicesListTheCPUProvider(t *testing.T) {
	b := newCPU(t).(*Backend)
	devs, err := b.EPDevices()
	if err != nil {
		t.Fatalf("EPDevices: %v", err)
	}
	for _, d := range devs {
		if d.EP == "CPUExecutionProvider" && d.Hardware == "cpu" {
			return
		}
	}
	t.Fatalf("GetEpDevices on the CPU core must list CPUExecutionProvider on a cpu device, got %+v", devs)
}

// loadedLibc is the C library this test process runs on, read from its own mappings.
func loadedLibc(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatalf("open maps: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if p := fields[len(fields)-1]; strings.HasPrefix(filepath.Base(p), "libc.so") {
			return p
		}
	}
	t.Fatal("libc is not mapped into this cgo test binary")
	return ""
}

func TestPluginErrors(t *testing.T) {
	newCPU(t)
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte("not a library\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path string
		want       error
		mention    string
	}{
		{"libc loads but exports no CreateEpFactories", loadedLibc(t), ErrNotPlugin, "CreateEpFactories"},
		{"a text file is no shared library", text, ErrPluginLoad, "notes.txt"},
		{"a missing file", filepath.Join(dir, "libnothing.so"), ErrPluginLoad, "libnothing.so"},
		{"a missing dependency is named", libraryNeedingMissing(t, dir), ErrPluginLoad, "libcublas_fake.so.13"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := pluginLoadError(c.path)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.mention) {
				t.Fatalf("got %v, want %v mentioning %q", err, c.want, c.mention)
			}
		})
	}
	// Through New: an explicit provider whose plugin is no plugin fails, names the
	// file, and matches both the plugin sentinel and accel's.
	_, err := New(Config{Provider: accel.ProviderCUDA, PluginLibraries: map[accel.Provider]string{accel.ProviderCUDA: loadedLibc(t)}, Logger: quietLogger()})
	if !errors.Is(err, ErrNotPlugin) || !errors.Is(err, accel.ErrProviderUnavailable) || !strings.Contains(err.Error(), "libc.so") {
		t.Fatalf("--accel cuda with libc as its plugin: got %v", err)
	}
	// Auto with a TensorRT plugin that does not load still starts, on the CPU (CUDA
	// is not available here either), and says so.
	var logs bytes.Buffer
	b, err := New(Config{Provider: accel.ProviderAuto, PluginLibraries: map[accel.Provider]string{accel.ProviderTensorRT: text}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("auto must fall back: %v", err)
	}
	if b.Provider() != accel.ProviderCPU {
		t.Skipf("a GPU provider loads on this machine (%s); the fallback is not exercised", b.Provider())
	}
	for _, want := range []string{"notes.txt", "falling back to the CPU"} {
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("auto's logs must say %q:\n%s", want, logs.String())
		}
	}
}

// libraryNeedingMissing builds a shared library linked against libcublas_fake.so.13,
// then removes that dependency, as a CUDA plugin on a machine without CUDA is.
func libraryNeedingMissing(t *testing.T, dir string) string {
	t.Helper()
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	dep := filepath.Join(dir, "libcublas_fake.so.13")
	plugin := filepath.Join(dir, "libfake_plugin.so")
	src := filepath.Join(dir, "p.c")
	if err := os.WriteFile(src, []byte("int CreateEpFactories(void) { return 0; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-shared", "-fPIC", "-o", dep, "-Wl,-soname,libcublas_fake.so.13", src},
		{"-shared", "-fPIC", "-o", plugin, src, "-Wl,--no-as-needed", dep},
	} {
		if out, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", cc, args, err, out)
		}
	}
	if err := os.Remove(dep); err != nil {
		t.Fatal(err)
	}
	return plugin
}

func TestParseProviderFlags(t *testing.T) {
	var opts ProviderOptions
	var err error
	for _, s := range []string{"cuda:use_tf32=0", "cuda:device_id=1", "tensorrt:trt_fp16_enable=1"} {
		if opts, err = ParseProviderOption(opts, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	keys, vals := opts.pairs(accel.ProviderCUDA)
	if strings.Join(keys, ",") != "device_id,use_tf32" || strings.Join(vals, ",") != "1,0" {
		t.Fatalf("cuda options: %v %v", keys, vals)
	}
	for _, bad := range []string{"use_tf32=0", "cpu:x=1", "cuda:=1", "cuda:x"} {
		if _, err := ParseProviderOption(nil, bad); err == nil {
			t.Errorf("option %q must be refused", bad)
		}
	}
	libs, err := ParsePluginLibrary(nil, "cuda=/opt/ort/libonnxruntime_providers_cuda.so")
	if err != nil || libs[accel.ProviderCUDA] != "/opt/ort/libonnxruntime_providers_cuda.so" {
		t.Fatalf("ParsePluginLibrary: %v %v", libs, err)
	}
	for _, bad := range []string{"cuda", "cuda=", "vulkan=/x.so"} {
		if _, err := ParsePluginLibrary(nil, bad); err == nil {
			t.Errorf("plugin naming %q must be refused", bad)
		}
	}
}
