package partition

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/layermesh/layermesh/partition/modelgen"
)

// Environment of the child process BenchmarkPartitionGPTLarge starts, so that the
// peak RSS it measures is the partitioner's alone, not the model generator's.
const (
	envChildModel = "PARTITION_BENCH_CHILD_MODEL"
	envChildOut   = "PARTITION_BENCH_CHILD_OUT"
)

func TestMain(m *testing.M) {
	if model := os.Getenv(envChildModel); model != "" {
		os.Exit(benchChild(model, os.Getenv(envChildOut)))
	}
	// Extract writes stages on worker goroutines; none may outlive the call.
	goleak.VerifyTestMain(m)
}

// benchChild partitions model into 3 stages in outDir: Load, Analyze, Plan, Extract.
func benchChild(model, outDir string) int {
	_, err := Partition(model, outDir, Options{
		InputShapes: map[string][]int64{modelgen.GPTInput: {1, 128}},
		Devices:     UniformDevices(3, 1<<40, 1e9),
		Plan:        PlanOptions{Stages: 3},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The child's own high-water mark. (wait4's ru_maxrss would not do: Linux folds
	// the parent's RSS at fork into it, and the parent just generated the model.)
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			fmt.Println(strings.Join(strings.Fields(line), " "))
		}
	}
	return 0
}

// BenchmarkPartitionGPTLarge analyses and writes 3 stages of the 24 x 1024 GPT
// (about 1.4 GB) in a child process and reports its wall time and peak RSS. The model
// is generated once into $PARTITION_BENCH_DIR (default: the system temp folder).
//
//	go test -run '^$' -bench PartitionGPTLarge -benchtime 1x ./partition/
func BenchmarkPartitionGPTLarge(b *testing.B) {
	benchPartition(b, modelgen.GPTLarge, "gpt-large.onnx", false)
}

// BenchmarkPartitionGPTXL does the same for a 36 x 1280 GPT (GPT-2 large's shape,
// about 3.1 GB: over protobuf's 2 GiB, so its weights are external data), then checks
// the stage chain against the whole model in ONNX Runtime.
//
//	go test -run '^$' -bench PartitionGPTXL -benchtime 1x -timeout 30m ./partition/
func BenchmarkPartitionGPTXL(b *testing.B) {
	cfg := modelgen.GPTConfig{Layers: 36, Dim: 1280, Heads: 20, Vocab: 50257, Context: 1024, Seed: 1, Name: "gpt-xl"}
	benchPartition(b, cfg, "gpt-xl.onnx", true)
}

func benchPartition(b *testing.B, cfg modelgen.GPTConfig, file string, verify bool) {
	dir := os.Getenv("PARTITION_BENCH_DIR")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "layermesh-partition-bench")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	model := filepath.Join(dir, file)
	if _, err := os.Stat(model); err != nil {
		mp, err := cfg.Build()
		if err != nil {
			b.Fatal(err)
		}
		if err := modelgen.WriteFile(mp, model); err != nil {
			b.Fatal(err)
		}
	}
	st, err := os.Stat(model)
	if err != nil {
		b.Fatal(err)
	}
	size := st.Size()
	if data, err := os.Stat(model + ".data"); err == nil {
		size += data.Size()
	}
	b.ResetTimer()
	var worstRSS int64
	var total time.Duration
	var out string
	for i := 0; i < b.N; i++ {
		out = b.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envChildModel+"="+model, envChildOut+"="+out)
		cmd.Stderr = os.Stderr
		start := time.Now()
		stdout, err := cmd.Output()
		if err != nil {
			b.Fatalf("child: %v", err)
		}
		total += time.Since(start)
		var kib int64
		if _, err := fmt.Sscanf(strings.TrimSpace(string(stdout)), "VmHWM: %d kB", &kib); err != nil {
			b.Fatalf("child reported %q: %v", stdout, err)
		}
		worstRSS = max(worstRSS, kib*1024)
	}
	b.StopTimer()
	b.ReportMetric(total.Seconds()/float64(b.N), "s/partition")
	b.ReportMetric(float64(worstRSS)/(1<<20), "peak-RSS-MiB")
	b.ReportMetric(float64(worstRSS)/float64(size), "peak-RSS/model")
	b.ReportMetric(float64(size)/(1<<20), "model-MiB")
	if !verify {
		return
	}
	man, err := ReadManifest(filepath.Join(out, ManifestFile))
	if err != nil {
		b.Fatal(err)
	}
	inputs, err := cfg.ExampleInputs(1, 8, 1)
	if err != nil {
		b.Fatal(err)
	}
	rep, err := Verify(b.Context(), ortBackend(b), model, man, out, inputs)
	if err != nil {
		b.Fatal(err)
	}
	for _, o := range rep.Outputs {
		b.Logf("verify %s: max abs %.3g, relative to scale %.3g, bit-identical %v", o.Name, o.MaxAbs, o.MaxRelToScale, o.Exact)
		if o.MaxRelToScale > chainTolerance {
			b.Errorf("chain differs from the whole model: %+v", o)
		}
	}
}
