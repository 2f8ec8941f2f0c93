package split

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/test/harness"
)

// testGPT is the model of these tests: 4 layers x 256, small enough for `make test`
// on two shared cores, large enough that its stages are real work (about 14 MB).
var testGPT = modelgen.GPTConfig{Layers: 4, Dim: 256, Heads: 4, Vocab: 1024, Context: 64, Seed: 11, Name: "gpt-split"}

const seqLen = 16

var (
	ortOnce       sync.Once
	sharedBackend accel.Backend
	ortErr        error
)

func backend(t *testing.T) accel.Backend {
	t.Helper()
	ortOnce.Do(func() { sharedBackend, ortErr = ort.New(ort.Config{IntraOpThreads: 1, Provider: accel.ProviderCPU}) })
	if ortErr != nil {
		t.Fatalf("ONNX Runtime is needed for the reference and did not load: %v", ortErr)
	}
	return sharedBackend
}

// model writes the test GPT and returns its path and size.
func model(t *testing.T) (string, int64) {
	t.Helper()
	return harness.WriteGPT(t, testGPT, t.TempDir(), "gpt")
}

// inputs returns request seq's token ids.
func inputs(t *testing.T, seq int) []tensor.Tensor {
	t.Helper()
	return harness.GPTInputs(t, testGPT, seqLen, seq)
}

// reference runs the whole model in one session.
type reference struct {
	sess accel.Session
}

