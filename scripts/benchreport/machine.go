package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"

	ort "github.com/yalue/onnxruntime_go"
)

// Machine describes where the figures were measured, for the report's header.
type Machine struct {
	CPU        string
	Cores      int
	MemoryGiB  float64
	Kernel     string
	GoVersion  string
	ORTVersion string
	// Commit is HEAD when the report was written; the run's own commit, from
	// run.json, takes its place when bench.sh recorded one.
	Commit string
}

// probeMachine reads the machine's description from /proc, uname, go and git. A part
// that cannot be read says so instead of failing the report.
func probeMachine(ortLib string) Machine {
	m := Machine{
		CPU:        cpuModel(),
		Cores:      runtime.NumCPU(),
		MemoryGiB:  memTotalGiB(),
		Kernel:     command("uname", "-srm"),
		GoVersion:  command("go", "env", "GOVERSION"),
		ORTVersion: ortVersion(ortLib),
		Commit:     command("git", "rev-parse", "--short=12", "HEAD"),
	}
	if dirty := command("git", "status", "--porcelain", "--untracked-files=no"); dirty != "" && !strings.HasPrefix(dirty, "unknown") {
		m.Commit += " (with uncommitted changes)"
	}
	return m
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func memTotalGiB() float64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "MemTotal:" {
			kib, _ := strconv.ParseFloat(f[1], 64)
			return kib / (1 << 20)
		}
	}
	return 0
}

func command(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return fmt.Sprintf("unknown (%s: %v)", name, err)
	}
	return strings.TrimSpace(string(out))
}

// ortVersion asks the ONNX Runtime library the benchmarks loaded for its own version,
// rather than trusting the version the setup script meant to fetch.
func ortVersion(lib string) string {
	if lib == "" {
		return "unknown (no -ort-lib given)"
	}
	ort.SetSharedLibraryPath(lib)
	if err := ort.InitializeEnvironment(); err != nil {
		return fmt.Sprintf("unknown (%v)", err)
	}
	defer ort.DestroyEnvironment()
	return ort.GetVersion()
}
