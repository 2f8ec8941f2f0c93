package gen

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/pipeline"
	"github.com/layermesh/layermesh/test/harness"
	"github.com/layermesh/layermesh/tokenizer"
)

// genConfig is the with-past GPT of these tests: small layers, GPT-2's vocabulary so
// that the GPT-2 tokenizer's ids fit, a context long enough for a 200-token stream.
var genConfig = modelgen.GPTConfig{Layers: 3, Dim: 64, Heads: 2, Vocab: 50257, Context: 256, Seed: 5, Name: "gpt-gen-e2e", WithPast: true}

var (
	ortOnce       sync.Once
	sharedBackend accel.Backend
	ortErr        error
)

func backend(t *testing.T) accel.Backend {
	t.Helper()
	ortOnce.Do(func() { sharedBackend, ortErr = ort.New(ort.Config{IntraOpThreads: 1, Provider: accel.ProviderCPU}) })
	if ortErr != nil {
		t.Fatalf("ONNX Runtime is needed for the reference and did not load: %v", ortErr)
	}
	return sharedBackend
}

// writeModel writes the test GPT and returns its path.
func writeModel(t *testing.T) string {
	t.Helper()
	m, err := genConfig.Build()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "gen.onnx")
	if err := modelgen.WriteFile(m, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// gpt2Dir is where make setup puts GPT-2's encoder.json and vocab.bpe.
func gpt2Dir(t *testing.T) string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "third_party", "tokenizers", "gpt2")
}

// reference is one ORT session of the whole with-past model and the tokenizer.
type reference struct {
	t    *testing.T
	sess accel.Session
	tok  *tokenizer.Tokenizer
}

func newReference(t *testing.T, path string) *reference {
	t.Helper()
	tok, err := tokenizer.Load(gpt2Dir(t))
	if err != nil {
		t.Fatalf("GPT-2 tokenizer files not readable (make setup fetches them): %v", err)
	}
	s, err := backend(t).Open(context.Background(), path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return &reference{t: t, sess: s, tok: tok}
}

// generate runs the whole model in a plain loop (prefill, then one token a step with
// the present tensors fed back), sampling as the last stage does, until n tokens or
// the end-of-text token (which, like the API, it does not return).
func (r *reference) generate(prompt []int32, n int, s pipeline.Sampling) []int32 {
	t, cfg := r.t, genConfig
	var kv []tensor.Tensor
	hd := int64(cfg.Dim / cfg.Heads)
	for i := 0; i < cfg.Layers; i++ {
		empty := []int64{1, int64(cfg.Heads), 0, hd}
		kv = append(kv, tensor.FromFloat32(modelgen.GPTPastKey(i), empty, nil), tensor.FromFloat32(modelgen.GPTPastValue(i), empty, nil))
	}
	_, eos, _ := r.tok.EOS()
	ids := make([]int64, len(prompt))
	for i, p := range prompt {
		ids[i] = int64(p)
	}
	var out []int32
	past := 0
	for len(out) < n {
		seq := len(ids)
		mask, pos := make([]int64, past+seq), make([]int64, seq)
		for i := range mask {
			mask[i] = 1
		}
		for i := range pos {
			pos[i] = int64(past + i)
		}
		in := append([]tensor.Tensor{
			tensor.FromInt64(modelgen.GPTInput, []int64{1, int64(seq)}, ids),
			tensor.FromInt64(modelgen.GPTAttentionMask, []int64{1, int64(past + seq)}, mask),
			tensor.FromInt64(modelgen.GPTPositionIDs, []int64{1, int64(seq)}, pos),
		}, kv...)
		res, err := r.sess.Run(context.Background(), in, cfg.OutputNames())
		if err != nil {
			t.Fatal(err)
		}
		logits, _ := res[0].Float32s()
		s.Index = len(out)
		tok := s.Sample(logits[(seq-1)*cfg.Vocab : seq*cfg.Vocab])
		if tok == eos {
			break
		}
		out = append(out, tok)
		for i := range kv {
			kv[i] = res[1+i]
			kv[i].Name = []string{modelgen.GPTPastKey(i / 2), modelgen.GPTPastValue(i / 2)}[i%2]
		}
		past += seq
		ids = []int64{int64(tok)}
	}
	return out
}

// text decodes ids as the API does for a whole text.
func (r *reference) text(ids []int32) string {
	s, err := r.tok.DecodeString(ids)
	if err != nil {
		r.t.Fatal(err)
	}
	return s
}

// sameText compares texts with every run of U+FFFD as one: a token that ends inside
// a UTF-8 sequence is replaced once per byte in a stream's JSON and once per run in
// a whole decode.
func sameText(a, b string) bool { return squashFFFD(a) == squashFFFD(b) }

func squashFFFD(s string) string {
	for strings.Contains(s, "\uFFFD\uFFFD") {
		s = strings.ReplaceAll(s, "\uFFFD\uFFFD", "\uFFFD")
	}
	return s
}
