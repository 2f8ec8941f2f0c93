package main

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sample is `go test -bench` output as it appears with GOMAXPROCS=2: custom metrics,
// -benchmem columns, a result whose numbers arrive on a later line because a child
// process wrote to stderr while the benchmark ran, b.Log lines, a failure, and a
// sub-benchmark whose own name ends in "-2".
const sample = `goos: linux
goarch: amd64
pkg: github.com/layermesh/layermesh/mesh
cpu: AMD EPYC
BenchmarkThroughput/data-tls-2         	      20	  56789012 ns/op	 452.60 MB/s	      1234 raw-MB/s	       987.5 mesh-MB/s	         0.8003 ratio	    1048576 B/op	      12 allocs/op
BenchmarkThroughput/data-tls-2         	      20	  56000000 ns/op	         0.7 ratio
BenchmarkInfer/Direct-2                	time=2026-11-27T10:00:00Z level=INFO msg="model loaded" component=node
       8	 251234567 ns/op
BenchmarkStageRPC/threads-2-2          	    1000	      1500 ns/op	        -3 added-us/op
--- BENCH: BenchmarkInfer
    bench_test.go:70: built gpt2-small (124439808 params) in 2.5s
    bench_test.go:80: intra-op threads 2; model loaded in 6s
BenchmarkLeaderFailover-2              	       8	1.234e+09 ns/op	      1234 ms/failover
--- FAIL: BenchmarkBroken-2
    bench_test.go:12: peer did not answer
PASS
goleak: Errors on successful test run: found unexpected goroutines:
[Goroutine 2843 in state chan receive, with github.com/hashicorp/memberlist.(*Memberlist).probeNode on top of the stack:
]
FAIL	github.com/layermesh/layermesh/mesh	4.785s
`

func TestParse(t *testing.T) {
	out, err := Parse(strings.NewReader(sample), 2)
	if err != nil {
		t.Fatal(err)
	}
	if out.Package != "github.com/layermesh/layermesh/mesh" {
		t.Errorf("package %q", out.Package)
	}
	tp := out.Results["BenchmarkThroughput/data-tls"]
	if len(tp) != 2 {
		t.Fatalf("data-tls runs: %d, want 2 (results: %v)", len(tp), out.Results)
	}
	want := map[string]float64{"ns/op": 56789012, "MB/s": 452.6, "raw-MB/s": 1234, "mesh-MB/s": 987.5, "ratio": 0.8003, "B/op": 1048576, "allocs/op": 12}
	for unit, v := range want {
		if got := tp[0].Metrics[unit]; got != v {
			t.Errorf("data-tls %s = %v, want %v", unit, got, v)
		}
	}
	if tp[0].Iterations != 20 || tp[1].Metrics["ratio"] != 0.7 {
		t.Errorf("data-tls runs: %+v", tp)
	}
	if d := out.Results["BenchmarkInfer/Direct"]; len(d) != 1 || d[0].Iterations != 8 || d[0].Metrics["ns/op"] != 251234567 {
		t.Errorf("result after interleaved stderr: %+v", d)
	}
	if s := out.Results["BenchmarkStageRPC/threads-2"]; len(s) != 1 || s[0].Metrics["added-us/op"] != -3 {
		t.Errorf("sub-benchmark ending in -2: %+v (results: %v)", s, out.Results)
	}
	if f := out.Results["BenchmarkLeaderFailover"]; len(f) != 1 || f[0].Metrics["ns/op"] != 1.234e9 || f[0].Metrics["ms/failover"] != 1234 {
		t.Errorf("failover: %+v", f)
	}
	if logs := out.Logs["BenchmarkInfer"]; len(logs) != 2 || !strings.Contains(logs[1], "intra-op threads 2") {
		t.Errorf("logs: %q", logs)
	}
	if len(out.Failures) != 4 || !strings.Contains(out.Failures[1], "peer did not answer") ||
		!strings.HasPrefix(out.Failures[2], "goleak: ") || !strings.HasPrefix(out.Failures[3], "FAIL\tgithub.com") {
		t.Errorf("failures: %q", out.Failures)
	}
	if len(out.Results) != 4 {
		t.Errorf("%d benchmarks, want 4: %v", len(out.Results), out.Results)
	}
}

// TestParseOneProc: with GOMAXPROCS=1 go test adds no suffix, and none is cut.
func TestParseOneProc(t *testing.T) {
	out, err := Parse(strings.NewReader("BenchmarkORTRun/threads-2 \t 100\t 5000 ns/op\n"), 1)
	if err != nil {
		t.Fatal(err)
	}
	if r := out.Results["BenchmarkORTRun/threads-2"]; len(r) != 1 || r[0].Metrics["ns/op"] != 5000 {
		t.Errorf("results: %v", out.Results)
	}
}

