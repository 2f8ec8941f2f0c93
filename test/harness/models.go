package harness

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
)

// WriteGPT builds the GPT cfg describes (in the with-past layout when cfg.WithPast)
// and writes it to dir/name.onnx, returning the file's path and size.
func WriteGPT(t testing.TB, cfg modelgen.GPTConfig, dir, name string) (string, int64) {
	t.Helper()
	m, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+".onnx")
	if err := modelgen.WriteFile(m, path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, fi.Size()
}

// GPTInputs returns request seq's token ids for cfg: one row of seqLen ids, the same
// for the same seq.
func GPTInputs(t testing.TB, cfg modelgen.GPTConfig, seqLen, seq int) []tensor.Tensor {
	t.Helper()
	in, err := cfg.ExampleInputs(1, seqLen, int64(seq))
	if err != nil {
		t.Fatal(err)
	}
	return in
}
