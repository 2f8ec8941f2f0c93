package node

// GET /v1/stage-stats and GET /v1/links: figures every live node keeps in its own
// registry, read from its open /metrics and put together. A node records the stage
// calls it drives and the links it probes, so one node's /metrics sees only part of
// the mesh; the dashboard asks one node and gets the cluster's figures.

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
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
	// linkRTTName and linkBandwidthName are the link probes' gauges (cluster_metrics.go).
	linkRTTName       = "layermesh_link_rtt_seconds"
	linkBandwidthName = "layermesh_link_bandwidth_bytes_per_second"
	// peerMetricsTimeout bounds the wait for one peer's /metrics: a dashboard poll
	// must not hang on a dying node.
	peerMetricsTimeout = 2 * time.Second
	// maxPeerMetricsBytes bounds what is read of a peer's /metrics.
	maxPeerMetricsBytes = 16 << 20
)

// nodeFamilies are one node's metric families, by name.
type nodeFamilies struct {
	node     string
	families map[string]*dto.MetricFamily
}

// clusterFamilies reads the named families from this node's registry and from every
// live peer's /metrics, at once; missing lists the peers that did not answer.
func (s clusterServices) clusterFamilies(ctx context.Context, names ...string) (answered []nodeFamilies, missing []string, err error) {
	c, err := s.part()
	if err != nil {
		return nil, nil, err
	}
	own, err := s.n.reg.Gather()
	if err != nil {
		return nil, nil, fmt.Errorf("node: gather metrics: %w", err)
	}
	answered = []nodeFamilies{{node: s.n.name, families: keepFamilies(own, names)}}
	scheme := "http"
	if s.n.tls {
		scheme = "https"
	}
	var (
		mu sync.Mutex // guards answered and missing while peers answer
		wg sync.WaitGroup
	)
	for _, m := range c.mesh.Members() {
		if m.PeerID.String() == c.self || m.State != mesh.StateAlive || m.Meta.HTTPAddr == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			families, err := peerMetrics(ctx, scheme+"://"+m.Meta.HTTPAddr+"/metrics", names)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				missing = append(missing, m.Meta.Name)
				return
			}
			answered = append(answered, nodeFamilies{node: m.Meta.Name, families: families})
		}()
	}
	wg.Wait()
	slices.SortFunc(answered, func(a, b nodeFamilies) int { return cmp.Compare(a.node, b.node) })
	slices.Sort(missing)
	return answered, missing, nil
}

func keepFamilies(all []*dto.MetricFamily, names []string) map[string]*dto.MetricFamily {
	out := make(map[string]*dto.MetricFamily, len(names))
	for _, f := range all {
		if slices.Contains(names, f.GetName()) {
			out[f.GetName()] = f
		}
	}
	return out
}

// StageStats sums the stage-call histograms of every live node.
func (s clusterServices) StageStats(ctx context.Context) (wire.StageStats, error) {
	answered, missing, err := s.clusterFamilies(ctx, stageHistogramName)
	if err != nil {
		return wire.StageStats{}, err
	}
	sum := stageSums{}
	out := wire.StageStats{Missing: missing}
	for _, n := range answered {
		sum.add(n.families[stageHistogramName])
		out.Nodes = append(out.Nodes, n.node)
	}
	out.Stages = sum.list()
	return out, nil
}

// Links lists the links every live node's probes have measured.
func (s clusterServices) Links(ctx context.Context) (wire.LinkList, error) {
	c, err := s.part()
	if err != nil {
		return wire.LinkList{}, err
	}
	answered, missing, err := s.clusterFamilies(ctx, linkRTTName, linkBandwidthName)
	if err != nil {
		return wire.LinkList{}, err
	}
	st := c.store.View()
	out := wire.LinkList{Links: []wire.Link{}, Missing: missing}
	for _, n := range answered {
		bandwidth := gaugesByPeer(n.families[linkBandwidthName])
		rtt := gaugesByPeer(n.families[linkRTTName])
		for _, peer := range slices.Sorted(maps.Keys(rtt)) {
			out.Links = append(out.Links, wire.Link{From: n.node, To: memberName(st, peer),
				RTTMillis: rtt[peer] * 1000, BandwidthBytes: bandwidth[peer]})
		}
	}
	return out, nil
}

// gaugesByPeer maps a per-peer gauge family to its values by peer id.
func gaugesByPeer(f *dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "peer" {
				out[l.GetValue()] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

func peerMetrics(ctx context.Context, url string, names []string) (map[string]*dto.MetricFamily, error) {
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
	out := make(map[string]*dto.MetricFamily, len(names))
	for _, name := range names {
		if f, ok := byName[name]; ok {
			out[name] = f
		}
	}
	return out, nil
}

type stageKey struct{ model, stage string }

// stageSums adds histograms up per model and stage, over nodes, where and outcome.
type stageSums map[stageKey]*wire.StageHistogram

func (s stageSums) add(f *dto.MetricFamily) {
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