// TestParseBuildFailure: a package that does not compile prints no result, and the
// compiler's lines say why.
func TestParseBuildFailure(t *testing.T) {
	const text = "# github.com/layermesh/layermesh/node\n" +
		"node/router.go:166:11: undefined: RouterMetrics\n" +
		"FAIL\tgithub.com/layermesh/layermesh/api [build failed]\n" +
		"FAIL\n"
	out, err := Parse(strings.NewReader(text), 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Results) != 0 || len(out.Failures) != 2 || !strings.Contains(out.Failures[0], "undefined: RouterMetrics") {
		t.Errorf("results %v, failures %q", out.Results, out.Failures)
	}
}

func TestParseMalformed(t *testing.T) {
	_, err := Parse(strings.NewReader("BenchmarkX-2 \t 99999999999999999999\t 5 ns/op\n"), 2)
	if !errors.Is(err, errBadLine) {
		t.Fatalf("got %v, want errBadLine", err)
	}
}

func TestTargetsAndMedians(t *testing.T) {
	jobs := map[string]*Job{
		"j": {ID: "j", Output: &Output{Results: map[string][]Run{
			"B": {{Metrics: map[string]float64{"ratio": 0.4}}, {Metrics: map[string]float64{"ratio": 0.6}}, {Metrics: map[string]float64{"ratio": 0.55}}},
		}}},
		"failed": {ID: "failed", Exit: 1, Output: &Output{Results: map[string][]Run{}}},
	}
	v := lookup(jobs, "j", "B", "ratio", 0)
	if v.median != 0.55 || v.min != 0.4 || v.max != 0.6 || v.n != 3 {
		t.Fatalf("value %+v", v)
	}
	ge := &Target{Op: ">=", Value: 0.5}
	if verdict(ge, v) != "yes" || verdict(&Target{Op: "<", Value: 0.5}, v) != "**no**" {
		t.Errorf("verdicts on %v", v)
	}
	// A miss that prints as the target itself gives the digits that miss it.
	if got := verdict(&Target{Op: ">=", Value: 1.6}, value{median: 1.5991, n: 1}); got != "**no** (1.599)" {
		t.Errorf("a miss printed as its target: %q", got)
	}
	if m := lookup(jobs, "failed", "B", "ratio", 0); m.missing != "job failed" || verdict(ge, m) != "**not measured**" {
		t.Errorf("failed job: %+v", m)
	}
	if m := lookup(jobs, "absent", "B", "ratio", 0); m.missing != "not run" {
		t.Errorf("absent job: %+v", m)
	}
	if s := lookup(jobs, "j", "B", "ratio", 100); math.Abs(s.median-55) > 1e-9 {
		t.Errorf("scaled median %v", s.median)
	}
}

// TestRenderPending: a section whose jobs did not run says so, and no figure of it
// appears as measured.
func TestRenderPending(t *testing.T) {
	jobs := map[string]*Job{"j": {ID: "j", Command: "go test -bench X ./x/", Output: &Output{Results: map[string][]Run{
		"BenchmarkX": {{Iterations: 3, Metrics: map[string]float64{"ratio": 0.7}}},
		"BenchmarkY": {{Iterations: 5, Metrics: map[string]float64{"ns/op": 12}}},
	}}}}
	sections := []Section{
		{Title: "Thing", Jobs: []string{"j"}, Figures: []Figure{{Job: "j", Bench: "BenchmarkX", Metric: "ratio", Label: "x ratio", Target: &Target{Op: ">=", Value: 0.5}}}},
		{Title: "Later", Jobs: []string{"k"}, Pending: "No benchmark yet."},
	}
	s := renderTestReport(jobs, sections, previousReport{})
	reportHas(t, s,
		"| Thing | x ratio | 0.7 | >= 0.5 | yes |",
		"| Later | | not yet measured | | |",
		"**Not yet measured.** No benchmark yet.",
		"    go test -bench X ./x/",
		"| j | BenchmarkY | 5 | 12 ns/op |",
	)
}

