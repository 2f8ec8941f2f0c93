package modelgen

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
	"google.golang.org/protobuf/proto"
)

func mustWrite(t *testing.T, m *onnxpb.ModelProto, opts WriteOptions) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), m.GetGraph().GetName()+".onnx")
	if err := WriteFileWith(m, p, opts); err != nil {
		t.Fatal(err)
	}
	return p
}

func int64Rows(t *testing.T, in tensor.Tensor) [][]int64 {
	t.Helper()
	flat, err := in.Int64s()
	if err != nil {
		t.Fatal(err)
	}
	rows := make([][]int64, in.Shape[0])
	for i := range rows {
		rows[i] = flat[i*int(in.Shape[1]) : (i+1)*int(in.Shape[1])]
	}
	return rows
}

// TestGPTMatchesReference: ONNX Runtime's logits for the tiny GPT equal an independent
// plain-Go forward pass of the same weights.
func TestGPTMatchesReference(t *testing.T) {
	// The second configuration has more heads and layers, so a mistake in
	// splitting or merging heads cannot hide behind a 2-head model.
	for _, cfg := range []GPTConfig{GPTTiny, {Layers: 3, Dim: 48, Heads: 4, Vocab: 50, Context: 8, Seed: 9, Name: "gpt-4head"}} {
		t.Run(cfg.Name, func(t *testing.T) { checkGPTAgainstReference(t, cfg) })
	}
}

