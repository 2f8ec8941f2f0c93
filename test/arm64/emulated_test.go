//go:build arm64emu

package arm64

import (
	"context"
	"debug/elf"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/test/harness"
)

// sysroot is where Debian's libc6-arm64-cross and libstdc++6-arm64-cross put the arm64
// dynamic loader and libraries; qemu -L resolves the guest's /lib paths under it.
const sysroot = "/usr/aarch64-linux-gnu"

// emulatedStart bounds an emulated node's start: loading ONNX Runtime and running the
// speed benchmark under qemu takes several seconds where a native node takes one.
const emulatedStart = 3 * time.Minute

// testGPT is small enough that the emulated node answers in well under a second.
var testGPT = modelgen.GPTConfig{Layers: 2, Dim: 128, Heads: 4, Vocab: 512, Context: 32, Seed: 5, Name: "gpt-arm"}

const seqLen = 8

// armBuild is the output of make build-arm64 and the emulator that runs it.
type armBuild struct {
	qemu     string
	meshnode string
	meshctl  string
	library  string
}

// arm64Build finds bin/linux-arm64 and qemu-aarch64-static, failing the test with
// what to run when one is missing.
func arm64Build(t *testing.T) armBuild {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "bin", "linux-arm64")
	b := armBuild{meshnode: filepath.Join(dir, "meshnode"), meshctl: filepath.Join(dir, "meshctl"),
		library: filepath.Join(dir, "libonnxruntime.so.1")}
	for _, p := range []string{b.meshnode, b.meshctl, b.library, filepath.Join(sysroot, "lib", "ld-linux-aarch64.so.1")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%v: run make test-arm64, which runs make setup and make build-arm64 first", err)
		}
	}
	b.qemu, err = exec.LookPath("qemu-aarch64-static")
	if err != nil {
		t.Fatalf("%v: make setup installs qemu-user-static", err)
	}
	return b
}

// command is the command line that runs the arm64 meshnode under qemu. ORT_LIB (which
// the Makefile exports, pointing at the host's amd64 library) is unset in the guest, so
// that the node finds the arm64 library beside its binary, as on a board.
//
// qemu-user 7.2 (Debian 12) passes the host's /proc/cpuinfo through to the guest, and
// the cpuinfo library inside ONNX Runtime, finding no ARM core described there,
// dereferences NULL while the library is being loaded (dlopen). So the node runs in a
// private mount namespace where /proc/cpuinfo is an ARM one (Cortex-A72, a Raspberry
// Pi 4's core) with one entry per present host CPU; that needs root.
//
// pageSize is the page size the guest sees (qemu -p): arm64 kernels run with 4 KiB,
// 16 KiB (Raspberry Pi 5, Apple silicon) or 64 KiB pages (some server and Jetson
// kernels), and the Go runtime, badger's memory maps and ONNX Runtime must not assume
// the amd64 host's 4 KiB. qemu-user 7.2 emulates 16 KiB faithfully enough to run the
// node; with 64 KiB its loading of ONNX Runtime faults, so 64 KiB is covered by the
// segment alignment TestArm64BuildIsAArch64ELF checks, not by a run.
func (b armBuild) command(t *testing.T, pageSize int) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the emulated node needs root: it runs in a private mount namespace that shows ONNX Runtime an ARM /proc/cpuinfo (qemu-user 7.2 shows the host's)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("%v: unshare comes with util-linux", err)
	}
	cpuinfo := filepath.Join(t.TempDir(), "cpuinfo")
	if err := os.WriteFile(cpuinfo, armCPUInfo(t), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{unshare, "--mount", "--propagation", "private", "sh", "-c", `mount --bind "$0" /proc/cpuinfo && exec "$@"`,
		cpuinfo, b.qemu, "-L", sysroot, "-p", strconv.Itoa(pageSize), "-U", "ORT_LIB", b.meshnode}
}

// armCPUInfo is a /proc/cpuinfo of Cortex-A72 cores numbered as the host's present CPUs.
func armCPUInfo(t *testing.T) []byte {
	t.Helper()
	raw, err := os.ReadFile("/sys/devices/system/cpu/present")
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, r := range strings.Split(strings.TrimSpace(string(raw)), ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		if !isRange {
			hi = lo
		}
		first, err1 := strconv.Atoi(lo)
		last, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil {
			t.Fatalf("cannot parse /sys/devices/system/cpu/present: %q", raw)
		}
		for cpu := first; cpu <= last; cpu++ {
			out = fmt.Appendf(out, "processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"+
				"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n", cpu)
		}
	}
	return out
}

// largestPage is the largest page size of an arm64 Linux kernel (64 KiB): a loadable
// segment aligned to less cannot be mapped there.
const largestPage = 64 << 10

