package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/pipeline"
	"github.com/prometheus/client_golang/prometheus"
)

// The in-process cluster tests run real nodes in one process: real libp2p on
// 127.0.0.1, real memberlist, real Raft on badger in t.TempDir(), real ONNX Runtime.

var (
	ortOnce    sync.Once
	ortBackend accel.Backend
	ortErr     error
)

func testBackend(t *testing.T) accel.Backend {
	t.Helper()
	ortOnce.Do(func() {
		ortBackend, ortErr = ort.New(ort.Config{IntraOpThreads: 1, Provider: accel.ProviderCPU})
	})
	if ortErr != nil {
		t.Fatalf("ONNX Runtime is required for this test and did not load: %v", ortErr)
	}
	return ortBackend
}

type testCluster struct {
	t     *testing.T
	nodes []*Cluster
	dirs  []string
	// sessionTTL is the nodes' session TTL; 0 takes the default.
	sessionTTL time.Duration
}

func testLogger(t *testing.T, name string) *slog.Logger {
	if os.Getenv("LAYERMESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", name)
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func (tc *testCluster) start(i int, bootstrap bool, budget int64) *Cluster {
	t := tc.t
	t.Helper()
	opts := ClusterOptions{
		Name: fmt.Sprintf("n%d", i), DataDir: tc.dirs[i], HTTPAddr: "127.0.0.1:1",
		Listen: []string{"/ip4/127.0.0.1/tcp/0"}, FastGossip: true, MemBudget: budget,
		Backend: testBackend(t), Session: accel.SessionOptions{IntraOpThreads: 1},
		Logger:     testLogger(t, fmt.Sprintf("n%d", i)),
		Router:     pipeline.RouterConfig{RequestTimeout: 20 * time.Second},
		SessionTTL: tc.sessionTTL,
	}
	if bootstrap {
		opts.Bootstrap = true
	} else {
		opts.SecretFile = filepath.Join(tc.dirs[0], secretFileName)
	}
	for j, n := range tc.nodes {
		if n != nil && j != i {
			opts.Join = append(opts.Join, n.Addrs()[0])
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := NewCluster(ctx, opts)
	if err != nil {
		t.Fatalf("start node %d: %v", i, err)
	}
	tc.nodes[i] = c
	return c
}

func startTestCluster(t *testing.T, n int, budget int64) *testCluster {
	return startTestClusterTTL(t, n, budget, 0)
}

// startTestClusterTTL is startTestCluster with a session TTL on every node.
func startTestClusterTTL(t *testing.T, n int, budget int64, sessionTTL time.Duration) *testCluster {
	tc := &testCluster{t: t, nodes: make([]*Cluster, n), sessionTTL: sessionTTL}
	for range n {
		tc.dirs = append(tc.dirs, t.TempDir())
	}
	tc.start(0, true, budget)
	for i := 1; i < n; i++ {
		tc.start(i, false, budget)
	}
	t.Cleanup(func() {
		for _, c := range tc.nodes {
			if c != nil {
				_ = c.Close()
			}
		}
	})
	eventually(t, 30*time.Second, func() error {
		for i, c := range tc.nodes {
			st := c.Store().State()
			if len(st.Members) != n {
				return fmt.Errorf("node %d sees %d members", i, len(st.Members))
			}
			if len(c.view.LiveMembers()) != n {
				return fmt.Errorf("node %d sees %d live members", i, len(c.view.LiveMembers()))
			}
		}
		return nil
	})
	return tc
}

func (tc *testCluster) stop(i int) {
	if err := tc.nodes[i].Close(); err != nil {
		tc.t.Logf("close node %d: %v", i, err)
	}
	tc.nodes[i] = nil
}

func eventually(t *testing.T, total time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", total, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writeTestGPT writes a small GPT and returns its path and configuration.
func writeTestGPT(t *testing.T, cfg modelgen.GPTConfig) string {
	t.Helper()
	m, err := modelgen.GPT(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "gpt.onnx")
	if err := modelgen.WriteFile(m, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// gptFixture writes the GPT cfg describes and returns its path, a 1 x seq input drawn
// from seed, and the whole model's answer to it.
func gptFixture(t *testing.T, cfg modelgen.GPTConfig, seq int, seed int64) (string, []tensor.Tensor, []float32) {
	t.Helper()
	path := writeTestGPT(t, cfg)
	inputs, err := cfg.ExampleInputs(1, seq, seed)
	if err != nil {
		t.Fatal(err)
	}
	return path, inputs, referenceRun(t, path, inputs)
}

// referenceRun runs the whole model in one ORT session: the reference for any split.
func referenceRun(t *testing.T, path string, inputs []tensor.Tensor) []float32 {
	t.Helper()
	s, err := testBackend(t).Open(context.Background(), path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Run(context.Background(), inputs, nil)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := out[0].Float32s()
	if err != nil {
		t.Fatal(err)
	}
	return vals
}

func maxRelDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	worst := 0.0
	for i := range a {
		d := math.Abs(float64(a[i]) - float64(b[i]))
		worst = max(worst, d/max(1, math.Abs(float64(b[i]))))
	}
	return worst
}

func deploy(t *testing.T, c *Cluster, name, path string, stages, replicas int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := c.Control().PutModel(ctx, name, f, api.DeployOptions{Stages: stages, Replicas: replicas, Size: -1})
	if err != nil {
		t.Fatalf("deploy: %v", err)
	}
	// The version comes back from the leader's FSM, through forwarding when c follows.
	if st.Version == "" {
		t.Fatal("deploy answered no version")
	}
	if _, err := c.Control().ModelStatus(ctx, name, st.Version); err != nil {
		t.Fatalf("deploy answered version %q: %v", st.Version, err)
	}
}

func waitReplicas(t *testing.T, c *Cluster, name string, want int, total time.Duration) {
	t.Helper()
	eventually(t, total, func() error {
		st, err := c.Control().ModelStatus(context.Background(), name, "")
		if err != nil {
			return err
		}
		if !st.Ready {
			return fmt.Errorf("model not ready: %s %+v", st.Reason, st.Stages)
		}
		cs := c.Store().State()
		m, _ := c.view.ResolveVersion(cs, name, "")
		live := c.view.LiveMembers()
		for k := range m.Stages {
			if got := len(c.view.ReadyReplicas(cs, m, k, live)); got != want {
				return fmt.Errorf("stage %d has %d ready replicas, want %d", k, got, want)
			}
		}
		return nil
	})
}

func inferGPT(c *Cluster, name string, inputs []tensor.Tensor) ([]float32, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Inference().Infer(ctx, api.InferRequest{Model: name, Inputs: inputs})
	if err != nil {
		return nil, err
	}
	return res.Outputs[0].Float32s()
}

func TestClusterSplitInferenceAndHealing(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster; skipped in -short")
	}
	cfg := modelgen.GPTConfig{Layers: 4, Dim: 64, Heads: 2, Vocab: 101, Context: 32, Seed: 3, Name: "gpt-test"}
	path, inputs, want := gptFixture(t, cfg, 8, 7)

	tc := startTestCluster(t, 3, 1<<30)
	checkSpeedsReported(t, tc)
	reg := prometheus.NewRegistry()
	if err := tc.nodes[2].RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	deploy(t, tc.nodes[1], "gpt", path, 3, 2)
	waitReplicas(t, tc.nodes[0], "gpt", 2, 60*time.Second)

	for i, c := range tc.nodes {
		got, err := inferGPT(c, "gpt", inputs)
		if err != nil {
			t.Fatalf("infer via node %d: %v", i, err)
		}
		if d := maxRelDiff(got, want); d > 1e-4 {
			t.Fatalf("node %d: split output differs from the whole model by %g", i, d)
		}
	}
	checkStageCallRecorded(t, reg)
	checkBadRequestsRefused(t, tc.nodes[0], inputs)

	// Redeploying the same bytes is a no-op.
	versions := func() int {
		n := 0
		for _, m := range tc.nodes[0].Store().State().Models {
			if m.Name == "gpt" {
				n++
			}
		}
		return n
	}
	deploy(t, tc.nodes[2], "gpt", path, 3, 2)
	if v := versions(); v != 1 {
		t.Fatalf("identical redeploy made %d versions", v)
	}

	victim, victimID, survivor := stopFollowerAndHeal(t, tc, inputs, want)
	restartAndDrain(t, tc, victim, victimID, survivor, inputs, want)
}

// checkSpeedsReported: every node measured its speed at start and reports the same
// figure in its membership metadata and its member record (the planner's and
// placement's input); 1 would be the fallback of a benchmark that did not run.
func checkSpeedsReported(t *testing.T, tc *testCluster) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		for i, c := range tc.nodes {
			meta := c.mesh.Meta().Speed
			rec := tc.nodes[0].Store().State().Members[c.Self()].Capacity.Speed
			if meta <= 1 || rec != meta {
				return fmt.Errorf("node %d: speed %v in metadata, %v in its member record", i, meta, rec)
			}
		}
		return nil
	})
}

// checkStageCallRecorded: node 2 drove or forwarded one request, so its stage-call
// histogram counts it.
func checkStageCallRecorded(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	calls := uint64(0)
	for _, f := range families {
		if f.GetName() == "layermesh_stage_call_duration_seconds" {
			for _, m := range f.GetMetric() {
				calls += m.GetHistogram().GetSampleCount()
			}
		}
	}
	if calls == 0 {
		t.Fatal("no stage call recorded in layermesh_stage_call_duration_seconds")
	}

}

// checkBadRequestsRefused: bad requests are refused before any stage sees them, with
// the API's sentinels.
func checkBadRequestsRefused(t *testing.T, c *Cluster, inputs []tensor.Tensor) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Inference().Infer(ctx, api.InferRequest{Model: "nope", Inputs: inputs}); !errors.Is(err, api.ErrModelNotFound) {
		t.Fatalf("unknown model: %v", err)
	}
	wrong := []tensor.Tensor{tensor.FromFloat32(inputs[0].Name, inputs[0].Shape, make([]float32, 8))}
	if _, err := c.Inference().Infer(ctx, api.InferRequest{Model: "gpt", Inputs: wrong}); !errors.Is(err, accel.ErrDTypeMismatch) {
		t.Fatalf("wrong dtype: %v", err)
	}
	if _, err := c.Inference().Infer(ctx, api.InferRequest{Model: "gpt", Inputs: inputs, Outputs: []string{"nope"}}); !errors.Is(err, accel.ErrInputMismatch) {
		t.Fatalf("unknown output: %v", err)
	}

}

// stopFollowerAndHeal stops a node that is not the leader: every stage still answers,
// then heals to 2 replicas on the two survivors. It returns the stopped node's index
// (index and peer id) and a survivor.
func stopFollowerAndHeal(t *testing.T, tc *testCluster, inputs []tensor.Tensor, want []float32) (int, string, *Cluster) {
	t.Helper()
	victim := 0
	for i, c := range tc.nodes {
		if !c.Store().IsLeader() {
			victim = i
			break
		}
	}
	victimID := tc.nodes[victim].Self()
	tc.stop(victim)
	killed := time.Now()
	survivor := tc.nodes[(victim+1)%3]
	got, err := inferGPT(survivor, "gpt", inputs)
	if err != nil {
		t.Fatalf("infer after a node stopped: %v", err)
	}
	if d := maxRelDiff(got, want); d > 1e-4 {
		t.Fatalf("after failover the output differs by %g", d)
	}
	eventually(t, 15*time.Second, func() error {
		st := survivor.Store().State()
		m, err := survivor.view.ResolveVersion(st, "gpt", "")
		if err != nil {
			return err
		}
		pl := st.Placements[m.Name+"@"+m.Version]
		live := survivor.view.LiveMembers()
		if _, ok := live[victimID]; ok {
			return fmt.Errorf("stopped node still in memberlist")
		}
		for k, reps := range pl.Stages {
			if slices.Contains(reps, victimID) || len(reps) != 2 {
				return fmt.Errorf("stage %d placed on %v", k, reps)
			}
			if ready := survivor.view.ReadyReplicas(st, m, k, live); len(ready) != 2 {
				return fmt.Errorf("stage %d ready on %v", k, ready)
			}
		}
		return nil
	})
	t.Logf("replicas back to 2 %v after the stop", time.Since(killed).Round(time.Millisecond))

	return victim, victimID, survivor
}

// restartAndDrain brings the stopped node back with its identity, sees it given
// stages again, then drains it: its stages move to the others first, then it serves
// nothing, and every stage keeps 2 ready replicas throughout.
func restartAndDrain(t *testing.T, tc *testCluster, victim int, victimID string, survivor *Cluster, inputs []tensor.Tensor, want []float32) {
	t.Helper()
	ctx := context.Background()
	// The stopped node comes back with its identity and is given stages again.
	back := tc.start(victim, victim == 0, 1<<30)
	if back.Self() != victimID {
		t.Fatalf("restarted node has peer id %s, was %s", back.Self(), victimID)
	}
	eventually(t, 30*time.Second, func() error {
		if r := back.Ready(context.Background()); !r[0].Ready {
			return errors.New(r[0].Reason)
		}
		if n := len(back.Runtime().Served()); n == 0 {
			return fmt.Errorf("restarted node serves no stage")
		}
		for _, s := range back.Runtime().Served() {
			if !s.Ready {
				return fmt.Errorf("stage %v loading", s.Key)
			}
		}
		return nil
	})
	got, err := inferGPT(back, "gpt", inputs)
	if err != nil || maxRelDiff(got, want) > 1e-4 {
		t.Fatalf("infer via the restarted node: %v (diff %g)", err, maxRelDiff(got, want))
	}

	// Drain it again: its stages move to the others first, then it serves nothing,
	// and every stage keeps 2 ready replicas throughout.
	if err := survivor.Control().DrainNode(ctx, back.opts.Name); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		st := survivor.Store().State()
		m, err := survivor.view.ResolveVersion(st, "gpt", "")
		if err != nil {
			return err
		}
		live := survivor.view.LiveMembers()
		for k := range m.Stages {
			ready := survivor.view.ReadyReplicas(st, m, k, live)
			if len(ready) < 2 {
				return fmt.Errorf("stage %d has ready replicas %v", k, ready)
			}
		}
		if n := len(back.Runtime().Served()); n != 0 {
			return fmt.Errorf("drained node still serves %d stages", n)
		}
		return nil
	})
	if _, err := inferGPT(survivor, "gpt", inputs); err != nil {
		t.Fatalf("infer after the drain: %v", err)
	}
}

