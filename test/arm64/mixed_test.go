//go:build arm64emu

package arm64

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/partition"
	"github.com/layermesh/layermesh/test/harness"
)

// The mixed mesh: nodes 0 and 1 run the native build, node 2 the arm64 build under
// qemu. Node 1 is drained before the deploy, so that the two stages go to node 0 and
// to the emulated node.
const (
	emulatedNode = 2
	drainedNode  = 1
)

// mixedMesh starts the three nodes and waits until node 0 sees all of them alive with
// their platform advertised.
func mixedMesh(t *testing.T, b armBuild) (*harness.Cluster, *client.Client) {
	t.Helper()
	// 16 KiB pages: the emulated node also keeps Raft's log in badger, whose files are
	// memory-mapped.
	emulated := b.command(t, 16<<10)
	c := harness.StartCluster(t, 3, harness.ClusterOptions{
		StartTimeout: emulatedStart,
		Flags: func(c *harness.Cluster, n *harness.Node) []string {
			return append(c.DefaultFlags(n), "--accel", "cpu", "--threads", "1")
		},
		Command: func(n *harness.Node) []string {
			if n.Index == emulatedNode {
				return emulated
			}
			return nil
		},
	})
	token, err := c.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(c.HTTPAddr(0), client.WithToken(token))
	if err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 2*time.Minute, 200*time.Millisecond, func() error {
		nodes, err := cl.Nodes(context.Background())
		if err != nil {
			return err
		}
		if len(nodes) != 3 {
			return fmt.Errorf("%d members recorded, want 3", len(nodes))
		}
		for _, n := range nodes {
			if n.State != "alive" || n.Platform == "" || n.Capacity == nil || n.Capacity.Speed <= 0 {
				return fmt.Errorf("%s: state %s, platform %q, capacity %+v", n.Name, n.State, n.Platform, n.Capacity)
			}
		}
		return nil
	})
	return c, cl
}

// nodesByName lists the nodes as cl reports them, by name.
func nodesByName(t *testing.T, cl *client.Client) map[string]wire.NodeStatus {
	t.Helper()
	nodes, err := cl.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]wire.NodeStatus, len(nodes))
	for _, n := range nodes {
		out[n.Name] = n
	}
	return out
}

