package split

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/test/harness"
	"github.com/layermesh/layermesh/tokenizer"
)

// The generation benchmarks run real node processes on the 12 x 768 GPT in the
// with-past layout (modelgen.GPTWithPast: the same weights as the split benchmarks'
// model, each block's keys and values kept on its stage), deployed with the GPT-2
// tokenizer, and generate through the OpenAI-compatible completions route with token
// id prompts and greedy sampling. Contexts stay within 128 positions: a 64-token
// prompt and 64 generated tokens, and a 128-token prompt for a full recomputation.

const (
	genPrompt = 64  // prompt tokens of a generation
	genTokens = 64  // tokens generated after it: the context reaches 128
	genFull   = 128 // prompt tokens of the full recomputation at context 128
)

// gpt2SmallWithPast writes the with-past 12 x 768 GPT and reads the GPT-2 tokenizer
// (make setup fetches it into third_party/tokenizers/gpt2).
func gpt2SmallWithPast(b *testing.B) (path string, size int64, tok []byte) {
	b.Helper()
	m, err := modelgen.GPTWithPast(modelgen.GPT2Small)
	if err != nil {
		b.Fatal(err)
	}
	path = filepath.Join(b.TempDir(), "gpt2-past.onnx")
	if err := modelgen.WriteFile(m, path); err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	t, err := tokenizer.Load("../../third_party/tokenizers/gpt2")
	if err != nil {
		b.Fatalf("GPT-2 tokenizer files (make setup fetches them): %v", err)
	}
	tok, err = t.MarshalJSON()
	if err != nil {
		b.Fatal(err)
	}
	return path, fi.Size(), tok
}

// deployGenAndWait uploads the generating model with its tokenizer through node 0
// and waits until every stage has its replicas ready.
func (c *benchCluster) deployGenAndWait(b *testing.B, path string, size int64, tok []byte, stages, replicas int) {
	b.Helper()
	c.deployGenPlanned(b, path, size, tok, stages, replicas, client.PlanOptions{})
}

// logPlan logs the cutting node's account of its plan (the cuts, each stage's
// planned time, and for a measured plan what it measured).
func (c *benchCluster) logPlan(b *testing.B) {
	b.Helper()
	for i := range c.Len() {
		for _, line := range strings.Split(c.Node(i).LogTail(1<<20), "\n") {
			if strings.Contains(line, `"msg":"deploy: planned"`) || strings.Contains(line, `"msg":"deploy: planning on measured node times"`) {
				b.Logf("node%d: %s", i, line)
			}
		}
	}
}

// deployGenPlanned is deployGenAndWait with what the planner balances.
func (c *benchCluster) deployGenPlanned(b *testing.B, path string, size int64, tok []byte, stages, replicas int, plan client.PlanOptions) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := c.client(b, 0).UploadModel(ctx, "gpt", f, size, client.UploadOptions{Stages: stages, Replicas: replicas, Tokenizer: tok, Plan: plan}); err != nil {
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
		nodes, err := c.client(b, 0).Nodes(context.Background())
		if err != nil {
			return err
		}
		for k := range stages {
			ready := 0
			for _, nd := range nodes {
				for _, e := range nd.Models {
					if strings.HasSuffix(e, fmt.Sprintf("/stage%d (ready)", k)) {
						ready++
					}
				}
			}
			if ready < replicas {
				return fmt.Errorf("stage %d: %d of %d replicas ready", k, ready, replicas)
			}
		}
		return nil
	})
}

// promptIDs is prompt number seq: n token ids spread over the vocabulary, short of
// <|endoftext|> (50256), different for every seq.
func promptIDs(seq, n int) []int32 {
	ids := make([]int32, n)
	x := uint32(2654435761*uint32(seq+1)) | 1
	for i := range ids {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		ids[i] = int32(x % 50000)
	}
	return ids
}

