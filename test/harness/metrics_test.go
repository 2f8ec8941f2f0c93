package harness

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestMetric(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 12
go_goroutines_extra 100
layermesh_retries_total{stage="0"} 3
layermesh_retries_total{stage="1",peer="a b"} 4.5
`)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for name, want := range map[string]float64{"go_goroutines": 12, "layermesh_retries_total": 7.5} {
		got, err := Metric(context.Background(), addr, name)
		if err != nil || got != want {
			t.Errorf("%s = %v, %v; want %v", name, got, err, want)
		}
	}
	if _, err := Metric(context.Background(), addr, "go_gor"); !errors.Is(err, ErrNoMetric) {
		t.Errorf("a prefix of a metric name matched: %v", err)
	}
}
