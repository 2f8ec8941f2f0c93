package compress

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/layermesh/layermesh/partition"
	"github.com/layermesh/layermesh/partition/modelgen"
)

func TestBlockQuantizationRoundsEveryWeightToNearestLevel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const n, k = 5, 100 // k not a multiple of the block: the last block is padded
	w := make([]float32, n*k)
	for i := range w {
		w[i] = float32(r.NormFloat64())
	}
	w[7] = 0
	for _, bits := range []int{4, 8} {
		for _, sym := range []bool{false, true} {
			q := quantizeBlocks(n, k, bits, 32, sym, func(c, j int) float32 { return w[c*k+j] })
			for c := range n {
				for j := range k {
					s := float64(q.Scales[c*q.kBlocks()+j/32])
					if d := math.Abs(float64(q.dequant(c, j) - w[c*k+j])); d > s/2+1e-6 {
						t.Fatalf("bits %d symmetric %v: w[%d,%d]=%g dequantizes to %g, off by %g > half a step %g", bits, sym, c, j, w[c*k+j], q.dequant(c, j), d, s/2)
					}
				}
			}
			if q.dequant(0, 7) != 0 {
				t.Errorf("bits %d symmetric %v: 0 dequantizes to %g", bits, sym, q.dequant(0, 7))
			}
		}
	}
}

func TestWeightOnlyGPTAgreesWithFloat32OnNextToken(t *testing.T) {
	src := gptModel(t, smallGPT)
	in := prompts(256, 12, smallGPT.Vocab, 11)
	want := run(t, src, in)
	for _, tc := range []struct {
		mode     string
		sym      bool
		block    int
		minAgree float64
		maxRatio float64
	}{
		{QuantInt8, false, 32, 0.95, 0.35},
		{QuantInt8, true, 128, 0.95, 0.35},
		{QuantInt4, false, 32, 0, 0.25},
		{QuantInt4, true, 64, 0, 0.25},
	} {
		dst := filepath.Join(t.TempDir(), "q.onnx")
		rep, err := Compress(t.Context(), src, dst, Options{Quantize: tc.mode, Symmetric: tc.sym, BlockSize: tc.block})
		if err != nil {
			t.Fatalf("%s: %v", tc.mode, err)
		}
		got := run(t, dst, in)
		agree := lastTokenAgreement(t, want, got)
		t.Logf("%s symmetric=%v block=%d: size %.3fx, next-token top-1 agreement %.4f on 256 prompts, %d rewritten, %d kept",
			tc.mode, tc.sym, tc.block, rep.Ratio(), agree, len(rep.Rewritten), len(rep.Kept))
		if agree < tc.minAgree {
			t.Errorf("%s: agreement %.4f < %.2f", tc.mode, agree, tc.minAgree)
		}
		if rep.Ratio() > tc.maxRatio || rep.SizeAfter != fileSize(t, dst) {
			t.Errorf("%s: size ratio %.3f (want <= %.2f), reported %d, file %d", tc.mode, rep.Ratio(), tc.maxRatio, rep.SizeAfter, fileSize(t, dst))
		}
		ops := map[string]int{}
		for _, c := range rep.Rewritten {
			ops[c.As]++
		}
		// 4 linear layers per block, the LM head, and the tied token Gather.
		if ops["MatMulNBits"] != 4*smallGPT.Layers+1 || ops["GatherBlockQuantized"] != 1 {
			t.Errorf("%s: rewrote %v, kept %v", tc.mode, ops, rep.Kept)
		}
		m, err := partition.Load(dst)
		if err != nil {
			t.Fatal(err)
		}
		for _, init := range m.Proto.GetGraph().GetInitializer() {
			if init.GetName() == modelgen.TokenEmbedding {
				t.Errorf("%s: the float32 token table is still in the model", tc.mode)
			}
		}
	}
}

