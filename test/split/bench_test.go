package split

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/test/harness"
)

// The split benchmarks run real node processes on the 12 x 768 GPT (GPT-2-small
// shape, about 500 MB). Each compares the split deployment with one node serving the
// whole model the same way (a one-node cluster, one stage), measured in the same run.
// LAYERMESH_BENCH_THREADS sets the intra-op threads of every node (default 1).

func benchThreads() string {
	if v := os.Getenv("LAYERMESH_BENCH_THREADS"); v != "" {
		return v
	}
	return "1"
}

// gpt2Small writes the 12 x 768 GPT (a few seconds) into the benchmark's temp dir.
func gpt2Small(b *testing.B) (string, int64) {
	b.Helper()
	m, err := modelgen.GPT(modelgen.GPT2Small)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "gpt2.onnx")
	if err := modelgen.WriteFile(m, path); err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return path, fi.Size()
}

// pinnedBinary writes a wrapper that runs the node binary under taskset, node i on
// core i mod cores, so that each node has one core to itself.
func pinnedBinary(b *testing.B) string {
	b.Helper()
	bin := harness.MeshnodeBinary(b)
	path := filepath.Join(b.TempDir(), "pinned-node")
	script := fmt.Sprintf(`#!/bin/sh
# Pins node<N> (from --name) to core N mod the number of cores.
n=0
prev=
for a in "$@"; do
  if [ "$prev" = "--name" ]; then n=${a#node}; fi
  prev=$a
done
core=$(( n %% $(nproc) ))
exec taskset -c "$core" %q "$@"
`, bin)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		b.Fatal(err)
	}
	return path
}

type benchCluster struct {
	*harness.Cluster
	token string
}

func startBench(b *testing.B, n int, binary string, extra ...string) *benchCluster {
	b.Helper()
	c := harness.StartCluster(b, n, harness.ClusterOptions{
		Binary: binary,
		Flags: func(c *harness.Cluster, node *harness.Node) []string {
			return append(append(c.DefaultFlags(node), "--gossip-port", "0", "--threads", benchThreads(), "--mem-budget", "4294967296"), extra...)
		},
	})
	token, err := c.AdminToken()
	if err != nil {
		b.Fatal(err)
	}
	bc := &benchCluster{Cluster: c, token: token}
	harness.Eventually(b, 60*time.Second, 200*time.Millisecond, func() error {
		nodes, err := bc.client(b, 0).Nodes(context.Background())
		if err != nil {
			return err
		}
		if len(nodes) != n {
			return fmt.Errorf("%d of %d nodes", len(nodes), n)
		}
		return nil
	})
	return bc
}

func (c *benchCluster) client(b *testing.B, i int) *client.Client {
	cl, err := client.New(c.HTTPAddr(i), client.WithToken(c.token), client.WithHTTPClient(&http.Client{Timeout: 2 * time.Minute}))
	if err != nil {
		b.Fatal(err)
	}
	return cl
}

// deployAndWait uploads the model through node 0 and waits until every stage has a
// ready replica; it returns the time from the upload's start to ready.
func (c *benchCluster) deployAndWait(b *testing.B, path string, size int64, stages int) time.Duration {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := c.client(b, 0).UploadModel(ctx, "gpt", f, size, client.UploadOptions{Stages: stages, Replicas: 1}); err != nil {
		b.Fatalf("deploy: %v", err)
	}
	harness.Eventually(b, 5*time.Minute, 100*time.Millisecond, func() error {
		st, err := c.client(b, 0).Model(context.Background(), "gpt")
		if err != nil {
			return err
		}
		if !st.Ready {
			return fmt.Errorf("not ready: %s", st.Reason)
		}
		return nil
	})
	return time.Since(start)
}

