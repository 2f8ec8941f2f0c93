package split

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
)

// decodeLoop runs one greedy generation on the whole with-past GPT in this process,
// as a stage serving the whole model does: a prefill of prompt, then a decode step
// per token. held keeps the state in ONNX Runtime between steps (RunHeld, as the
// stage runtime does); otherwise every step copies it out into Go memory and hands
// it back (Run). It returns the tokens and the time of the decode steps.
func decodeLoop(b *testing.B, s accel.Session, prompt []int64, steps int, held bool) ([]int64, time.Duration) {
	b.Helper()
	ctx := context.Background()
	var presents []string
	for _, o := range s.Outputs() {
		if strings.HasPrefix(o.Name, "present.") {
			presents = append(presents, o.Name)
		}
	}
	pastOf := func(present string) string { return strings.Replace(present, "present.", "past_key_values.", 1) }
	var copied []tensor.Tensor
	var kept []accel.HeldInput
	defer func() {
		for _, h := range kept {
			h.Value.Release()
		}
	}()
	ids, pos := prompt, 0
	var tokens []int64
	var decode time.Duration
	for range steps + 1 {
		in := []tensor.Tensor{tensor.FromInt64("input_ids", []int64{1, int64(len(ids))}, ids)}
		mask := make([]int64, pos+len(ids))
		for i := range mask {
			mask[i] = 1
		}
		positions := make([]int64, len(ids))
		for i := range positions {
			positions[i] = int64(pos + i)
		}
		in = append(in, tensor.FromInt64("attention_mask", []int64{1, int64(len(mask))}, mask),
			tensor.FromInt64("position_ids", []int64{1, int64(len(positions))}, positions))
		if pos == 0 {
			for _, p := range presents {
				in = append(in, tensor.Tensor{Name: pastOf(p), DType: tensor.Float32, Shape: []int64{1, 12, 0, 64}, Data: []byte{}})
			}
		} else if !held {
			in = append(in, copied...)
		}
		start := time.Now()
		var out []tensor.Tensor
		if held {
			var next []accel.Held
			var err error
			out, next, err = s.(accel.HeldRunner).RunHeld(ctx, in, kept, []string{"logits"}, presents)
			if err != nil {
				b.Fatal(err)
			}
			for _, h := range kept {
				h.Value.Release()
			}
			kept = kept[:0]
			for i, v := range next {
				kept = append(kept, accel.HeldInput{Name: pastOf(presents[i]), Value: v})
			}
		} else {
			all, err := s.Run(ctx, in, append([]string{"logits"}, presents...))
			if err != nil {
				b.Fatal(err)
			}
			out, copied = all[:1], all[1:]
			for i := range copied {
				copied[i].Name = pastOf(presents[i])
			}
		}
		if pos > 0 {
			decode += time.Since(start)
		}
		logits, err := out[0].Float32s()
		if err != nil {
			b.Fatal(err)
		}
		vocab := int(out[0].Shape[2])
		last := logits[len(logits)-vocab:]
		tok := int64(0)
		for i, v := range last {
			if v > last[tok] {
				tok = int64(i)
			}
		}
		tokens = append(tokens, tok)
		pos += len(ids)
		ids = []int64{tok}
	}
	return tokens, decode
}

// BenchmarkDecodeStateHeldVsCopied: decode steps of the 12 x 768 with-past GPT in one
// process, 1 intra-op thread, contexts 65-128, with the state held in ONNX Runtime
// between steps against copied out into Go memory and back each step, rounds
// interleaved; both must give the same tokens.
func BenchmarkDecodeStateHeldVsCopied(b *testing.B) {
	path, _, _ := gpt2SmallWithPast(b)
	threads, err := strconv.Atoi(benchThreads())
	if err != nil {
		b.Fatal(err)
	}
	be, err := ort.New(ort.Config{Provider: accel.ProviderCPU, IntraOpThreads: threads, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	s, err := be.Open(context.Background(), path, accel.SessionOptions{IntraOpThreads: threads})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	prompt := func(seq int) []int64 {
		var out []int64
		for _, id := range promptIDs(seq, genPrompt) {
			out = append(out, int64(id))
		}
		return out
	}
	decodeLoop(b, s, prompt(1000), 8, true) // warm: first runs allocate ORT arenas
	decodeLoop(b, s, prompt(1000), 8, false)
	var heldT, copiedT []time.Duration
	b.ResetTimer()
	for i := range b.N {
		var ht, ct []int64
		var hd, cd time.Duration
		if i%2 == 0 {
			ht, hd = decodeLoop(b, s, prompt(i), genTokens-1, true)
			ct, cd = decodeLoop(b, s, prompt(i), genTokens-1, false)
		} else {
			ct, cd = decodeLoop(b, s, prompt(i), genTokens-1, false)
			ht, hd = decodeLoop(b, s, prompt(i), genTokens-1, true)
		}
		if !slices.Equal(ht, ct) {
			b.Fatalf("prompt %d: held state gives %v, copied %v", i, ht, ct)
		}
		heldT = append(heldT, hd/time.Duration(genTokens-1))
		copiedT = append(copiedT, cd/time.Duration(genTokens-1))
	}
	b.StopTimer()
	h, c := median(heldT), median(copiedT)
	b.ReportMetric(ms(h), "held-token-ms")
	b.ReportMetric(ms(c), "copied-token-ms")
	b.ReportMetric(float64(c)/float64(h), "copied-over-held")
	b.Logf("threads %s, %d rounds: per decode step (contexts %d-%d) held %v, copied %v, copied/held %.3f",
		benchThreads(), b.N, genPrompt+1, genPrompt+genTokens-1, h, c, float64(c)/float64(h))
}
