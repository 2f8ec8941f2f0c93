package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/tokenizer"
)

// TestClusterServesDeployedTokenizer: a tokenizer and chat template deployed with a
// model reach every node: a node that did not take the upload fetches the tokenizer
// blob from one that holds it. Blob collection keeps the blob while the model lives,
// and a new tokenizer or template makes a new version.
func TestClusterServesDeployedTokenizer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 2-node cluster; skipped in -short")
	}
	gpt2, err := tokenizer.Load("../third_party/tokenizers/gpt2")
	if err != nil {
		t.Fatalf("GPT-2 tokenizer files (make setup fetches them): %v", err)
	}
	tokJSON, err := json.Marshal(gpt2)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := "{{range .Messages}}[{{.Role}}] {{.Content}}\n{{end}}[assistant]"
	cfg := modelgen.GPTConfig{Layers: 2, Dim: 16, Heads: 2, Vocab: 11, Context: 8, Seed: 5, Name: "gpt-text"}
	path := writeTestGPT(t, cfg)
	tc := startTestCluster(t, 2, 1<<30)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	put := func(name string, opts api.DeployOptions) string {
		t.Helper()
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		opts.Size, opts.Stages, opts.Replicas = -1, 1, 1
		st, err := tc.nodes[0].Control().PutModel(ctx, name, f, opts)
		if err != nil {
			t.Fatalf("deploy %s: %v", name, err)
		}
		return st.Version
	}
	v1 := put("chat", api.DeployOptions{Tokenizer: tokJSON, ChatTemplate: tmpl})
	put("plain", api.DeployOptions{})
	waitReplicas(t, tc.nodes[0], "chat", 1, 30*time.Second)

	for i, c := range tc.nodes {
		eventually(t, 10*time.Second, func() error {
			_, err := c.text.ModelText(ctx, "chat", "")
			return err
		})
		mt, err := c.text.ModelText(ctx, "chat", "")
		if err != nil {
			t.Fatal(err)
		}
		prompt, err := mt.Chat.Render([]tokenizer.ChatMessage{{Role: "user", Content: "Hello world"}}, "")
		if err != nil || prompt != "[user] Hello world\n[assistant]" {
			t.Errorf("node %d: prompt %q, %v", i, prompt, err)
		}
		if got := mt.Tokenizer.Encode("Hello world"); len(got) != 2 || got[0] != 15496 || got[1] != 995 {
			t.Errorf("node %d: Hello world = %v, want GPT-2's [15496 995]", i, got)
		}
		if _, err := c.text.ModelText(ctx, "plain", ""); !errors.Is(err, api.ErrNotGenerative) {
			t.Errorf("node %d: a model without a tokenizer: %v, want not generative", i, err)
		}
		c.control.CollectBlobs(0)
		info, _, err := c.control.ModelTextInfo(ctx, "chat", "")
		if err != nil || !c.mesh.Blobs().Has(info.TokenizerSHA256) {
			t.Errorf("node %d: the tokenizer blob of a live model is gone (%v)", i, err)
		}
	}
	if v := put("chat", api.DeployOptions{Tokenizer: tokJSON, ChatTemplate: tmpl}); v != v1 {
		t.Errorf("the same deploy again made version %s, want %s", v, v1)
	}
	v2 := put("chat", api.DeployOptions{Tokenizer: tokJSON})
	if v2 == v1 {
		t.Fatalf("a deploy with another chat template kept version %s", v2)
	}
	// Each version answers with its own text and names itself, so that a generation
	// runs on the version whose tokenizer it used: the latest is v2 (no template);
	// v1, retired once v2 serves, answers with its own template while it lives and
	// is not found after, never with v2's text; a version never deployed is not found.
	c := tc.nodes[1]
	eventually(t, 10*time.Second, func() error {
		mt, err := c.text.ModelText(ctx, "chat", "")
		if err == nil && mt.Version != v2 {
			err = fmt.Errorf("latest text is version %q, want %q", mt.Version, v2)
		}
		return err
	})
	if mt, err := c.text.ModelText(ctx, "chat", ""); err != nil || mt.Chat != nil {
		t.Errorf("latest (%s): chat template %v, %v; want none", v2, mt.Chat, err)
	}
	if mt, err := c.text.ModelText(ctx, "chat", v2); err != nil || mt.Version != v2 {
		t.Errorf("version %s asked: version %q, %v", v2, mt.Version, err)
	}
	switch mt, err := c.text.ModelText(ctx, "chat", v1); {
	case err == nil && (mt.Version != v1 || mt.Chat == nil):
		t.Errorf("version %s: version %q, chat template %v; want its own, with the template", v1, mt.Version, mt.Chat)
	case err != nil && !errors.Is(err, api.ErrModelNotFound):
		t.Errorf("version %s: %v, want its own text or not found", v1, err)
	}
	if _, err := c.text.ModelText(ctx, "chat", "99"); !errors.Is(err, api.ErrModelNotFound) {
		t.Errorf("version 99: %v, want not found", err)
	}
}
