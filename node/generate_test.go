package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/events"
	"github.com/layermesh/layermesh/mesh"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/pipeline"
	"github.com/layermesh/layermesh/test/harness"
)

// genConfig is the with-past GPT the generation tests deploy: 4 blocks over 3
// stages, a context long enough for a 200-token stream.
var genConfig = modelgen.GPTConfig{Layers: 4, Dim: 64, Heads: 2, Vocab: 101, Context: 256, Seed: 3, Name: "gpt-gen", WithPast: true}

func writeGenModel(t *testing.T, cfg modelgen.GPTConfig) string {
	t.Helper()
	path, _ := harness.WriteGPT(t, cfg, t.TempDir(), "gen")
	return path
}

// loopGenerate is the reference: harness.LoopGenerate, with no stop token.
func loopGenerate(t *testing.T, sess accel.Session, cfg modelgen.GPTConfig, prompt []int32, n int, s pipeline.Sampling) []int32 {
	t.Helper()
	return harness.LoopGenerate(t, sess, cfg, prompt, n, s, -1)
}

// recomputeGreedy is greedy decoding without a cache: the plain GPT over the whole
// sequence at every step.
func recomputeGreedy(t *testing.T, sess accel.Session, vocab int, prompt []int32, n int) []int32 {
	t.Helper()
	seq := make([]int64, len(prompt))
	for i, p := range prompt {
		seq[i] = int64(p)
	}
	var out []int32
	for len(out) < n {
		res, err := sess.Run(context.Background(), []tensor.Tensor{tensor.FromInt64(modelgen.GPTInput, []int64{1, int64(len(seq))}, seq)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		logits, _ := res[0].Float32s()
		tok := pipeline.Sampling{}.Sample(logits[(len(seq)-1)*vocab:])
		out = append(out, tok)
		seq = append(seq, int64(tok))
	}
	return out
}

// generate runs a generation through c and returns the emitted ids; onToken, when
// set, runs after each emitted token (its error ends the generation).
func generate(c *Cluster, req api.GenerateRequest, onToken func(i int) error) ([]int32, api.GenerateResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var got []int32
	res, err := c.infer.Generate(ctx, req, func(tok api.GeneratedToken) error {
		if tok.Index != len(got) {
			return fmt.Errorf("token index %d after %d tokens", tok.Index, len(got))
		}
		got = append(got, tok.ID)
		if onToken != nil {
			return onToken(len(got))
		}
		return nil
	})
	return got, res, err
}

func seedOf(v uint64) *uint64 { return &v }

// metricSum adds up every series of a counter or gauge family in reg.
func metricSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
		return sum
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// registries registers each node's metrics on a registry of its own.
func registries(t *testing.T, tc *testCluster) []*prometheus.Registry {
	t.Helper()
	var out []*prometheus.Registry
	for _, c := range tc.nodes {
		reg := prometheus.NewRegistry()
		if err := c.RegisterMetrics(reg); err != nil {
			t.Fatal(err)
		}
		out = append(out, reg)
	}
	return out
}

// TestClusterGenerateMatchesWholeModelLoop: generation through a 3-stage, 2-replica
// deployment gives exactly the tokens of one ORT session of the whole with-past
// model in a plain loop, greedy and seeded, from any entry node; the loop's greedy
// tokens are those of recomputing without a cache. Then: per decode step the mesh
// carries about one hidden state however long the context; a disconnected client's
// state is freed on every stage within a second; bad requests get stable codes.
func TestClusterGenerateMatchesWholeModelLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster; skipped in -short")
	}
	cfg := genConfig
	path := writeGenModel(t, cfg)
	whole, err := testBackend(t).Open(context.Background(), path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer whole.Close()
	plainCfg := cfg
	plainCfg.WithPast = false
	plainPath := writeGenModel(t, plainCfg)
	plain, err := testBackend(t).Open(context.Background(), plainPath, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()

	tc := startTestClusterTTL(t, 3, 1<<30, 2*time.Second)
	regs := registries(t, tc)
	deploy(t, tc.nodes[1], "gen", path, 3, 2)
	deploy(t, tc.nodes[1], "plain", plainPath, 2, 1)
	waitReplicas(t, tc.nodes[0], "gen", 2, 60*time.Second)
	if n, err := tc.nodes[2].infer.ModelContext(context.Background(), "gen", ""); err != nil || n != cfg.Context {
		t.Fatalf("ModelContext: %d, %v", n, err)
	}
	prompts := [][]int32{{5}, {1, 2, 3, 4, 5, 6, 7}, {96, 0, 50, 13, 77, 21, 8, 64, 33, 2, 90}}
	const n = 64
	for i, prompt := range prompts {
		entry := tc.nodes[i%3]
		want := loopGenerate(t, whole, cfg, prompt, n, pipeline.Sampling{})
		if rec := recomputeGreedy(t, plain, cfg.Vocab, prompt, n); !slices.Equal(rec, want) {
			t.Fatalf("prompt %d: the with-past loop %v differs from recomputation %v", i, want, rec)
		}
		got, res, err := generate(entry, api.GenerateRequest{Model: "gen", Prompt: prompt, MaxTokens: n}, nil)
		if err != nil {
			t.Fatalf("prompt %d greedy: %v", i, err)
		}
		if !slices.Equal(got, want) || res.FinishReason != "length" || res.CompletionTokens != n || res.PromptTokens != len(prompt) {
			t.Fatalf("prompt %d greedy: got %v (%+v), want %v", i, got, res, want)
		}
		s := pipeline.Sampling{Temperature: 0.9, TopK: 40, TopP: 0.95, Seed: uint64(100 + i)}
		want = loopGenerate(t, whole, cfg, prompt, n, s)
		req := api.GenerateRequest{Model: "gen", Prompt: prompt, MaxTokens: n, Temperature: s.Temperature, TopK: s.TopK, TopP: s.TopP, Seed: seedOf(s.Seed)}
		got, _, err = generate(entry, req, nil)
		if err != nil {
			t.Fatalf("prompt %d sampled: %v", i, err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("prompt %d seeded sampling: got %v, want %v", i, got, want)
		}
		t.Logf("prompt %d via node %d: greedy and seeded (%v...) match the whole-model loop", i, i%3, got[:8])
	}
	checkConcurrentSessions(t, tc, whole, cfg, prompts)
	checkDecodeStepBytes(t, tc, cfg)
	checkDisconnectFrees(t, tc, regs)
	checkIdleSessionExpires(t, tc, regs)
	checkGenerateRefusals(t, tc, cfg)
	checkDeclaredState(t, tc, cfg, path, plainPath)
	checkMeasuredPlan(t, tc, whole, cfg, path, plainPath)
}

// checkMeasuredPlan: a deploy that plans on node times the cutter measures (a decode
// step at past 16) records it, and generates the whole-model loop's tokens wherever
// its cuts fall; a model without state pairs records past 1 whatever past is asked;
// a measured plan's past at or beyond the context, or a past with the FLOP plan, is
// refused with bad_request.
func checkMeasuredPlan(t *testing.T, tc *testCluster, whole accel.Session, cfg modelgen.GPTConfig, path, plainPath string) {
	t.Helper()
	put := func(name string, plan api.PlanOptions) error {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = tc.nodes[2].Control().PutModel(context.Background(), name, f, api.DeployOptions{Stages: 3, Replicas: 1, Size: -1, Plan: plan})
		return err
	}
	if err := put("gen-measured", api.PlanOptions{Basis: api.PlanMeasured, Past: 16}); err != nil {
		t.Fatalf("measured deploy: %v", err)
	}
	waitReplicas(t, tc.nodes[0], "gen-measured", 1, 60*time.Second)
	m, err := tc.nodes[0].view.ResolveVersion(tc.nodes[0].Store().State(), "gen-measured", "")
	if err != nil {
		t.Fatal(err)
	}
	if m.Deploy.PlanPast != 16 || len(m.Stages) != 3 {
		t.Fatalf("measured deploy records plan past %d and %d stages, want 16 and 3", m.Deploy.PlanPast, len(m.Stages))
	}
	if st, err := tc.nodes[1].Control().ModelStatus(context.Background(), "gen-measured", ""); err != nil || st.PlanPast != 16 {
		t.Fatalf("measured deploy's status gives plan past %d (%v), want 16", st.PlanPast, err)
	}
	prompt := []int32{1, 2, 3, 4, 5, 6, 7}
	want := loopGenerate(t, whole, cfg, prompt, 32, pipeline.Sampling{})
	got, _, err := generate(tc.nodes[1], api.GenerateRequest{Model: "gen-measured", Prompt: prompt, MaxTokens: 32}, nil)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("measured plan's generation: %v, %v; want %v", got, err, want)
	}
	// A model without state pairs is timed at its analysed shapes: it records past 1,
	// and another past is the same deploy.
	plainVersions := func() (n int, past int) {
		for _, m := range tc.nodes[2].Store().State().Models {
			if m.Name == "plain-measured" {
				n, past = n+1, m.Deploy.PlanPast
			}
		}
		return n, past
	}
	for _, past := range []int{4, 8} {
		f, err := os.Open(plainPath)
		if err != nil {
			t.Fatal(err)
		}
		_, err = tc.nodes[2].Control().PutModel(context.Background(), "plain-measured", f, api.DeployOptions{Stages: 2, Replicas: 1, Size: -1, Plan: api.PlanOptions{Basis: api.PlanMeasured, Past: past}})
		f.Close()
		if err != nil {
			t.Fatalf("measured deploy of a model without state, past %d: %v", past, err)
		}
	}
	if n, past := plainVersions(); n != 1 || past != 1 {
		t.Fatalf("measured deploys of a model without state at pasts 4 and 8 made %d versions recording past %d, want 1 recording 1", n, past)
	}
	for _, bad := range []api.PlanOptions{{Basis: api.PlanMeasured, Past: cfg.Context}, {Basis: api.PlanFLOPs, Past: 4}, {Basis: "fastest"}} {
		if err := put("gen-bad-plan", bad); api.Classify(err).Code != api.CodeBadRequest {
			t.Errorf("deploy with plan %+v: %v, want bad_request", bad, err)
		}
	}
}

// checkDeclaredState: the manifest records which stage owns which state pair; a
// deploy declaring the same pairs as detected is the same deploy; a declared pair that
// is not an input and output of the model is refused with bad_request.
func checkDeclaredState(t *testing.T, tc *testCluster, cfg modelgen.GPTConfig, path, plainPath string) {
	t.Helper()
	st := tc.nodes[0].Store().State()
	m, err := tc.nodes[0].view.ResolveVersion(st, "gen", "")
	if err != nil {
		t.Fatal(err)
	}
	var declared []string
	owners := map[string]int{}
	for _, s := range m.Stages {
		for _, p := range s.State {
			declared = append(declared, p.In+"="+p.Out)
			owners[p.In] = s.Index
		}
	}
	if len(declared) != 2*cfg.Layers {
		t.Fatalf("manifest records %d state pairs, want %d: %v", len(declared), 2*cfg.Layers, owners)
	}
	put := func(name, p string, state []string) error {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = tc.nodes[1].Control().PutModel(context.Background(), name, f, api.DeployOptions{Stages: 3, Replicas: 2, Size: -1, State: state})
		return err
	}
	if err := put("gen", path, declared); err != nil {
		t.Fatal(err)
	}
	versions := 0
	for _, m := range tc.nodes[1].Store().State().Models {
		if m.Name == "gen" {
			versions++
		}
	}
	if versions != 1 {
		t.Fatalf("declaring the detected pairs made %d versions", versions)
	}
	for _, bad := range [][]string{{"nope=present.0.key"}, {"input_ids"}} {
		if err := put("plain2", plainPath, bad); api.Classify(err).Code != api.CodeBadRequest {
			t.Errorf("deploy declaring %v: %v", bad, err)
		}
	}
}

// checkConcurrentSessions runs several seeded sessions at once through different
// entry nodes (they sit in different stages at the same time); each gets exactly its
// own whole-model loop's tokens.
func checkConcurrentSessions(t *testing.T, tc *testCluster, whole accel.Session, cfg modelgen.GPTConfig, prompts [][]int32) {
	t.Helper()
	const n = 40
	var wg sync.WaitGroup
	errs := make([]error, 2*len(prompts))
	wants := make([][]int32, len(errs))
	for i := range errs {
		s := pipeline.Sampling{Temperature: 1, TopK: 20, Seed: uint64(1000 + i)}
		wants[i] = loopGenerate(t, whole, cfg, prompts[i%len(prompts)], n, s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := api.GenerateRequest{Model: "gen", Prompt: prompts[i%len(prompts)], MaxTokens: n, Temperature: s.Temperature, TopK: s.TopK, Seed: seedOf(s.Seed)}
			got, _, err := generate(tc.nodes[i%len(tc.nodes)], req, nil)
			if err == nil && !slices.Equal(got, wants[i]) {
				err = fmt.Errorf("got %v, want %v", got, wants[i])
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("concurrent session %d: %v", i, err)
		}
	}
}

// checkDecodeStepBytes measures the tensor bytes one decode step moves between nodes
// at two context lengths: at most one hidden state per stage boundary each way plus
// a small constant, the same at both lengths, far below the KV state.
func checkDecodeStepBytes(t *testing.T, tc *testCluster, cfg modelgen.GPTConfig) {
	t.Helper()
	entry := tc.nodes[0]
	hidden := uint64(cfg.Dim * 4)
	const stages = 3
	bound := 2*(stages-1)*hidden + 128
	perStep := map[uint64]bool{}
	for _, promptLen := range []int{4, 160} {
		prompt := make([]int32, promptLen)
		for i := range prompt {
			prompt[i] = int32((i * 31) % cfg.Vocab)
		}
		var marks, retries []uint64
		_, _, err := generate(entry, api.GenerateRequest{Model: "gen", Prompt: prompt, MaxTokens: 12}, func(int) error {
			st := entry.router.Stats()
			marks, retries = append(marks, st.SessionWireBytes), append(retries, st.Retries+st.SessionReplays)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		kvBytes := uint64(2*cfg.Layers*cfg.Dim*4) * uint64(promptLen) / stages
		measured := 0
		for i := 1; i < len(marks); i++ {
			if retries[i] != retries[i-1] {
				// A stage call that timed out on a stalled machine replays the prefix:
				// a failover's bytes, not a decode step's.
				t.Logf("context %d: step %d was retried; its bytes are not a decode step's", promptLen, i)
				continue
			}
			step := marks[i] - marks[i-1]
			measured++
			perStep[step] = true
			if step > bound {
				t.Fatalf("context %d: a decode step moved %d bytes, bound %d (hidden %d)", promptLen, step, bound, hidden)
			}
			if measured == 1 {
				t.Logf("context %d: a decode step moves %d bytes between nodes (bound %d; a stage's KV state is about %d bytes)",
					promptLen, step, bound, kvBytes)
			}
		}
		if measured < len(marks)/2 {
			t.Fatalf("context %d: only %d of %d decode steps ran without a retry", promptLen, measured, len(marks)-1)
		}
	}
	if len(perStep) != 1 {
		t.Fatalf("decode steps moved different byte counts at different context lengths: %v", perStep)
	}
}

// checkDisconnectFrees: a client that goes away mid-stream (emit fails) leaves no
// session state on any node within a second.
func checkDisconnectFrees(t *testing.T, tc *testCluster, regs []*prometheus.Registry) {
	t.Helper()
	gone := errors.New("client gone")
	var sawState bool
	// The second counts from the moment the client goes: a watcher started then
	// notes when the last node's state is gone, while the generation winds down.
	freed := make(chan time.Duration, 1)
	_, _, err := generate(tc.nodes[1], api.GenerateRequest{Model: "gen", Prompt: []int32{1, 2, 3}, MaxTokens: 50}, func(i int) error {
		if i < 5 {
			return nil
		}
		for _, c := range tc.nodes {
			sawState = sawState || c.runtime.SessionStats().Bytes > 0
		}
		go watchFreed(tc, time.Now(), 10*time.Second, freed)
		return gone
	})
	if !errors.Is(err, gone) {
		t.Fatalf("generation after the client went: %v", err)
	}
	if !sawState {
		t.Fatal("no node held session state mid-stream")
	}
	took := <-freed
	if took > time.Second {
		t.Fatalf("session state freed %v after the disconnect, want within 1s (%s)", took, sessionStatsOf(tc))
	}
	t.Logf("every node's session state freed %v after the disconnect", took.Round(time.Millisecond))
	for i, reg := range regs {
		if b, n := metricSum(t, reg, "layermesh_session_state_bytes"), metricSum(t, reg, "layermesh_sessions_active"); b != 0 || n != 0 {
			t.Errorf("node %d metrics after the disconnect: %v sessions, %v bytes", i, n, b)
		}
	}
}

// watchFreed polls every node's session state from since until none holds any, and
// sends how long after since that was; it gives up (sending a duration past limit)
// at limit.
func watchFreed(tc *testCluster, since time.Time, limit time.Duration, freed chan<- time.Duration) {
	for {
		held := false
		for _, c := range tc.nodes {
			if st := c.runtime.SessionStats(); st.Sessions != 0 || st.Bytes != 0 {
				held = true
			}
		}
		took := time.Since(since)
		if !held || took > limit {
			freed <- took
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sessionStatsOf(tc *testCluster) string {
	var b strings.Builder
	for i, c := range tc.nodes {
		fmt.Fprintf(&b, "node %d %+v; ", i, c.runtime.SessionStats())
	}
	return b.String()
}

// checkIdleSessionExpires: a session whose entry node went away without closing it
// (here: a prefill sent straight to a stage, never followed) is freed after the idle
// TTL, and the metrics say so.
func checkIdleSessionExpires(t *testing.T, tc *testCluster, regs []*prometheus.Registry) {
	t.Helper()
	st := tc.nodes[0].Store().State()
	m, err := tc.nodes[0].view.ResolveVersion(st, "gen", "")
	if err != nil {
		t.Fatal(err)
	}
	key := pipeline.StageKey{Model: m.Name, Version: m.Version, Stage: 0}
	holder := slices.IndexFunc(tc.nodes, func(c *Cluster) bool { return c.runtime.Serves(key) })
	if holder < 0 {
		t.Fatal("no node serves stage 0")
	}
	c := tc.nodes[holder]
	expired := metricSum(t, regs[holder], "layermesh_sessions_expired_total")
	in := []tensor.Tensor{tensor.FromInt64(modelgen.GPTInput, []int64{1, 3}, []int64{1, 2, 3})}
	if _, err := c.runtime.SessionStep(context.Background(), pipeline.SessionStep{Session: "abandoned", Key: key,
		Step: mesh.StepPrefill, Len: 3, Inputs: in}); err != nil {
		t.Fatal(err)
	}
	if b := metricSum(t, regs[holder], "layermesh_session_state_bytes"); b <= 0 {
		t.Fatalf("state bytes after a prefill: %v", b)
	}
	eventually(t, 10*time.Second, func() error {
		if b, n := metricSum(t, regs[holder], "layermesh_session_state_bytes"), metricSum(t, regs[holder], "layermesh_sessions_active"); b != 0 || n != 0 {
			return fmt.Errorf("abandoned session still held: %v sessions, %v bytes", n, b)
		}
		return nil
	})
	if e := metricSum(t, regs[holder], "layermesh_sessions_expired_total"); e != expired+1 {
		t.Fatalf("layermesh_sessions_expired_total went from %v to %v", expired, e)
	}
}

// checkGenerateRefusals: bad generation requests get the catalogue's codes.
func checkGenerateRefusals(t *testing.T, tc *testCluster, cfg modelgen.GPTConfig) {
	t.Helper()
	long := make([]int32, cfg.Context)
	cases := []struct {
		name string
		req  api.GenerateRequest
		code api.Code
	}{
		{"prompt longer than the context", api.GenerateRequest{Model: "gen", Prompt: long, MaxTokens: 1}, api.CodeContextExceeded},
		{"max_tokens 0", api.GenerateRequest{Model: "gen", Prompt: []int32{1}, MaxTokens: 0}, api.CodeInvalidMaxTokens},
		{"max_tokens above the context", api.GenerateRequest{Model: "gen", Prompt: []int32{1}, MaxTokens: cfg.Context + 1}, api.CodeInvalidMaxTokens},
		{"model without state pairs", api.GenerateRequest{Model: "plain", Prompt: []int32{1}, MaxTokens: 4}, api.CodeNotGenerative},
		{"unknown model", api.GenerateRequest{Model: "nope", Prompt: []int32{1}, MaxTokens: 4}, api.CodeModelNotFound},
	}
	for _, tc2 := range cases {
		_, _, err := generate(tc.nodes[2], tc2.req, nil)
		if got := api.Classify(err).Code; err == nil || got != tc2.code {
			t.Errorf("%s: %v (code %s), want %s", tc2.name, err, got, tc2.code)
		}
	}
}

// TestClusterGenerateSurvivesStageHolderLoss: a session streaming 200 tokens loses a
// node holding one of its stages mid-stream; the stream completes with exactly the
// tokens of the undisturbed run, and the replay is counted.
func TestClusterGenerateSurvivesStageHolderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster; skipped in -short")
	}
	path := writeGenModel(t, genConfig)
	tc := startTestCluster(t, 3, 1<<30)
	reg := prometheus.NewRegistry()
	if err := tc.nodes[0].RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	deploy(t, tc.nodes[0], "gen", path, 3, 2)
	waitReplicas(t, tc.nodes[0], "gen", 2, 60*time.Second)
	req := api.GenerateRequest{Model: "gen", Prompt: []int32{7, 3, 11, 42}, MaxTokens: 200, Temperature: 0.8, TopK: 50, Seed: seedOf(9)}
	entry := tc.nodes[0]
	bus := events.NewBus(events.DefaultWindow, events.DefaultClientBuffer)
	ctx, cancel := context.WithCancel(context.Background())
	feedDone := make(chan struct{})
	go func() {
		defer close(feedDone)
		entry.runEvents(ctx, bus)
	}()
	defer func() { cancel(); <-feedDone }()
	want, _, err := generate(entry, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	victim := -1
	got, res, err := generate(entry, req, func(i int) error {
		if i == 60 {
			once.Do(func() {
				for j := 1; j < len(tc.nodes); j++ {
					if tc.nodes[j].runtime.SessionStats().Sessions > 0 {
						victim = j
						break
					}
				}
				if victim > 0 {
					t.Logf("closing node %d, which holds a stage of the session, after token %d", victim, i)
					tc.stop(victim)
				}
			})
		}
		return nil
	})
	if err != nil {
		t.Fatalf("generation across the loss: %v", err)
	}
	if victim < 0 {
		t.Fatal("no node other than the entry held the session's state")
	}
	if !slices.Equal(got, want) || res.CompletionTokens != 200 {
		t.Fatalf("tokens after the failover differ from the undisturbed run:\n got %v\nwant %v", got, want)
	}
	if r := entry.router.Stats().SessionReplays; r < 1 {
		t.Fatalf("no session replay counted (%d)", r)
	}
	if r := metricSum(t, reg, "layermesh_session_replays_total"); r < 1 {
		t.Fatalf("layermesh_session_replays_total is %v", r)
	}
	checkReplayPublished(t, bus)
}

// checkReplayPublished: the entry node's event feed holds a session_replay event
// naming the stage and the replicas it moved between.
func checkReplayPublished(t *testing.T, bus *events.Bus) {
	t.Helper()
	backlog, sub := bus.SubscribeRecent(events.DefaultWindow)
	sub.Cancel()
	for _, e := range backlog {
		if e.Type == events.SessionReplay && e.Model == "gen" && e.Stage != nil && e.From != "" && e.To != "" && e.From != e.To {
			t.Logf("published: %s %s stage %d %s -> %s", e.Type, e.Subject, *e.Stage, e.From, e.To)
			return
		}
	}
	t.Fatalf("no session_replay event on the entry node's feed: %+v", backlog)
}