// checkPlatforms: every node advertises its own GOOS/GOARCH, through the API and in
// meshctl nodes (table and --json); the emulated node's speed score is under half the
// slower native node's.
func checkPlatforms(t *testing.T, c *harness.Cluster, cl *client.Client) {
	t.Helper()
	nodes := nodesByName(t, cl)
	native := runtime.GOOS + "/" + runtime.GOARCH
	for i := range c.Len() {
		want := native
		if i == emulatedNode {
			want = "linux/arm64"
		}
		if got := nodes[c.Node(i).Name].Platform; got != want {
			t.Errorf("%s advertises %q, want %q", c.Node(i).Name, got, want)
		}
	}
	slow := nodes[c.Node(emulatedNode).Name].Capacity.Speed
	fast := min(nodes[c.Node(0).Name].Capacity.Speed, nodes[c.Node(drainedNode).Name].Capacity.Speed)
	t.Logf("speed scores (GFLOP/s): node0 %.3f, node1 %.3f, node2 (arm64 under qemu) %.3f",
		nodes[c.Node(0).Name].Capacity.Speed, nodes[c.Node(drainedNode).Name].Capacity.Speed, slow)
	if !(slow*2 < fast) {
		t.Errorf("the emulated node's speed score %.3f is not under half the native ones' (%.3f)", slow, fast)
	}

	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	meshctl := harness.BuildBinary(t, "./cmd/meshctl")
	token, _ := c.AdminToken()
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		cmd := exec.Command(meshctl, append(args, "--addr", c.HTTPAddr(0), "--token-file", tokenFile)...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("meshctl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	table := run("nodes")
	if !strings.Contains(table, "PLATFORM") || strings.Count(table, "linux/arm64") != 1 || strings.Count(table, native) < 2 {
		t.Errorf("meshctl nodes does not show one linux/arm64 and two %s nodes:\n%s", native, table)
	}
	var list wire.NodeList
	if err := json.Unmarshal([]byte(run("nodes", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	for _, n := range list.Nodes {
		if n.Name == c.Node(emulatedNode).Name && n.Platform != "linux/arm64" {
			t.Errorf("meshctl nodes --json: %s has platform %q", n.Name, n.Platform)
		}
	}
}

// servedStages maps each node name to the stages of model it serves ready.
func servedStages(cl *client.Client, model string) (map[string][]int, error) {
	nodes, err := cl.Nodes(context.Background())
	if err != nil {
		return nil, err
	}
	out := make(map[string][]int)
	for _, n := range nodes {
		for _, entry := range n.Models {
			if e, ok := harness.ParseStageEntry(entry); ok && e.Model == model && e.Ready {
				out[n.Name] = append(out[n.Name], e.Stage)
			}
		}
	}
	return out, nil
}

// lightStage plans the model over the two nodes that hold it, with the speed scores
// they recorded, as the leader does, and returns the stage the slower one gets and the
// FLOPs of both stages.
func lightStage(t *testing.T, path string, fast, slow wire.NodeStatus) (int, [2]int64) {
	t.Helper()
	m, err := partition.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := partition.Analyze(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	const budget = 1 << 40
	devices := []partition.Device{
		{Name: fast.Name, MemBudget: budget, Speed: fast.Capacity.Speed * 1e9},
		{Name: slow.Name, MemBudget: budget, Speed: slow.Capacity.Speed * 1e9},
	}
	plan, err := partition.Plan(g, devices, partition.PlanOptions{Stages: 2, OutputBandwidth: 2e9})
	if err != nil {
		t.Fatal(err)
	}
	var flops [2]int64
	slowStage := -1
	for _, s := range plan.Stages {
		flops[s.Index] = s.FLOPs
		if s.Device.Name == slow.Name {
			slowStage = s.Index
		}
	}
	return slowStage, flops
}

// TestMixedMeshGivesEmulatedNodeTheLightStage: two native nodes and one arm64 node
// under qemu (16 KiB pages) form a cluster; with one native node drained, a 2-stage deploy puts one
// stage on the emulated node, and it is the stage with fewer FLOPs; the split answers
// equal one ONNX Runtime session on the whole model, through every node.
func TestMixedMeshGivesEmulatedNodeTheLightStage(t *testing.T) {
	b := arm64Build(t)
	c, cl := mixedMesh(t, b)
	checkPlatforms(t, c, cl)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := cl.DrainNode(ctx, c.Node(drainedNode).Name); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, time.Minute, 100*time.Millisecond, func() error {
		if st := nodesByName(t, cl)[c.Node(drainedNode).Name].State; st != "draining" {
			return fmt.Errorf("%s is %s", c.Node(drainedNode).Name, st)
		}
		return nil
	})
	path, size := writeModel(t, t.TempDir(), "gpt")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := cl.UploadModel(ctx, "gpt", f, size, client.UploadOptions{Stages: 2, Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	var served map[string][]int
	harness.Eventually(t, 3*time.Minute, 200*time.Millisecond, func() error {
		served, err = servedStages(cl, "gpt")
		if err != nil {
			return err
		}
		if len(served[c.Node(0).Name]) != 1 || len(served[c.Node(emulatedNode).Name]) != 1 {
			return fmt.Errorf("ready stages per node: %v", served)
		}
		return nil
	})
	if len(served[c.Node(drainedNode).Name]) != 0 {
		t.Fatalf("the drained node serves %v", served[c.Node(drainedNode).Name])
	}
	nodes := nodesByName(t, cl)
	slowStage, flops := lightStage(t, path, nodes[c.Node(0).Name], nodes[c.Node(emulatedNode).Name])
	got := served[c.Node(emulatedNode).Name][0]
	t.Logf("stage FLOPs %v; the emulated node serves stage %d, the planner's stage for it is %d", flops, got, slowStage)
	if got != slowStage {
		t.Fatalf("the emulated node serves stage %d; planning with the recorded speed scores gives it stage %d", got, slowStage)
	}
	if flops[got] >= flops[1-got] {
		t.Fatalf("the emulated node got the heavy stage: %d FLOPs against %d", flops[got], flops[1-got])
	}

	compareWithWholeModel(t, c, path)
}

// compareWithWholeModel asks every node for the split model's answers and compares
// them with one ONNX Runtime session on the whole model, in this process.
func compareWithWholeModel(t *testing.T, c *harness.Cluster, path string) {
	t.Helper()
	backend, err := ort.New(ort.Config{IntraOpThreads: 1, Provider: accel.ProviderCPU})
	if err != nil {
		t.Fatalf("ONNX Runtime is needed for the reference and did not load: %v", err)
	}
	ref, err := backend.Open(context.Background(), path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	token, err := c.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	for seq := range 3 {
		in := inputs(t, seq)
		out, err := ref.Run(context.Background(), in, nil)
		if err != nil {
			t.Fatal(err)
		}
		want, err := out[0].Float32s()
		if err != nil {
			t.Fatal(err)
		}
		for i := range c.Len() {
			cl, err := client.New(c.HTTPAddr(i), client.WithToken(token))
			if err != nil {
				t.Fatal(err)
			}
			got, err := logits(cl, "gpt", in)
			if err != nil {
				t.Fatalf("request %d via %s: %v", seq, c.Node(i).Name, err)
			}
			if d := maxAbsDiff(got, want); d > 1e-5 {
				t.Fatalf("request %d via %s: the split answer differs from the whole model by up to %g", seq, c.Node(i).Name, d)
			}
		}
	}
}
