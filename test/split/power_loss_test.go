package split

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/test/harness"
)

// powerGPT is the small model of the power-loss tests: what they exercise is how fast
// a cluster comes back, not stage work, and a restart loads every stage again.
var powerGPT = modelgen.GPTConfig{Layers: 2, Dim: 64, Heads: 2, Vocab: 256, Context: 32, Seed: 23, Name: "gpt-power"}

// Recovery bounds after a site-wide power cut, counted from the restart of the nodes
// that come back (the promise docs/RELIABILITY.md states).
const (
	powerLeaderWithin = 15 * time.Second
	powerAnswerWithin = 30 * time.Second
)

func powerModel(t *testing.T) (string, int64) {
	t.Helper()
	return harness.WriteGPT(t, powerGPT, t.TempDir(), "gpt-power")
}

// powerInputs returns request seq's token ids for powerGPT.
func powerInputs(t *testing.T, seq int) []tensor.Tensor {
	t.Helper()
	return harness.GPTInputs(t, powerGPT, seqLen, seq)
}

// startPowerCluster starts n nodes (node 0 founds, the others join it) and deploys the
// small model in 2 stages with the given replicas per stage.
func startPowerCluster(t *testing.T, n, replicas int) (*splitCluster, *reference) {
	t.Helper()
	path, size := powerModel(t)
	ref := newReference(t, path)
	// Gossip ports are picked anew at every start (a later --gossip-port wins): after a
	// power cut, members must also cope with nodes that come back on new gossip ports
	// (a device whose port is configured as 0, say), the harder case for memberlist.
	hc := harness.StartCluster(t, n, harness.ClusterOptions{
		Flags: func(c *harness.Cluster, node *harness.Node) []string {
			return append(c.DefaultFlags(node), "--gossip-port", "0", "--threads", "1")
		},
	})
	token, err := hc.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	c := &splitCluster{Cluster: hc, t: t, token: token}
	if _, err := c.deploy(0, path, size, 2, replicas); err != nil {
		t.Fatalf("deploy: %v", err)
	}
	if err := c.waitReplicas(0, replicas, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	return c, ref
}

// powerCut SIGKILLs every running node at once, as a power cut does.
func (c *splitCluster) powerCut() {
	c.t.Helper()
	for i := range c.Nodes {
		if c.Nodes[i].Running() {
			if err := c.Kill(i); err != nil {
				c.t.Fatal(err)
			}
		}
	}
}

// powerBack restarts the nodes in back at once with the command lines they were
// first started with (the joiners' --join names the founder, which may stay down),
// then checks that they elect a leader within powerLeaderWithin and that the model
// answers through each of them, like the whole model in one session, within
// powerAnswerWithin.
func (c *splitCluster) powerBack(ref *reference, back []int) (leader, answer time.Duration) {
	c.t.Helper()
	start := time.Now()
	if err := c.StartAll(back); err != nil {
		c.t.Fatal(err)
	}
	var down []int
	for i := range c.Nodes {
		if !c.Nodes[i].Running() {
			down = append(down, i)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), powerLeaderWithin-time.Since(start))
	defer cancel()
	if _, err := c.WaitForLeader(ctx, down...); err != nil {
		c.t.Fatalf("nodes %v elected no leader within %v of their restart: %v\n%s", back, powerLeaderWithin, err, c.Nodes[back[0]].LogTail(8<<10))
	}
	leader = time.Since(start)
	in := powerInputs(c.t, 5)
	want := ref.logits(c.t, in)
	for _, i := range back {
		err := harness.Poll(powerAnswerWithin-time.Since(start), 200*time.Millisecond, func() error {
			got, err := c.infer(i, in)
			if err != nil {
				return err
			}
			if d := harness.MaxRelDiff(got, want); d > 1e-4 {
				return fmt.Errorf("%w: node %d answers %g away from the whole model", errWrongAnswer, i, d)
			}
			return nil
		})
		if errors.Is(err, errWrongAnswer) {
			c.t.Fatal(err)
		}
		if err != nil {
			c.t.Fatalf("model did not answer through node %d within %v of the restart: %v\n%s", i, powerAnswerWithin, err, c.Nodes[i].LogTail(8<<10))
		}
	}
	return leader, time.Since(start)
}

var errWrongAnswer = errors.New("wrong answer")

// TestSplitPowerLossJoinersComeBackWithoutTheFounder: three nodes (node 0 founded the
// cluster, 1 and 2 joined through it), a model with 2 replicas per stage; all three
// are SIGKILLed. Nodes 1 and 2 come back with their original flags, --join naming the
// founder, which stays down: they are 2 of 3 voters and must find each other through
// their peers files, elect a leader within 15 s and answer correctly within 30 s. The
// founder then comes back with its own flags and rejoins.
func TestSplitPowerLossJoinersComeBackWithoutTheFounder(t *testing.T) {
	c, ref := startPowerCluster(t, 3, 2)
	c.powerCut()
	leader, answer := c.powerBack(ref, []int{1, 2})
	t.Logf("after the power cut, nodes 1 and 2 without the founder: leader %v, correct answers through both %v after their restart",
		leader.Round(time.Millisecond), answer.Round(time.Millisecond))

	if err := c.Start(0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, 0); err != nil {
		t.Fatalf("founder never turned ready after coming back: %v\n%s", err, c.Nodes[0].LogTail(8<<10))
	}
	harness.Eventually(t, 30*time.Second, 200*time.Millisecond, func() error { return c.allAlive(3) })
	in := powerInputs(t, 9)
	got, err := c.infer(0, in)
	if err != nil {
		t.Fatalf("infer through the founder after it came back: %v", err)
	}
	if d := harness.MaxRelDiff(got, ref.logits(t, in)); d > 1e-4 {
		t.Fatalf("founder answers %g away from the whole model", d)
	}
	t.Logf("founder back: ready, seen by all and answering %v after its restart", time.Since(start).Round(time.Millisecond))
}

// TestSplitPowerLossAnyThreeOfFive: five nodes, a model with 3 replicas per stage (so
// that any 3 nodes hold every stage: the stage blobs live only on their holders and
// the node that cut them); three times in a row all are SIGKILLed and a different 3
// come back with their original flags, the founder never among them. Each time they
// must elect a leader within 15 s and answer correctly through every one of them
// within 30 s.
func TestSplitPowerLossAnyThreeOfFive(t *testing.T) {
	c, ref := startPowerCluster(t, 5, 3)
	for _, back := range [][]int{{1, 2, 3}, {2, 3, 4}, {1, 3, 4}} {
		c.powerCut()
		leader, answer := c.powerBack(ref, back)
		t.Logf("nodes %v back without the founder: leader %v, correct answers through all %v after their restart",
			back, leader.Round(time.Millisecond), answer.Round(time.Millisecond))
	}
}

// allAlive reports an error unless every running node lists want alive members.
func (c *splitCluster) allAlive(want int) error { return c.AliveEverywhere(c.token, want) }

// withoutClusterFlags drops the flags that put a node in cluster mode (--bootstrap,
// --join, --cluster-secret-file), keeping its data dir, name and addresses.
func withoutClusterFlags(flags []string) []string {
	var out []string
	for i := 0; i < len(flags); i++ {
		switch flags[i] {
		case "--bootstrap":
		case "--join", "--cluster-secret-file":
			i++
		default:
			out = append(out, flags[i])
		}
	}
	return out
}

// TestSplitNodeWithoutClusterFlagsResumesItsCluster: a joiner is killed and started
// again on its data dir without its cluster flags. With --model-dir it must refuse to
// start, naming the conflict; without, it must resume its cluster (not come up as an
// empty single node), say so in its log, be seen alive by all and answer correctly.
func TestSplitNodeWithoutClusterFlagsResumesItsCluster(t *testing.T) {
	var mode string // how node 2 is started next: "", "model-dir" or "bare"
	modelDir := t.TempDir()
	path, size := powerModel(t)
	ref := newReference(t, path)
	hc := harness.StartCluster(t, 3, harness.ClusterOptions{
		Flags: func(c *harness.Cluster, node *harness.Node) []string {
			flags := append(c.DefaultFlags(node), "--gossip-port", "0", "--threads", "1")
			if node.Index != 2 || mode == "" {
				return flags
			}
			flags = withoutClusterFlags(flags)
			if mode == "model-dir" {
				flags = append(flags, "--model-dir", modelDir)
			}
			return flags
		},
	})
	token, err := hc.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	c := &splitCluster{Cluster: hc, t: t, token: token}
	if _, err := c.deploy(0, path, size, 2, 2); err != nil {
		t.Fatalf("deploy: %v", err)
	}
	if err := c.waitReplicas(0, 2, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(2); err != nil {
		t.Fatal(err)
	}

	mode = "model-dir"
	if err := c.Start(2); err == nil {
		t.Fatalf("node 2 started with --model-dir on a cluster data dir")
	}
	log := c.Nodes[2].LogTail(4096)
	for _, want := range []string{"--model-dir asks for a single node", "holds the Raft state of a cluster"} {
		if !strings.Contains(log, want) {
			t.Fatalf("--model-dir on a cluster data dir: the error does not say %q:\n%s", want, log)
		}
	}

	mode = "bare"
	if err := c.Start(2); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, 2); err != nil {
		t.Fatalf("node 2 without cluster flags never turned ready: %v\n%s", err, c.Nodes[2].LogTail(8<<10))
	}
	if log := c.Nodes[2].LogTail(64 << 10); !strings.Contains(log, "resuming cluster mode without cluster flags") {
		t.Fatalf("node 2 resumed without saying so:\n%s", log)
	}
	st, err := c.client(2).Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != "cluster" {
		t.Fatalf("node 2 without cluster flags runs in %q mode, want cluster", st.Mode)
	}
	harness.Eventually(t, 30*time.Second, 200*time.Millisecond, func() error { return c.allAlive(3) })
	in := powerInputs(t, 3)
	got, err := c.infer(2, in)
	if err != nil {
		t.Fatalf("infer through the resumed node: %v", err)
	}
	if d := harness.MaxRelDiff(got, ref.logits(t, in)); d > 1e-4 {
		t.Fatalf("resumed node answers %g away from the whole model", d)
	}
}

// TestSplitNodeOnANewPortIsFoundAgain: a joiner is killed and comes back on a new
// libp2p port and a new gossip port, as after a new DHCP lease. The others must list it
// alive again within 30 s, and the model must answer correctly through it.
func TestSplitNodeOnANewPortIsFoundAgain(t *testing.T) {
	c, ref := startPowerCluster(t, 3, 2)
	oldAddr := c.P2PAddr(2)
	if err := c.Kill(2); err != nil {
		t.Fatal(err)
	}
	c.Nodes[2].P2PListen = "/ip4/127.0.0.1/tcp/0"
	start := time.Now()
	if err := c.Start(2); err != nil {
		t.Fatal(err)
	}
	if c.P2PAddr(2) == oldAddr {
		t.Fatalf("node 2 came back on its old address %s; the test needs a new one", oldAddr)
	}
	harness.Eventually(t, 30*time.Second, 200*time.Millisecond, func() error { return c.allAlive(3) })
	t.Logf("node 2 back on %s (was %s), alive for all %v after its restart", c.P2PAddr(2), oldAddr, time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, 2); err != nil {
		t.Fatalf("node 2 on its new port never turned ready: %v\n%s", err, c.Nodes[2].LogTail(8<<10))
	}
	in := powerInputs(t, 4)
	got, err := c.infer(2, in)
	if err != nil {
		t.Fatalf("infer through node 2 on its new port: %v", err)
	}
	if d := harness.MaxRelDiff(got, ref.logits(t, in)); d > 1e-4 {
		t.Fatalf("node 2 answers %g away from the whole model", d)
	}
}
