package faults

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/test/harness"
	"google.golang.org/protobuf/proto"
)

// faultGPT is the model the cluster scenarios infer: 2 layers x 64, cut in 2 stages
// with 2 replicas each, so that every request crosses the mesh and every stage has a
// replica to fail over to, while a stage runs in well under a millisecond on the two
// shared cores of CI.
var faultGPT = modelgen.GPTConfig{Layers: 2, Dim: 64, Heads: 2, Vocab: 128, Context: 16, Seed: 5, Name: "gpt-fault"}

const (
	gptName   = "gpt"
	gptSeqLen = 8
	// gptInputs is how many distinct inputs the load cycles through.
	gptInputs = 8
)

// faultCluster is a cluster of meshnode processes serving faultGPT, with the admin
// token and the reference answers the load checks against.
type faultCluster struct {
	*harness.Cluster
	t     *testing.T
	token string
	// flagHook, when set, changes a node's flags at its next start.
	flagHook func(n *harness.Node, flags []string) []string
	// bodies and want are the request body and the logits of each of the gptInputs.
	bodies []harness.InferBody
	want   [][]float32
}

// startFaultCluster starts n nodes (inside nw's namespaces when nw is not nil), waits
// until every node sees all n alive and the joiners are voters, and deploys faultGPT
// in 2 stages x 2 replicas; extraFlags go to every node. The reference answers are the cluster's own for each input
// before any fault, checked across every node: test/split holds the split's answer
// against one ONNX Runtime session on the whole model, so here a fault must not change
// it.
func startFaultCluster(t *testing.T, n int, nw *harness.Network, extraFlags ...string) *faultCluster {
	t.Helper()
	fc := &faultCluster{t: t}
	c := harness.StartCluster(t, n, harness.ClusterOptions{
		Network: nw,
		Flags: func(c *harness.Cluster, node *harness.Node) []string {
			flags := append(append(c.DefaultFlags(node), "--threads", "1", "--accel", "cpu"), extraFlags...)
			if fc.flagHook != nil {
				flags = fc.flagHook(node, flags)
			}
			return flags
		},
	})
	token, err := c.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	fc.Cluster, fc.token = c, token
	if err := fc.waitAlive(n, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	// A fault before every node is a voter could leave the cluster without quorum for
	// reasons no scenario is about.
	vctx, vcancel := context.WithTimeout(context.Background(), time.Minute)
	defer vcancel()
	if err := c.WaitForVoters(vctx, n); err != nil {
		t.Fatal(err)
	}

	raw, err := gptModel()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := fc.client(0).UploadModel(ctx, gptName, bytes.NewReader(raw), int64(len(raw)), client.UploadOptions{Stages: 2, Replicas: 2}); err != nil {
		t.Fatalf("deploy %s: %v", gptName, err)
	}
	if err := fc.waitReplicas(0, 2, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	for seq := range gptInputs {
		in, err := faultGPT.ExampleInputs(1, gptSeqLen, int64(seq))
		if err != nil {
			t.Fatal(err)
		}
		b, err := harness.EncodeInfer(&wire.Request{Inputs: in, BinaryOutputs: seq%2 == 0}, seq%2 == 0)
		if err != nil {
			t.Fatal(err)
		}
		fc.bodies = append(fc.bodies, b)
		var first []float32
		for i := range n {
			resp, err := fc.client(i).Infer(ctx, gptName, &wire.Request{Inputs: in, BinaryOutputs: true}, client.InferOptions{BinaryInputs: true})
			if err != nil {
				t.Fatalf("reference infer %d via node %d: %v", seq, i, err)
			}
			got, err := resp.Outputs[0].Float32s()
			if err != nil {
				t.Fatal(err)
			}
			if first == nil {
				first = got
			} else if d := harness.MaxRelDiff(got, first); d > 1e-5 {
				t.Fatalf("input %d: node %d answers differently from node 0 (by %g) before any fault", seq, i, d)
			}
		}
		fc.want = append(fc.want, first)
	}
	return fc
}

func gptModel() ([]byte, error) {
	m, err := modelgen.GPT(faultGPT)
	if err != nil {
		return nil, err
	}
	return proto.Marshal(m)
}

func (c *faultCluster) client(i int) *client.Client {
	cl, err := client.New(c.HTTPAddr(i), client.WithToken(c.token))
	if err != nil {
		c.t.Fatal(err)
	}
	return cl
}

// waitAlive waits until every running node sees want members alive.
func (c *faultCluster) waitAlive(want int, total time.Duration) error {
	return harness.Poll(total, 200*time.Millisecond, func() error { return c.AliveEverywhere(c.token, want) })
}

// readyReplicas counts, per stage of the GPT's current version, the alive nodes that
// serve it ready as node via reports them, leaving out the nodes named in exclude.
func (c *faultCluster) readyReplicas(via int, exclude ...string) (map[int]int, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return harness.ReadyReplicas(ctx, c.client(via), gptName, exclude...)
}

// waitReplicas waits until node via reports every GPT stage with at least want ready
// replicas on nodes other than those named in exclude.
func (c *faultCluster) waitReplicas(via, want int, total time.Duration, exclude ...string) error {
	return harness.Poll(total, 200*time.Millisecond, func() error {
		counts, stages, err := c.readyReplicas(via, exclude...)
		if err != nil {
			return err
		}
		if stages == 0 {
			return errors.New("model has no stages yet")
		}
		for k := range stages {
			if counts[k] < want {
				return fmt.Errorf("stage %d has %d ready replicas, want %d (%v)", k, counts[k], want, counts)
			}
		}
		return nil
	})
}

// stageHolders returns the indexes of the nodes that serve a GPT stage ready, as node
// via reports them.
func (c *faultCluster) stageHolders(via int) ([]int, error) {
	nodes, err := c.client(via).Nodes(context.Background())
	if err != nil {
		return nil, err
	}
	var out []int
	for i, n := range c.Nodes {
		for _, nd := range nodes {
			if nd.Name != n.Name || nd.State != "alive" {
				continue
			}
			for _, e := range nd.Models {
				if se, ok := harness.ParseStageEntry(e); ok && se.Model == gptName && se.Ready {
					out = append(out, i)
					break
				}
			}
		}
	}
	return out, nil
}

// load describes the inference stream of a scenario: what a real client with the list
// of every node does. A request is sent to one node; on no answer, 429, 502, 503 or
// 504 it is sent again to the next node in the list (after the server's Retry-After,
// or 50 ms), up to attempts tries, all within its deadline. A failed inference is a
// request that got no correct answer within its deadline after these retries: a 4xx,
// a 500, a wrong answer, or the deadline passing.
func (c *faultCluster) load(targets []string, concurrency int, d time.Duration, deadline time.Duration) harness.LoadConfig {
	return harness.LoadConfig{
		Targets: targets, Model: gptName, Concurrency: concurrency, Duration: d, Deadline: deadline,
		Attempts: 3 * len(targets), Pace: 10 * time.Millisecond,
		Body: func(seq int) (harness.InferBody, error) { return c.bodies[seq%gptInputs], nil },
		Check: func(seq int, resp *wire.Response) error {
			if len(resp.Outputs) != 1 {
				return fmt.Errorf("%d outputs", len(resp.Outputs))
			}
			got, err := resp.Outputs[0].Float32s()
			if err != nil {
				return err
			}
			if diff := harness.MaxRelDiff(got, c.want[seq%gptInputs]); diff > 1e-4 {
				return fmt.Errorf("logits differ from the reference by %g", diff)
			}
			return nil
		},
	}
}

// runLoad runs cfg in the background; wait returns its statistics.
func runLoad(ctx context.Context, cfg harness.LoadConfig) (wait func() (*harness.LoadStats, error)) {
	type res struct {
		st  *harness.LoadStats
		err error
	}
	ch := make(chan res, 1)
	go func() {
		st, err := harness.RunLoad(ctx, cfg)
		ch <- res{st, err}
	}()
	return func() (*harness.LoadStats, error) {
		r := <-ch
		return r.st, r.err
	}
}

// writeOutcome is what the writer learned about one catalogue write.
type writeOutcome int

// Outcomes of a write as the client sees them: the tri-state of a write to a
// replicated store.
const (
	writeAcked   writeOutcome = iota // 201/200: committed, must never be lost
	writeUnknown                     // no definite answer within the deadline: may or may not be applied
	writeRefused                     // a definite refusal: not applied
)

// writer makes catalogue writes (uploads of tiny models, each under its own name with
// its own weights, so the name's value is the upload's sha256) and reads (GET
// /v1/models/{name}: its sha256, or absent), recording both in a history for
// porcupine. It is what a client with the list of every node does: a write goes to one
// node; when it gets no definite answer, it is sent again, with the same bytes, to the
// next node, until the deadline. The same bytes under the same name are deduplicated
// by the node (the existing version is returned), so a retried write applies once.
type writer struct {
	t       *testing.T
	token   string
	prefix  string
	hist    *harness.History
	targets func() []string
	// deadline bounds one write across all its tries.
	deadline time.Duration

	mu       sync.Mutex
	next     int
	acked    map[string]string // name -> sha256
	unknown  map[string]string
	refused  map[string]string
	codes    map[string]int // answers that made a try end without success
	requests int
	// ackedVia counts, per node address, the writes acknowledged by it.
	ackedVia map[string]int
	// ackedAt is when each acknowledged write returned; absentReads lists the reads
	// that found no model, to tell a stale read from a lost write in a violation.
	ackedAt     map[string]time.Time
	absentReads []absentRead
}

// absentRead is a read that answered "no such model".
type absentRead struct {
	name, target string
	start        time.Time
}

func newWriter(t *testing.T, token, prefix string, targets func() []string) *writer {
	return &writer{t: t, token: token, prefix: prefix, hist: harness.NewHistory(), targets: targets, deadline: 20 * time.Second,
		acked: map[string]string{}, ackedAt: map[string]time.Time{}, unknown: map[string]string{}, refused: map[string]string{}, codes: map[string]int{}, ackedVia: map[string]int{}}
}

// writeModel returns the bytes of write k: the add model with a bias of its own.
func writeModel(k int) ([]byte, string, error) {
	m, err := addModelBytes([]float32{float32(k), 0.25, -0.25})
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(m)
	return m, hex.EncodeToString(sum[:]), nil
}

func addModelBytes(bias []float32) (raw []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("building the add model: %v", r)
		}
	}()
	return addModelWithBias(panicTB{}, bias), nil
}

