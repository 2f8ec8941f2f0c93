package compress

import (
	"math"
	"math/rand/v2"
	"slices"
)

// reservoirSize bounds the values the percentile method keeps per tensor: a
// uniform sample of everything observed, so memory does not grow with the
// calibration set.
const reservoirSize = 1 << 18

// observer accumulates one activation's values over the calibration set.
type observer struct {
	method     string
	percentile float64
	lo, hi     float64
	seen       int64
	sample     []float32
	rng        *rand.Rand
}

func newObserver(method string, percentile float64) *observer {
	return &observer{method: method, percentile: percentile, lo: math.Inf(1), hi: math.Inf(-1), rng: rand.New(rand.NewPCG(1, 2))}
}

func (o *observer) observe(vals []float32) {
	for _, v := range vals {
		o.lo, o.hi = math.Min(o.lo, float64(v)), math.Max(o.hi, float64(v))
	}
	if o.method != "percentile" {
		return
	}
	for _, v := range vals {
		o.seen++
		if len(o.sample) < reservoirSize {
			o.sample = append(o.sample, v)
		} else if j := o.rng.Int64N(o.seen); j < reservoirSize {
			o.sample[j] = v
		}
	}
}

// result is the range: the extremes (minmax), or the percentile and its
// mirror (percentile), which clips rare outliers to spend the 256 levels on
// the bulk of the values.
func (o *observer) result() valueRange {
	if o.seen == 0 && math.IsInf(o.lo, 1) {
		return valueRange{}
	}
	if o.method != "percentile" || len(o.sample) == 0 {
		return valueRange{o.lo, o.hi}
	}
	s := slices.Clone(o.sample)
	slices.Sort(s)
	pick := func(p float64) float64 {
		return float64(s[min(int(p/100*float64(len(s)-1)+0.5), len(s)-1)])
	}
	return valueRange{pick(100 - o.percentile), pick(o.percentile)}
}