// TestClusterManyStagesPerNode: two nodes each serve 40 stages (20 two-stage models,
// two replicas), more than membership metadata (512 bytes) could ever list; every
// model is ready with both replicas, answers like its reference, and the node list
// shows all 40 stages of each node. The served stages travel in the Raft state.
func TestClusterManyStagesPerNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 2-node cluster; skipped in -short")
	}
	cfg := modelgen.GPTConfig{Layers: 2, Dim: 16, Heads: 2, Vocab: 11, Context: 8, Seed: 5, Name: "gpt-many"}
	path, inputs, want := gptFixture(t, cfg, 4, 3)
	tc := startTestCluster(t, 2, 1<<30)
	const models = 20
	for i := range models {
		deploy(t, tc.nodes[i%2], fmt.Sprintf("m%02d", i), path, 2, 2)
	}
	for i := range models {
		waitReplicas(t, tc.nodes[0], fmt.Sprintf("m%02d", i), 2, 60*time.Second)
	}
	for i := range models {
		got, err := inferGPT(tc.nodes[1-i%2], fmt.Sprintf("m%02d", i), inputs)
		if err != nil {
			t.Fatalf("m%02d: %v", i, err)
		}
		if d := maxRelDiff(got, want); d > 1e-4 {
			t.Fatalf("m%02d differs from its reference by %g", i, d)
		}
	}
	eventually(t, 10*time.Second, func() error {
		nodes, err := tc.nodes[0].Nodes(context.Background())
		if err != nil {
			return err
		}
		for _, n := range nodes {
			ready := 0
			for _, m := range n.Models {
				if strings.HasSuffix(m, "(ready)") {
					ready++
				}
			}
			if ready != 2*models {
				return fmt.Errorf("node %s lists %d ready stages, want %d", n.Name, ready, 2*models)
			}
		}
		return nil
	})
}