// panicTB lets addModelWithBias run outside the test goroutine: its Fatal panics, and
// addModelBytes turns the panic into an error.
type panicTB struct{ testing.TB }

func (panicTB) Helper()                      {}
func (panicTB) Fatal(args ...any)            { panic(fmt.Sprint(args...)) }
func (panicTB) Fatalf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }

// write makes one catalogue write from client id and returns its outcome.
func (w *writer) write(ctx context.Context, id int) (string, writeOutcome) {
	w.mu.Lock()
	k := w.next
	w.next++
	w.mu.Unlock()
	name := fmt.Sprintf("%s-w%d", w.prefix, k)
	raw, sum, err := writeModel(k)
	if err != nil {
		w.t.Error(err)
		return name, writeRefused
	}
	op := w.hist.Begin(id, harness.KVOp{Kind: harness.KVPut, Key: name, Value: sum})
	ctx, cancel := context.WithTimeout(ctx, w.deadline)
	defer cancel()
	targets := w.targets()
	for try := 0; ; try++ {
		target := targets[(k+try)%len(targets)]
		cl, err := client.New(target, client.WithToken(w.token))
		if err != nil {
			w.t.Error(err)
			return name, writeRefused
		}
		// A try that hangs (its node frozen or cut off) is given up after 4 s, as a
		// client with a list of nodes would, and the same bytes go to the next node.
		tctx, tcancel := context.WithTimeout(ctx, 4*time.Second)
		st, err := cl.UploadModel(tctx, name, bytes.NewReader(raw), int64(len(raw)), client.UploadOptions{Stages: 1, Replicas: 1})
		tcancel()
		w.mu.Lock()
		w.requests++
		w.mu.Unlock()
		if err == nil {
			if st.SHA256 != sum {
				w.t.Errorf("write %s acknowledged with sha256 %s, sent %s", name, st.SHA256, sum)
			}
			op.Ok("")
			w.mu.Lock()
			w.acked[name] = sum
			w.ackedAt[name] = time.Now()
			w.ackedVia[target]++
			w.mu.Unlock()
			return name, writeAcked
		}
		var apiErr *client.Error
		code := "transport"
		if errors.As(err, &apiErr) {
			code = fmt.Sprintf("%d %s", apiErr.Status, apiErr.Code)
			if apiErr.Status >= 400 && apiErr.Status < 500 && apiErr.Status != http.StatusTooManyRequests {
				// A refusal of the request itself: nothing was applied.
				w.mu.Lock()
				w.codes[code]++
				w.refused[name] = sum
				w.mu.Unlock()
				op.Failed()
				w.t.Errorf("write %s refused by %s: %v", name, target, err)
				return name, writeRefused
			}
		}
		w.mu.Lock()
		w.codes[code]++
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			// The client never learned whether the write was applied: it may show up
			// later, or never. Porcupine may place it anywhere after its call.
			op.Unknown()
			w.mu.Lock()
			w.unknown[name] = sum
			w.mu.Unlock()
			return name, writeUnknown
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// read reads name's sha256 on target and records it; a read without an answer
// observed nothing and is left out.
func (w *writer) read(ctx context.Context, id int, target, name string) {
	op := w.hist.Begin(id, harness.KVOp{Kind: harness.KVGet, Key: name})
	cl, err := client.New(target, client.WithToken(w.token))
	if err != nil {
		w.t.Error(err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	start := time.Now()
	st, err := cl.Model(ctx, name)
	switch {
	case err == nil:
		op.Ok(st.SHA256)
	case client.IsCode(err, string(api.CodeModelNotFound)):
		op.Ok("")
		w.mu.Lock()
		w.absentReads = append(w.absentReads, absentRead{name: name, target: target, start: start})
		w.mu.Unlock()
	default:
		op.Failed()
	}
}

// run writes (pace apart) and reads until ctx ends: one writing client and one
// reading client that reads a random name written so far on a random node.
func (w *writer) run(ctx context.Context, pace time.Duration) (wait func()) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			w.write(context.WithoutCancel(ctx), 0)
			select {
			case <-ctx.Done():
			case <-time.After(pace):
			}
		}
	}()
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
		for ctx.Err() == nil {
			w.mu.Lock()
			n := w.next
			w.mu.Unlock()
			if n > 0 {
				targets := w.targets()
				w.read(context.WithoutCancel(ctx), 1, targets[rng.IntN(len(targets))], fmt.Sprintf("%s-w%d", w.prefix, rng.IntN(n)))
			}
			select {
			case <-ctx.Done():
			case <-time.After(pace / 2):
			}
		}
	}()
	return wg.Wait
}

