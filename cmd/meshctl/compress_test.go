package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// meshctl compress: exit 0 with the file written; 1 with the report and no
// file when verification fails; 2 for a bad option; "nothing to do" is not an error.
func TestCompressCommand(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "gpt.onnx")
	if code := run([]string{"gen-model", "gpt", "--layers", "1", "--dim", "64", "--heads", "2", "--vocab", "128", "--context", "16", "-o", src}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("gen-model: exit %d", code)
	}
	out := filepath.Join(dir, "int8.onnx")
	var stdout bytes.Buffer
	if code := run([]string{"compress", src, "--out", out, "--quantize", "int8", "--verify", "2", "--input-shape", "input_ids=1x8", "--json"}, &stdout, io.Discard); code != 0 {
		t.Fatalf("compress int8: exit %d", code)
	}
	var rep struct {
		SizeBefore int64                 `json:"size_before"`
		SizeAfter  int64                 `json:"size_after"`
		Verify     struct{ Samples int } `json:"verify"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil || rep.Verify.Samples != 2 || rep.SizeAfter >= rep.SizeBefore {
		t.Fatalf("report %q: %v", stdout.String(), err)
	}
	if _, err := os.Stat(out); err != nil {
		t.Fatal(err)
	}

	failed := filepath.Join(dir, "int4.onnx")
	stdout.Reset()
	code := run([]string{"compress", src, "--out", failed, "--quantize", "int4", "--verify", "2", "--input-shape", "input_ids=1x8", "--max-error", "1e-9"}, &stdout, io.Discard)
	if code != 1 || !strings.Contains(stdout.String(), "verify on 2 inputs") {
		t.Errorf("verify above --max-error: exit %d, output %q; want 1 and the report", code, stdout.String())
	}
	if _, err := os.Stat(failed); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s written after failed verification", failed)
	}

	for _, args := range [][]string{
		{"compress", src, "--out", filepath.Join(dir, "x.onnx"), "--prune", "0.99"},
		{"compress", src, "--quantize", "int8"},
		{"compress", src, "--out", filepath.Join(dir, "x.onnx"), "--quantize", "int2"},
	} {
		if code := run(args, io.Discard, io.Discard); code != 2 {
			t.Errorf("meshctl %v: exit %d, want 2", args, code)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x.onnx")); !errors.Is(err, os.ErrNotExist) {
		t.Error("x.onnx written by a refused command")
	}
}
