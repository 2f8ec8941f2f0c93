package main

import (
	"context"
	"log/slog"
	"math"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/tokenizer"
)

// Where make setup puts GPT-2's tokenizer and Debian's fortunes package its files,
// and the demo's trained weights.
const (
	gpt2Dir     = "../../third_party/tokenizers/gpt2"
	fortunesDir = "/usr/share/games/fortunes"
	weightsFile = "../../models/fortune-gpt.safetensors"
	demoMerges  = 8000
)

// truncatedTokenizer is the demo model's tokenizer: GPT-2's first demoMerges merges.
func truncatedTokenizer(t *testing.T) *tokenizer.Tokenizer {
	t.Helper()
	vocab, merges, err := TruncatedGPT2(gpt2Dir, demoMerges)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.ParseVocabMerges(vocab, merges)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestTruncatedTokenizerRoundTrips: GPT-2's first 8,000 merges make a tokenizer of
// 8,257 ids (<|endoftext|> last) that encodes any text, accents and emoji included,
// into ids below that and decodes it back unchanged, and that gives GPT-2's id to a
// word GPT-2 makes of one of those tokens.
func TestTruncatedTokenizerRoundTrips(t *testing.T) {
	small := truncatedTokenizer(t)
	full, err := tokenizer.Load(gpt2Dir)
	if err != nil {
		t.Fatal(err)
	}
	if small.VocabSize() != 256+demoMerges+1 {
		t.Fatalf("vocabulary %d, want %d", small.VocabSize(), 256+demoMerges+1)
	}
	if _, id, ok := small.EOS(); !ok || id != 256+demoMerges {
		t.Fatalf("end-of-text id %d (%v), want %d", id, ok, 256+demoMerges)
	}
	for _, s := range []string{"The quick brown fox", "  whitespace   runs\n\n", "café naïve Ærøskøbing", "emoji 🦊🚀 and ½"} {
		ids := small.Encode(s)
		for _, id := range ids {
			if id >= int32(small.VocabSize()) {
				t.Fatalf("%q: id %d outside the vocabulary", s, id)
			}
		}
		back, err := small.DecodeString(ids)
		if err != nil || back != s {
			t.Fatalf("%q decodes to %q (%v)", s, back, err)
		}
	}
	for _, word := range []string{" the", "The", " quick", " man", " world"} {
		want := full.Encode(word)
		if len(want) != 1 || want[0] >= 256+demoMerges {
			t.Fatalf("%q is %v in GPT-2: pick a word of one early token", word, want)
		}
		if got := small.Encode(word); len(got) != 1 || got[0] != want[0] {
			t.Fatalf("%q: %v, GPT-2 gives %v", word, got, want)
		}
	}
	if _, _, err := TruncatedGPT2(gpt2Dir, 60000); err == nil {
		t.Fatal("more merges than GPT-2 has: no error")
	}
}

// TestFortuneModelScoresHeldOutText: the committed trained weights, put into the
// with-past graph by modelgen and run by ONNX Runtime, score the held-out fortunes
// (the windows the training script measured) as the trainer recorded: the graph
// computes the model that was trained, and it predicts text far better than chance
// (ln 8257 = 9.02 nats a token).
func TestFortuneModelScoresHeldOutText(t *testing.T) {
	tok := truncatedTokenizer(t)
	ids, _, _, err := CorpusIDs(tok, fortunesDir)
	if err != nil {
		t.Fatalf("the fortunes corpus (make setup installs Debian's fortunes): %v", err)
	}
	tr, err := modelgen.ReadSafetensors(weightsFile)
	if err != nil {
		t.Fatal(err)
	}
	if want := tr.Meta["corpus_tokens"]; strconv.Itoa(len(ids)) != want {
		t.Fatalf("the fortunes here make %d tokens, the weights were trained on %s: another version of Debian's fortunes package", len(ids), want)
	}
	recorded, err := strconv.ParseFloat(tr.Meta["held_out_loss"], 64)
	if err != nil {
		t.Fatalf("held_out_loss in the metadata: %v", err)
	}
	cfg, err := tr.Config(modelgen.GPTConfig{WithPast: true}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Vocab != tok.VocabSize() {
		t.Fatalf("model vocabulary %d, tokenizer %d", cfg.Vocab, tok.VocabSize())
	}
	m, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "fortune.onnx")
	if err := modelgen.WriteFile(m, path); err != nil {
		t.Fatal(err)
	}
	backend, err := ort.New(ort.Config{Provider: accel.ProviderCPU, IntraOpThreads: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("ONNX Runtime (make setup): %v", err)
	}
	ctx := context.Background()
	sess, err := backend.Open(ctx, path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()

	// The training script's held-out windows: the last 5% of the ids, the first 16
	// windows of 256 tokens at a stride of 1,024.
	const window, stride, windows = 256, 1024, 16
	held := ids[int(float64(len(ids))*0.95):]
	var sum float64
	n := 0
	for s := 0; s+window+1 < len(held) && n < windows; s += stride {
		in, err := cfg.ExampleInputs(1, window, 1)
		if err != nil {
			t.Fatal(err)
		}
		x := make([]int64, window)
		for i := range x {
			x[i] = int64(held[s+i])
		}
		in[0] = tensor.FromInt64(modelgen.GPTInput, []int64{1, window}, x)
		outs, err := sess.Run(ctx, in, []string{modelgen.GPTOutput})
		if err != nil {
			t.Fatal(err)
		}
		logits, err := outs[0].Float32s()
		if err != nil {
			t.Fatal(err)
		}
		var loss float64
		for i := range window {
			row := logits[i*cfg.Vocab : (i+1)*cfg.Vocab]
			loss += crossEntropy(row, int(held[s+i+1]))
		}
		sum += loss / window
		n++
	}
	if n != windows {
		t.Fatalf("%d held-out windows, the trainer scored %d", n, windows)
	}
	got := sum / float64(n)
	t.Logf("held-out loss of the ONNX model %.6f nats a token over %d windows; the trainer recorded %.6f", got, n, recorded)
	// Written the other way round, a NaN would pass.
	if !(math.Abs(got-recorded) <= 1e-4) {
		t.Fatalf("held-out loss %.6f, the trainer recorded %.6f: the graph is not the trained model", got, recorded)
	}
	if !(got < 6) {
		t.Fatalf("held-out loss %.6f: not much better than chance (9.02)", got)
	}
}

// crossEntropy is -log softmax(row)[target].
func crossEntropy(row []float32, target int) float64 {
	peak := math.Inf(-1)
	for _, v := range row {
		peak = math.Max(peak, float64(v))
	}
	var z float64
	for _, v := range row {
		z += math.Exp(float64(v) - peak)
	}
	return math.Log(z) + peak - float64(row[target])
}