// stats returns the writer's counts.
func (w *writer) stats() (acked, unknown, refused, requests int, codes map[string]int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked), len(w.unknown), len(w.refused), w.requests, maps.Clone(w.codes)
}

// catalogue returns node i's models as name -> sha256 of its versions.
func (c *faultCluster) catalogue(i int) (map[string][]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	models, err := c.client(i).Models(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, m := range models {
		out[m.Name] = append(out[m.Name], m.SHA256)
	}
	return out, nil
}

// verifyWrites waits until every running node reports the same catalogue, then checks
// that every acknowledged write is in it with its own sha256 exactly once (a retried
// write applied twice is a duplicate), and that no refused write is. It adds what it
// finds to result and fails the test on a lost write.
func (c *faultCluster) verifyWrites(w *writer, result *harness.Result, total time.Duration) {
	c.t.Helper()
	var cats []map[string][]string
	err := harness.Poll(total, 300*time.Millisecond, func() error {
		cats = cats[:0]
		for i, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			cat, err := c.catalogue(i)
			if err != nil {
				return fmt.Errorf("node %d: %w", i, err)
			}
			cats = append(cats, cat)
		}
		for j := 1; j < len(cats); j++ {
			if !maps.EqualFunc(cats[0], cats[j], slices.Equal[[]string]) {
				return fmt.Errorf("nodes disagree on the catalogue: %d vs %d models", len(cats[0]), len(cats[j]))
			}
		}
		// Every acknowledged write must be there: a lagging follower gets the time to
		// catch up; only what is still missing at the end is lost.
		for name := range w.acked {
			if len(cats[0][name]) == 0 {
				return fmt.Errorf("acknowledged write %s not (yet) in the catalogue", name)
			}
		}
		return nil
	})
	if err != nil {
		c.t.Errorf("states did not converge within %v: %v", total, err)
		result.Notef("states did not converge: %v", err)
	}
	if len(cats) == 0 {
		c.t.Error("no node to verify the writes on")
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	cat := cats[0]
	for name, sum := range w.acked {
		versions := cat[name]
		switch {
		case len(versions) == 0:
			result.LostAcks++
			c.t.Errorf("acknowledged write %s lost", name)
		case !slices.Contains(versions, sum):
			result.LostAcks++
			c.t.Errorf("acknowledged write %s holds %v, not the sha256 %s acknowledged", name, versions, sum)
		}
		if len(versions) > 1 {
			result.Duplicates += len(versions) - 1
			c.t.Errorf("write %s applied %d times", name, len(versions))
		}
	}
	for name := range w.refused {
		if len(cat[name]) > 0 {
			result.Violations++
			c.t.Errorf("refused write %s is in the catalogue", name)
		}
	}
	kept := 0
	for name := range w.unknown {
		if len(cat[name]) > 0 {
			kept++
		}
		if len(cat[name]) > 1 {
			result.Duplicates += len(cat[name]) - 1
			c.t.Errorf("write %s (outcome unknown to the client) applied %d times", name, len(cat[name]))
		}
	}
	result.Notef("catalogue writes: %d acknowledged, %d with unknown outcome (%d of them applied), %d refused; %d models on every node; try errors %v",
		len(w.acked), len(w.unknown), kept, len(w.refused), len(cat), w.codes)
}

// dropWrites undeploys every model the writer's writes may have created, through the
// first running node; a write with an unknown outcome that never landed is a 404.
func (c *faultCluster) dropWrites(w *writer) {
	c.t.Helper()
	w.mu.Lock()
	names := slices.Concat(slices.Collect(maps.Keys(w.acked)), slices.Collect(maps.Keys(w.unknown)))
	w.mu.Unlock()
	for i, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		cl, err := client.New(c.HTTPAddr(i), client.WithToken(c.token))
		if err != nil {
			c.t.Fatal(err)
		}
		for _, name := range names {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := cl.DeleteModel(ctx, name)
			cancel()
			if err != nil && !client.IsCode(err, "model_not_found") {
				c.t.Errorf("undeploy %s: %v", name, err)
			}
		}
		return
	}
}

