package faults

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/test/harness"
)

// TestFaultMinorityPartition is scenario 4: 3 nodes, each in its own network
// namespace; the leader is cut off from the other two (nftables drops every packet
// between the groups) for 10 s, then the network heals. While cut off, the minority
// node must answer a write with a clear 503 within the client's 5 s deadline (not
// hang, not a 500), the majority must elect a leader, take writes and serve every
// inference sent to it, and after the heal every node must hold the same catalogue
// with every acknowledged write. failover_ms is the time from the cut to the first
// write the majority acknowledged.
func TestFaultMinorityPartition(t *testing.T) {
	requireFaults(t)
	nw := harness.NewNetwork(t, 3)
	const cut = 10 * time.Second
	c := startFaultCluster(t, 3, nw)
	result := harness.Result{Scenario: "minority-partition", Trial: 1, Started: time.Now()}
	leader, err := c.WaitForLeader(ctx30(t))
	if err != nil {
		t.Fatal(err)
	}
	majority := others(3, leader)
	w := newWriter(t, c.token, "mp", func() []string { return c.addrsOf(majority) })
	ctx, stop := context.WithCancel(context.Background())
	waitLoad := runLoad(ctx, c.load(c.addrsOf(majority), 2, time.Hour, 20*time.Second))
	waitWrites := w.run(ctx, 100*time.Millisecond)
	time.Sleep(2 * time.Second)
	before, _, _, _, _ := w.stats()

	cutAt := time.Now()
	if err := nw.Partition([]int{leader}, majority); err != nil {
		t.Fatal(err)
	}
	// A write to the minority: the node cannot reach a majority and must say so.
	minorityAnswers := map[string]int{}
	var minorityErrs []string
	minorityDone := make(chan struct{})
	go func() {
		defer close(minorityDone)
		time.Sleep(2 * time.Second) // past its leader lease: it knows it is cut off
		for k := 0; time.Since(cutAt)+minorityDeadline < cut; k++ {
			status, code, took, err := minorityWrite(c.HTTPAddr(leader), c.token, k)
			minorityAnswers[fmt.Sprintf("%d %s", status, code)]++
			if err != nil || status != http.StatusServiceUnavailable {
				minorityErrs = append(minorityErrs, fmt.Sprintf("write %d: %d %s after %v: %v", k, status, code, took.Round(time.Millisecond), err))
			}
		}
	}()
	newLeader, lerr := c.WaitForNewLeader(ctx30(t), leader)
	if lerr != nil {
		t.Errorf("the majority elected no leader: %v", lerr)
	}
	var failover time.Duration
	werr := harness.Poll(cut, 20*time.Millisecond, func() error {
		if acked, _, _, _, _ := w.stats(); acked <= before+1 {
			return errors.New("no write acknowledged by the majority since the cut")
		}
		failover = time.Since(cutAt)
		return nil
	})
	if werr != nil {
		t.Errorf("%v", werr)
	}
	<-minorityDone
	time.Sleep(cut - time.Since(cutAt))
	healedAt := time.Now()
	if err := nw.Heal(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	stop()
	waitWrites()
	st, err := waitLoad()
	if err != nil {
		t.Fatal(err)
	}
	countFailures(t, &result, st, "inference on the majority")
	_, _, _, requests, _ := w.stats()
	result.Requests += requests
	result.FailoverMS = ms(failover)
	result.Notef("cut leader node %d off for %v; the majority elected node %d; first majority write acknowledged %v after the cut",
		leader, healedAt.Sub(cutAt).Round(time.Millisecond), newLeader, failover.Round(time.Millisecond))
	result.Notef("writes to the minority answered %v", minorityAnswers)
	for _, e := range minorityErrs {
		result.Violations++
		t.Errorf("minority: want a 503 within %v; %s", minorityDeadline, e)
	}
	if len(minorityAnswers) == 0 {
		t.Error("no write was sent to the minority")
	}
	if st.Failures > 0 {
		t.Errorf("%d inferences on the majority failed: %v", st.Failures, st.ByCode)
	}
	// After the heal every node, the old leader included, must converge.
	c.verifyWrites(w, &result, 45*time.Second)
	checkHistory(t, w, &result)
	result.Finished = time.Now()
	result.Passed = !t.Failed()
	harness.RecordResult(t, result)
}

// minorityDeadline is how long a client waits for the minority's answer to a write.
const minorityDeadline = 5 * time.Second

// minorityWrite uploads a model to addr with a minorityDeadline deadline and returns the status
// and code it got; status 0 means no answer within the deadline.
func minorityWrite(addr, token string, k int) (int, string, time.Duration, error) {
	raw, _, err := writeModel(1_000_000 + k)
	if err != nil {
		return 0, "", 0, err
	}
	cl, err := client.New(addr, client.WithToken(token))
	if err != nil {
		return 0, "", 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), minorityDeadline)
	defer cancel()
	start := time.Now()
	_, err = cl.UploadModel(ctx, fmt.Sprintf("minority-w%d", k), bytes.NewReader(raw), int64(len(raw)), client.UploadOptions{Stages: 1, Replicas: 1})
	took := time.Since(start)
	var apiErr *client.Error
	switch {
	case err == nil:
		return http.StatusCreated, "", took, errors.New("a node cut off from the majority acknowledged a write")
	case errors.As(err, &apiErr):
		return apiErr.Status, apiErr.Code, took, nil
	default:
		return 0, "no answer", took, err
	}
}

