package pipeline

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/layermesh/layermesh/accel/tensor"
)

// Sampling is how the last stage picks a session's next token. Each token's draw
// depends only on Seed and the token's Index, so a seeded run repeats exactly, and a
// session replayed on other replicas after a failover draws the same tokens.
type Sampling struct {
	Temperature float32 // 0: greedy
	TopK        int     // 0: off
	TopP        float32 // 0 or 1: off
	Seed        uint64
	Index       int // the generated token's index (0 for the first)
}

// SamplingTensor is the name of the small tensor a session step carries to the last
// stage with its Sampling; the stage answers with TokenTensor instead of its outputs.
const (
	SamplingTensor = "layermesh.sampling"
	TokenTensor    = "layermesh.token"
)

// tensor encodes s as SamplingTensor: int64 [5] of temperature bits, top-k, top-p
// bits, seed and index.
func (s Sampling) tensor() tensor.Tensor {
	return tensor.FromInt64(SamplingTensor, []int64{5}, []int64{
		int64(math.Float32bits(s.Temperature)), int64(s.TopK), int64(math.Float32bits(s.TopP)), int64(s.Seed), int64(s.Index),
	})
}

// samplingFrom takes SamplingTensor out of inputs, if there.
func samplingFrom(inputs []tensor.Tensor) (*Sampling, []tensor.Tensor, error) {
	i := slices.IndexFunc(inputs, func(t tensor.Tensor) bool { return t.Name == SamplingTensor })
	if i < 0 {
		return nil, inputs, nil
	}
	v, err := inputs[i].Int64s()
	if err != nil || len(v) != 5 || v[1] < 0 || v[4] < 0 {
		return nil, nil, fmt.Errorf("%w: malformed %s", ErrBadStageResponse, SamplingTensor)
	}
	s := &Sampling{Temperature: math.Float32frombits(uint32(v[0])), TopK: int(v[1]), TopP: math.Float32frombits(uint32(v[2])),
		Seed: uint64(v[3]), Index: int(v[4])}
	return s, slices.Delete(slices.Clone(inputs), i, i+1), nil
}

// Sample picks a token from one row of logits. Greedy (temperature 0) takes the
// largest logit, the lowest id on a tie. Otherwise the logits are divided by the
// temperature, cut to the top-k and then to the smallest set whose probability
// reaches top-p, and one token is drawn with a generator seeded by (Seed, Index).
func (s Sampling) Sample(logits []float32) int32 {
	if s.Temperature <= 0 || len(logits) == 1 {
		best := 0
		for i, v := range logits {
			if v > logits[best] {
				best = i
			}
		}
		return int32(best)
	}
	ids := make([]int, len(logits))
	for i := range ids {
		ids[i] = i
	}
	// Stable order: by logit, then id, so equal logits never depend on sort internals.
	slices.SortStableFunc(ids, func(a, b int) int {
		switch {
		case logits[a] > logits[b]:
			return -1
		case logits[a] < logits[b]:
			return 1
		}
		return a - b
	})
	if s.TopK > 0 && s.TopK < len(ids) {
		ids = ids[:s.TopK]
	}
	top := float64(logits[ids[0]])
	probs := make([]float64, len(ids))
	var sum float64
	for i, id := range ids {
		probs[i] = math.Exp((float64(logits[id]) - top) / float64(s.Temperature))
		sum += probs[i]
	}
	if s.TopP > 0 && s.TopP < 1 {
		var acc float64
		for i := range probs {
			acc += probs[i] / sum
			if acc >= float64(s.TopP) {
				ids, probs = ids[:i+1], probs[:i+1]
				break
			}
		}
		sum = 0
		for _, p := range probs {
			sum += p
		}
	}
	rng := rand.New(rand.NewPCG(s.Seed, uint64(s.Index)))
	u := rng.Float64() * sum
	for i, p := range probs {
		if u < p {
			return int32(ids[i])
		}
		u -= p
	}
	return int32(ids[len(ids)-1])
}
