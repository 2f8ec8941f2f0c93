package node

// Prometheus series an operator watches besides the router's (router_metrics.go):
// Raft state, membership, link quality, stage compute time and queue depth. Most are
// read from their owners when /metrics is scraped, so nothing here runs between
// scrapes.

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/mesh"
	"github.com/layermesh/layermesh/pipeline"
)

// clusterCollector reads the cluster part's figures at scrape time.
type clusterCollector struct {
	c *Cluster

	term, commit, applied, leader, voters *prometheus.Desc
	members                               *prometheus.Desc // state
	rtt, bandwidth                        *prometheus.Desc // peer
	callsInFlight, stagesServed           *prometheus.Desc
}

func newClusterCollector(c *Cluster) *clusterCollector {
	return &clusterCollector{
		c:       c,
		term:    prometheus.NewDesc("layermesh_raft_term", "Current Raft term as this node knows it.", nil, nil),
		commit:  prometheus.NewDesc("layermesh_raft_commit_index", "Raft commit index on this node.", nil, nil),
		applied: prometheus.NewDesc("layermesh_raft_applied_index", "Last Raft log index applied to this node's state.", nil, nil),
		leader: prometheus.NewDesc("layermesh_raft_leader", "1 on the node that leads Raft, with the leader's name as a label on every node.",
			[]string{"leader"}, nil),
		voters:  prometheus.NewDesc("layermesh_raft_voters", "Voters in the Raft configuration.", nil, nil),
		members: prometheus.NewDesc("layermesh_cluster_members", "Members recorded in the cluster state, by state.", []string{"state"}, nil),
		rtt: prometheus.NewDesc("layermesh_link_rtt_seconds", "Round-trip time to a peer as the last link probe measured it, by peer id.",
			[]string{"peer"}, nil),
		bandwidth: prometheus.NewDesc("layermesh_link_bandwidth_bytes_per_second", "Bulk bandwidth toward a peer as the last link probe measured it, by peer id.",
			[]string{"peer"}, nil),
		callsInFlight: prometheus.NewDesc("layermesh_stage_calls_in_flight", "Stage calls this node's router has open (local runs and calls to peers).", nil, nil),
		stagesServed:  prometheus.NewDesc("layermesh_stages_served", "Stages this node holds, by readiness.", []string{"ready"}, nil),
	}
}

func (k *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{k.term, k.commit, k.applied, k.leader, k.voters, k.members, k.rtt, k.bandwidth, k.callsInFlight, k.stagesServed} {
		ch <- d
	}
}

func (k *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	c := k.c
	stats := c.store.Stats()
	st := c.store.State()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(k.term, float64(stats.Term))
	gauge(k.commit, float64(stats.CommitIndex))
	gauge(k.applied, float64(stats.AppliedIndex))
	gauge(k.voters, float64(stats.Voters))
	leaderName := stats.Leader
	if m, ok := st.Members[stats.Leader]; ok && m.Name != "" {
		leaderName = m.Name
	}
	isLeader := 0.0
	if c.store.IsLeader() {
		isLeader = 1
	}
	gauge(k.leader, isLeader, leaderName)
	byState := map[consensus.MemberState]int{}
	for _, m := range st.Members {
		byState[m.State]++
	}
	for _, s := range []consensus.MemberState{consensus.MemberAlive, consensus.MemberSuspect, consensus.MemberDead,
		consensus.MemberDraining, consensus.MemberLeft, consensus.MemberRemoved} {
		gauge(k.members, float64(byState[s]), string(s))
	}
	for _, m := range c.mesh.Members() {
		if m.PeerID.String() == c.self {
			continue
		}
		if ls, ok := c.mesh.Link(m.PeerID); ok {
			gauge(k.rtt, ls.RTT.Seconds(), m.PeerID.String())
			gauge(k.bandwidth, ls.Bandwidth, m.PeerID.String())
		}
	}
	gauge(k.callsInFlight, float64(c.router.CallsInFlight()))
	ready, loading := 0, 0
	for _, s := range c.runtime.Served() {
		if s.Ready {
			ready++
		} else {
			loading++
		}
	}
	gauge(k.stagesServed, float64(ready), "true")
	gauge(k.stagesServed, float64(loading), "false")
}

// registerClusterMetrics registers the collector above and the stage compute
// histogram, which the stage runtime feeds on every run.
func registerClusterMetrics(reg prometheus.Registerer, c *Cluster) error {
	compute := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "layermesh_stage_compute_duration_seconds",
		Help:    "ONNX Runtime time of one stage run on this node (for the local router or a peer), without the wait for a free session of the stage's pool, by model, stage, step (run: a stateless request; prefill or decode: a generation session's) and outcome.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 18), // 0.2 ms .. 26 s
	}, []string{"model", "stage", "step", "outcome"})
	for _, col := range []prometheus.Collector{newClusterCollector(c), compute} {
		if err := reg.Register(col); err != nil {
			return err
		}
	}
	c.runtime.SetComputeObserver(func(k pipeline.StageKey, step mesh.StepKind, d time.Duration, err error) {
		outcome := "ok"
		if err != nil {
			outcome = "error"
		}
		compute.WithLabelValues(k.Model, strconv.Itoa(k.Stage), step.String(), outcome).Observe(d.Seconds())
	})
	return nil
}
