package node

// GET /v1/stage-stats: the stage-call latency histograms of every live node, summed.
// A node records the stage calls it drives, so one node's /metrics sees only part of
// the traffic; the dashboard asks one node and gets the cluster's figures.

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	promodel "github.com/prometheus/common/model"

	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/mesh"
)

const (
	// stageHistogramName is the router's stage-call histogram (pipeline/metrics.go).
	stageHistogramName = "layermesh_stage_call_duration_seconds"
	// peerMetricsTimeout bounds the wait for one peer's /metrics: a dashboard poll
	// must not hang on a dying node.
	peerMetricsTimeout = 2 * time.Second
	// maxPeerMetricsBytes bounds what is read of a peer's /metrics.
	maxPeerMetricsBytes = 16 << 20
)

// StageStats sums the stage-call histograms of this node (its registry) and of every
// live peer (its open /metrics over HTTP).
func (s clusterServices) StageStats(ctx context.Context) (wire.StageStats, error) {
	c, err := s.part()
	if err != nil {
		return wire.StageStats{}, err
	}
	own, err := s.n.reg.Gather()
	if err != nil {
		return wire.StageStats{}, fmt.Errorf("node: gather metrics: %w", err)
	}
	sum := stageSums{}
	sum.add(own)
	out := wire.StageStats{Nodes: []string{s.n.name}}

	scheme := "http"
	if s.n.tls {
		scheme = "https"
	}
	var (
		mu sync.Mutex // guards sum and out while peers answer
		wg sync.WaitGroup
	)
	for _, m := range c.mesh.Members() {
		if m.PeerID.String() == c.self || m.State != mesh.StateAlive || m.Meta.HTTPAddr == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			families, err := peerMetrics(ctx, scheme+"://"+m.Meta.HTTPAddr+"/metrics")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				out.Missing = append(out.Missing, m.Meta.Name)
				return
			}
			sum.add(families)
			out.Nodes = append(out.Nodes, m.Meta.Name)
		}()
	}
	wg.Wait()
	slices.Sort(out.Nodes)
	slices.Sort(out.Missing)
	out.Stages = sum.list()
	return out, nil
}

func peerMetrics(ctx context.Context, url string) ([]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, peerMetricsTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(promodel.UTF8Validation)
	byName, err := parser.TextToMetricFamilies(io.LimitReader(resp.Body, maxPeerMetricsBytes))
	if err != nil {
		return nil, err
	}
	if f, ok := byName[stageHistogramName]; ok {
		return []*dto.MetricFamily{f}, nil
	}
	return nil, nil
}

type stageKey struct{ model, stage string }

// stageSums adds histograms up per model and stage, over nodes, where and outcome.
type stageSums map[stageKey]*wire.StageHistogram

func (s stageSums) add(families []*dto.MetricFamily) {
	for _, f := range families {
		if f.GetName() != stageHistogramName {
			continue
		}
		for _, m := range f.GetMetric() {
			var k stageKey
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "model":
					k.model = l.GetValue()
				case "stage":
					k.stage = l.GetValue()
				}
			}
			s.addHistogram(k, m.GetHistogram())
		}
	}
}

func (s stageSums) addHistogram(k stageKey, h *dto.Histogram) {
	if h == nil {
		return
	}
	acc, ok := s[k]
	if !ok {
		acc = &wire.StageHistogram{Model: k.model, Stage: k.stage}
		s[k] = acc
	}
	acc.Count += h.GetSampleCount()
	acc.Sum += h.GetSampleSum()
	for _, b := range h.GetBucket() {
		le := b.GetUpperBound()
		if math.IsInf(le, 1) {
			continue // the +Inf bucket is Count
		}
		i := slices.IndexFunc(acc.Buckets, func(x wire.HistogramBucket) bool { return x.LE == le })
		if i < 0 {
			acc.Buckets = append(acc.Buckets, wire.HistogramBucket{LE: le})
			i = len(acc.Buckets) - 1
		}
		acc.Buckets[i].Count += b.GetCumulativeCount()
	}
}

func (s stageSums) list() []wire.StageHistogram {
	out := make([]wire.StageHistogram, 0, len(s))
	for _, h := range s {
		slices.SortFunc(h.Buckets, func(a, b wire.HistogramBucket) int { return cmp.Compare(a.LE, b.LE) })
		out = append(out, *h)
	}
	slices.SortFunc(out, func(a, b wire.StageHistogram) int {
		return cmp.Or(cmp.Compare(a.Model, b.Model), cmp.Compare(a.Stage, b.Stage))
	})
	return out
}