// checkHistory runs porcupine on the writer's history and counts a violation in result.
func checkHistory(t *testing.T, w *writer, result *harness.Result) {
	t.Helper()
	viz := filepath.Join(t.TempDir(), "history.html")
	if dir, err := harness.ResultsDir(); err == nil {
		viz = filepath.Join(dir, result.Scenario+"-history.html")
	}
	err := w.hist.CheckLinearizable(time.Minute, viz)
	verdict := "linearizable"
	if err != nil {
		verdict = err.Error()
	}
	result.Notef("history: %d operations, linearizability check: %s", w.hist.Len(), verdict)
	switch {
	case err == nil:
	case errors.Is(err, harness.ErrNotLinearizable):
		result.Violations++
		t.Errorf("porcupine: %v", err)
		// Name the kind of violation: a read sent after a write was acknowledged that
		// still found no model is a stale read of the node it was sent to.
		w.mu.Lock()
		stale := 0
		for _, r := range w.absentReads {
			if at, ok := w.ackedAt[r.name]; ok && r.start.After(at) {
				stale++
				if stale <= 5 {
					t.Logf("stale read: %s read on %s %v after its upload was acknowledged found no model", r.name, r.target, r.start.Sub(at).Round(time.Millisecond))
				}
			}
		}
		w.mu.Unlock()
		result.Notef("%d reads sent after a write was acknowledged found no model (stale reads of a node's local state)", stale)
	default:
		t.Errorf("porcupine could not decide: %v", err)
	}
}

