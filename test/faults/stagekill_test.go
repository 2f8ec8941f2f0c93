package faults

import (
	"context"
	"testing"
	"time"

	"github.com/layermesh/layermesh/test/harness"
)

// TestFaultStageHolderKill is scenario 2: a node that serves GPT stages, not the
// leader, is killed with SIGKILL while requests run through it at concurrency 4; 3
// trials, the node restarted between them. No inference may fail: the entry node's
// router retries the stage on its other replica, and a request whose entry node was
// the victim is retried by the client on the next node. failover_ms is the time from
// the kill to the first success of a request that was in flight at the kill.
func TestFaultStageHolderKill(t *testing.T) {
	requireFaults(t)
	const (
		nodes  = 3
		trials = 3
	)
	c := startFaultCluster(t, nodes, nil)
	for trial := 1; trial <= trials; trial++ {
		result := harness.Result{Scenario: "stage-holder-kill", Trial: trial, Started: time.Now()}
		leader, err := c.WaitForLeader(ctx30(t))
		if err != nil {
			t.Fatal(err)
		}
		holders, err := c.stageHolders(leader)
		if err != nil {
			t.Fatal(err)
		}
		victim := -1
		for _, h := range holders {
			if h != leader {
				victim = h
				break
			}
		}
		if victim < 0 {
			t.Fatalf("trial %d: no stage holder other than the leader %d among %v", trial, leader, holders)
		}
		ctx, stop := context.WithCancel(context.Background())
		// No pause between requests: 4 are in flight at every moment, so the kill
		// lands mid-request.
		cfg := c.load(c.HTTPAddrs(), 4, time.Hour, 20*time.Second)
		cfg.Pace = 0
		waitLoad := runLoad(ctx, cfg)
		time.Sleep(2 * time.Second)
		killedAt := time.Now()
		if err := c.Kill(victim); err != nil {
			t.Fatal(err)
		}
		// Long enough for memberlist to declare the victim dead and the leader to heal.
		time.Sleep(8 * time.Second)
		stop()
		st, err := waitLoad()
		if err != nil {
			t.Fatal(err)
		}
		countFailures(t, &result, st, "inference")
		inFlight, retried := 0, 0
		var failover time.Duration
		for _, o := range st.Outcomes {
			end := o.Start.Add(o.Latency)
			if o.Start.Before(killedAt) && end.After(killedAt) {
				inFlight++
				if o.OK() && (failover == 0 || end.Sub(killedAt) < failover) {
					failover = end.Sub(killedAt)
				}
			}
			if o.OK() && o.Attempts > 1 {
				retried++
			}
		}
		result.FailoverMS = ms(failover)
		result.Notef("killed node %d (leader %d, holders %v); %d requests in flight at the kill, %d needed a client retry", victim, leader, holders, inFlight, retried)
		t.Logf("trial %d: killed node %d: %s", trial, victim, st)
		if st.Failures > 0 {
			t.Errorf("trial %d: %d inferences failed: %v", trial, st.Failures, st.ByCode)
		}
		if inFlight == 0 {
			t.Errorf("trial %d: no request was in flight at the kill; nothing was tested", trial)
		}
		healed := c.waitReplicas(leader, 2, 20*time.Second, c.Node(victim).Name)
		if healed != nil {
			t.Errorf("trial %d: replicas not back to 2 without node %d: %v", trial, victim, healed)
		}
		result.Notef("replicas healed to 2 on the survivors: %v", errOrOK(healed))

		rerr := c.restartAndRejoin(victim, nodes)
		if rerr != nil {
			t.Errorf("trial %d: killed node %d restarted with its data dir: %v", trial, victim, rerr)
		}
		result.Notef("killed node restarted: %v", errOrOK(rerr))
		result.Finished = time.Now()
		result.Passed = st.Failures == 0 && inFlight > 0 && healed == nil && rerr == nil
		harness.RecordResult(t, result)
		if t.Failed() {
			return
		}
	}
}
