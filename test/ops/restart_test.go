package ops

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/test/harness"
)

// testMetrics sends a known number of requests through node 0 and checks that every
// node's /metrics counts exactly that traffic.
func testMetrics(t *testing.T, c *opsCluster) {
	d, n := sendCountedLoad(t, c)
	checkRequestMetrics(t, d, n)
	checkRaftMetrics(t, c)
	checkServingMetrics(t, c, d.after)
}

// metricDeltas holds every node's metrics before and after a load.
type metricDeltas struct {
	before, after []metrics
}

// delta is how much node i's series name (summed over those with labels) grew.
func (d metricDeltas) delta(i int, name string, labels ...string) float64 {
	a, _ := d.after[i].sum(name, labels...)
	b, _ := d.before[i].sum(name, labels...)
	return a - b
}

// total is delta summed over all nodes.
func (d metricDeltas) total(name string, labels ...string) float64 {
	s := 0.0
	for i := range nodes {
		s += d.delta(i, name, labels...)
	}
	return s
}

// checkMetric fails the test unless got is want, and logs the figure when it is.
func checkMetric(t *testing.T, what string, got, want float64) {
	t.Helper()
	if got != want {
		t.Errorf("%s: %v, want %v", what, got, want)
	} else {
		t.Logf("%s: %v", what, got)
	}
}

// sendCountedLoad runs a load of at least 30 requests against node 0 and returns
// every node's metrics around it and the number of requests answered.
func sendCountedLoad(t *testing.T, c *opsCluster) (metricDeltas, float64) {
	const sent = 30
	d := metricDeltas{before: make([]metrics, nodes), after: make([]metrics, nodes)}
	for i := range nodes {
		d.before[i] = scrape(t, c.client(i))
	}
	lr := c.startLoad(t, []string{c.HTTPAddr(0)})
	harness.Eventually(t, 5*time.Minute, 100*time.Millisecond, func() error {
		if got, _ := scrape(t, c.client(0)).sum("layermesh_infer_requests_total", `model="gpt"`); got-mustSum(d.before[0], "layermesh_infer_requests_total", `model="gpt"`) < sent {
			return fmt.Errorf("%v requests answered", got)
		}
		return nil
	})
	stats, err := lr.stop()
	if err != nil {
		t.Fatal(err)
	}
	if stats.Failures != 0 {
		t.Fatalf("load: %s", stats)
	}
	n := float64(stats.Successes) // the load stops at a request boundary: count what it sent
	// A node counts a request when its handler returns, which is after the client can
	// have read the answer's last byte: scrape until the entry node has counted every
	// request the load saw answered and nothing is in flight (or 5 s have passed).
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		inFlight := 0.0
		for i := range nodes {
			d.after[i] = scrape(t, c.client(i))
			q, _ := d.after[i].sum("layermesh_infer_queue_depth")
			inFlight += q
		}
		if (inFlight == 0 && d.delta(0, "layermesh_infer_requests_total", `model="gpt"`) >= n) || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("load: %s", stats)
	return d, n
}