// errOrOK is err's text for a note, "ok" when nil.
func errOrOK(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// countFailures adds a load run to result: its requests, and every request that got no
// correct answer within its deadline after its retries as a client error.
func countFailures(t *testing.T, result *harness.Result, st *harness.LoadStats, what string) {
	t.Helper()
	result.Requests += st.Requests
	result.ClientErrors += st.Failures
	result.Notef("%s: %v", what, st)
	for _, o := range st.Outcomes {
		if !o.OK() {
			t.Logf("%s: request %d failed after %d tries (last via %s): %d %s %s", what, o.Seq, o.Attempts, o.Target, o.Status, o.Code, o.Err)
		}
	}
}

// others returns 0..n-1 without the given indexes.
func others(n int, without ...int) []int {
	var out []int
	for i := range n {
		if !slices.Contains(without, i) {
			out = append(out, i)
		}
	}
	return out
}

// addrsOf returns the HTTP addresses of the given nodes.
func (c *faultCluster) addrsOf(idx []int) []string {
	out := make([]string, len(idx))
	for j, i := range idx {
		out[j] = c.HTTPAddr(i)
	}
	return out
}

// ms returns d in milliseconds.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// restartAndRejoin starts killed node i again on its data dir, with the same flags, as
// an operator would, and waits until it is ready, every node sees all n alive, and the
// GPT has 2 ready replicas per stage again. The node's log tail goes into the error.
func (c *faultCluster) restartAndRejoin(i, n int) error {
	if err := c.Start(i); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, i); err != nil {
		return fmt.Errorf("%w; its log ends with:\n%s", err, c.Node(i).LogTail(1500))
	}
	if err := c.waitAlive(n, 60*time.Second); err != nil {
		return err
	}
	return c.waitReplicas(i, 2, 60*time.Second)
}