// lastStageHolder is the node serving the model's last stage: the entry that keeps the
// logits from crossing the mesh.
func (c *benchCluster) lastStageHolder(b *testing.B, stages int) int {
	b.Helper()
	nodes, err := c.client(b, 0).Nodes(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	want := fmt.Sprintf("/stage%d (ready)", stages-1)
	for _, nd := range nodes {
		for _, e := range nd.Models {
			if strings.HasSuffix(e, want) {
				for i := range c.Len() {
					if c.Node(i).Name == nd.Name {
						return i
					}
				}
			}
		}
	}
	b.Fatalf("no node serves stage %d: %+v", stages-1, nodes)
	return -1
}

// blobBytesServed sums layermesh_blob_served_bytes_total over the nodes' /metrics.
func (c *benchCluster) blobBytesServed(b *testing.B) (float64, bool) {
	total, found := 0.0, false
	for i := range c.Len() {
		resp, err := http.Get(c.URL(i, "/metrics"))
		if err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "layermesh_blob_served_bytes_total "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err == nil {
					total += f
					found = true
				}
			}
		}
		resp.Body.Close()
	}
	return total, found
}

func gptRequest(b *testing.B, seq int) *wire.Request {
	in, err := modelgen.GPT2Small.ExampleInputs(1, 128, int64(seq))
	if err != nil {
		b.Fatal(err)
	}
	return &wire.Request{Inputs: in, BinaryOutputs: true}
}

func timedInfer(b *testing.B, cl *client.Client, req *wire.Request) time.Duration {
	start := time.Now()
	resp, err := cl.Infer(context.Background(), "gpt", req, client.InferOptions{BinaryInputs: true})
	d := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if len(resp.Outputs) != 1 || resp.Outputs[0].DType != tensor.Float32 {
		b.Fatalf("unexpected outputs %+v", resp.Outputs)
	}
	return d
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// BenchmarkSplitVsWhole: latency of the 3-stage
// deployment of the 12 x 768 GPT at 1x128 tokens over HTTP with the binary tensor
// extension, entered at the node holding the last stage, against a one-node cluster
// serving the whole model, requests interleaved; plus the deploy of the split: seconds
// from upload to ready and blob bytes moved between nodes.
func BenchmarkSplitVsWhole(b *testing.B) {
	path, size := gpt2Small(b)
	split := startBench(b, 3, "")
	deploySplit := split.deployAndWait(b, path, size, 3)
	moved, measured := split.blobBytesServed(b)
	whole := startBench(b, 1, "")
	whole.deployAndWait(b, path, size, 1)
	entry := split.lastStageHolder(b, 3)
	sc, wc := split.client(b, entry), whole.client(b, 0)
	for i := range 2 { // warm both: first runs allocate ORT arenas
		timedInfer(b, sc, gptRequest(b, i))
		timedInfer(b, wc, gptRequest(b, i))
	}
	var splitT, wholeT []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req := gptRequest(b, i)
		splitT = append(splitT, timedInfer(b, sc, req))
		wholeT = append(wholeT, timedInfer(b, wc, req))
	}
	b.StopTimer()
	ms, mw := median(splitT), median(wholeT)
	b.ReportMetric(float64(ms.Microseconds())/1000, "split-ms")
	b.ReportMetric(float64(mw.Microseconds())/1000, "whole-ms")
	b.ReportMetric(float64(ms)/float64(mw), "ratio")
	b.ReportMetric(deploySplit.Seconds(), "deploy-s")
	if measured {
		b.ReportMetric(moved/1e6, "deploy-moved-MB")
	}
	b.Logf("threads %s, model %d bytes: split median %v, whole median %v, ratio %.3f; deploy to 3 nodes %v, blob bytes moved %.0f (measured: %v)",
		benchThreads(), size, ms, mw, float64(ms)/float64(mw), deploySplit.Round(time.Millisecond), moved, measured)
}