// TestLogFigures reads the failover line TestSplitStageHolderKilled logs (go test -v),
// and drops a line that timed no failover.
func TestLogFigures(t *testing.T) {
	text := "=== RUN   TestSplitStageHolderKilled\n" +
		"    split_test.go:402: failover: 3 requests in flight at the kill; kill to answer: first 412 ms, p50 530 ms, max 611 ms; added latency p50 380 ms, max -2 ms\n" +
		"    split_test.go:402: failover: 0 requests in flight at the kill; kill to answer: first 0 ms, p50 0 ms, max 0 ms; added latency p50 0 ms, max 0 ms\n" +
		"--- PASS: TestSplitStageHolderKilled (61.20s)\n"
	var lf LogFigure
	for _, f := range logFigures {
		if f.Name == "TestSplitStageHolderKilled" {
			lf = f
		}
	}
	if lf.Pattern == nil {
		t.Fatal("no log figure for TestSplitStageHolderKilled")
	}
	out := &Output{Results: map[string][]Run{}}
	if err := extractLogFigures(text, lf, out); err != nil {
		t.Fatal(err)
	}
	runs := out.Results["TestSplitStageHolderKilled"]
	if len(runs) != 1 {
		t.Fatalf("runs %+v", runs)
	}
	want := map[string]float64{"in-flight": 3, "first-ms": 412, "p50-ms": 530, "max-ms": 611, "added-p50-ms": 380, "added-max-ms": -2}
	for k, v := range want {
		if runs[0].Metrics[k] != v {
			t.Errorf("%s = %v, want %v", k, runs[0].Metrics[k], v)
		}
	}
}

// TestGenerationFailoverLogFigures reads the stall line TestGenerationAcrossMeshnodes
// logs (go test -v) as the exact format of its t.Logf.
func TestGenerationFailoverLogFigures(t *testing.T) {
	text := "=== RUN   TestGenerationAcrossMeshnodes\n" +
		"    gen_test.go:360: " + fmt.Sprintf("generation failover: stall %.0f ms (longest wait for a token after the kill; kill to the next token %.0f ms; usual gap between tokens %.1f ms)", 1234.0, 1190.0, 21.5) + "\n" +
		"--- PASS: TestGenerationAcrossMeshnodes (90.20s)\n"
	var lf LogFigure
	for _, f := range logFigures {
		if f.Name == "TestGenerationAcrossMeshnodes" {
			lf = f
		}
	}
	if lf.Pattern == nil {
		t.Fatal("no log figure for TestGenerationAcrossMeshnodes")
	}
	out := &Output{Results: map[string][]Run{}}
	if err := extractLogFigures(text, lf, out); err != nil {
		t.Fatal(err)
	}
	runs := out.Results["TestGenerationAcrossMeshnodes"]
	if len(runs) != 1 {
		t.Fatalf("runs %+v", runs)
	}
	want := map[string]float64{"stall-ms": 1234, "next-token-ms": 1190, "usual-gap-ms": 21.5}
	for k, v := range want {
		if runs[0].Metrics[k] != v {
			t.Errorf("%s = %v, want %v", k, runs[0].Metrics[k], v)
		}
	}
}

// compressSample is BenchmarkGPT2Small's output as it prints it with GOMAXPROCS=2:
// sub-benchmarks two levels deep, the figures of compressing beside the interleaved
// latencies, and a sub-benchmark's log.
const compressSample = `pkg: github.com/layermesh/layermesh/compress
BenchmarkGPT2Small/1x128/int8-2         	      10	 951000000 ns/op	         0.2651 size-ratio	        11.2 compress-s	         1.61 peak-rss/model	         1.20 peak-heap/model	         0.9805 top1-agree	       440.0 fp32-ms	       505.0 ms	         1.148 ratio	         0.871 speedup
BenchmarkGPT2Small/1x128/int4-2         	      10	 951000000 ns/op	         0.1612 size-ratio	        34.0 compress-s	         2.71 peak-rss/model	         0.8594 top1-agree	         1.2 ratio
BenchmarkGPT2Small/1x128/dynamic-2      	      10	 701000000 ns/op	         0.2601 size-ratio	         8.0 compress-s	         1.50 peak-rss/model	         0.9102 top1-agree	       440.0 fp32-ms	       270.0 ms	         0.6136 ratio
BenchmarkGPT2Small/decode/int4-2        	      10	 900000000 ns/op	        60.0 fp32-ms	        63.0 ms	         1.05 ratio
--- BENCH: BenchmarkGPT2Small/1x128/int8-2
    bench_test.go:300: 48 MatMul -> MatMulNBits, 1 Gemm -> MatMulNBits, 1 Gather -> GatherBlockQuantized, 0 kept float32
PASS
`

