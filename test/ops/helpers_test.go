package ops

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
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

// testGPT is the model the cluster serves: 4 layers x 256 (about 14 MB), real work
// per stage, small enough for two shared cores.
var testGPT = modelgen.GPTConfig{Layers: 4, Dim: 256, Heads: 4, Vocab: 1024, Context: 64, Seed: 7, Name: "gpt-ops"}

// smallGPT is the model deployed and undeployed by the deploy checks.
var smallGPT = modelgen.GPTConfig{Layers: 2, Dim: 64, Heads: 2, Vocab: 128, Context: 16, Seed: 3, Name: "gpt-small"}

const (
	seqLen   = 16
	nodes    = 3
	budget   = 1 << 30
	gptInput = modelgen.GPTInput
)

// opsCluster is the shared cluster with what the checks need around it.
type opsCluster struct {
	*harness.Cluster
	token     string
	tokenFile string
	meshctl   string
	modelPath string
	smallPath string
	ref       accel.Session
	dir       string
}

func writeModel(t *testing.T, cfg modelgen.GPTConfig, path string) {
	t.Helper()
	m, err := modelgen.GPT(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := modelgen.WriteFile(m, path); err != nil {
		t.Fatal(err)
	}
}

// startOpsCluster starts 3 nodes; node 2 runs with --require-infer-token, so one
// cluster shows both the open and the gated inference.
func startOpsCluster(t *testing.T) *opsCluster {
	t.Helper()
	c := harness.StartCluster(t, nodes, harness.ClusterOptions{
		Flags: func(c *harness.Cluster, n *harness.Node) []string {
			flags := append(c.DefaultFlags(n), "--threads", "1", "--mem-budget", strconv.Itoa(budget))
			if n.Index == 2 {
				flags = append(flags, "--require-infer-token")
			}
			// A restart names every other node as a seed, as an operator's config
			// would: a restarted node's state is its last snapshot, which may list no
			// member yet, and only peers it has met in the join handshake may then
			// speak Raft to it (the founder, started with no seed, would otherwise
			// refuse the leader for good).
			if n.Proc.Starts() > 0 {
				for j := range c.Len() {
					if j != n.Index && c.P2PAddr(j) != "" {
						flags = append(flags, "--join", c.P2PAddr(j))
					}
				}
			}
			return flags
		},
	})
	token, err := c.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	oc := &opsCluster{Cluster: c, token: token, dir: t.TempDir()}
	oc.tokenFile = filepath.Join(c.Node(0).DataDir, harness.AdminTokenFile)
	oc.meshctl = harness.BuildBinary(t, "./cmd/meshctl")
	oc.modelPath = filepath.Join(oc.dir, "gpt.onnx")
	writeModel(t, testGPT, oc.modelPath)
	oc.smallPath = filepath.Join(oc.dir, "small.onnx")
	writeModel(t, smallGPT, oc.smallPath)

	backend, err := ort.New(ort.Config{IntraOpThreads: 1, Provider: accel.ProviderCPU})
	if err != nil {
		t.Fatalf("ONNX Runtime is needed for the reference answers and did not load: %v", err)
	}
	t.Cleanup(func() { backend.Close() })
	oc.ref, err = backend.Open(context.Background(), oc.modelPath, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { oc.ref.Close() })

	st, err := oc.client(0).Cluster(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != "cluster" {
		t.Fatalf("meshnode runs %q mode with cluster flags; these tests need a cluster", st.Mode)
	}
	harness.Eventually(t, 60*time.Second, 200*time.Millisecond, func() error {
		for i := range nodes {
			ns, err := oc.client(i).Nodes(context.Background())
			if err != nil {
				return err
			}
			alive := 0
			for _, n := range ns {
				if n.State == "alive" && n.Health == "alive" {
					alive++
				}
			}
			if alive != nodes {
				return fmt.Errorf("node %d sees %d of %d members alive", i, alive, nodes)
			}
		}
		return nil
	})
	return oc
}

func (c *opsCluster) client(i int) *client.Client { return c.clientWith(i, c.token) }

func (c *opsCluster) clientWith(i int, token string) *client.Client {
	cl, err := client.New(c.HTTPAddr(i), client.WithToken(token))
	if err != nil {
		panic(err) // HTTPAddr is always host:port
	}
	return cl
}

// ctlResult is one meshctl run.
type ctlResult struct {
	stdout, stderr string
	code           int
}

// ctl runs meshctl against node via with the admin token file.
func (c *opsCluster) ctl(t *testing.T, via int, args ...string) ctlResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return c.run(t, ctx, c.HTTPAddr(via), args...)
}

// run runs meshctl against addr with the admin token file.
func (c *opsCluster) run(t *testing.T, ctx context.Context, addr string, args ...string) ctlResult {
	t.Helper()
	cmd := exec.CommandContext(ctx, c.meshctl, args...)
	cmd.Env = append(os.Environ(), "LAYERMESH_ADDR="+addr, "LAYERMESH_TOKEN_FILE="+c.tokenFile, "LAYERMESH_TOKEN=", "LAYERMESH_CA_CERT=")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("meshctl %v: %v", args, err)
	}
	return ctlResult{stdout: out.String(), stderr: errOut.String(), code: code}
}