// BenchmarkSplitPipelineParallel: 2 nodes, each pinned to one
// core with 1 intra-op thread, 2 stages, concurrency 4, against one node pinned to one
// core serving the whole model at the same concurrency: throughput ratio.
//
// The two sides run in alternating segments (split, whole, whole, split), so that a
// change in the shared machine's speed during the run hits both alike, and each
// segment's throughput is its steady state: the answers between the 4th completion
// and the 4th from last, over that time (harness.LoadStats.SteadyWindow), leaving out
// the pipeline filling and draining at the segment's ends. Setup garbage (the 500 MB
// model built in this process) is collected before the measured runs: this process
// is the load generator, on the cores the pinned nodes use.
func BenchmarkSplitPipelineParallel(b *testing.B) {
	const concurrency = 4
	path, size := gpt2Small(b)
	bin := pinnedBinary(b)
	split := startBench(b, 2, bin)
	split.deployAndWait(b, path, size, 2)
	whole := startBench(b, 1, bin)
	whole.deployAndWait(b, path, size, 1)
	entry := split.lastStageHolder(b, 2)
	bodies := make([]harness.InferBody, 8)
	for i := range bodies {
		body, err := harness.EncodeInfer(gptRequest(b, i), true)
		if err != nil {
			b.Fatal(err)
		}
		bodies[i] = body
	}
	run := func(addr, token string, n int) *harness.LoadStats {
		stats, err := harness.RunLoad(context.Background(), harness.LoadConfig{
			Targets: []string{addr}, Model: "gpt", Concurrency: concurrency, Requests: n, Deadline: 2 * time.Minute, Token: token,
			Body: func(seq int) (harness.InferBody, error) { return bodies[seq%len(bodies)], nil },
		})
		if err != nil {
			b.Fatal(err)
		}
		if stats.Failures > 0 {
			b.Fatalf("load: %s", stats)
		}
		return stats
	}
	run(split.HTTPAddr(entry), split.token, concurrency) // warm
	run(whole.HTTPAddr(0), whole.token, concurrency)
	runtime.GC()
	debug.FreeOSMemory()

	type side struct {
		c        *benchCluster
		addr     string
		answers  int
		span     time.Duration
		requests int
		cpu      cpuTimes
		self     time.Duration
	}
	sp := &side{c: split, addr: split.HTTPAddr(entry)}
	wh := &side{c: whole, addr: whole.HTTPAddr(0)}
	n := max(b.N, 12)
	b.ResetTimer()
	for _, s := range []*side{sp, wh, wh, sp} {
		before, self := s.c.cpuSeconds(b), selfCPU()
		stats := run(s.addr, s.c.token, n)
		s.self += selfCPU() - self
		s.cpu = s.cpu.plus(s.c.cpuSeconds(b).minus(before))
		k, span := stats.SteadyWindow(concurrency)
		if k == 0 {
			b.Fatalf("no steady window in %s", stats)
		}
		s.answers, s.span, s.requests = s.answers+k, s.span+span, s.requests+n
	}
	b.StopTimer()
	splitTP, wholeTP := float64(sp.answers)/sp.span.Seconds(), float64(wh.answers)/wh.span.Seconds()
	b.Logf("speed scores (GFLOP/s): split %s, whole %s", split.speeds(b), whole.speeds(b))
	b.Logf("entry node's stage calls during the split runs: %s", stageMeans(b, split, entry))
	b.Logf("CPU time per request (user+system): split (entry node%d) %s, load generator %.0f ms; whole %s, load generator %.0f ms",
		entry, sp.cpu.perRequest(sp.requests), 1000*sp.self.Seconds()/float64(sp.requests),
		wh.cpu.perRequest(wh.requests), 1000*wh.self.Seconds()/float64(wh.requests))
	b.ReportMetric(splitTP, "split-req/s")
	b.ReportMetric(wholeTP, "whole-req/s")
	b.ReportMetric(splitTP/wholeTP, "speedup")
	b.Logf("steady throughput over 2 segments of %d requests each: 2 pinned nodes x 2 stages %.2f req/s; 1 pinned node whole model %.2f req/s; speedup %.2f",
		n, splitTP, wholeTP, splitTP/wholeTP)
}

