package modelgen

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
)

// pastTestConfig is big enough in context for a long greedy run and small
// enough for ReferenceGPT.
var pastTestConfig = GPTConfig{Layers: 2, Dim: 32, Heads: 2, Vocab: 97, Context: 96, Seed: 3, Name: "gpt-past"}

// argmaxRow returns the index of the largest value in row r of [rows, vocab].
func argmaxRow(vals []float32, r, vocab int) int64 {
	row := vals[r*vocab : (r+1)*vocab]
	best := 0
	for i, v := range row {
		if v > row[best] {
			best = i
		}
	}
	return int64(best)
}

// pastLoop runs the with-past model greedily: one prefill pass over the
// prompt, then one token per step with the present tensors fed back as past.
// It returns the generated ids and each step's logits row. A non-nil force
// feeds its tokens instead of the greedy choices (teacher forcing), so that
// the cache is checked over varied tokens too.
func pastLoop(t *testing.T, sess accel.Session, cfg GPTConfig, prompt []int64, n int, force []int64) ([]int64, [][]float32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kv := gptPastInputs(cfg, 1, 1)[2:]
	names := cfg.OutputNames()
	ids, past := prompt, 0
	var out []int64
	var rows [][]float32
	for len(out) < n {
		seq := len(ids)
		mask := make([]int64, past+seq)
		pos := make([]int64, seq)
		for i := range mask {
			mask[i] = 1
		}
		for i := range pos {
			pos[i] = int64(past + i)
		}
		in := []tensor.Tensor{
			tensor.FromInt64(GPTInput, []int64{1, int64(seq)}, ids),
			tensor.FromInt64(GPTAttentionMask, []int64{1, int64(past + seq)}, mask),
			tensor.FromInt64(GPTPositionIDs, []int64{1, int64(seq)}, pos),
		}
		in = append(in, kv...)
		res, err := sess.Run(ctx, in, names)
		if err != nil {
			t.Fatalf("step at past %d: %v", past, err)
		}
		logits, err := res[0].Float32s()
		if err != nil {
			t.Fatal(err)
		}
		next := argmaxRow(logits, seq-1, cfg.Vocab)
		if force != nil {
			next = force[len(out)]
		}
		rows = append(rows, logits[(seq-1)*cfg.Vocab:seq*cfg.Vocab])
		out = append(out, next)
		kv = kv[:0]
		for i, r := range res[1:] {
			r.Name = []string{GPTPastKey(i / 2), GPTPastValue(i / 2)}[i%2]
			kv = append(kv, r)
		}
		past += seq
		ids = []int64{next}
	}
	return out, rows
}

// TestGPTWithPastLoopMatchesRecomputation: greedy tokens of the with-past
// model run step by step in ONNX Runtime (prefill from past length 0, then
// one token a step) are exactly those of recomputing the plain GPT over the
// whole sequence at every step, and each step's logits agree with
// ReferenceGPT's on the whole sequence.
func TestGPTWithPastLoopMatchesRecomputation(t *testing.T) {
	cfg := pastTestConfig
	plain, err := GPT(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.WithPast = true
	withPast, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pastSess, err := ortBackend(t).Open(ctx, mustWrite(t, withPast, WriteOptions{}), accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pastSess.Close()
	plainPath := mustWrite(t, plain, WriteOptions{})
	const n = 40
	for _, prompt := range [][]int64{{5}, {1, 2, 3, 4, 5, 6, 7}, {96, 0, 50, 13}} {
		got, rows := pastLoop(t, pastSess, cfg, prompt, n, nil)
		seqIDs := slices.Clone(prompt)
		for step := 0; step < n; step++ {
			outs, _ := runORT(t, plainPath, []tensor.Tensor{tensor.FromInt64(GPTInput, []int64{1, int64(len(seqIDs))}, seqIDs)}, []string{GPTOutput})
			want := argmaxRow(outs[0], len(seqIDs)-1, cfg.Vocab)
			if got[step] != want {
				t.Fatalf("prompt %v step %d: with past %d, recomputed %d (tokens so far %v)", prompt, step, got[step], want, got[:step+1])
			}
			seqIDs = append(seqIDs, want)
		}
		ref, err := ReferenceGPT(withPast, cfg, [][]int64{seqIDs[:len(seqIDs)-1]})
		if err != nil {
			t.Fatal(err)
		}
		for step, row := range rows {
			at := len(prompt) - 1 + step
			want := make([]float64, cfg.Vocab)
			for v := range want {
				want[v] = float64(ref[at*cfg.Vocab+v])
			}
			compareWithin(t, "step logits", row, want, 1e-4)
		}
		t.Logf("prompt %v: %v", prompt, got)
	}
	// Greedy runs of a tiny random model repeat a token; forced varied
	// tokens check every cache position against the reference.
	forced := make([]int64, n)
	for i := range forced {
		forced[i] = int64((i*37 + 11) % cfg.Vocab)
	}
	prompt := []int64{3, 1, 4, 1, 5}
	_, rows := pastLoop(t, pastSess, cfg, prompt, n, forced)
	full := append(slices.Clone(prompt), forced[:n-1]...)
	ref, err := ReferenceGPT(withPast, cfg, [][]int64{full})
	if err != nil {
		t.Fatal(err)
	}
	for step, row := range rows {
		at := len(prompt) - 1 + step
		want := make([]float64, cfg.Vocab)
		for v := range want {
			want[v] = float64(ref[at*cfg.Vocab+v])
		}
		compareWithin(t, "forced step logits", row, want, 1e-4)
	}
}

// TestGPTWithPastIsGPT: the with-past model's first step (past length 0) on
// a whole sequence gives the plain model's logits, and its present tensors
// have the sequence's length.
func TestGPTWithPastIsGPT(t *testing.T) {
	cfg := pastTestConfig
	cfg.WithPast = true
	m, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cfg.ExampleInputs(2, 9, 4)
	if err != nil {
		t.Fatal(err)
	}
	outs, shapes := runORT(t, mustWrite(t, m, WriteOptions{}), in, cfg.OutputNames())
	ref, err := ReferenceGPT(m, cfg, int64Rows(t, in[0]))
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float64, len(ref))
	for i, v := range ref {
		want[i] = float64(v)
	}
	compareWithin(t, "logits", outs[0], want, 1e-4)
	for i, s := range shapes[1:] {
		if !slices.Equal(s, []int64{2, int64(cfg.Heads), 9, int64(cfg.Dim / cfg.Heads)}) {
			t.Errorf("%s: shape %v", cfg.OutputNames()[i+1], s)
		}
	}
	for _, o := range outs {
		for _, v := range o {
			if math.IsNaN(float64(v)) {
				t.Fatal("NaN in output")
			}
		}
	}
}
