package pipeline

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/mesh"
)

// RouterMetrics are the router's Prometheus series: per-stage call latency (local runs
// and calls over the mesh apart), retries and requests that found a stage without
// replicas. Stage labels are bounded by the deployed models' stage counts.
type RouterMetrics struct {
	stageSeconds *prometheus.HistogramVec // model, stage, where, step, outcome
	retries      *prometheus.CounterVec   // model, stage
	noReplica    *prometheus.CounterVec   // model, stage
	forwarded    prometheus.Counter
	failovers    *prometheus.CounterVec // model, stage
	linkSent     *prometheus.CounterVec // peer
	linkReceived *prometheus.CounterVec // peer
	replays      *prometheus.CounterVec // model
}

// NewRouterMetrics creates the series and registers them on reg.
func NewRouterMetrics(reg prometheus.Registerer) (*RouterMetrics, error) {
	m := &RouterMetrics{
		stageSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "layermesh_stage_call_duration_seconds",
			Help:    "Time of one stage attempt as the driving node sees it (stage=drive for a request handed to a driver), by where it ran, the step (run: a stateless request; prefill or decode: a generation session's) and its outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 18), // 0.2 ms .. 26 s
		}, []string{"model", "stage", "where", "step", "outcome"}),
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
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "layermesh_stage_failovers_total",
			Help: "Stage calls that succeeded on another replica after at least one attempt failed.",
		}, []string{"model", "stage"}),
		linkSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "layermesh_link_sent_bytes_total",
			Help: "Tensor bytes this node's router sent to a peer in stage calls, by peer id.",
		}, []string{"peer"}),
		linkReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "layermesh_link_received_bytes_total",
			Help: "Tensor bytes this node's router received from a peer in stage answers, by peer id.",
		}, []string{"peer"}),
		replays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "layermesh_session_replays_total",
			Help: "Generation sessions moved to other replicas after a pinned replica failed, which rebuilt their state by replaying the tokens.",
		}, []string{"model"}),
	}
	for _, c := range []prometheus.Collector{m.stageSeconds, m.retries, m.noReplica, m.forwarded, m.failovers, m.linkSent, m.linkReceived, m.replays} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *RouterMetrics) observeAttempt(model, stage string, step mesh.StepKind, local bool, err error, d time.Duration) {
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
	m.stageSeconds.WithLabelValues(model, stage, where, step.String(), outcome).Observe(d.Seconds())
}

func (m *RouterMetrics) retry(model string, stage string) {
	if m != nil {
		m.retries.WithLabelValues(model, stage).Inc()
	}
}

func (m *RouterMetrics) noReplicaFor(model string, stage string) {
	if m != nil {
		m.noReplica.WithLabelValues(model, stage).Inc()
	}
}

func (m *RouterMetrics) forward() {
	if m != nil {
		m.forwarded.Inc()
	}
}

func (m *RouterMetrics) failover(model string, stage string) {
	if m != nil {
		m.failovers.WithLabelValues(model, stage).Inc()
	}
}

func (m *RouterMetrics) replay(model string) {
	if m != nil {
		m.replays.WithLabelValues(model).Inc()
	}
}

// observeLink counts the tensor bytes of one remote stage call each way.
func (m *RouterMetrics) observeLink(peer string, sent, received []tensor.Tensor) {
	if m == nil {
		return
	}
	m.linkSent.WithLabelValues(peer).Add(float64(tensorBytes(sent)))
	if received != nil {
		m.linkReceived.WithLabelValues(peer).Add(float64(tensorBytes(received)))
	}
}

func tensorBytes(ts []tensor.Tensor) int {
	n := 0
	for _, t := range ts {
		n += len(t.Data)
	}
	return n
}