// TestArm64BuildIsAArch64ELF: make build-arm64 leaves 64-bit little-endian aarch64
// executables and the arm64 ONNX Runtime library beside them, all with their loadable
// segments aligned for 64 KiB pages.
func TestArm64BuildIsAArch64ELF(t *testing.T) {
	b := arm64Build(t)
	for _, c := range []struct {
		path string
		typ  elf.Type
	}{{b.meshnode, elf.ET_EXEC}, {b.meshctl, elf.ET_EXEC}, {b.library, elf.ET_DYN}} {
		f, err := elf.Open(c.path)
		if err != nil {
			t.Fatalf("%s: %v", c.path, err)
		}
		if f.Machine != elf.EM_AARCH64 || f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB {
			t.Errorf("%s: %v %v %v, want EM_AARCH64 ELFCLASS64 ELFDATA2LSB", c.path, f.Machine, f.Class, f.Data)
		}
		// A Go executable with cgo is ET_EXEC or ET_DYN (PIE) depending on the linker's
		// default; the library must be a shared object either way.
		if c.typ == elf.ET_DYN && f.Type != elf.ET_DYN {
			t.Errorf("%s: type %v, want a shared object", c.path, f.Type)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_LOAD && (p.Align < largestPage || (p.Vaddr-p.Off)%largestPage != 0) {
				t.Errorf("%s: a LOAD segment (vaddr %#x, offset %#x) is aligned to %#x, not for 64 KiB pages", c.path, p.Vaddr, p.Off, p.Align)
			}
		}
		if c.path == b.meshnode {
			interp := f.Section(".interp")
			if interp == nil {
				t.Errorf("%s has no program interpreter: built without cgo, so it cannot dlopen ONNX Runtime", c.path)
			}
		}
		f.Close()
	}
}

func writeModel(t *testing.T, dir, name string) (string, int64) {
	t.Helper()
	return harness.WriteGPT(t, testGPT, dir, name)
}

// inputs returns request seq's token ids.
func inputs(t *testing.T, seq int) []tensor.Tensor {
	t.Helper()
	return harness.GPTInputs(t, testGPT, seqLen, seq)
}

// logits asks cl for model's output on in through KServe v2 with binary tensors.
func logits(cl *client.Client, model string, in []tensor.Tensor) ([]float32, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := cl.Infer(ctx, model, &wire.Request{Inputs: in, BinaryOutputs: true}, client.InferOptions{BinaryInputs: true})
	if err != nil {
		return nil, err
	}
	if len(resp.Outputs) != 1 {
		return nil, fmt.Errorf("%d outputs, want 1", len(resp.Outputs))
	}
	return resp.Outputs[0].Float32s()
}

// maxAbsDiff returns the largest |a[i]-b[i]|, or +Inf when the lengths differ.
func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	worst := 0.0
	for i := range a {
		worst = max(worst, math.Abs(float64(a[i])-float64(b[i])))
	}
	return worst
}

// soloNode starts one meshnode serving modelDir alone and returns its admin client.
func soloNode(t *testing.T, name string, command []string, modelDir string) *client.Client {
	t.Helper()
	dataDir := filepath.Join(t.TempDir(), name)
	args := append(command[1:len(command):len(command)], "--data-dir", dataDir, "--model-dir", modelDir,
		"--http", "127.0.0.1:0", "--name", name, "--accel", "cpu", "--threads", "1", "--log-format", "json")
	proc := harness.StartProc(t, harness.ProcSpec{Name: name, Path: command[0], Args: args})
	addr, err := harness.ReadAddrFile(proc, filepath.Join(dataDir, harness.HTTPAddrFile), emulatedStart)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), emulatedStart)
	defer cancel()
	if err := harness.WaitHTTPReady(ctx, addr, proc); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	token, err := os.ReadFile(filepath.Join(dataDir, harness.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(addr, client.WithToken(string(token)))
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// TestEmulatedNodeAnswersLikeNative: the arm64 meshnode under qemu, with 16 KiB pages
// (a Raspberry Pi 5's kernel), serves a model alone, says it is linux/arm64, and its
// KServe v2 answers equal the native node's within 1e-5.
func TestEmulatedNodeAnswersLikeNative(t *testing.T) {
	b := arm64Build(t)
	modelDir := t.TempDir()
	writeModel(t, modelDir, "gpt")
	native := soloNode(t, "native", []string{harness.MeshnodeBinary(t)}, modelDir)
	emulated := soloNode(t, "emulated", b.command(t, 16<<10), modelDir)

	for _, c := range []struct {
		cl   *client.Client
		want string
	}{{native, runtime.GOOS + "/" + runtime.GOARCH}, {emulated, "linux/arm64"}} {
		nodes, err := c.cl.Nodes(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) != 1 || nodes[0].Platform != c.want {
			t.Fatalf("%s reports %+v, want one node on %s", c.cl.BaseURL(), nodes, c.want)
		}
	}
	for seq := range 3 {
		in := inputs(t, seq)
		want, err := logits(native, "gpt", in)
		if err != nil {
			t.Fatalf("native: %v", err)
		}
		got, err := logits(emulated, "gpt", in)
		if err != nil {
			t.Fatalf("emulated: %v", err)
		}
		if d := maxAbsDiff(got, want); d > 1e-5 {
			t.Fatalf("request %d: arm64 logits differ from amd64 by up to %g (%d values)", seq, d, len(want))
		}
		t.Logf("request %d: %d logits, arm64 and amd64 agree within %g", seq, len(want), maxAbsDiff(got, want))
	}
}
