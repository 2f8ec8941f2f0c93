package faults

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/test/harness"
)

// TestFaultLeaderPause is scenario 3: the Raft leader is frozen with SIGSTOP for 5 s
// and continued, under inference load and catalogue writes. Besides the writer that
// knows every node, a second client sends its writes only to the old leader, as a
// client pinned to one node would: while deposed it must accept none, so each of those
// writes either fails clearly, or is acknowledged only once the new leader committed
// it (it must then be in every node's catalogue). Porcupine checks the whole history;
// no inference may fail (20 s deadline, client retries on other nodes). failover_ms
// is the time from SIGSTOP to the first write acknowledged in the new leader's term.
func TestFaultLeaderPause(t *testing.T) {
	requireFaults(t)
	const nodes = 3
	const pause = 5 * time.Second
	c := startFaultCluster(t, nodes, nil)
	result := harness.Result{Scenario: "leader-pause", Trial: 1, Started: time.Now()}
	leader, err := c.WaitForLeader(ctx30(t))
	if err != nil {
		t.Fatal(err)
	}
	oldAddr := c.HTTPAddr(leader)
	w := newWriter(t, c.token, "lp", func() []string { return c.HTTPAddrs() })
	ctx, stop := context.WithCancel(context.Background())
	waitLoad := runLoad(ctx, c.load(c.HTTPAddrs(), 2, time.Hour, 20*time.Second))
	waitWrites := w.run(ctx, 100*time.Millisecond)
	time.Sleep(2 * time.Second)

	before, _, _, _, _ := w.stats()
	pausedAt := time.Now()
	if err := c.Pause(leader); err != nil {
		t.Fatal(err)
	}
	// The pause lasts 5 s whatever the rest of the test waits for.
	resumed := make(chan time.Time, 1)
	go func() {
		time.Sleep(pause)
		at := time.Now()
		if err := c.Resume(leader); err != nil {
			t.Error(err)
		}
		resumed <- at
	}()
	// The pinned client: writes to the frozen old leader only, one after another,
	// from the pause until well after it is continued.
	pinned := newWriter(t, c.token, "lp-pinned", func() []string { return []string{oldAddr} })
	pinned.hist = w.hist
	var pinnedWG sync.WaitGroup
	pinnedWG.Add(1)
	go func() {
		defer pinnedWG.Done()
		for time.Since(pausedAt) < pause+5*time.Second {
			pinned.write(context.Background(), 2)
		}
	}()
	newLeader, lerr := c.WaitForNewLeader(ctx30(t), leader)
	if lerr != nil {
		t.Errorf("no new leader while node %d is paused: %v", leader, lerr)
	}
	elected := time.Since(pausedAt)
	var failover time.Duration
	werr := harness.Poll(30*time.Second, 20*time.Millisecond, func() error {
		if acked, _, _, _, _ := w.stats(); acked <= before+1 {
			return context.DeadlineExceeded
		}
		failover = time.Since(pausedAt)
		return nil
	})
	if werr != nil {
		t.Errorf("no write acknowledged after the pause: %v", werr)
	}
	resumedAt := <-resumed
	pinnedWG.Wait()
	time.Sleep(3 * time.Second)
	stop()
	waitWrites()
	st, err := waitLoad()
	if err != nil {
		t.Fatal(err)
	}
	countFailures(t, &result, st, "inference")

	pAcked, pUnknown, pRefused, pRequests, pCodes := pinned.stats()
	result.Requests += pRequests
	_, _, _, requests, _ := w.stats()
	result.Requests += requests
	result.FailoverMS = ms(failover)
	result.Notef("paused leader node %d for %v; node %d elected %v after SIGSTOP; first write acknowledged %v after",
		leader, resumedAt.Sub(pausedAt).Round(time.Millisecond), newLeader, elected.Round(time.Millisecond), failover.Round(time.Millisecond))
	result.Notef("writes pinned to the old leader: %d acknowledged (each must be committed), %d unknown, %d refused; answers %v",
		pAcked, pUnknown, pRefused, pCodes)

	// Every write the old leader acknowledged must be committed: verifyWrites checks the
	// pinned writer's acknowledgements against the converged catalogue too.
	c.verifyWrites(w, &result, 30*time.Second)
	c.verifyWrites(pinned, &result, 30*time.Second)
	checkHistory(t, w, &result)
	if st.Failures > 0 {
		t.Errorf("%d inferences failed: %v", st.Failures, st.ByCode)
	}
	result.Finished = time.Now()
	result.Passed = !t.Failed()
	harness.RecordResult(t, result)
}