// TestRenderCompressionSection: the compression section reads each target from the
// right sub-benchmark, scales top-1 agreement to a percentage, and says which targets
// are not met.
func TestRenderCompressionSection(t *testing.T) {
	out, err := Parse(strings.NewReader(compressSample), 2)
	if err != nil {
		t.Fatal(err)
	}
	jobs := map[string]*Job{"compress-gpt": {ID: "compress-gpt", Command: "go test -bench GPT2Small ./compress/", Output: out}}
	s := renderTestReport(jobs, reportSections, previousReport{})
	const title = "| Compression of the 12 x 768 GPT | "
	reportHas(t, s,
		title+"int8 weight-only: size / float32 | 0.265 x | <= 0.3 x | yes |",
		title+"int4 weight-only: size / float32 | 0.161 x | <= 0.2 x | yes |",
		title+"dynamic int8, 1x128: latency / float32 | 0.614 x | <= 0.7 x | yes |",
		title+"int4 weight-only, decode step 1x1 after 127: latency / float32 | 1.05 x | < 1 x | **no** |",
		title+"int4: time to compress | 34 s | < 30 s | **no** |",
		title+"int4: peak resident set of compressing / model | 2.71 x | < 2.5 x | **no** |",
		title+"int8: next-token top-1 agreement with float32 | 98.0 % | >= 95 % | yes |",
		title+"int4: next-token top-1 agreement with float32 | 85.9 % | recorded | — |",
		"| Compression of the Fashion-MNIST CNN | | not yet measured | | |",
		"Log of BenchmarkGPT2Small/1x128/int8 in `compress-gpt`:\n\n    bench_test.go:300: 48 MatMul -> MatMulNBits, 1 Gemm",
	)
	if strings.Contains(s, "Other results of this run") {
		t.Errorf("a compression result is in no section:\n%s", s)
	}
}

// TestRenderKeepsEarlierSections: a rerun of some jobs keeps, from the report it
// replaces, the sections (and their summary rows) whose jobs did not run this time,
// and re-renders the ones that did; a section the earlier report had not measured
// stays not measured, and one with no figure to summarise gets no summary row.
func TestRenderKeepsEarlierSections(t *testing.T) {
	earlier := strings.Join([]string{
		"# layermesh benchmarks", "", "## Summary", "",
		"| section | figure | value | target | met |", "|---|---|---|---|---|",
		"| Thing | x ratio | 0.1 | >= 0.5 | **no** |",
		"| Kept | y speedup | 1.7 x | >= 1.6 x | yes |",
		"| Later | | not yet measured | | |", "",
		"## Thing", "", "old thing text", "",
		"## Kept", "", "kept text with its figures", "",
		"## Later", "", "**Not yet measured.** No benchmark yet.", "",
		"## Quiet", "", "quiet text, recorded figures only", "",
	}, "\n")
	path := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	if err := os.WriteFile(path, []byte(earlier), 0o644); err != nil {
		t.Fatal(err)
	}
	jobs := map[string]*Job{"j": {ID: "j", Command: "go test -bench X ./x/", Output: &Output{Results: map[string][]Run{
		"BenchmarkX": {{Iterations: 3, Metrics: map[string]float64{"ratio": 0.7}}},
	}}}}
	sections := []Section{
		{Title: "Thing", Jobs: []string{"j"}, Figures: []Figure{{Job: "j", Bench: "BenchmarkX", Metric: "ratio", Label: "x ratio", Target: &Target{Op: ">=", Value: 0.5}}}},
		{Title: "Kept", Jobs: []string{"k"}},
		{Title: "Later", Jobs: []string{"l"}, Pending: "No benchmark yet."},
		{Title: "Quiet", Jobs: []string{"q"}},
	}
	s := renderTestReport(jobs, sections, readPrevious(path))
	reportHas(t, s,
		"| Thing | x ratio | 0.7 | >= 0.5 | yes |",
		"| Kept | y speedup | 1.7 x | >= 1.6 x | yes |",
		"| Later | | not yet measured | | |",
		"## Kept\n\nkept text with its figures\n",
		"**Not yet measured.** No benchmark yet.",
		"## Quiet\n\nquiet text, recorded figures only\n",
	)
	for _, stale := range []string{"old thing text", "| 0.1 |", "| Quiet |"} {
		if strings.Contains(s, stale) {
			t.Errorf("report has %q: a rerun section's old figure, or a row for a section with none", stale)
		}
	}
}

// renderTestReport renders a report of jobs and sections on a fixed test machine.
func renderTestReport(jobs map[string]*Job, sections []Section, prev previousReport) string {
	var buf bytes.Buffer
	render(&buf, Machine{CPU: "test", Cores: 2}, RunInfo{Procs: 2}, jobs, sections, prev)
	return buf.String()
}

// reportHas fails t for each of wants that the report s lacks.
func reportHas(t *testing.T, s string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
}