func newReference(t *testing.T, path string) *reference {
	t.Helper()
	s, err := backend(t).Open(context.Background(), path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return &reference{sess: s}
}

func (r *reference) logits(t *testing.T, in []tensor.Tensor) []float32 {
	t.Helper()
	out, err := r.sess.Run(context.Background(), in, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := out[0].Float32s()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

type splitCluster struct {
	*harness.Cluster
	t     *testing.T
	token string
}

// startCluster starts n meshnode processes with the given stage memory budget each.
func startCluster(t *testing.T, n int, memBudget int64) *splitCluster {
	t.Helper()
	c := harness.StartCluster(t, n, harness.ClusterOptions{
		Flags: func(c *harness.Cluster, node *harness.Node) []string {
			return append(c.DefaultFlags(node), "--gossip-port", "0", "--threads", "1",
				"--mem-budget", strconv.FormatInt(memBudget, 10))
		},
	})
	token, err := c.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	sc := &splitCluster{Cluster: c, t: t, token: token}
	st, err := sc.client(0).Cluster(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != "cluster" {
		t.Fatalf("meshnode runs %q mode with cluster flags: the cluster is not wired into node.New "+
			"(node.NewNodeCluster must be called there); these system tests cannot run", st.Mode)
	}
	harness.Eventually(t, 60*time.Second, 200*time.Millisecond, func() error { return sc.allAlive(n) })
	return sc
}

func (c *splitCluster) client(i int) *client.Client {
	cl, err := client.New(c.HTTPAddr(i), client.WithToken(c.token))
	if err != nil {
		c.t.Fatal(err)
	}
	return cl
}

func (c *splitCluster) deploy(via int, path string, size int64, stages, replicas int) (wire.ModelStatus, error) {
	f, err := os.Open(path)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	return c.deployFrom(via, f, size, stages, replicas)
}

// deployFrom uploads the model read from body through node via.
func (c *splitCluster) deployFrom(via int, body io.Reader, size int64, stages, replicas int) (wire.ModelStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return c.client(via).UploadModel(ctx, "gpt", body, size, client.UploadOptions{Stages: stages, Replicas: replicas})
}

// pausedReader reads r, but once it has given out `at` bytes it closes reached and
// waits until release is closed: an upload paused halfway, at a point the test picks.
type pausedReader struct {
	r                io.Reader
	at, read         int64
	reached, release chan struct{}
	paused           bool
}

func (p *pausedReader) Read(b []byte) (int, error) {
	if !p.paused && p.read >= p.at {
		p.paused = true
		close(p.reached)
		<-p.release
	}
	if !p.paused {
		b = b[:min(int64(len(b)), p.at-p.read)]
	}
	n, err := p.r.Read(b)
	p.read += int64(n)
	return n, err
}

// readyReplicas counts ready replicas per stage as node via reports them.
func (c *splitCluster) readyReplicas(via int, exclude ...string) (map[int]int, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return harness.ReadyReplicas(ctx, c.client(via), "gpt", exclude...)
}

// waitReplicas waits until node via reports every stage with want ready replicas on
// nodes other than those named in exclude.
func (c *splitCluster) waitReplicas(via, want int, total time.Duration, exclude ...string) error {
	return harness.Poll(total, 200*time.Millisecond, func() error {
		counts, stages, err := c.readyReplicas(via, exclude...)
		if err != nil {
			return err
		}
		if stages == 0 {
			return errors.New("model has no stages yet")
		}
		for k := range stages {
			if counts[k] != want {
				return fmt.Errorf("stage %d has %d ready replicas, want %d (%v)", k, counts[k], want, counts)
			}
		}
		return nil
	})
}

func (c *splitCluster) infer(via int, in []tensor.Tensor) ([]float32, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.client(via).Infer(ctx, "gpt", &wire.Request{Inputs: in, BinaryOutputs: true}, client.InferOptions{BinaryInputs: true})
	if err != nil {
		return nil, err
	}
	if len(resp.Outputs) != 1 {
		return nil, fmt.Errorf("%d outputs", len(resp.Outputs))
	}
	return resp.Outputs[0].Float32s()
}

// TestSplitCorrectness: 3 stages x 2 replicas on 3 nodes; the answer through every
// node equals one ONNX Runtime session on the whole model within 1e-4.
func TestSplitCorrectness(t *testing.T) {
	path, size := model(t)
	ref := newReference(t, path)
	c := startCluster(t, 3, 1<<30)
	if _, err := c.deploy(1, path, size, 3, 2); err != nil {
		t.Fatalf("deploy: %v", err)
	}
	if err := c.waitReplicas(0, 2, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		in := inputs(t, i)
		got, err := c.infer(i, in)
		if err != nil {
			t.Fatalf("infer via node %d: %v", i, err)
		}
		if d := harness.MaxRelDiff(got, ref.logits(t, in)); d > 1e-4 {
			t.Fatalf("via node %d: output differs from the whole model by %g", i, d)
		}
		t.Logf("via node %d: max relative difference %.2g", i, harness.MaxRelDiff(got, ref.logits(t, in)))
	}
}

// TestSplitLargerThanAnyNode: every node's budget is below the model's size, their sum
// is enough; the model deploys in 3 stages and answers correctly.
func TestSplitLargerThanAnyNode(t *testing.T) {
	path, size := model(t)
	ref := newReference(t, path)
	budget := size * 7 / 10
	c := startCluster(t, 3, budget)
	st, err := c.deploy(0, path, size, 3, 1)
	if err != nil {
		t.Fatalf("deploy of a %d-byte model on 3 x %d bytes: %v", size, budget, err)
	}
	t.Logf("deployed version %s in %d stages on budgets of %d bytes each (model %d bytes)", st.Version, len(st.Stages), budget, size)
	if err := c.waitReplicas(0, 1, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	in := inputs(t, 42)
	got, err := c.infer(2, in)
	if err != nil {
		t.Fatal(err)
	}
	if d := harness.MaxRelDiff(got, ref.logits(t, in)); d > 1e-4 {
		t.Fatalf("output differs by %g", d)
	}

}

// TestSplitDeployBeyondCapacity: asking for more than the cluster can hold fails with
// a clear error naming the shortfall, and leaves nothing behind.
func TestSplitDeployBeyondCapacity(t *testing.T) {
	path, size := model(t)
	small := startCluster(t, 2, size/4)
	_, err := small.deploy(0, path, size, 0, 1)
	var apiErr *client.Error
	if err == nil || !errors.As(err, &apiErr) || !regexp.MustCompile(`short|exceed|fit`).MatchString(apiErr.Message) {
		t.Fatalf("deploy beyond capacity: got %v, want a clear capacity error", err)
	}
	t.Logf("beyond capacity: %d %s: %s", apiErr.Status, apiErr.Code, apiErr.Message)
	if models, err := small.client(1).Models(context.Background()); err != nil || len(models) != 0 {
		t.Fatalf("a refused deploy left models behind: %v %v", models, err)
	}
}

// TestSplitDeployCorrupt: a truncated model is refused with 422 invalid_model and
// leaves nothing behind.
func TestSplitDeployCorrupt(t *testing.T) {
	path, size := model(t)
	c := startCluster(t, 2, 1<<30)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "truncated.onnx")
	if err := os.WriteFile(bad, raw[:size/3], 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = c.deploy(0, bad, size/3, 2, 1)
	var apiErr *client.Error
	if !errors.As(err, &apiErr) || apiErr.Status != 422 || apiErr.Code != "invalid_model" {
		t.Fatalf("corrupt model: got %v, want 422 invalid_model", err)
	}
	if models, err := c.client(1).Models(context.Background()); err != nil || len(models) != 0 {
		t.Fatalf("a refused deploy left models behind: %v %v", models, err)
	}
}

// TestSplitStageHolderKilled: 200 requests at concurrency 4 while a stage holder is
// killed with SIGKILL midway: no request fails, the replica count is back to 2 within
// 15 s, and the killed node, restarted, rejoins with the same identity and serves again.
func TestSplitStageHolderKilled(t *testing.T) {
	path, size := model(t)
	ref := newReference(t, path)
	c := startCluster(t, 4, 1<<30)
	if _, err := c.deploy(0, path, size, 3, 2); err != nil {
		t.Fatalf("deploy: %v", err)
	}
	if err := c.waitReplicas(0, 2, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	victim := pickStageHolder(t, c)
	entry := (victim + 1) % 4
	// The heal is watched from the kill on, while the load still runs, so that the
	// time it took is the cluster's and not the load's.
	type healed struct {
		at  time.Time
		err error
	}
	back := make(chan healed, 1)
	killedAt := killUnderLoad(t, c, ref, victim, func() {
		go func() {
			err := c.waitReplicas(entry, 2, time.Minute, c.Node(victim).Name)
			back <- healed{time.Now(), err}
		}()
	})
	h := <-back
	if h.err != nil {
		t.Fatalf("replicas not back to 2 within a minute of the kill: %v", h.err)
	}
	took := h.at.Sub(killedAt)
	t.Logf("replicas back to 2 %v after the kill", took.Round(time.Millisecond))
	if took > 15*time.Second {
		t.Fatalf("replicas back to 2 only %v after the kill, want within 15 s", took)
	}
	checkRestartRejoins(t, c, ref, victim, entry)
}

// pickStageHolder returns a node that holds stages and is neither the leader nor an
// entry node (node 0).
func pickStageHolder(t *testing.T, c *splitCluster) int {
	leader, err := c.Leader(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	victim := -1
	nodes, err := c.client(0).Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 4 && victim < 0; i++ {
		for _, nd := range nodes {
			if nd.Name == c.Node(i).Name && len(nd.Models) > 0 && i != leader {
				victim = i
			}
		}
	}
	if victim < 0 {
		t.Fatalf("no non-leader stage holder among nodes 1..3: %+v", nodes)
	}
	return victim
}

// killUnderLoad sends 200 requests at concurrency 4 to the other nodes, kills victim
// with SIGKILL after the 60th answer (and calls killed right after), and fails the
// test unless every request got the reference's logits. It records the failover
// figures and returns the kill time.
func killUnderLoad(t *testing.T, c *splitCluster, ref *reference, victim int, killed func()) time.Time {
	var targets []string
	for i := range 4 {
		if i != victim {
			targets = append(targets, c.HTTPAddr(i))
		}
	}
	wantBySeq := make([][]float32, 200)
	bodies := make([]harness.InferBody, 200)
	for seq := range 200 {
		in := inputs(t, seq%8)
		wantBySeq[seq] = ref.logits(t, in)
		b, err := harness.EncodeInfer(&wire.Request{Inputs: in, BinaryOutputs: true}, true)
		if err != nil {
			t.Fatal(err)
		}
		bodies[seq] = b
	}
	var (
		killOnce sync.Once
		killedAt time.Time
	)
	var doneCount int64
	var mu sync.Mutex
	stats, err := harness.RunLoad(context.Background(), harness.LoadConfig{
		Targets: targets, Model: "gpt", Concurrency: 4, Requests: 200, Deadline: 30 * time.Second, Attempts: 1,
		Token: c.token,
		Body:  func(seq int) (harness.InferBody, error) { return bodies[seq], nil },
		Check: func(seq int, resp *wire.Response) error {
			mu.Lock()
			doneCount++
			if doneCount == 60 {
				killOnce.Do(func() {
					killedAt = time.Now()
					if err := c.Kill(victim); err != nil {
						t.Errorf("kill node %d: %v", victim, err)
					}
					killed()
				})
			}
			mu.Unlock()
			got, err := resp.Outputs[0].Float32s()
			if err != nil {
				return err
			}
			if d := harness.MaxRelDiff(got, wantBySeq[seq]); d > 1e-4 {
				return fmt.Errorf("request %d differs by %g", seq, d)
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("load: %s", stats)
	if killedAt.IsZero() {
		t.Fatal("the kill never happened")
	}
	failover := failoverFigures(stats, killedAt)
	t.Logf("failover: %s", failover)
	res := harness.Result{Scenario: "split-stage-holder-kill", Requests: stats.Requests, ClientErrors: stats.Failures,
		FailoverMS: failover.firstMS, Started: stats.Outcomes[0].Start, Finished: time.Now(),
		Passed: stats.Failures == 0 && stats.Successes == 200}
	res.Notef("killed node %d (%s) after 60 answers; %s", victim, c.Node(victim).Name, failover)
	harness.RecordResult(t, res)
	if stats.Failures != 0 || stats.Successes != 200 {
		t.Fatalf("%d of 200 requests failed: %v", stats.Failures, stats.ByCode)
	}
	return killedAt
}

// checkRestartRejoins: the killed node, restarted, keeps its identity (the peer id
// lives in the data dir), serves stages again as entry sees it, and answers.
func checkRestartRejoins(t *testing.T, c *splitCluster, ref *reference, victim, entry int) {
	before, err := os.ReadFile(filepath.Join(c.Node(victim).DataDir, "p2p.addr"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(victim); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitReady(rctx, victim); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(filepath.Join(c.Node(victim).DataDir, "p2p.addr"))
	if err != nil {
		t.Fatal(err)
	}
	if peerID(string(before)) != peerID(string(after)) {
		t.Fatalf("restarted node changed identity: %s -> %s", before, after)
	}
	harness.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error {
		nodes, err := c.client(entry).Nodes(context.Background())
		if err != nil {
			return err
		}
		for _, nd := range nodes {
			if nd.Name == c.Node(victim).Name {
				for _, e := range nd.Models {
					if strings.HasSuffix(e, " (ready)") && nd.State == "alive" {
						return nil
					}
				}
				return fmt.Errorf("restarted node: state %s, stages %v", nd.State, nd.Models)
			}
		}
		return errors.New("restarted node not listed")
	})
	in := inputs(t, 3)
	got, err := c.infer(victim, in)
	if err != nil || harness.MaxRelDiff(got, ref.logits(t, in)) > 1e-4 {
		t.Fatalf("infer via the restarted node: %v", err)
	}
}

func peerID(addr string) string {
	m := regexp.MustCompile(`/p2p/(\w+)`).FindStringSubmatch(addr)
	if m == nil {
		return ""
	}
	return m[1]
}

// TestSplitLeaderKilledDuringDeploy: the leader is killed while a follower takes the
// upload. The deploy either completes (the new leader places it and it answers
// correctly) or fails cleanly (no model left behind); never half applied.
func TestSplitLeaderKilledDuringDeploy(t *testing.T) {
	path, size := model(t)
	ref := newReference(t, path)
	c := startCluster(t, 3, 1<<30)
	// Killing the leader of a cluster with fewer than 3 voters would leave no quorum.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.WaitForVoters(ctx, 3); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	via := (leader + 1) % 3
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The upload pauses halfway through its body, so the leader dies while the follower
	// is taking the upload, however fast this machine cuts the model.
	body := &pausedReader{r: f, at: size / 2, reached: make(chan struct{}), release: make(chan struct{})}
	errs := make(chan error, 1)
	var deployEnd time.Time
	start := time.Now()
	go func() {
		_, err := c.deployFrom(via, body, size, 3, 2)
		deployEnd = time.Now()
		errs <- err
	}()
	select {
	case <-body.reached:
	case err := <-errs:
		t.Fatalf("the deploy ended before half its body was sent: %v", err)
	}
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	close(body.release)
	deployErr := <-errs
	if deployEnd.Before(killedAt) {
		t.Fatalf("the deploy ended %v after it started, before the leader was killed: nothing was tested", deployEnd.Sub(start))
	}
	t.Logf("leader killed %v into the deploy, which ended %v after it started",
		killedAt.Sub(start).Round(time.Millisecond), deployEnd.Sub(start).Round(time.Millisecond))
	lctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	newLeader, err := c.WaitForNewLeader(lctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leader %d killed; new leader %d; deploy via %d: %v", leader, newLeader, via, deployErr)
	models, err := c.client(via).Models(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if deployErr != nil && len(models) == 0 {
		t.Logf("deploy failed cleanly: %v", deployErr)
		return
	}
	if len(models) != 1 {
		t.Fatalf("after the deploy: %d model versions %+v", len(models), models)
	}
	// The model is there: the new leader must finish its placement. Two nodes are left,
	// so each stage can have 2 replicas.
	if err := c.waitReplicas(via, 2, 60*time.Second); err != nil {
		t.Fatalf("new leader did not finish the placement: %v", err)
	}
	in := inputs(t, 5)
	got, err := c.infer(via, in)
	if err != nil || harness.MaxRelDiff(got, ref.logits(t, in)) > 1e-4 {
		t.Fatalf("infer after the deploy: %v", err)
	}
}

// failover summarises the requests that were in flight when the node was killed: the
// ones that had to be retried on another replica inside the cluster.
type failover struct {
	affected               int
	firstMS, p50MS, maxMS  float64 // from the kill to each affected request's answer
	addedP50MS, addedMaxMS float64 // affected latency minus the unaffected median
}

func (f failover) String() string {
	return fmt.Sprintf("%d requests in flight at the kill; kill to answer: first %.0f ms, p50 %.0f ms, max %.0f ms; added latency p50 %.0f ms, max %.0f ms",
		f.affected, f.firstMS, f.p50MS, f.maxMS, f.addedP50MS, f.addedMaxMS)
}

func failoverFigures(stats *harness.LoadStats, killedAt time.Time) failover {
	var toAnswer, added []float64
	var normal []time.Duration
	for _, o := range stats.Outcomes {
		end := o.Start.Add(o.Latency)
		if o.Start.Before(killedAt) && end.After(killedAt) && o.OK() {
			toAnswer = append(toAnswer, float64(end.Sub(killedAt).Microseconds())/1000)
			added = append(added, float64(o.Latency.Microseconds())/1000)
		} else if o.OK() {
			normal = append(normal, o.Latency)
		}
	}
	f := failover{affected: len(toAnswer)}
	if len(toAnswer) == 0 || len(normal) == 0 {
		return f
	}
	base := float64(median(normal).Microseconds()) / 1000
	for i := range added {
		added[i] -= base
	}
	sort.Float64s(toAnswer)
	sort.Float64s(added)
	f.firstMS, f.p50MS, f.maxMS = toAnswer[0], toAnswer[len(toAnswer)/2], toAnswer[len(toAnswer)-1]
	f.addedP50MS, f.addedMaxMS = added[len(added)/2], added[len(added)-1]
	return f
}

// TestSplitNoLiveReplica: a stage whose only holder is killed, with no other node able
// to hold it, makes inference answer 503 no_replica with Retry-After, never 500.
func TestSplitNoLiveReplica(t *testing.T) {
	path, size := model(t)
	c := startCluster(t, 2, size*6/10)
	if _, err := c.deploy(0, path, size, 2, 1); err != nil {
		t.Fatalf("deploy: %v", err)
	}
	if err := c.waitReplicas(0, 1, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	victim, entry := 1-leader, leader
	if err := c.Kill(victim); err != nil {
		t.Fatal(err)
	}
	body, err := harness.EncodeInfer(&wire.Request{Inputs: inputs(t, 1), BinaryOutputs: true}, true)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		req, err := http.NewRequest(http.MethodPost, c.URL(entry, "/v2/models/gpt/infer"), bytes.NewReader(body.Body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(body.HeaderLen))
		req.Header.Set("Authorization", "Bearer "+c.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
			!strings.Contains(string(msg), "no_replica") {
			t.Fatalf("request %d with stage holder dead: %d Retry-After=%q %s", i, resp.StatusCode, resp.Header.Get("Retry-After"), msg)
		}
		if i == 0 {
			t.Logf("answer with the only holder of a stage dead: %d, Retry-After %s, %s", resp.StatusCode, resp.Header.Get("Retry-After"), msg)
		}
		time.Sleep(2 * time.Second) // the next ones after memberlist declared it dead
	}
}