func checkGPTAgainstReference(t *testing.T, cfg GPTConfig) {
	m, err := GPT(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := mustWrite(t, m, WriteOptions{})
	for _, shape := range [][2]int{{1, 1}, {2, 5}, {3, cfg.Context}} {
		in, err := cfg.ExampleInputs(shape[0], shape[1], 7)
		if err != nil {
			t.Fatal(err)
		}
		got, shapes := runORT(t, path, in, []string{GPTOutput})
		want, err := ReferenceGPT(m, cfg, int64Rows(t, in[0]))
		if err != nil {
			t.Fatal(err)
		}
		wantShape := []int64{int64(shape[0]), int64(shape[1]), int64(cfg.Vocab)}
		if !slices.Equal(shapes[0], wantShape) {
			t.Fatalf("%v: logits shape %v, want %v", shape, shapes[0], wantShape)
		}
		var maxDiff, maxAbs float64
		for i := range want {
			maxDiff = math.Max(maxDiff, math.Abs(float64(got[0][i])-float64(want[i])))
			maxAbs = math.Max(maxAbs, math.Abs(float64(want[i])))
		}
		t.Logf("batch=%d seq=%d: max |ORT - reference| = %.3g over %d logits (max |logit| %.3g)",
			shape[0], shape[1], maxDiff, len(want), maxAbs)
		if maxDiff > 1e-4 {
			t.Errorf("batch=%d seq=%d: ORT differs from the reference by %g > 1e-4", shape[0], shape[1], maxDiff)
		}
		// Logits that are all (nearly) zero would match anything.
		if maxAbs < 1e-2 {
			t.Errorf("logits are degenerate: max |logit| %g", maxAbs)
		}
	}
}

// TestGPTCausal checks the mask through ONNX Runtime: changing the last token
// leaves every earlier position's logits exactly as they were.
func TestGPTCausal(t *testing.T) {
	cfg := GPTTiny
	m, err := GPT(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := mustWrite(t, m, WriteOptions{})
	ids := []int64{3, 14, 15, 92, 65, 35}
	changed := slices.Clone(ids)
	changed[len(changed)-1] = 89
	a, _ := runORT(t, path, []tensor.Tensor{tensor.FromInt64(GPTInput, []int64{1, 6}, ids)}, []string{GPTOutput})
	b, _ := runORT(t, path, []tensor.Tensor{tensor.FromInt64(GPTInput, []int64{1, 6}, changed)}, []string{GPTOutput})
	prefix := 5 * cfg.Vocab
	if !slices.Equal(a[0][:prefix], b[0][:prefix]) {
		t.Error("earlier positions changed when only the last token did: the mask leaks the future")
	}
	if slices.Equal(a[0][prefix:], b[0][prefix:]) {
		t.Error("the last position did not change with its own token")
	}
}

// TestGPTTiedEmbedding checks what the partitioner relies on: one token
// table, read by the first Gather and by the LM head.
func TestGPTTiedEmbedding(t *testing.T) {
	m, err := GPT(GPTTiny)
	if err != nil {
		t.Fatal(err)
	}
	var inits int
	for _, init := range m.GetGraph().GetInitializer() {
		if init.GetName() == TokenEmbedding {
			inits++
		}
	}
	if inits != 1 {
		t.Fatalf("%d initializers named %s, want 1", inits, TokenEmbedding)
	}
	var readers []string
	for _, n := range m.GetGraph().GetNode() {
		if slices.Contains(n.GetInput(), TokenEmbedding) {
			readers = append(readers, n.GetOpType()+":"+n.GetName())
		}
	}
	want := []string{"Gather:embed/tokens", "Gemm:lm_head"}
	if !slices.Equal(readers, want) {
		t.Fatalf("%s read by %v, want %v", TokenEmbedding, readers, want)
	}
}

// TestParams checks Params against the initializers the builders write.
func TestParams(t *testing.T) {
	configs := []Config{
		GPTTiny, GPTConfig{Layers: 3, Dim: 48, Heads: 4, Vocab: 50, Context: 8, Seed: 2},
		ResNetTiny, ResNetMedium, ResNetConfig{Width: 4, Blocks: []int{2, 1, 3}, ImageSize: 8, Classes: 3, Stem: 1},
		LSTMTiny, LSTMMedium,
	}
	for _, cfg := range configs {
		m, err := cfg.Build()
		if err != nil {
			t.Fatal(err)
		}
		var floats int64
		for _, init := range m.GetGraph().GetInitializer() {
			if init.GetDataType() == elemFloat && !isConst(init.GetName()) {
				floats += product(init.GetDims())
			}
		}
		params := cfg.Params()
		if floats != params {
			t.Errorf("%+v: initializers hold %d floats, Params says %d", cfg, floats, params)
		}
	}
	// GPT-2 small has 124,439,808 parameters (wte, wpe, 12 blocks, ln_f);
	// ResNet-18 has 11,689,512 plus 9,600 batch-norm statistics.
	if got := GPT2Small.Params(); got != 124439808 {
		t.Errorf("GPT2Small.Params() = %d, want 124439808", got)
	}
	if got := ResNetMedium.Params(); got != 11689512+9600 {
		t.Errorf("ResNetMedium.Params() = %d, want %d", got, 11689512+9600)
	}
}

func isConst(name string) bool { return len(name) > 6 && name[:6] == "const/" }

// TestDeterministic: the same configuration gives the same bytes; another
// seed gives other weights.
func TestDeterministic(t *testing.T) {
	for _, kind := range []string{"gpt-tiny", "resnet-tiny", "lstm-tiny"} {
		t.Run(kind, func(t *testing.T) {
			marshal := func(seed int) []byte {
				m, _, err := Generate(kind, map[string]int{"seed": seed})
				if err != nil {
					t.Fatal(err)
				}
				b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			a, b, c := marshal(5), marshal(5), marshal(6)
			if !bytes.Equal(a, b) {
				t.Error("two builds with the same seed differ")
			}
			if bytes.Equal(a, c) || len(a) != len(c) {
				t.Errorf("seed 5 and seed 6: equal=%v, sizes %d and %d (want different bytes, same size)", bytes.Equal(a, c), len(a), len(c))
			}
		})
	}
}

// TestWriteExternalData: a model written with external data loads in ONNX
// Runtime and gives exactly the output of the inline file.
func TestWriteExternalData(t *testing.T) {
	m, err := GPT(GPTTiny)
	if err != nil {
		t.Fatal(err)
	}
	inline := mustWrite(t, m, WriteOptions{})
	external := mustWrite(t, m, WriteOptions{ExternalData: true})
	st, err := os.Stat(external + ".data")
	if err != nil {
		t.Fatal(err)
	}
	if want := 4 * GPTTiny.Params(); st.Size() < want {
		t.Fatalf("%s.data holds %d bytes, want at least %d", external, st.Size(), want)
	}
	// The in-memory model must be untouched by the external write.
	if m.GetGraph().GetInitializer()[0].GetDataLocation() != onnxpb.TensorProto_DEFAULT {
		t.Fatal("WriteFileWith(ExternalData) modified the caller's model")
	}
	in, err := GPTTiny.ExampleInputs(2, 7, 1)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := runORT(t, inline, in, []string{GPTOutput})
	b, _ := runORT(t, external, in, []string{GPTOutput})
	if !slices.Equal(a[0], b[0]) {
		t.Fatal("external-data model gives other logits than the inline one")
	}
}

// TestWriteAutoExternal: past the size limit WriteFile switches to external
// data on its own (the real limit, 1.8 GiB, is lowered here).
func TestWriteAutoExternal(t *testing.T) {
	m, err := GPT(GPTTiny)
	if err != nil {
		t.Fatal(err)
	}
	small := mustWrite(t, m, WriteOptions{ExternalAbove: 4*GPTTiny.Params() + 1<<20})
	if _, err := os.Stat(small + ".data"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("model under the limit: %s.data exists or cannot be checked (%v)", small, err)
	}
	big := mustWrite(t, m, WriteOptions{ExternalAbove: 1000})
	if _, err := os.Stat(big + ".data"); err != nil {
		t.Fatalf("model over the limit: %v", err)
	}
	in, err := GPTTiny.ExampleInputs(1, 4, 2)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := runORT(t, small, in, []string{GPTOutput})
	b, _ := runORT(t, big, in, []string{GPTOutput})
	if !slices.Equal(a[0], b[0]) {
		t.Fatal("automatically external model gives other logits than the inline one")
	}
}

// TestValueInfoShapes checks every recorded activation shape against ONNX
// Runtime: all value_info tensors become extra graph outputs, and the shapes
// ORT produces must equal the declared ones with batch and seq filled in. It
// also checks that no activation lacks a record.
func TestValueInfoShapes(t *testing.T) {
	cases := []struct {
		kind       string
		batch, seq int64
	}{
		{"gpt-tiny", 2, 5},
		{"resnet-tiny", 2, 0},
		{"resnet-medium", 1, 0},
		{"lstm-tiny", 3, 4},
	}
	for _, tc := range cases {
		t.Run(tc.kind, func(t *testing.T) {
			m, cfg, err := Generate(tc.kind, nil)
			if err != nil {
				t.Fatal(err)
			}
			graph := m.GetGraph()
			declared := make(map[string]*onnxpb.ValueInfoProto)
			for _, vi := range graph.GetValueInfo() {
				if declared[vi.GetName()] != nil {
					t.Fatalf("value_info for %s recorded twice", vi.GetName())
				}
				declared[vi.GetName()] = vi
			}
			for _, n := range graph.GetNode() {
				for _, out := range n.GetOutput() {
					if declared[out] == nil && out != cfg.OutputNames()[0] {
						t.Errorf("%s (output of %s) has no value_info", out, n.GetName())
					}
				}
			}
			probe := proto.Clone(m).(*onnxpb.ModelProto)
			var names []string
			for _, vi := range graph.GetValueInfo() {
				probe.Graph.Output = append(probe.Graph.Output, vi)
				names = append(names, vi.GetName())
			}
			path := mustWrite(t, probe, WriteOptions{})
			in, err := cfg.ExampleInputs(int(tc.batch), int(tc.seq), 1)
			if err != nil {
				t.Fatal(err)
			}
			outs := runORTTensors(t, path, in, names)
			for i, out := range outs {
				tt := declared[names[i]].GetType().GetTensorType()
				var want []int64
				for _, d := range tt.GetShape().GetDim() {
					switch d.GetDimParam() {
					case "":
						want = append(want, d.GetDimValue())
					case "batch":
						want = append(want, tc.batch)
					case "seq":
						want = append(want, tc.seq)
					case "batch*seq":
						want = append(want, tc.batch*tc.seq)
					default:
						t.Fatalf("%s: unexpected dim %q", names[i], d.GetDimParam())
					}
				}
				if int32(out.DType) != tt.GetElemType() || !slices.Equal(out.Shape, want) {
					t.Errorf("%s: ORT gives %v %v, value_info says %v %v", names[i], out.DType, out.Shape, tt.GetElemType(), want)
				}
			}
			t.Logf("%s: %d activation shapes match ORT", tc.kind, len(outs))
		})
	}
}

// checkFinite fails on NaN/Inf and on an output whose values are all equal,
// which would say the weights never reached the output.
func checkFinite(t *testing.T, name string, vals []float32) {
	t.Helper()
	for i, v := range vals {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("%s[%d] = %v", name, i, v)
		}
	}
	if slices.Min(vals) == slices.Max(vals) {
		t.Fatalf("%s is constant (%v)", name, vals[0])
	}
}

// TestModelsRunInORT runs every preset small enough for a unit test through
// ONNX Runtime and checks output shapes and values.
func TestModelsRunInORT(t *testing.T) {
	cases := []struct {
		kind       string
		batch, seq int
		wantShape  func(Config) []int64
	}{
		{"gpt-tiny", 2, 9, func(c Config) []int64 { return []int64{2, 9, int64(c.(GPTConfig).Vocab)} }},
		{"resnet-tiny", 3, 0, func(c Config) []int64 { return []int64{3, int64(c.(ResNetConfig).Classes)} }},
		{"resnet-medium", 1, 0, func(c Config) []int64 { return []int64{1, 1000} }},
		{"lstm-tiny", 2, 11, func(c Config) []int64 { return []int64{11, 2, int64(c.(LSTMConfig).Outputs)} }},
		{"lstm-medium", 2, 20, func(c Config) []int64 { return []int64{20, 2, int64(c.(LSTMConfig).Outputs)} }},
	}
	for _, tc := range cases {
		t.Run(tc.kind, func(t *testing.T) {
			m, cfg, err := Generate(tc.kind, nil)
			if err != nil {
				t.Fatal(err)
			}
			path := mustWrite(t, m, WriteOptions{})
			in, err := cfg.ExampleInputs(tc.batch, tc.seq, 3)
			if err != nil {
				t.Fatal(err)
			}
			out, shapes := runORT(t, path, in, cfg.OutputNames())
			if want := tc.wantShape(cfg); !slices.Equal(shapes[0], want) {
				t.Fatalf("output shape %v, want %v", shapes[0], want)
			}
			checkFinite(t, cfg.OutputNames()[0], out[0])
			t.Logf("%s: output %v, range [%.3g, %.3g]", tc.kind, shapes[0], slices.Min(out[0]), slices.Max(out[0]))
		})
	}
}

func TestLookup(t *testing.T) {
	cfg, err := Lookup("gpt", map[string]int{"layers": 4, "dim": 256})
	if err != nil {
		t.Fatal(err)
	}
	g := cfg.(GPTConfig)
	if g.Layers != 4 || g.Dim != 256 || g.Heads != 4 || g.Vocab != GPT2Small.Vocab {
		t.Errorf("gpt with layers=4 dim=256: got %+v", g)
	}
	cfg, err = Lookup("resnet-tiny", map[string]int{"stages": 3, "blocks": 2})
	if err != nil {
		t.Fatal(err)
	}
	if b := cfg.(ResNetConfig).Blocks; !slices.Equal(b, []int{2, 2, 2}) {
		t.Errorf("resnet stages=3 blocks=2: blocks %v", b)
	}
	errCases := []struct {
		kind string
		opts map[string]int
		want error
	}{
		{"bert", nil, ErrUnknownKind},
		{"gpt", map[string]int{"hidden": 3}, ErrInvalidConfig},
		{"lstm", map[string]int{"dim": 3}, ErrInvalidConfig},
	}
	for _, tc := range errCases {
		if _, err := Lookup(tc.kind, tc.opts); !errors.Is(err, tc.want) {
			t.Errorf("Lookup(%q, %v) = %v, want %v", tc.kind, tc.opts, err, tc.want)
		}
	}
	badBuilds := []Config{
		GPTConfig{Layers: 1, Dim: 30, Heads: 4, Vocab: 10, Context: 4},
		GPTConfig{Layers: 12, Dim: 76800, Heads: 12, Vocab: 50257, Context: 1024},
		GPTConfig{Layers: 1 << 40, Dim: 1 << 20, Heads: 1, Vocab: 1, Context: 1},
		LSTMConfig{Layers: 4, Features: 8, Hidden: 1 << 20, Outputs: 1},
		ResNetConfig{Width: 1 << 18, Blocks: []int{1, 1, 1, 1}, ImageSize: 8, Classes: 2, Stem: 1},
		ResNetConfig{Width: 8, Blocks: slices.Repeat([]int{1}, 40), ImageSize: 8, Classes: 2, Stem: 1},
		GPTConfig{Layers: 0, Dim: 32, Heads: 4, Vocab: 10, Context: 4},
		ResNetConfig{Width: 8, Blocks: []int{1}, ImageSize: 8, Classes: 2, Stem: 3},
		LSTMConfig{Layers: 1, Features: 0, Hidden: 4, Outputs: 1},
	}
	for _, c := range badBuilds {
		if _, err := c.Build(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: Build() = %v, want ErrInvalidConfig", c, err)
		}
	}
	if _, err := GPTTiny.ExampleInputs(1, GPTTiny.Context+1, 0); !errors.Is(err, ErrBadInput) {
		t.Errorf("sequence past the context: %v, want ErrBadInput", err)
	}
}

// BenchmarkBuildGPT2Small measures building the 12x768 GPT in memory
// (125M parameters, 498 MB of float32 weights).
func BenchmarkBuildGPT2Small(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := GPT(GPT2Small); err != nil {
			b.Fatal(err)
		}
	}
}
