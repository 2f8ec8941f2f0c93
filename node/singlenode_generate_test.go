package node

import (
	"context"
	"os"
	"slices"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/pipeline"
)

// TestSingleNodeGenerateMatchesWholeModelLoop: a single node serves generation on an
// uploaded with-past model: greedy and seeded tokens are the plain loop's, the
// context length is the model's, a model without state pairs is not generative.
func TestSingleNodeGenerateMatchesWholeModelLoop(t *testing.T) {
	cfg := genConfig
	path := writeGenModel(t, cfg)
	plainCfg := cfg
	plainCfg.WithPast = false
	plainPath := writeGenModel(t, plainCfg)
	n, err := New(Config{DataDir: t.TempDir(), Backend: testBackend(t), HTTPAddr: "127.0.0.1:0", Name: "single", Logger: testLogger(t, "single")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.shutdown)
	ctx := context.Background()
	for name, p := range map[string]string{"gen": path, "plain": plainPath} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.PutModel(ctx, name, f, api.DeployOptions{Size: -1}); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if c, err := n.ModelContext(ctx, "gen", ""); err != nil || c != cfg.Context {
		t.Fatalf("ModelContext: %d, %v", c, err)
	}
	whole, err := testBackend(t).Open(ctx, path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer whole.Close()
	prompt := []int32{4, 8, 15, 16, 23, 42}
	for _, s := range []pipeline.Sampling{{}, {Temperature: 0.7, TopP: 0.9, Seed: 5}} {
		want := loopGenerate(t, whole, cfg, prompt, 48, s)
		var got []int32
		req := api.GenerateRequest{Model: "gen", Prompt: prompt, MaxTokens: 48, Temperature: s.Temperature, TopP: s.TopP, Seed: seedOf(s.Seed)}
		res, err := n.Generate(ctx, req, func(tok api.GeneratedToken) error { got = append(got, tok.ID); return nil })
		if err != nil || !slices.Equal(got, want) || res.FinishReason != "length" {
			t.Fatalf("sampling %+v: got %v (%+v, %v), want %v", s, got, res, err, want)
		}
	}
	_, err = n.Generate(ctx, api.GenerateRequest{Model: "plain", Prompt: prompt, MaxTokens: 4}, func(api.GeneratedToken) error { return nil })
	if api.Classify(err).Code != api.CodeNotGenerative {
		t.Fatalf("plain model: %v", err)
	}
	_, err = n.Generate(ctx, api.GenerateRequest{Model: "gen", Prompt: []int32{int32(cfg.Vocab), 1}, MaxTokens: 4}, func(api.GeneratedToken) error { return nil })
	if api.Classify(err).Code != api.CodeBadRequest {
		t.Fatalf("token outside the vocabulary: %v", err)
	}
}
