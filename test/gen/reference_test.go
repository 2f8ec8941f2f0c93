package gen

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
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
	path, _ := harness.WriteGPT(t, genConfig, t.TempDir(), "gen")
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

// generate runs harness.LoopGenerate on the whole model until n tokens or the
// end-of-text token (which, like the API, it does not return).
func (r *reference) generate(prompt []int32, n int, s pipeline.Sampling) []int32 {
	_, eos, _ := r.tok.EOS()
	return harness.LoopGenerate(r.t, r.sess, genConfig, prompt, n, s, eos)
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
