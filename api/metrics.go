package api

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the API's Prometheus series. Per-model series are only recorded for
// answers other than 404, so a client probing random names cannot grow the label set.
type metrics struct {
	requests      *prometheus.CounterVec   // route, code
	latency       *prometheus.HistogramVec // route
	inferRequests *prometheus.CounterVec   // model, code
	inferLatency  *prometheus.HistogramVec // model
	inFlight      prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "layermesh_http_requests_total",
			Help: "HTTP requests answered, by route pattern and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "layermesh_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by route pattern.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms .. 16 s
		}, []string{"route"}),
		inferRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "layermesh_infer_requests_total",
			Help: "Inference requests answered, by model and status code.",
		}, []string{"model", "code"}),
		inferLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "layermesh_infer_duration_seconds",
			Help:    "Time to answer an inference request over HTTP, by model.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"model"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "layermesh_infer_queue_depth",
			Help: "Inference requests this node has taken over HTTP and not answered yet.",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.inferRequests, m.inferLatency, m.inFlight} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) observe(route, model string, status int, d time.Duration) {
	code := strconv.Itoa(status)
	m.requests.WithLabelValues(route, code).Inc()
	m.latency.WithLabelValues(route).Observe(d.Seconds())
	if strings.HasSuffix(route, "/infer") && status != http.StatusNotFound {
		m.inferRequests.WithLabelValues(model, code).Inc()
		m.inferLatency.WithLabelValues(model).Observe(d.Seconds())
	}
}
