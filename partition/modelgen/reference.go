package modelgen

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/layermesh/layermesh/partition/onnxpb"
)

// ReferenceGPT computes the logits of a model built by GPT(cfg) in plain Go,
// in float64, reading the weights back from m's initializers. It shares no
// code with ONNX Runtime and none with the graph's wiring, which makes it an
// independent check of both: tests hold ORT's output against it. ids is
// [batch][seq] (every row the same length); the result is [batch, seq, vocab]
// flattened row-major. It is meant for tiny configurations: it is a direct
// triple loop with no blocking or threading.
func ReferenceGPT(m *onnxpb.ModelProto, cfg GPTConfig, ids [][]int64) ([]float32, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(ids) == 0 || len(ids[0]) == 0 {
		return nil, fmt.Errorf("%w: empty ids", ErrBadInput)
	}
	seq := len(ids[0])
	if seq > cfg.Context {
		return nil, fmt.Errorf("%w: sequence %d longer than context %d", ErrBadInput, seq, cfg.Context)
	}
	for _, row := range ids {
		if len(row) != seq {
			return nil, fmt.Errorf("%w: ragged ids", ErrBadInput)
		}
		for _, id := range row {
			if id < 0 || id >= int64(cfg.Vocab) {
				return nil, fmt.Errorf("%w: token id %d outside vocabulary %d", ErrBadInput, id, cfg.Vocab)
			}
		}
	}
	w, err := readWeights(m)
	if err != nil {
		return nil, err
	}
	get := func(name string, n int) ([]float64, error) {
		v, ok := w[name]
		if !ok {
			return nil, fmt.Errorf("%w: %s", ErrMissingWeight, name)
		}
		if len(v) != n {
			return nil, fmt.Errorf("%w: %s has %d values, want %d", ErrMissingWeight, name, len(v), n)
		}
		return v, nil
	}
	d, vocab, heads := cfg.Dim, cfg.Vocab, cfg.Heads
	wte, err := get(TokenEmbedding, vocab*d)
	if err != nil {
		return nil, err
	}
	wpe, err := get(PosEmbedding, cfg.Context*d)
	if err != nil {
		return nil, err
	}
	type blockWeights struct{ ln1s, ln1b, qkvW, qkvB, projW, projB, ln2s, ln2b, fcW, fcB, fc2W, fc2B []float64 }
	blocks := make([]blockWeights, cfg.Layers)
	for i := range blocks {
		n := gptBlock(i)
		specs := []struct {
			dst  *[]float64
			name string
			size int
		}{
			{&blocks[i].ln1s, n.ln1Scale, d}, {&blocks[i].ln1b, n.ln1Bias, d},
			{&blocks[i].qkvW, n.qkvW, d * 3 * d}, {&blocks[i].qkvB, n.qkvB, 3 * d},
			{&blocks[i].projW, n.projW, d * d}, {&blocks[i].projB, n.projB, d},
			{&blocks[i].ln2s, n.ln2Scale, d}, {&blocks[i].ln2b, n.ln2Bias, d},
			{&blocks[i].fcW, n.fcW, d * 4 * d}, {&blocks[i].fcB, n.fcB, 4 * d},
			{&blocks[i].fc2W, n.fc2W, 4 * d * d}, {&blocks[i].fc2B, n.fc2B, d},
		}
		for _, s := range specs {
			if *s.dst, err = get(s.name, s.size); err != nil {
				return nil, err
			}
		}
	}
	lnfS, err := get(lnfScale, d)
	if err != nil {
		return nil, err
	}
	lnfB, err := get(lnfBias, d)
	if err != nil {
		return nil, err
	}

	hd := d / heads
	out := make([]float32, 0, len(ids)*seq*vocab)
	for _, row := range ids {
		x := make([][]float64, seq)
		for t, id := range row {
			x[t] = make([]float64, d)
			for j := 0; j < d; j++ {
				x[t][j] = wte[int(id)*d+j] + wpe[t*d+j]
			}
		}
		for _, b := range blocks {
			h := make([][]float64, seq)
			qkv := make([][]float64, seq)
			for t := range x {
				h[t] = layerNorm(x[t], b.ln1s, b.ln1b)
				qkv[t] = affine(h[t], b.qkvW, b.qkvB, 3*d)
			}
			ctx := make([][]float64, seq)
			for t := range ctx {
				ctx[t] = make([]float64, d)
			}
			scale := 1 / math.Sqrt(float64(hd))
			for hh := 0; hh < heads; hh++ {
				q0, k0, v0 := hh*hd, d+hh*hd, 2*d+hh*hd
				for t := 0; t < seq; t++ {
					// Causal: position t attends to 0..t only.
					scores := make([]float64, t+1)
					maxScore := math.Inf(-1)
					for u := 0; u <= t; u++ {
						var s float64
						for j := 0; j < hd; j++ {
							s += qkv[t][q0+j] * qkv[u][k0+j]
						}
						scores[u] = s * scale
						maxScore = math.Max(maxScore, scores[u])
					}
					var sum float64
					for u := range scores {
						scores[u] = math.Exp(scores[u] - maxScore)
						sum += scores[u]
					}
					for u := range scores {
						p := scores[u] / sum
						for j := 0; j < hd; j++ {
							ctx[t][q0+j] += p * qkv[u][v0+j]
						}
					}
				}
			}
			for t := range x {
				a := affine(ctx[t], b.projW, b.projB, d)
				for j := range x[t] {
					x[t][j] += a[j]
				}
				h2 := layerNorm(x[t], b.ln2s, b.ln2b)
				f := affine(h2, b.fcW, b.fcB, 4*d)
				for j, v := range f {
					f[j] = 0.5 * v * (1 + math.Erf(v/math.Sqrt2))
				}
				mm := affine(f, b.fc2W, b.fc2B, d)
				for j := range x[t] {
					x[t][j] += mm[j]
				}
			}
		}
		for t := range x {
			h := layerNorm(x[t], lnfS, lnfB)
			for v := 0; v < vocab; v++ {
				var s float64
				e := wte[v*d : (v+1)*d]
				for j := range h {
					s += h[j] * e[j]
				}
				out = append(out, float32(s))
			}
		}
	}
	return out, nil
}