// stageMeans reads node i's layermesh_stage_call_duration_seconds and returns the mean
// time per stage and place (local run or call over the mesh), to show the balance.
func stageMeans(b *testing.B, c *benchCluster, i int) string {
	return readHistogram(b, c, i, stageCallHistogram).since(nil)
}

// The histograms the benchmarks read from the nodes: the driving router's stage calls
// and each holder's ONNX Runtime time per stage run.
const (
	stageCallHistogram    = "layermesh_stage_call_duration_seconds"
	stageComputeHistogram = "layermesh_stage_compute_duration_seconds"
)

// histogramSums are one histogram's sum and count by label set, read from a node.
type histogramSums map[string][2]float64

// readHistogram reads histogram name from node i's /metrics.
func readHistogram(b *testing.B, c *benchCluster, i int, name string) histogramSums {
	resp, err := http.Get(c.URL(i, "/metrics"))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	out := histogramSums{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for k, suffix := range []string{"_sum{", "_count{"} {
			if rest, ok := strings.CutPrefix(line, name+suffix); ok {
				labels, value, _ := strings.Cut(rest, "} ")
				if v, err := strconv.ParseFloat(value, 64); err == nil {
					e := out[labels]
					e[k] += v
					out[labels] = e
				}
			}
		}
	}
	return out
}

// since gives the count and mean by label set of what h holds beyond base (nil: all
// of it), sorted by labels.
func (h histogramSums) since(base histogramSums) string {
	var parts []string
	for labels, e := range h {
		sum, n := e[0]-base[labels][0], e[1]-base[labels][1]
		if n > 0 {
			parts = append(parts, fmt.Sprintf("{%s} %.0f calls, mean %.2f ms", labels, n, 1000*sum/n))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

// cpuTimes is each node process's user and system CPU seconds, from /proc/<pid>/stat.
type cpuTimes [][2]float64

func (c *benchCluster) cpuSeconds(b *testing.B) cpuTimes {
	b.Helper()
	out := make(cpuTimes, c.Len())
	for i := range c.Len() {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.Node(i).Pid()))
		if err != nil {
			b.Fatal(err)
		}
		// Fields after the parenthesised command name; utime and stime are fields 14
		// and 15 of the whole line, in clock ticks (USER_HZ, 100 on Linux).
		_, rest, _ := strings.Cut(string(raw), ") ")
		f := strings.Fields(rest)
		if len(f) < 13 {
			b.Fatalf("/proc/%d/stat: %q", c.Node(i).Pid(), raw)
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		s, _ := strconv.ParseFloat(f[12], 64)
		out[i] = [2]float64{u / 100, s / 100}
	}
	return out
}

func (t cpuTimes) plus(o cpuTimes) cpuTimes {
	if t == nil {
		return o
	}
	out := make(cpuTimes, len(t))
	for i := range t {
		out[i] = [2]float64{t[i][0] + o[i][0], t[i][1] + o[i][1]}
	}
	return out
}

func (t cpuTimes) minus(o cpuTimes) cpuTimes {
	out := make(cpuTimes, len(t))
	for i := range t {
		out[i] = [2]float64{t[i][0] - o[i][0], t[i][1] - o[i][1]}
	}
	return out
}

func (t cpuTimes) perRequest(n int) string {
	var parts []string
	for i, v := range t {
		parts = append(parts, fmt.Sprintf("node%d %.1f ms user + %.1f ms system", i, 1000*v[0]/float64(n), 1000*v[1]/float64(n)))
	}
	return strings.Join(parts, ", ")
}

// selfCPU is this process's user and system CPU time: the load generator's.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime))
}

// speeds lists the speed score each node advertises, which the planner balances on.
func (c *benchCluster) speeds(b *testing.B) string {
	nodes, err := c.client(b, 0).Nodes(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	var parts []string
	for _, nd := range nodes {
		if nd.Capacity != nil {
			parts = append(parts, fmt.Sprintf("%s %.1f", nd.Name, nd.Capacity.Speed))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