// checkRequestMetrics: the entry node counted n requests, the others none; every
// stage ran n times without retries or failovers; the links carried at least the
// tensors of the remote calls.
func checkRequestMetrics(t *testing.T, d metricDeltas, n float64) {
	checkMetric(t, "node 0 layermesh_infer_requests_total{code=200,model=gpt}", d.delta(0, "layermesh_infer_requests_total", `code="200"`, `model="gpt"`), n)
	checkMetric(t, "node 0 layermesh_infer_duration_seconds_count{model=gpt}", d.delta(0, "layermesh_infer_duration_seconds_count", `model="gpt"`), n)
	checkMetric(t, "node 0 layermesh_http_requests_total{infer route, 200}", d.delta(0, "layermesh_http_requests_total", `code="200"`, `route="/v2/models/{name}/infer"`), n)
	for i := 1; i < nodes; i++ {
		checkMetric(t, fmt.Sprintf("node %d inference requests (none sent there)", i), d.delta(i, "layermesh_infer_requests_total", `model="gpt"`), 0)
	}
	checkMetric(t, "retries on every node", d.total("layermesh_stage_retries_total"), 0)
	checkMetric(t, "failovers on every node", d.total("layermesh_stage_failovers_total"), 0)
	var remote float64
	for k := range 3 {
		stage := `stage="` + strconv.Itoa(k) + `"`
		checkMetric(t, "stage "+strconv.Itoa(k)+" compute runs, all nodes", d.total("layermesh_stage_compute_duration_seconds_count", `model="gpt"`, stage, `outcome="ok"`), n)
		checkMetric(t, "stage "+strconv.Itoa(k)+" calls by the driving routers", d.total("layermesh_stage_call_duration_seconds_count", `model="gpt"`, stage, `outcome="ok"`), n)
		remote += d.total("layermesh_stage_call_duration_seconds_count", `model="gpt"`, stage, `where="remote"`)
	}
	drives := d.total("layermesh_stage_call_duration_seconds_count", `model="gpt"`, `stage="drive"`)
	checkMetric(t, "requests handed to a driver = forwarded", drives, d.delta(0, "layermesh_requests_forwarded_total"))
	remote += d.total("layermesh_stage_call_duration_seconds_count", `model="gpt"`, `stage="drive"`, `where="remote"`)
	sentBytes, recvBytes := d.total("layermesh_link_sent_bytes_total"), d.total("layermesh_link_received_bytes_total")
	t.Logf("remote stage calls %v: %v bytes sent, %v received", remote, sentBytes, recvBytes)
	// Every remote call carries at least the 128 bytes of the 16 token ids, and every
	// answer at least one 1x16x256 fp32 activation.
	if remote > 0 && (sentBytes < 128*remote || recvBytes < 16*256*4*remote) {
		t.Errorf("link bytes %v sent, %v received for %v remote calls", sentBytes, recvBytes, remote)
	}
	if remote == 0 && sentBytes != 0 {
		t.Errorf("link bytes %v sent without a remote call", sentBytes)
	}
}

// checkRaftMetrics: every node reports the cluster's term, leader, voters and live
// members, and nothing left in flight after the load. The metrics and the cluster's
// status are read anew on each try, so that a brief suspicion or an election on a
// stalled machine between the two reads settles instead of failing the check.
func checkRaftMetrics(t *testing.T, c *opsCluster) {
	harness.Eventually(t, 15*time.Second, 200*time.Millisecond, func() error {
		cs, err := c.client(0).Cluster(context.Background())
		if err != nil {
			return err
		}
		var errs []error
		leaders := 0
		for i := range nodes {
			m := scrape(t, c.client(i))
			term, _ := m.sum("layermesh_raft_term")
			if uint64(term) != cs.Term {
				errs = append(errs, fmt.Errorf("node %d layermesh_raft_term %v, cluster term %d", i, term, cs.Term))
			}
			if v, _ := m.sum("layermesh_raft_leader", `leader="`+cs.Leader+`"`); v == 1 {
				leaders++
			}
			if _, n := m.sum("layermesh_raft_leader", `leader="`+cs.Leader+`"`); n != 1 {
				errs = append(errs, fmt.Errorf("node %d does not name %s as leader in layermesh_raft_leader", i, cs.Leader))
			}
			if v, _ := m.sum("layermesh_raft_commit_index"); v <= 0 {
				errs = append(errs, fmt.Errorf("node %d layermesh_raft_commit_index %v", i, v))
			}
			if v, _ := m.sum("layermesh_raft_voters"); v != nodes {
				errs = append(errs, fmt.Errorf("node %d layermesh_raft_voters %v", i, v))
			}
			if v, _ := m.sum("layermesh_cluster_members", `state="alive"`); v != nodes {
				errs = append(errs, fmt.Errorf("node %d layermesh_cluster_members{alive} %v", i, v))
			}
			if v, _ := m.sum("layermesh_infer_queue_depth"); v != 0 {
				errs = append(errs, fmt.Errorf("node %d queue depth %v after the load", i, v))
			}
			if v, _ := m.sum("layermesh_stage_calls_in_flight"); v != 0 {
				errs = append(errs, fmt.Errorf("node %d stage calls in flight %v after the load", i, v))
			}
		}
		if leaders != 1 {
			errs = append(errs, fmt.Errorf("%d nodes report layermesh_raft_leader 1", leaders))
		}
		return errors.Join(errs...)
	})
}

