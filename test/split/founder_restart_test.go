package split

import (
	"context"
	"testing"
	"time"

	"github.com/layermesh/layermesh/test/harness"
)

// TestSplitFounderRestartsWithItsOwnFlags: the node that founded the cluster is killed
// and started again exactly as it was first started (--bootstrap, no --join). Its Raft
// configuration, read from its own log, must let the leader's traffic in (there is no
// seed for it to prove the secret to), so it catches up, turns ready, serves stages
// again and answers like the whole model.
func TestSplitFounderRestartsWithItsOwnFlags(t *testing.T) {
	path, size := model(t)
	ref := newReference(t, path)
	hc := harness.StartCluster(t, 3, harness.ClusterOptions{
		Flags: func(c *harness.Cluster, node *harness.Node) []string {
			return append(c.DefaultFlags(node), "--threads", "1")
		},
	})
	token, err := hc.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	c := &splitCluster{Cluster: hc, t: t, token: token}
	if _, err := c.deploy(1, path, size, 3, 2); err != nil {
		t.Fatalf("deploy: %v", err)
	}
	if err := c.waitReplicas(1, 2, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.WaitForNewLeader(ctx, 0); err != nil {
		t.Fatalf("no new leader after the founder was killed: %v", err)
	}
	if err := c.Start(0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.WaitReady(ctx, 0); err != nil {
		t.Fatalf("restarted founder never turned ready: %v\n%s", err, c.Nodes[0].LogTail(40))
	}
	t.Logf("founder ready %v after its restart", time.Since(start).Round(time.Millisecond))
	if err := c.waitReplicas(0, 2, 60*time.Second); err != nil {
		t.Fatalf("after the founder's restart: %v", err)
	}
	in := inputs(t, 7)
	got, err := c.infer(0, in)
	if err != nil {
		t.Fatalf("infer through the restarted founder: %v", err)
	}
	if d := harness.MaxRelDiff(got, ref.logits(t, in)); d > 1e-4 {
		t.Fatalf("restarted founder answers %g away from the whole model", d)
	}
}
