package faults

import (
	"context"
	"testing"
	"time"

	"github.com/layermesh/layermesh/test/harness"
)

// TestFaultFullClusterRestart is scenario 6: catalogue writes stream in while every
// node of the 3-node cluster is killed with SIGKILL at once; all are started again on
// their data dirs with the same flags. Every acknowledged write must be present, every
// node must hold the same catalogue, and the GPT must answer correctly again through
// every node. failover_ms is the time from the kill to the first correct inference
// after the restart.
func TestFaultFullClusterRestart(t *testing.T) {
	requireFaults(t)
	const nodes = 3
	c := startFaultCluster(t, nodes, nil)
	result := harness.Result{Scenario: "full-cluster-restart", Trial: 1, Started: time.Now()}
	w, killedAt, acked, unknown := writeThenKillAll(t, c, "fr", &result)
	for i := range nodes {
		if err := c.Start(i); err != nil {
			t.Fatal(err)
		}
	}
	var restartErr error
	for i := range nodes {
		if err := c.WaitReady(ctx60(t), i); err != nil {
			restartErr = err
			t.Errorf("node %d not ready after the full restart: %v\n%s", i, err, c.Node(i).LogTail(1500))
		}
	}
	if restartErr == nil {
		// Serving again: every node answers every input correctly.
		var first time.Duration
		for i := range nodes {
			st, err := harness.RunLoad(context.Background(), harness.LoadConfig{
				Targets: []string{c.HTTPAddr(i)}, Model: gptName, Requests: gptInputs, Deadline: 60 * time.Second, Attempts: 100,
				Body: c.load(nil, 1, 0, 0).Body, Check: c.load(nil, 1, 0, 0).Check,
			})
			if err != nil {
				t.Fatal(err)
			}
			if first == 0 && st.Successes > 0 {
				first = time.Since(killedAt)
			}
			countFailures(t, &result, st, "inference after the restart via node "+c.Node(i).Name)
			if st.Failures > 0 {
				t.Errorf("node %d after the full restart: %v", i, st)
			}
		}
		result.FailoverMS = ms(first)
		c.verifyWrites(w, &result, 60*time.Second)
	}
	result.Notef("all %d nodes killed with %d writes acknowledged and %d with unknown outcome; failover_ms is kill -> restart -> first correct inference",
		nodes, acked, unknown)
	result.Finished = time.Now()
	result.Passed = !t.Failed()
	harness.RecordResult(t, result)
}

// writeThenKillAll writes keys named prefix through every node for 4 s, then kills
// every node at once (SIGKILL) while the writes go on, and returns the writer (to
// verify its writes after the restart), when the nodes died and how many writes were
// acknowledged or of unknown outcome; the writes' requests count in result. It fails the test when no write was acknowledged before
// the kill: there would be nothing to check after the restart.
func writeThenKillAll(t *testing.T, c *faultCluster, prefix string, result *harness.Result) (w *writer, killedAt time.Time, acked, unknown int) {
	t.Helper()
	w = newWriter(t, c.token, prefix, func() []string { return c.HTTPAddrs() })
	w.deadline = 5 * time.Second
	ctx, stop := context.WithCancel(context.Background())
	waitWrites := w.run(ctx, 50*time.Millisecond)
	time.Sleep(4 * time.Second)
	killedAt = time.Now()
	for i := range c.Len() {
		if err := c.Kill(i); err != nil {
			t.Fatal(err)
		}
	}
	stop()
	waitWrites()
	acked, unknown, _, requests, _ := w.stats()
	result.Requests += requests
	if acked == 0 {
		t.Fatal("no write was acknowledged before every node was killed; nothing was tested")
	}
	return w, killedAt, acked, unknown
}
