package node

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RouterMetrics are the router's Prometheus series: per-stage call latency (local runs
// and calls over the mesh apart), retries and requests that found a stage without
// replicas. Stage labels are bounded by the deployed models' stage counts.
type RouterMetrics struct {
	stageSeconds *prometheus.HistogramVec // model, stage, where, outcome
	retries      *prometheus.CounterVec   // model, stage
	noReplica    *prometheus.CounterVec   // model, stage
	forwarded    prometheus.Counter
}

// NewRouterMetrics creates the series and registers them on reg.
func NewRouterMetrics(reg prometheus.Registerer) (*RouterMetrics, error) {
	m := &RouterMetrics{
		stageSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "layermesh_stage_call_duration_seconds",
			Help:    "Time of one stage attempt as the driving node sees it (stage=drive for a request handed to a driver), by where it ran and its outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 18), // 0.2 ms .. 26 s
		}, []string{"model", "stage", "where", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "layermesh_stage_retries_total",
			Help: "Stage attempts that failed and were retried on another replica (failovers).",
		}, []string{"model", "stage"}),
		noReplica: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "layermesh_stage_no_replica_total",
			Help: "Requests that found a stage with no live replica (answered 503).",
		}, []string{"model", "stage"}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "layermesh_requests_forwarded_total",
			Help: "Requests this entry node handed to a driver node holding the heavy-side stage.",
		}),
	}
	for _, c := range []prometheus.Collector{m.stageSeconds, m.retries, m.noReplica, m.forwarded} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func stageLabel(stage int) string {
	if stage == DriveStage {
		return "drive"
	}
	return strconv.Itoa(stage)
}

func (m *RouterMetrics) observeAttempt(model string, stage int, local bool, err error, d time.Duration) {
	if m == nil {
		return
	}
	where, outcome := "remote", "ok"
	if local {
		where = "local"
	}
	if err != nil {
		outcome = "error"
	}
	m.stageSeconds.WithLabelValues(model, stageLabel(stage), where, outcome).Observe(d.Seconds())
}

func (m *RouterMetrics) retry(model string, stage int) {
	if m != nil {
		m.retries.WithLabelValues(model, stageLabel(stage)).Inc()
	}
}

func (m *RouterMetrics) noReplicaFor(model string, stage int) {
	if m != nil {
		m.noReplica.WithLabelValues(model, stageLabel(stage)).Inc()
	}
}

func (m *RouterMetrics) forward() {
	if m != nil {
		m.forwarded.Inc()
	}
}