// layerNorm normalizes x over its last axis (biased variance, as ONNX's
// LayerNormalization does) and applies scale and bias.
func layerNorm(x, scale, bias []float64) []float64 {
	var mean, variance float64
	for _, v := range x {
		mean += v
	}
	mean /= float64(len(x))
	for _, v := range x {
		variance += (v - mean) * (v - mean)
	}
	variance /= float64(len(x))
	inv := 1 / math.Sqrt(variance+layerNormEpsilon)
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = (v-mean)*inv*scale[i] + bias[i]
	}
	return out
}

// affine returns x·W + b for W stored row-major as [len(x), n].
func affine(x, w, b []float64, n int) []float64 {
	out := append([]float64(nil), b...)
	for i, xv := range x {
		row := w[i*n : (i+1)*n]
		for j, wv := range row {
			out[j] += xv * wv
		}
	}
	return out
}

// readWeights decodes every float32 initializer of m into float64.
func readWeights(m *onnxpb.ModelProto) (map[string][]float64, error) {
	w := make(map[string][]float64)
	for _, t := range m.GetGraph().GetInitializer() {
		if t.GetDataType() != elemFloat {
			continue
		}
		if t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
			return nil, fmt.Errorf("%w: %s is stored as external data", ErrMissingWeight, t.GetName())
		}
		var vals []float64
		if raw := t.GetRawData(); len(raw) > 0 {
			vals = make([]float64, len(raw)/4)
			for i := range vals {
				vals[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])))
			}
		} else {
			for _, f := range t.GetFloatData() {
				vals = append(vals, float64(f))
			}
		}
		w[t.GetName()] = vals
	}
	return w, nil
}