// TestFaultPacketLoss is scenario 5: 3 nodes in their own namespaces lose 20% of the
// packets between each other, at random (nftables numgen, each packet dropped at its
// receiver), for 60 s, under inference load and catalogue writes. At least 95% of the
// inferences must get a correct answer within their 10 s deadline (after the client's
// retries), and the history must be linearizable with no acknowledged write lost.
func TestFaultPacketLoss(t *testing.T) {
	requireFaults(t)
	nw := harness.NewNetwork(t, 3)
	const lossy = 60 * time.Second
	c := startFaultCluster(t, 3, nw)
	result := harness.Result{Scenario: "packet-loss", Trial: 1, Started: time.Now()}
	w := newWriter(t, c.token, "pl", func() []string { return c.HTTPAddrs() })
	if err := nw.Loss(20, 0, 1, 2); err != nil {
		t.Fatal(err)
	}
	lossAt := time.Now()
	ctx, stop := context.WithCancel(context.Background())
	cfg := c.load(c.HTTPAddrs(), 2, lossy, 10*time.Second)
	waitLoad := runLoad(ctx, cfg)
	waitWrites := w.run(ctx, 200*time.Millisecond)
	st, err := waitLoad()
	if err != nil {
		t.Fatal(err)
	}
	stop()
	waitWrites()
	lossFor := time.Since(lossAt)
	if err := nw.Heal(); err != nil {
		t.Fatal(err)
	}
	countFailures(t, &result, st, "inference under 20% loss")
	acked, unknown, refused, requests, codes := w.stats()
	result.Requests += requests
	rate := float64(st.Successes) / float64(max(st.Requests, 1))
	result.Notef("20%% loss between all nodes for %v: %.2f%% of inferences answered correctly within 10 s; writes %d acknowledged, %d unknown, %d refused, try errors %v",
		lossFor.Round(time.Millisecond), 100*rate, acked, unknown, refused, codes)
	t.Logf("under loss: %s", st)
	if rate < 0.95 {
		t.Errorf("%.2f%% of inferences succeeded under 20%% loss, want at least 95%%: %v", 100*rate, st.ByCode)
	}
	if st.Requests < 100 {
		t.Errorf("only %d inferences in %v", st.Requests, lossy)
	}
	c.verifyWrites(w, &result, 45*time.Second)
	checkHistory(t, w, &result)
	result.Finished = time.Now()
	result.Passed = !t.Failed()
	harness.RecordResult(t, result)
}
