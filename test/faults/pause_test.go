package faults

import (
	"context"
	"testing"
	"time"

	"github.com/layermesh/layermesh/test/harness"
)

// TestFaultSingleNodePause freezes a serving node with SIGSTOP for 2 s under load and
// continues it: requests caught by the pause may miss their deadline, but none may get
// a wrong answer or an error code, and every request sent after the node is back must
// succeed. failover_ms is the time from SIGCONT to the first success.
func TestFaultSingleNodePause(t *testing.T) {
	requireFaults(t)
	n := startSingleNode(t)
	result := harness.Result{Scenario: "single-node-pause", Trial: 1, Started: time.Now()}
	const pause = 2 * time.Second
	resumed := make(chan time.Time, 1)
	go func() {
		defer close(resumed)
		time.Sleep(time.Second)
		if err := n.proc.Pause(); err != nil {
			t.Error(err)
			return
		}
		time.Sleep(pause)
		at := time.Now()
		if err := n.proc.Resume(); err != nil {
			t.Error(err)
			return
		}
		resumed <- at
	}()
	st, err := harness.RunLoad(context.Background(), harness.LoadConfig{Targets: []string{n.addr}, Model: "add",
		Body: goodInput, Check: checkAdd, Concurrency: 2, Duration: 5 * time.Second, Deadline: 500 * time.Millisecond,
		Pace: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(st)
	resumedAt, ok := <-resumed
	if !ok {
		t.Fatal("the node was never resumed")
	}
	// A request may straddle the resume by its deadline; after that, no excuse.
	settled := resumedAt.Add(500 * time.Millisecond)
	firstOK := time.Time{}
	for _, o := range st.Outcomes {
		result.Requests++
		switch {
		case o.OK():
			end := o.Start.Add(o.Latency)
			if end.After(resumedAt) && (firstOK.IsZero() || end.Before(firstOK)) {
				firstOK = end
			}
		case o.Code == harness.OutcomeDeadline && o.Start.Before(settled):
			result.ClientErrors++ // caught by the pause: the client learns it by its deadline
		default:
			result.Violations++
			t.Errorf("request %d (sent %v after the resume): %s %s", o.Seq, o.Start.Sub(resumedAt), o.Code, o.Err)
		}
	}
	if firstOK.IsZero() {
		t.Fatal("no request succeeded after the resume")
	}
	result.FailoverMS = float64(firstOK.Sub(resumedAt).Microseconds()) / 1000
	result.Notef("paused %v; %v", pause, st)
	if result.ClientErrors == 0 {
		t.Errorf("no request was caught by a %v pause; the pause did not happen under load", pause)
	}
	result.Finished = time.Now()
	result.Passed = !t.Failed()
	harness.RecordResult(t, result)
}
