package node

import (
	"bytes"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	promodel "github.com/prometheus/common/model"
)

// nodeHistograms is one node's registry with the router's histogram observed at the
// given seconds for model m, stage 0, split over two where labels.
func nodeHistograms(t *testing.T, seconds ...float64) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: stageHistogramName, Buckets: []float64{0.01, 0.1, 1}},
		[]string{"model", "stage", "where", "outcome"})
	reg.MustRegister(h)
	for i, s := range seconds {
		where := "local"
		if i%2 == 1 {
			where = "remote"
		}
		h.WithLabelValues("m", "0", where, "ok").Observe(s)
	}
	return reg
}

func TestStageSumsAddNodesHistogramsFromRegistriesAndText(t *testing.T) {
	own, err := nodeHistograms(t, 0.005, 0.05, 0.5).Gather()
	if err != nil {
		t.Fatal(err)
	}
	// The peer's figures arrive as /metrics text, as over HTTP.
	peer, err := nodeHistograms(t, 0.05, 5).Gather()
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	for _, f := range peer {
		if _, err := expfmt.MetricFamilyToText(&text, f); err != nil {
			t.Fatal(err)
		}
	}
	parser := expfmt.NewTextParser(promodel.UTF8Validation)
	parsed, err := parser.TextToMetricFamilies(&text)
	if err != nil {
		t.Fatal(err)
	}
	sum := stageSums{}
	sum.add(keepFamilies(own, []string{stageHistogramName})[stageHistogramName])
	sum.add(parsed[stageHistogramName])
	got := sum.list()
	if len(got) != 1 || got[0].Model != "m" || got[0].Stage != "0" {
		t.Fatalf("stages = %+v, want one for m stage 0", got)
	}
	h := got[0]
	if h.Count != 5 || h.Sum < 5.604 || h.Sum > 5.606 {
		t.Fatalf("count %d sum %v, want 5 calls of 5.605 s", h.Count, h.Sum)
	}
	want := []uint64{1, 3, 4} // <= 10 ms, <= 100 ms, <= 1 s
	if len(h.Buckets) != len(want) {
		t.Fatalf("buckets %+v", h.Buckets)
	}
	for i, b := range h.Buckets {
		if b.Count != want[i] {
			t.Fatalf("bucket le=%v has %d, want %d (%+v)", b.LE, b.Count, want[i], h.Buckets)
		}
	}
}