// TestClusterCollectsUnreferencedBlobs: after a model is deleted, every node removes
// its source and stage blobs once they are past the grace period, and keeps those of
// the model still deployed; within the grace period nothing goes.
func TestClusterCollectsUnreferencedBlobs(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 2-node cluster; skipped in -short")
	}
	keepCfg := modelgen.GPTConfig{Layers: 2, Dim: 16, Heads: 2, Vocab: 11, Context: 8, Seed: 5, Name: "gpt-keep"}
	dropCfg := keepCfg
	dropCfg.Seed, dropCfg.Name = 6, "gpt-drop"
	tc := startTestCluster(t, 2, 1<<30)
	deploy(t, tc.nodes[0], "keep", writeTestGPT(t, keepCfg), 2, 2)
	deploy(t, tc.nodes[0], "drop", writeTestGPT(t, dropCfg), 2, 2)
	waitReplicas(t, tc.nodes[0], "keep", 2, 30*time.Second)
	waitReplicas(t, tc.nodes[0], "drop", 2, 30*time.Second)
	st := tc.nodes[0].Store().State()
	blobs := func(name string) []string {
		m, err := tc.nodes[0].view.ResolveVersion(st, name, "")
		if err != nil {
			t.Fatal(err)
		}
		out := []string{m.SourceSHA256}
		for _, s := range m.Stages {
			out = append(out, s.SHA256)
		}
		return out
	}
	keep, drop := blobs("keep"), blobs("drop")
	dm, _ := tc.nodes[0].view.ResolveVersion(st, "drop", "")
	dropKey := dm.Name + "@" + dm.Version
	if err := tc.nodes[1].Control().DeleteModel(context.Background(), "drop"); err != nil {
		t.Fatal(err)
	}
	for i, c := range tc.nodes {
		eventually(t, 10*time.Second, func() error {
			if _, ok := c.store.View().Models[dropKey]; ok {
				return fmt.Errorf("node %d still has the model", i)
			}
			return nil
		})
		if n, _ := c.control.CollectBlobs(time.Hour); n != 0 {
			t.Fatalf("node %d removed %d blobs within the grace period", i, n)
		}
		n, freed := c.control.CollectBlobs(0)
		t.Logf("node %d removed %d blobs, %d bytes", i, n, freed)
		store := c.mesh.Blobs()
		for _, h := range keep {
			if i == 0 || h != keep[0] { // only the cutter (node 0) holds the sources
				if !store.Has(h) {
					t.Fatalf("node %d lost blob %s of the deployed model", i, h)
				}
			}
		}
		for _, h := range drop {
			if store.Has(h) {
				t.Fatalf("node %d keeps blob %s of the deleted model", i, h)
			}
		}
		if n == 0 {
			t.Fatalf("node %d removed nothing", i)
		}
	}
	_, inputs, _ := gptFixture(t, keepCfg, 4, 3)
	if _, err := inferGPT(tc.nodes[1], "keep", inputs); err != nil {
		t.Fatalf("the model kept answers no more: %v", err)
	}
}
