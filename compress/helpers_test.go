package compress

import (
	"encoding/binary"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

var (
	ortOnce    sync.Once
	ortBackend accel.Backend
	ortErr     error
)

// backend is one real ONNX Runtime CPU backend shared by the package's tests.
func backend(t testing.TB) accel.Backend {
	t.Helper()
	ortOnce.Do(func() {
		ortBackend, ortErr = ort.New(ort.Config{IntraOpThreads: 1, Provider: accel.ProviderCPU, Logger: slog.New(slog.DiscardHandler)})
	})
	if ortErr != nil {
		t.Fatalf("ONNX Runtime: %v", ortErr)
	}
	return ortBackend
}

// writeModel writes m into a temporary folder and returns its path.
func writeModel(t testing.TB, m *onnxpb.ModelProto, name string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := modelgen.WriteFile(m, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// smallGPT is the GPT the tests quantize: big enough that its MatMuls have
// several blocks along K, small enough to run 256 prompts in a second.
var smallGPT = modelgen.GPTConfig{Layers: 2, Dim: 128, Heads: 4, Vocab: 512, Context: 32, Seed: 7, Name: "gpt-small-test"}

func gptModel(t testing.TB, cfg modelgen.GPTConfig) string {
	t.Helper()
	m, err := modelgen.GPT(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return writeModel(t, m, "gpt.onnx")
}

// prompts makes n random token sequences of length seq as one [n, seq] batch.
func prompts(n, seq, vocab int, seed uint64) tensor.Tensor {
	r := rand.New(rand.NewPCG(seed, 3))
	ids := make([]int64, n*seq)
	for i := range ids {
		ids[i] = int64(r.IntN(vocab))
	}
	return tensor.FromInt64(modelgen.GPTInput, []int64{int64(n), int64(seq)}, ids)
}

// run runs the model at path once on inputs and returns its first output.
func run(t testing.TB, path string, inputs ...tensor.Tensor) tensor.Tensor {
	t.Helper()
	ctx := t.Context()
	s, err := backend(t).Open(ctx, path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatalf("open %s: %v", filepath.Base(path), err)
	}
	defer s.Close()
	out, err := s.Run(ctx, inputs, nil)
	if err != nil {
		t.Fatalf("run %s: %v", filepath.Base(path), err)
	}
	return out[0]
}

// lastTokenAgreement is the fraction of the batch's rows whose next-token
// argmax (logits at the last position) is the same in a and b ([n, seq, vocab]).
func lastTokenAgreement(t testing.TB, a, b tensor.Tensor) float64 {
	t.Helper()
	av, _ := a.Float32s()
	bv, _ := b.Float32s()
	n, seq, vocab := int(a.Shape[0]), int(a.Shape[1]), int(a.Shape[2])
	agree := 0
	for i := range n {
		off := (i*seq + seq - 1) * vocab
		if argmax32(av[off:off+vocab]) == argmax32(bv[off:off+vocab]) {
			agree++
		}
	}
	return float64(agree) / float64(n)
}

func argmax32(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func float32Tensor(name string, shape []int64, vals []float32) tensor.Tensor {
	data := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
	}
	return tensor.Tensor{Name: name, DType: tensor.Float32, Shape: shape, Data: data}
}
