package main

import (
	"bytes"
	"encoding/json"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/partition"
)

// TestGenModelWithTrainedWeights: --weights builds the GPT the file describes (the
// demo's fortune model: 4 x 128, vocabulary 8,257, context 256) with its shape taken
// from the file; a shape flag or head count that disagrees with the file, a seed
// (nothing is drawn), a kind other than gpt and a file that is not safetensors are
// refused.
func TestGenModelWithTrainedWeights(t *testing.T) {
	const weights = "../../models/fortune-gpt.safetensors"
	out := filepath.Join(t.TempDir(), "fortune.onnx")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"gen-model", "gpt", "--with-past", "--weights", weights, "-o", out, "--json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("gen-model --weights: exit %d: %s", code, stderr.String())
	}
	var res struct {
		Params int64 `json:"params"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	const d, layers, vocab, context = 128, 4, 8257, 256
	if want := int64(vocab*d + context*d + layers*(12*d*d+13*d) + 2*d); res.Params != want {
		t.Fatalf("%d parameters, want %d", res.Params, want)
	}
	pm, err := partition.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	g, err := partition.Analyze(pm, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.State) != 2*layers || g.ContextLen() != context {
		t.Fatalf("%d state pairs, context %d; want %d and %d", len(g.State), g.ContextLen(), 2*layers, context)
	}
	for _, args := range [][]string{
		{"gen-model", "gpt", "--weights", weights, "--layers", "6", "-o", out},
		{"gen-model", "gpt", "--weights", weights, "--heads", "8", "-o", out},
		{"gen-model", "gpt", "--weights", weights, "--seed", "3", "-o", out},
		{"gen-model", "resnet", "--weights", weights, "-o", out},
	} {
		if code := run(args, io.Discard, io.Discard); code != 2 {
			t.Errorf("meshctl %v: exit %d, want 2", args, code)
		}
	}
	stderr.Reset()
	if code := run([]string{"gen-model", "gpt", "--weights", out, "-o", out + "2"}, io.Discard, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "not a valid safetensors file") {
		t.Errorf("an ONNX file as weights: exit %d, %q; want 1 and the file refused as safetensors", code, stderr.String())
	}
}