func TestWeightOnlyResNetAndLSTMLoadAndRun(t *testing.T) {
	resnet, err := modelgen.ResNet(modelgen.ResNetTiny)
	if err != nil {
		t.Fatal(err)
	}
	lstm, err := modelgen.LSTM(modelgen.LSTMConfig{Layers: 2, Features: 32, Hidden: 32, Outputs: 64, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	models := map[string]string{"resnet": writeModel(t, resnet, "resnet.onnx"), "lstm": writeModel(t, lstm, "lstm.onnx")}
	shapes := map[string]map[string][]int64{
		"resnet": {modelgen.ResNetInput: {2, 3, 16, 16}},
		"lstm":   {modelgen.LSTMInput: {5, 2, 32}},
	}
	for name, src := range models {
		for _, mode := range []string{QuantInt8, QuantInt4, QuantDynamic} {
			dst := filepath.Join(t.TempDir(), "q.onnx")
			rep, err := Compress(t.Context(), src, dst, Options{Quantize: mode, Backend: backend(t), Verify: 3, InputShapes: shapes[name]})
			if err != nil {
				t.Fatalf("%s %s: %v", name, mode, err)
			}
			if rep.NothingToDo || len(rep.Rewritten) == 0 {
				t.Fatalf("%s %s: nothing rewritten: %+v", name, mode, rep)
			}
			t.Logf("%s %s: rewrote %d, kept %d, max error %.3g of the output scale, cosine %.6f", name, mode, len(rep.Rewritten), len(rep.Kept), rep.Verify.MaxRel, rep.Verify.MinCosine)
			if rep.Verify.MinCosine < 0.99 {
				t.Errorf("%s %s: cosine similarity %.4f", name, mode, rep.Verify.MinCosine)
			}
		}
	}
}

func TestInt4WithoutMatMulWeightsIsNothingToDo(t *testing.T) {
	resnet, err := modelgen.ResNet(modelgen.ResNetTiny)
	if err != nil {
		t.Fatal(err)
	}
	// Drop the Gemm head: what is left has no MatMul or Gemm weights.
	g := resnet.GetGraph()
	g.Node = g.Node[:len(g.Node)-1]
	g.Output[0].Name = &g.Node[len(g.Node)-1].Output[0]
	g.Output[0].Type.GetTensorType().Shape = nil
	src := writeModel(t, resnet, "convs.onnx")
	dst := filepath.Join(t.TempDir(), "q.onnx")
	rep, err := Compress(t.Context(), src, dst, Options{Quantize: QuantInt4})
	if err != nil {
		t.Fatalf("int4 on a model without MatMul weights: %v, want no error", err)
	}
	if !rep.NothingToDo {
		t.Errorf("report %+v, want NothingToDo", rep)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s written: %v", dst, err)
	}
}

func TestBadOptionsAreRefusedAndNothingIsWritten(t *testing.T) {
	src := gptModel(t, modelgen.GPTTiny)
	for _, opts := range []Options{
		{Prune: 0.96},
		{Prune: -0.1},
		{Prune: math.NaN()},
		{Quantize: "int3"},
		{Quantize: QuantInt8, BlockSize: 48},
		{Quantize: QuantStatic},
		{},
	} {
		dst := filepath.Join(t.TempDir(), "q.onnx")
		if _, err := Compress(t.Context(), src, dst, opts); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%+v: %v, want ErrInvalidOptions", opts, err)
		}
		if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%+v: %s written", opts, dst)
		}
	}
}

func TestVerifyAboveThresholdFailsAndWritesNothing(t *testing.T) {
	src := gptModel(t, smallGPT)
	dir := t.TempDir()
	dst := filepath.Join(dir, "q.onnx")
	rep, err := Compress(t.Context(), src, dst, Options{Quantize: QuantInt4, Backend: backend(t), Verify: 4,
		MaxError: 1e-7, InputShapes: map[string][]int64{modelgen.GPTInput: {2, 8}}})
	if !errors.Is(err, ErrVerifyFailed) {
		t.Fatalf("err %v, want ErrVerifyFailed", err)
	}
	if rep == nil || rep.Verify == nil || rep.Verify.MaxRel <= 1e-7 || rep.Verify.Samples != 4 {
		t.Fatalf("report %+v, want the verify figures", rep)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left %v behind", ents)
	}
}

func TestModelWithExternalDataIsRefused(t *testing.T) {
	m, err := modelgen.GPT(modelgen.GPTTiny)
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "ext.onnx")
	if err := modelgen.WriteFileWith(m, src, modelgen.WriteOptions{ExternalData: true}); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "q.onnx")
	if _, err := Compress(t.Context(), src, dst, Options{Quantize: QuantInt8}); !errors.Is(err, ErrUnsupportedModel) {
		t.Errorf("external data: %v, want ErrUnsupportedModel", err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s written", dst)
	}
}