// ok runs meshctl and fails the test unless it exits 0.
func (c *opsCluster) ok(t *testing.T, args ...string) string {
	t.Helper()
	r := c.ctl(t, 0, args...)
	if r.code != 0 {
		t.Fatalf("meshctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// okJSON runs meshctl with --json and decodes its stdout into v, strictly: the output
// must be one JSON document that fits v.
func (c *opsCluster) okJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out := c.ok(t, append(args, "--json")...)
	if err := decodeStrict(out, v); err != nil {
		t.Fatalf("meshctl %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// decodeStrict decodes out into v: one JSON document whose every field v knows.
func decodeStrict(out string, v any) error {
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("output does not parse: %w", err)
	}
	if dec.More() {
		return errors.New("more than one JSON document")
	}
	return nil
}

// inputs returns request seq's token ids.
func inputs(t testing.TB, seq int) []tensor.Tensor {
	t.Helper()
	in, err := testGPT.ExampleInputs(1, seqLen, int64(seq))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// want is the whole model's answer in one session, the reference for the cluster's.
func (c *opsCluster) want(t testing.TB, in []tensor.Tensor) []float32 {
	t.Helper()
	out, err := c.ref.Run(context.Background(), in, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := out[0].Float32s()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// readyReplicas counts ready replicas per stage of model as node via reports them.
func (c *opsCluster) readyReplicas(via int, model string, exclude ...string) (map[int]int, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return harness.ReadyReplicas(ctx, c.client(via), model, exclude...)
}

// waitReplicas waits until every stage of model has want ready replicas outside
// exclude, as node via sees it.
func (c *opsCluster) waitReplicas(via int, model string, want int, total time.Duration, exclude ...string) error {
	return harness.Poll(total, 200*time.Millisecond, func() error {
		counts, stages, err := c.readyReplicas(via, model, exclude...)
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

// nodeStages returns the stage entries node name serves, as node via reports them.
func (c *opsCluster) nodeStages(via int, name string) ([]string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ns, err := c.client(via).Nodes(ctx)
	if err != nil {
		return nil, "", err
	}
	for _, n := range ns {
		if n.Name == name {
			return n.Models, n.State, nil
		}
	}
	return nil, "", fmt.Errorf("node %s not listed", name)
}

// metrics is one scrape of /metrics: series (name with its labels as Prometheus
// writes them, labels sorted) -> value.
type metrics map[string]float64

var seriesLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$`)

func scrape(t *testing.T, c *client.Client) metrics {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	text, err := c.Metrics(ctx)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	m := metrics{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p := seriesLine.FindStringSubmatch(line)
		if p == nil {
			t.Fatalf("/metrics line does not parse: %q", line)
		}
		v, err := strconv.ParseFloat(p[3], 64)
		if err != nil {
			t.Fatalf("/metrics value in %q: %v", line, err)
		}
		m[p[1]+p[2]] = v
	}
	return m
}

// sum adds the series of metric name whose labels contain every given label="value".
func (m metrics) sum(name string, labels ...string) (float64, int) {
	total, n := 0.0, 0
	for series, v := range m {
		base, lbl, _ := strings.Cut(series, "{")
		if base != name {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains("{"+lbl, "{"+l+",") && !strings.Contains("{"+lbl, ","+l+",") &&
				!strings.Contains("{"+lbl, "{"+l+"}") && !strings.Contains("{"+lbl, ","+l+"}") {
				match = false
			}
		}
		if match {
			total += v
			n++
		}
	}
	return total, n
}

// writeNPY writes an int64 .npy file (NumPy format 1.0) of the given shape.
func writeNPY(t *testing.T, path string, shape []int64, vals []int64) {
	t.Helper()
	dims := make([]string, len(shape))
	for i, d := range shape {
		dims[i] = strconv.FormatInt(d, 10)
	}
	header := fmt.Sprintf("{'descr': '<i8', 'fortran_order': False, 'shape': (%s,), }", strings.Join(dims, ", "))
	pad := 64 - (10+len(header)+1)%64
	header += strings.Repeat(" ", pad) + "\n"
	var b bytes.Buffer
	b.WriteString("\x93NUMPY\x01\x00")
	_ = binary.Write(&b, binary.LittleEndian, uint16(len(header)))
	b.WriteString(header)
	_ = binary.Write(&b, binary.LittleEndian, vals)
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// loadRun is a steady stream of requests in the background, checked against the
// reference; stop ends it and returns what happened.
type loadRun struct {
	cancel context.CancelFunc
	done   chan struct{}
	stats  *harness.LoadStats
	err    error
}

func (c *opsCluster) startLoad(t *testing.T, targets []string) *loadRun {
	t.Helper()
	const distinct = 4
	bodies := make([]harness.InferBody, distinct)
	wants := make([][]float32, distinct)
	for i := range distinct {
		in := inputs(t, 100+i)
		wants[i] = c.want(t, in)
		b, err := harness.EncodeInfer(&wire.Request{Inputs: in, BinaryOutputs: true}, true)
		if err != nil {
			t.Fatal(err)
		}
		bodies[i] = b
	}
	ctx, cancel := context.WithCancel(context.Background())
	lr := &loadRun{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(lr.done)
		lr.stats, lr.err = harness.RunLoad(ctx, harness.LoadConfig{
			Targets: targets, Model: "gpt", Concurrency: 2, Duration: 10 * time.Minute, Deadline: 30 * time.Second,
			Attempts: 1, Pace: 10 * time.Millisecond, Token: c.token,
			Body: func(seq int) (harness.InferBody, error) { return bodies[seq%distinct], nil },
			Check: func(seq int, resp *wire.Response) error {
				got, err := resp.Outputs[0].Float32s()
				if err != nil {
					return err
				}
				if d := harness.MaxRelDiff(got, wants[seq%distinct]); d > 1e-4 {
					return fmt.Errorf("request %d differs from the whole model by %g", seq, d)
				}
				return nil
			},
		})
	}()
	return lr
}

func (lr *loadRun) stop() (*harness.LoadStats, error) {
	lr.cancel()
	<-lr.done
	return lr.stats, lr.err
}