// checkServingMetrics: the nodes serve every stage replica, have served blob bytes
// for the deploy, and soon measure the RTT to both peers.
func checkServingMetrics(t *testing.T, c *opsCluster, after []metrics) {
	served := 0.0
	for i := range nodes {
		v, _ := after[i].sum("layermesh_stages_served", `ready="true"`)
		served += v
	}
	checkMetric(t, "stages served ready, all nodes (3 stages x 2 replicas)", served, 6)
	blobs := 0.0
	for i := range nodes {
		v, _ := after[i].sum("layermesh_blob_served_bytes_total")
		blobs += v
	}
	if blobs <= 0 {
		t.Errorf("layermesh_blob_served_bytes_total is %v on every node after a deploy", blobs)
	}
	// Link probes run in the background: each node measures both peers soon.
	harness.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error {
		for i := range nodes {
			if _, n := scrape(t, c.client(i)).sum("layermesh_link_rtt_seconds"); n != nodes-1 {
				return fmt.Errorf("node %d has RTT series for %d peers", i, n)
			}
		}
		return nil
	})
}

func mustSum(m metrics, name string, labels ...string) float64 {
	v, _ := m.sum(name, labels...)
	return v
}

// testRollingRestart drains, stops, starts and undrains each node in turn while a
// steady stream of requests goes to the others: no request may fail.
func testRollingRestart(t *testing.T, c *opsCluster) {
	var all harness.LoadStats
	for i := range nodes {
		name := c.Node(i).Name
		var targets []string
		for j := range nodes {
			if j != i {
				targets = append(targets, c.HTTPAddr(j))
			}
		}
		via := (i + 1) % nodes
		lr := c.startLoad(t, targets)
		start := time.Now()

		// Drain, in one output form or the other, and wait until the stages moved.
		args := []string{"drain", name, "--wait", "3m"}
		if i%2 == 0 {
			out := c.ok(t, args...)
			if !strings.HasPrefix(out, "drained "+name+": it serves no stage") {
				t.Errorf("drain: %q", out)
			}
		} else {
			var act actionResult
			c.okJSON(t, &act, args...)
			if act.Action != "drain" || act.Target != name || act.Waited <= 0 {
				t.Errorf("drain --json: %+v", act)
			}
		}
		// meshctl waited on node 0's view; another node answers /v1/nodes from its own
		// copy of the state, which may still be a commit behind (docs/RELIABILITY.md).
		if err := harness.Poll(10*time.Second, 100*time.Millisecond, func() error {
			stages, state, err := c.nodeStages(via, name)
			if err != nil || len(stages) != 0 || state != "draining" {
				return fmt.Errorf("%s after drain: state %q stages %v (%v)", name, state, stages, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := c.waitReplicas(via, "gpt", 2, 2*time.Minute, name); err != nil {
			t.Fatalf("stages of %s not re-replicated elsewhere: %v", name, err)
		}
		drained := time.Since(start)

		if err := c.Stop(i); err != nil {
			t.Fatalf("stop %s: %v", name, err)
		}
		if err := c.Start(i); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		err := c.WaitReady(ctx, i)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Node(i).Starts(); got != 2 {
			t.Fatalf("%s has been started %d times, want 2", name, got)
		}
		restarted := time.Since(start)
		out := c.ok(t, "undrain", name)
		if out != name+" takes stages again\n" {
			t.Errorf("undrain: %q", out)
		}
		// The placement gives the node work again as it rebalances; the next node's
		// drain needs it only as room, so this waits but does not insist.
		if err := harness.Poll(60*time.Second, 250*time.Millisecond, func() error {
			stages, state, err := c.nodeStages(via, name)
			if err != nil || state != "alive" || len(stages) == 0 {
				return fmt.Errorf("%s: state %q stages %v (%v)", name, state, stages, err)
			}
			return nil
		}); err != nil {
			t.Logf("%s has no stages yet after the restart: %v", name, err)
		}
		if err := c.waitReplicas(via, "gpt", 2, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		stats, err := lr.stop()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: drained in %v, ready again %v after the drain began; load to the others: %s",
			name, drained.Round(time.Millisecond), restarted.Round(time.Millisecond), stats)
		if stats.Failures != 0 {
			for _, o := range stats.Outcomes {
				if !o.OK() {
					t.Errorf("request %d via %s: %d %s %s", o.Seq, o.Target, o.Status, o.Code, o.Err)
				}
			}
			t.Fatalf("%d requests failed while %s was drained and restarted", stats.Failures, name)
		}
		if stats.Successes < 10 {
			t.Fatalf("only %d requests ran while %s was drained and restarted: not a steady stream", stats.Successes, name)
		}
		all.Requests += stats.Requests
		all.Successes += stats.Successes
	}
	t.Logf("rolling restart of %d nodes: %d of %d requests answered, none failed", nodes, all.Successes, all.Requests)
}

// testDrainRemove: a node is drained (both forms), stopped and removed (both forms)
// under load with no failed request; it is then listed as left and is no voter.
func testDrainRemove(t *testing.T, c *opsCluster) {
	const victim = 2
	name := c.Node(victim).Name
	lr := c.startLoad(t, []string{c.HTTPAddr(0), c.HTTPAddr(1)})
	c.ok(t, "drain", name, "--wait", "3m")
	var act actionResult
	c.okJSON(t, &act, "drain", name) // again: draining a draining node is a no-op
	if act.Action != "drain" || act.Target != name {
		t.Errorf("drain --json: %+v", act)
	}
	if err := c.waitReplicas(0, "gpt", 2, 2*time.Minute, name); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(victim); err != nil {
		t.Fatal(err)
	}
	c.okJSON(t, &act, "remove", name)
	if act.Action != "remove" || act.Target != name {
		t.Errorf("remove --json: %+v", act)
	}
	if out := c.ok(t, "remove", name); out != "removed "+name+" from the cluster\n" {
		t.Errorf("remove (again): %q", out)
	}
	// Requests keep flowing for a moment after the removal.
	time.Sleep(2 * time.Second)
	stats, err := lr.stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("load while %s was drained, stopped and removed: %s", name, stats)
	if stats.Failures != 0 || stats.Successes < 5 {
		t.Fatalf("load: %s", stats)
	}
	if r := c.ctl(t, 0, "undrain", name); r.code != 1 || !strings.Contains(r.stderr, "conflict") {
		t.Errorf("undrain of a removed node: exit %d %q, want 1 and conflict", r.code, r.stderr)
	}
	var nl wire.NodeList
	c.okJSON(t, &nl, "nodes")
	for _, n := range nl.Nodes {
		if n.Name == name && (n.State != "left" || n.Voter || len(n.Models) != 0) {
			t.Errorf("removed node listed as %+v", n)
		}
	}
	harness.Eventually(t, 20*time.Second, 250*time.Millisecond, func() error {
		if v, _ := scrape(t, c.client(0)).sum("layermesh_raft_voters"); v != nodes-1 {
			return fmt.Errorf("layermesh_raft_voters %v", v)
		}
		return nil
	})
}