// complete runs one greedy completion of ids through POST /openai/v1/completions and
// returns the time to the whole answer and how many tokens it generated.
func complete(addr, token string, ids []int32, maxTokens int) (time.Duration, int, error) {
	body, err := json.Marshal(map[string]any{"model": "gpt", "prompt": ids, "max_tokens": maxTokens, "temperature": 0})
	if err != nil {
		return 0, 0, err
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/openai/v1/completions", bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	d := time.Since(start)
	if err != nil {
		return 0, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("completions: %s: %s", resp.Status, raw)
	}
	var out struct {
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return 0, 0, fmt.Errorf("completions answer %q: %w", raw, err)
	}
	return d, out.Usage.CompletionTokens, nil
}

// streamed is what a client saw of one streamed completion.
type streamed struct {
	first, last time.Duration // from the request to the first and to the last piece of text
	tokens      int           // tokens generated (the usage chunk's completion_tokens)
}

// perToken is the time per generated token after the first: from the first piece
// of text to the last, over the tokens between them. A piece can carry more than
// one token (a character's UTF-8 bytes come from several), but the same prompt gives
// the same tokens in the same pieces on every deployment of one model.
func (s streamed) perToken() time.Duration { return (s.last - s.first) / time.Duration(s.tokens-1) }

// completeStream runs one greedy completion of ids through POST
// /openai/v1/completions with stream: true and times its pieces of text as they
// arrive.
func completeStream(addr, token string, ids []int32, maxTokens int) (streamed, error) {
	body, err := json.Marshal(map[string]any{"model": "gpt", "prompt": ids, "max_tokens": maxTokens, "temperature": 0,
		"stream": true, "stream_options": map[string]any{"include_usage": true}})
	if err != nil {
		return streamed{}, err
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/openai/v1/completions", bytes.NewReader(body))
	if err != nil {
		return streamed{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return streamed{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(resp.Body)
		return streamed{}, fmt.Errorf("completions: %s: %s", resp.Status, raw)
	}
	var out streamed
	pieces := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		at := time.Since(start)
		var ev struct {
			Choices []struct {
				Text string `json:"text"`
			} `json:"choices"`
			Usage *struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return streamed{}, fmt.Errorf("completions event %q: %w", data, err)
		}
		if ev.Usage != nil {
			out.tokens = ev.Usage.CompletionTokens
		}
		if len(ev.Choices) > 0 && ev.Choices[0].Text != "" {
			if pieces == 0 {
				out.first = at
			}
			out.last = at
			pieces++
		}
	}
	if err := sc.Err(); err != nil {
		return streamed{}, err
	}
	if pieces < 2 || out.tokens < 2 {
		return streamed{}, fmt.Errorf("completions stream: %d pieces of text, %d tokens", pieces, out.tokens)
	}
	return out, nil
}

// genTimes are one side's measurements.
type genTimes struct {
	ttft, perToken, full []time.Duration
	tokens               int
	// cpu is the CPU time each node process used during the streamed generations.
	cpu cpuTimes
}

// round measures one side once: a streamed generation of 64 tokens from a 64-token
// prompt (the time to its first token, and per token after the first), and a
// 128-token prompt with max_tokens 1 (a full computation of context 128, what each
// token costs without the cache).
func (g *genTimes) round(b *testing.B, c *benchCluster, addr, token string, seq int) {
	b.Helper()
	before := c.cpuSeconds(b)
	st, err := completeStream(addr, token, promptIDs(seq, genPrompt), genTokens)
	if err != nil {
		b.Fatal(err)
	}
	g.cpu = g.cpu.plus(c.cpuSeconds(b).minus(before))
	if st.tokens < genTokens/2 {
		b.Fatalf("prompt %d: %d tokens generated of %d asked (an early <|endoftext|>?)", seq, st.tokens, genTokens)
	}
	full, _, err := complete(addr, token, promptIDs(seq, genFull), 1)
	if err != nil {
		b.Fatal(err)
	}
	g.ttft = append(g.ttft, st.first)
	g.perToken = append(g.perToken, st.perToken())
	g.full = append(g.full, full)
	g.tokens += st.tokens
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkGenerateSplitVsWhole: greedy generation with the 12 x 768 with-past GPT
// over HTTP, the 3-stage split entered at the node holding the last stage against a
// one-node cluster serving the whole model, rounds interleaved (split, whole, whole,
// split, ...): per-token latency (a decode step with the cache), time to the first
// token of a 64-token prompt, and a full computation of context 128 against a decode
// step.
func BenchmarkGenerateSplitVsWhole(b *testing.B) {
	path, size, tok := gpt2SmallWithPast(b)
	split := startBench(b, 3, "")
	split.deployGenAndWait(b, path, size, tok, 3, 1)
	whole := startBench(b, 1, "")
	whole.deployGenAndWait(b, path, size, tok, 1, 1)
	runtime.GC()
	debug.FreeOSMemory()
	entry := split.lastStageHolder(b, 3)
	sAddr, wAddr := split.HTTPAddr(entry), whole.HTTPAddr(0)
	var sp, wh genTimes
	for i := range 2 { // warm both: first runs allocate ORT arenas
		(&genTimes{}).round(b, split, sAddr, split.token, 1000+i)
		(&genTimes{}).round(b, whole, wAddr, whole.token, 1000+i)
	}
	// The stage times after the warm-up: the entry's calls (remote ones include the
	// hops) and each holder's ONNX Runtime time.
	calls0 := readHistogram(b, split, entry, stageCallHistogram)
	compute0 := make([]histogramSums, split.Len())
	for i := range split.Len() {
		compute0[i] = readHistogram(b, split, i, stageComputeHistogram)
	}
	wholeCompute0 := readHistogram(b, whole, 0, stageComputeHistogram)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			sp.round(b, split, sAddr, split.token, i)
			wh.round(b, whole, wAddr, whole.token, i)
		} else {
			wh.round(b, whole, wAddr, whole.token, i)
			sp.round(b, split, sAddr, split.token, i)
		}
	}
	b.StopTimer()
	sTok, wTok := median(sp.perToken), median(wh.perToken)
	sFirst, wFirst := median(sp.ttft), median(wh.ttft)
	sFull, wFull := median(sp.full), median(wh.full)
	b.ReportMetric(ms(sTok), "split-token-ms")
	b.ReportMetric(ms(wTok), "whole-token-ms")
	b.ReportMetric(float64(sTok)/float64(wTok), "token-ratio")
	b.ReportMetric(ms(sFirst), "split-ttft-ms")
	b.ReportMetric(ms(wFirst), "whole-ttft-ms")
	b.ReportMetric(ms(wFull), "whole-full128-ms")
	b.ReportMetric(float64(wFull)/float64(wTok), "cache-speedup")
	b.ReportMetric(float64(sFull)/float64(sTok), "split-cache-speedup")
	b.Logf("threads %s, model %d bytes, %d rounds each: per token (a decode step, contexts %d-%d) split %v, whole %v, ratio %.3f; "+
		"time to first token (%d-token prompt): split %v, whole %v; full computation of context %d (max_tokens 1): split %v, whole %v; full over decode step: whole %.1fx, split %.1fx",
		benchThreads(), size, b.N, genPrompt+1, genPrompt+genTokens, sTok, wTok, float64(sTok)/float64(wTok),
		genPrompt, sFirst, wFirst, genFull, sFull, wFull, float64(wFull)/float64(wTok), float64(sFull)/float64(sTok))
	b.Logf("CPU per generated token (streamed generations, prefill included): split %s; whole %s",
		sp.cpu.perRequest(sp.tokens), wh.cpu.perRequest(wh.tokens))
	b.Logf("entry node's stage calls during the measured split runs: %s", readHistogram(b, split, entry, stageCallHistogram).since(calls0))
	var computed []string
	for i := range split.Len() {
		computed = append(computed, readHistogram(b, split, i, stageComputeHistogram).since(compute0[i]))
	}
	b.Logf("ONNX Runtime time per stage run on the split's holders: %s; on the whole node: %s",
		strings.Join(computed, "; "), readHistogram(b, whole, 0, stageComputeHistogram).since(wholeCompute0))
}

// genSegment runs sessions concurrent greedy generations side by side, each
// perSession times in a row (prompts seq0 on), session w entering at
// addrs[w mod len(addrs)], and returns the tokens generated and the wall time.
func genSegment(b *testing.B, addrs []string, token string, sessions, perSession, seq0 int) (int, time.Duration) {
	b.Helper()
	var wg sync.WaitGroup
	tokens := make([]int, sessions)
	errs := make([]error, sessions)
	start := time.Now()
	for w := range sessions {
		wg.Go(func() {
			for k := range perSession {
				_, n, err := complete(addrs[w%len(addrs)], token, promptIDs(seq0+w*perSession+k, genPrompt), genTokens)
				if err != nil {
					errs[w] = err
					return
				}
				tokens[w] += n
			}
		})
	}
	wg.Wait()
	span := time.Since(start)
	total := 0
	for w := range sessions {
		if errs[w] != nil {
			b.Fatal(errs[w])
		}
		total += tokens[w]
	}
	return total, span
}

// BenchmarkGeneratePipelineParallel: 4 concurrent greedy generations (64-token
// prompts, 64 tokens each) on 2 nodes, each pinned to one core with 1 intra-op
// thread, 2 stages cut by a measured plan, against one node pinned to one core
// serving the whole model: aggregate generated tokens per second. A third side, the
// same 2 pinned nodes each holding the whole model (1 stage, 2 replicas, sessions
// entering at both), is what these 2 cores give with no pipeline at all (its ratio is
// reported as "ceiling"; with both cores streaming all the weights on one memory bus
// it is no bound on the split). Segments alternate (split, whole, replicas,
// replicas, whole, split, then replicas, split, whole, whole, split, replicas), so
// that each side runs as often first, in the middle and last, and the shared
// machine's changes of pace, which come and go within a minute, hit all alike; each
// segment runs 4 sessions side by side, each generating b.N times (at least 2), and a
// side's rate is its tokens over its segments' wall time. A probe of the host's memory
// bandwidth (one core, both cores) runs before every third segment and at the end.
func BenchmarkGeneratePipelineParallel(b *testing.B) {
	const concurrency = 4
	path, size, tok := gpt2SmallWithPast(b)
	bin := pinnedBinary(b)
	split := startBench(b, 2, bin)
	// The cut balances the stages' decode steps as the cutting node times them, at
	// the mean past of these sessions (64-token prompts, 64 tokens each).
	split.deployGenPlanned(b, path, size, tok, 2, 1, client.PlanOptions{Basis: client.PlanMeasured, Past: 96})
	split.logPlan(b)
	whole := startBench(b, 1, bin)
	whole.deployGenAndWait(b, path, size, tok, 1, 1)
	reps := startBench(b, 2, bin)
	reps.deployGenAndWait(b, path, size, tok, 1, 2)
	entry := split.lastStageHolder(b, 2)
	type side struct {
		name   string
		c      *benchCluster
		addrs  []string
		tokens int
		span   time.Duration
		cpu    cpuTimes
		self   time.Duration
		ort0   []histogramSums // each node's ONNX Runtime time before the measured segments
	}
	sp := &side{name: "split", c: split, addrs: []string{split.HTTPAddr(entry)}}
	wh := &side{name: "whole", c: whole, addrs: []string{whole.HTTPAddr(0)}}
	rp := &side{name: "replicas", c: reps, addrs: []string{reps.HTTPAddr(0), reps.HTTPAddr(1)}}
	for _, s := range []*side{sp, wh, rp} {
		genSegment(b, s.addrs, s.c.token, concurrency, 1, 5000) // warm
	}
	for _, s := range []*side{sp, wh, rp} {
		for i := range s.c.Len() {
			s.ort0 = append(s.ort0, readHistogram(b, s.c, i, stageComputeHistogram))
		}
	}
	probe := newBandwidthProbe()
	var hostBW []hostBandwidth
	runtime.GC()
	debug.FreeOSMemory()
	n := max(b.N, 2)
	b.ResetTimer()
	var segments []string
	for i, s := range []*side{sp, wh, rp, rp, wh, sp, rp, sp, wh, wh, sp, rp} {
		if i%3 == 0 {
			hostBW = append(hostBW, probe.measure(b))
		}
		before, self := s.c.cpuSeconds(b), selfCPU()
		k, span := genSegment(b, s.addrs, s.c.token, concurrency, n, i*concurrency*n)
		s.self += selfCPU() - self
		s.cpu = s.cpu.plus(s.c.cpuSeconds(b).minus(before))
		s.tokens, s.span = s.tokens+k, s.span+span
		segments = append(segments, fmt.Sprintf("%s %.1f", s.name, float64(k)/span.Seconds()))
	}
	hostBW = append(hostBW, probe.measure(b))
	b.StopTimer()
	// testing keeps the first 10 lines a benchmark logs, so each line here says much.
	b.Logf("tokens/s of each segment, in order: %s; host memory bandwidth before segments 1, 4, 7 and 10 and after the last: %v",
		strings.Join(segments, ", "), hostBW)
	rate := func(s *side) float64 { return float64(s.tokens) / s.span.Seconds() }
	splitTP, wholeTP, repTP := rate(sp), rate(wh), rate(rp)
	b.Logf("speed scores (GFLOP/s): split %s, whole %s, replicas %s", split.speeds(b), whole.speeds(b), reps.speeds(b))
	b.Logf("entry node's stage calls during the split runs: %s; the whole node's: %s", stageMeans(b, split, entry), stageMeans(b, whole, 0))
	for _, s := range []struct {
		name string
		s    *side
	}{{fmt.Sprintf("split (entry node%d)", entry), sp}, {"whole", wh}, {"replicas", rp}} {
		var ort []string
		for i := range s.s.c.Len() {
			ort = append(ort, fmt.Sprintf("node%d %s", i, readHistogram(b, s.s.c, i, stageComputeHistogram).since(s.s.ort0[i])))
		}
		b.Logf("%s: CPU time per generated token (user+system) %s, load generator %.1f ms; ONNX Runtime time per stage run %s",
			s.name, s.s.cpu.perRequest(s.s.tokens), 1000*s.s.self.Seconds()/float64(s.s.tokens), strings.Join(ort, "; "))
	}
	b.ReportMetric(splitTP, "split-tok/s")
	b.ReportMetric(wholeTP, "whole-tok/s")
	b.ReportMetric(repTP, "replicas-tok/s")
	b.ReportMetric(splitTP/wholeTP, "speedup")
	b.ReportMetric(repTP/wholeTP, "ceiling")
	b.ReportMetric(meanBothOverOne(hostBW), "host-bw-both/one")
	b.Logf("%d concurrent sessions, 4 segments of %d generations each per side: 2 pinned nodes x 2 stages %.1f tokens/s; 1 pinned node whole model %.1f tokens/s; 2 pinned nodes each with the whole model %.1f tokens/s; speedup %.2f (replicas side %.2f)",
		concurrency, concurrency*n, splitTP, wholeTP, repTP, splitTP/wholeTP, repTP/wholeTP)
}

// BenchmarkGenerateBatching: 4 concurrent greedy generations (64-token prompts, 64
// tokens each) on one node pinned to one core with 1 intra-op thread, serving the
// whole with-past 12 x 768 GPT with each decode step run alone (--max-batch 1, the
// default) and with the queued decode steps of up to 4 sessions run together
// (--max-batch 4); and the 2-stage split on 2 pinned nodes with --max-batch 4.
// Aggregate generated tokens per second, segments alternating (alone, batched,
// split batched, split batched, batched, alone).
func BenchmarkGenerateBatching(b *testing.B) {
	const concurrency = 4
	path, size, tok := gpt2SmallWithPast(b)
	bin := pinnedBinary(b)
	alone := startBench(b, 1, bin)
	alone.deployGenAndWait(b, path, size, tok, 1, 1)
	batched := startBench(b, 1, bin, "--max-batch", "4")
	batched.deployGenAndWait(b, path, size, tok, 1, 1)
	split := startBench(b, 2, bin, "--max-batch", "4")
	split.deployGenAndWait(b, path, size, tok, 2, 1)
	type side struct {
		c      *benchCluster
		addr   string
		tokens int
		span   time.Duration
	}
	al := &side{c: alone, addr: alone.HTTPAddr(0)}
	ba := &side{c: batched, addr: batched.HTTPAddr(0)}
	sp := &side{c: split, addr: split.HTTPAddr(split.lastStageHolder(b, 2))}
	for _, s := range []*side{al, ba, sp} {
		genSegment(b, []string{s.addr}, s.c.token, concurrency, 1, 5000) // warm
	}
	n := max(b.N, 3)
	b.ResetTimer()
	for i, s := range []*side{al, ba, sp, sp, ba, al} {
		k, span := genSegment(b, []string{s.addr}, s.c.token, concurrency, n, i*concurrency*n)
		s.tokens, s.span = s.tokens+k, s.span+span
	}
	b.StopTimer()
	rate := func(s *side) float64 { return float64(s.tokens) / s.span.Seconds() }
	b.Logf("decode batches: one node %s; split %s", batchFigures(b, batched, 0), batchFigures(b, split, 0)+", "+batchFigures(b, split, 1))
	b.ReportMetric(rate(al), "alone-tok/s")
	b.ReportMetric(rate(ba), "batched-tok/s")
	b.ReportMetric(rate(sp), "split-batched-tok/s")
	b.ReportMetric(rate(ba)/rate(al), "batching-speedup")
	b.Logf("%d concurrent sessions, 2 segments of %d generations each per side: 1 pinned node, steps alone %.1f tokens/s, batched %.1f tokens/s (%.2f x); 2 pinned nodes x 2 stages, batched %.1f tokens/s",
		concurrency, concurrency*n, rate(al), rate(ba), rate(ba)/rate(al), rate(sp))
}

// batchFigures reads node i's decode batching counters from /metrics.
func batchFigures(b *testing.B, c *benchCluster, i int) string {
	b.Helper()
	resp, err := http.Get(c.URL(i, "/metrics"))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	var runs, steps string
	for line := range strings.Lines(string(raw)) {
		if v, ok := strings.CutPrefix(line, "layermesh_decode_batches_total "); ok {
			runs = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "layermesh_decode_batched_steps_total "); ok {
			steps = strings.TrimSpace(v)
		}
	}
	return fmt.Sprintf("node%d %s batched runs carrying %s steps", i, runs, steps)
}

// BenchmarkGenerateReplicasOneEntry: 4 concurrent greedy generations (64-token
// prompts, 64 tokens each) all sent to one node of a deployment of the whole with-past
// 12 x 768 GPT with 2 replicas on 2 meshnode processes, each pinned to its own core
// with 1 intra-op thread, against one such node alone. The entry node pins each
// session to a replica; a replicated model serves about twice the tokens/s only if
// the entry node spreads its sessions over both replicas. Segments
// alternate (replicas, one node, one node, replicas), 4 sessions side by side
// generating 3 times each; the log gives each replica's decode steps.
func BenchmarkGenerateReplicasOneEntry(b *testing.B) {
	const concurrency = 4
	path, size, tok := gpt2SmallWithPast(b)
	bin := pinnedBinary(b)
	one := startBench(b, 1, bin)
	one.deployGenAndWait(b, path, size, tok, 1, 1)
	reps := startBench(b, 2, bin)
	reps.deployGenAndWait(b, path, size, tok, 1, 2)
	for _, c := range []*benchCluster{reps, one} {
		genSegment(b, []string{c.HTTPAddr(0)}, c.token, concurrency, 1, 5000) // warm
	}
	decodes := func() []float64 {
		var out []float64
		for i := range reps.Len() {
			n := 0.0
			for labels, e := range readHistogram(b, reps, i, stageComputeHistogram) {
				if strings.Contains(labels, `step="decode"`) {
					n += e[1]
				}
			}
			out = append(out, n)
		}
		return out
	}
	n := max(b.N, 3)
	b.ResetTimer()
	var repTokens, oneTokens int
	var repSpan, oneSpan time.Duration
	before := decodes()
	for i, c := range []*benchCluster{reps, one, one, reps} {
		k, span := genSegment(b, []string{c.HTTPAddr(0)}, c.token, concurrency, n, i*concurrency*n)
		if c == reps {
			repTokens, repSpan = repTokens+k, repSpan+span
		} else {
			oneTokens, oneSpan = oneTokens+k, oneSpan+span
		}
	}
	b.StopTimer()
	after := decodes()
	repTP, oneTP := float64(repTokens)/repSpan.Seconds(), float64(oneTokens)/oneSpan.Seconds()
	b.ReportMetric(repTP, "replicas-tok/s")
	b.ReportMetric(oneTP, "one-tok/s")
	b.ReportMetric(repTP/oneTP, "speedup")
	b.Logf("%d concurrent sessions entering at node0: 2 pinned replicas %.1f tokens/s, 1 pinned node %.1f tokens/s (%.2f x); decode steps per replica: node0 %.0f, node1 %.0f",
		concurrency, repTP, oneTP, repTP/oneTP, after[0]-before[0], after[1]-before[1])
}
