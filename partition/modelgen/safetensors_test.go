package modelgen

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// stTensor is one tensor to write into a test safetensors file: float32 values
// stored as dtype ("F32", "F16" or "BF16").
type stTensor struct {
	dtype string
	shape []int64
	vals  []float32
}

// encodeSafetensors writes tensors (and meta) in the safetensors layout.
func encodeSafetensors(t *testing.T, tensors map[string]stTensor, meta map[string]string) []byte {
	t.Helper()
	header := map[string]any{}
	if meta != nil {
		header["__metadata__"] = meta
	}
	names := make([]string, 0, len(tensors))
	for n := range tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	var body bytes.Buffer
	for _, n := range names {
		ts := tensors[n]
		start := body.Len()
		for _, v := range ts.vals {
			switch ts.dtype {
			case "F32":
				_ = binary.Write(&body, binary.LittleEndian, math.Float32bits(v))
			case "BF16":
				_ = binary.Write(&body, binary.LittleEndian, uint16(math.Float32bits(v)>>16))
			case "F16":
				_ = binary.Write(&body, binary.LittleEndian, floatToHalf(v))
			}
		}
		header[n] = map[string]any{"dtype": ts.dtype, "shape": ts.shape, "data_offsets": []int{start, body.Len()}}
	}
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	return append(append(out, h...), body.Bytes()...)
}

// floatToHalf rounds a normal float32 in half's range to half precision (truncating).
func floatToHalf(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23&0xff) - 127 + 15
	if exp <= 0 {
		return sign
	}
	return sign | uint16(exp)<<10 | uint16(b>>13&0x3ff)
}

// initializers returns a model's float initializers by name.
func initializers(t *testing.T, m *onnxpb.ModelProto) map[string][]float32 {
	t.Helper()
	out := map[string][]float32{}
	for _, in := range m.GetGraph().GetInitializer() {
		if in.GetDataType() != elemFloat {
			continue
		}
		raw := in.GetRawData()
		vals := make([]float32, len(raw)/4)
		for i := range vals {
			vals[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		out[in.GetName()] = vals
	}
	return out
}

// trainedSource is a tiny with-past GPT whose drawn weights (seed 2) stand in for
// trained ones, and the names of its weights (the constants left out).
func trainedSource(t *testing.T) (GPTConfig, map[string][]float32, map[string][]int64) {
	t.Helper()
	cfg := GPTConfig{Layers: 2, Dim: 16, Heads: 2, Vocab: 40, Context: 12, Seed: 2, WithPast: true}
	m, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	vals := initializers(t, m)
	shapes := map[string][]int64{}
	for _, in := range m.GetGraph().GetInitializer() {
		if strings.HasPrefix(in.GetName(), "const/") {
			delete(vals, in.GetName())
			continue
		}
		shapes[in.GetName()] = in.GetDims()
	}
	return cfg, vals, shapes
}

// TestTrainedWeightsBuildTheirModel: weights written as safetensors (float32, under
// modelgen's names) and read back give, in a model built with another seed, exactly
// the tensors of the model they came from, and the same logits in ONNX Runtime; the
// shape comes from the file and its metadata.
func TestTrainedWeightsBuildTheirModel(t *testing.T) {
	src, vals, shapes := trainedSource(t)
	tensors := map[string]stTensor{}
	for n, v := range vals {
		tensors[n] = stTensor{"F32", shapes[n], v}
	}
	path := filepath.Join(t.TempDir(), "w.safetensors")
	if err := os.WriteFile(path, encodeSafetensors(t, tensors, map[string]string{"heads": "2"}), 0o644); err != nil {
		t.Fatal(err)
	}
	tr, err := ReadSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := tr.Config(GPTConfig{Seed: 1, WithPast: true}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Layers != src.Layers || cfg.Dim != src.Dim || cfg.Heads != src.Heads || cfg.Vocab != src.Vocab || cfg.Context != src.Context {
		t.Fatalf("config from the file %+v, want the shape of %+v", cfg, src)
	}
	m, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	got := initializers(t, m)
	for n, v := range vals {
		if !slices.Equal(got[n], v) {
			t.Fatalf("%s: the built model does not hold the file's values", n)
		}
	}
	srcModel, err := src.Build()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cfg.ExampleInputs(1, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := runORT(t, mustWrite(t, srcModel, WriteOptions{}), in, []string{GPTOutput})
	have, _ := runORT(t, mustWrite(t, m, WriteOptions{}), in, []string{GPTOutput})
	if !slices.Equal(want[0], have[0]) {
		t.Fatal("logits of the model built from the file differ from its source's")
	}
	if !strings.Contains(m.GetDocString(), "weights=trained") {
		t.Errorf("doc string %q does not say the weights are trained", m.GetDocString())
	}
}

// TestSafetensorsHuggingFaceNames: GPT-2's names (with and without "transformer."),
// float16 and bfloat16 data, the causal-mask buffers and the tied lm_head are read
// as the graph needs them.
func TestSafetensorsHuggingFaceNames(t *testing.T) {
	_, vals, shapes := trainedSource(t)
	hf := map[string]string{}
	for k, v := range hfTopNames {
		if v != "" {
			hf[v] = k
		}
	}
	for i := range 2 {
		for k, v := range hfBlockNames {
			hf["block"+itoa(i)+"/"+v] = "h." + itoa(i) + "." + k
		}
	}
	tensors := map[string]stTensor{
		"h.0.attn.bias":  {"F32", []int64{1, 1, 2, 2}, []float32{1, 0, 1, 1}},
		"lm_head.weight": {"F32", shapes[TokenEmbedding], vals[TokenEmbedding]},
	}
	for n, v := range vals {
		name, dtype := hf[n], "F32"
		switch {
		case name == "":
			t.Fatalf("no Hugging Face name for %s", n)
		case strings.HasPrefix(name, "h.1."):
			name, dtype = "transformer."+name, "F16"
		case strings.HasPrefix(name, "h.0.ln"):
			dtype = "BF16"
		}
		tensors[name] = stTensor{dtype, shapes[n], v}
	}
	tr, err := ParseSafetensors(encodeSafetensors(t, tensors, nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Tensors) != len(vals) {
		t.Fatalf("%d tensors read, want %d (the mask buffer and lm_head left out)", len(tr.Tensors), len(vals))
	}
	for n, v := range vals {
		got := tr.Tensors[n]
		if !slices.Equal(got.Shape, shapes[n]) {
			t.Fatalf("%s: shape %v, want %v", n, got.Shape, shapes[n])
		}
		for i := range v {
			want := v[i]
			switch tensors[hf[n]].dtype + tensors["transformer."+hf[n]].dtype {
			case "F16":
				want = tensor.HalfToFloat32(floatToHalf(v[i]))
			case "BF16":
				want = math.Float32frombits(math.Float32bits(v[i]) &^ 0xffff)
			}
			if got.Data[i] != want {
				t.Fatalf("%s[%d] = %g, want %g (%g stored as %s)", n, i, got.Data[i], want, v[i], tensors[hf[n]].dtype)
			}
		}
	}
	if _, err := tr.Config(GPTConfig{}, 0); !errors.Is(err, ErrWeights) {
		t.Fatalf("heads neither given nor in the metadata: %v, want ErrWeights", err)
	}
	if cfg, err := tr.Config(GPTConfig{WithPast: true}, 2); err != nil || cfg.Layers != 2 {
		t.Fatalf("heads given: %+v, %v", cfg, err)
	}
}

// TestTrainedWeightsThatDoNotFit: the source's tensors build both layouts, the plain
// one with exactly the plain source's weights; a missing tensor, a tensor of another
// shape or length and a tensor the model has no weight for are refused with
// ErrWeights.
func TestTrainedWeightsThatDoNotFit(t *testing.T) {
	src, vals, shapes := trainedSource(t)
	build := func(edit func(map[string]TrainedTensor)) error {
		tr := &Trained{Tensors: map[string]TrainedTensor{}}
		for n, v := range vals {
			tr.Tensors[n] = TrainedTensor{Shape: shapes[n], Data: v}
		}
		edit(tr.Tensors)
		cfg := src
		cfg.Weights = tr
		_, err := cfg.Build()
		return err
	}
	if err := build(func(map[string]TrainedTensor) {}); err != nil {
		t.Fatalf("the source's own tensors: %v", err)
	}
	// The plain layout has the same weights: the same tensors build it, and its
	// initializers are the plain model of the source's seed.
	tr := &Trained{Tensors: map[string]TrainedTensor{}}
	for n, v := range vals {
		tr.Tensors[n] = TrainedTensor{Shape: shapes[n], Data: v}
	}
	plain, plainSrc := src, src
	plain.WithPast, plainSrc.WithPast, plain.Seed, plain.Weights = false, false, 7, tr
	pm, err := plain.Build()
	if err != nil {
		t.Fatalf("plain layout: %v", err)
	}
	want, err := plainSrc.Build()
	if err != nil {
		t.Fatal(err)
	}
	wantVals, gotVals := initializers(t, want), initializers(t, pm)
	for n, v := range wantVals {
		if !slices.Equal(gotVals[n], v) {
			t.Fatalf("plain layout: %s differs from the source's", n)
		}
	}
	for name, edit := range map[string]func(map[string]TrainedTensor){
		"missing": func(m map[string]TrainedTensor) { delete(m, "block1/mlp/fc/bias") },
		"other shape": func(m map[string]TrainedTensor) {
			m[lnfBias] = TrainedTensor{Shape: []int64{8}, Data: make([]float32, 8)}
		},
		"short data": func(m map[string]TrainedTensor) {
			m[lnfBias] = TrainedTensor{Shape: []int64{16}, Data: make([]float32, 15)}
		},
		"extra": func(m map[string]TrainedTensor) {
			m["block7/ln1/scale"] = TrainedTensor{Shape: []int64{16}, Data: make([]float32, 16)}
		},
	} {
		if err := build(edit); !errors.Is(err, ErrWeights) {
			t.Errorf("%s: %v, want ErrWeights", name, err)
		}
	}
}

// TestSafetensorsRefusesMalformedFiles: every malformed file gives ErrSafetensors.
func TestSafetensorsRefusesMalformedFiles(t *testing.T) {
	good := encodeSafetensors(t, map[string]stTensor{"wte": {"F32", []int64{2, 2}, []float32{1, 2, 3, 4}}}, nil)
	header := func(h string) []byte {
		return append(binary.LittleEndian.AppendUint64(nil, uint64(len(h))), append([]byte(h), make([]byte, 16)...)...)
	}
	for name, data := range map[string][]byte{
		"short":            good[:5],
		"header too long":  append(binary.LittleEndian.AppendUint64(nil, 1<<40), good[8:]...),
		"not json":         header("{nope"),
		"offsets past end": header(`{"wte":{"dtype":"F32","shape":[2,2],"data_offsets":[0,64]}}`),
		"size mismatch":    header(`{"wte":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}`),
		"negative dim":     header(`{"wte":{"dtype":"F32","shape":[-1],"data_offsets":[0,16]}}`),
		"huge shape":       header(`{"wte":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}`),
		"dtype":            header(`{"wte":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}`),
		"metadata":         header(`{"__metadata__":{"a":1}}`),
		"reversed offsets": header(`{"wte":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`),
		"three offsets":    header(`{"wte":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`),
		"gap":              header(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`),
		"overlap":          header(`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`),
		"two names to one": header(`{"wte":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"wte.weight":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`),
	} {
		if _, err := ParseSafetensors(data); !errors.Is(err, ErrSafetensors) {
			t.Errorf("%s: %v, want ErrSafetensors", name, err)
		}
	}
	if _, err := ParseSafetensors(good); err != nil {
		t.Fatalf("well-formed file: %v", err)
	}
	untied := encodeSafetensors(t, map[string]stTensor{
		"wte.weight":     {"F32", []int64{2, 2}, []float32{1, 2, 3, 4}},
		"lm_head.weight": {"F32", []int64{2, 2}, []float32{1, 2, 3, 5}},
	}, nil)
	if _, err := ParseSafetensors(untied); !errors.Is(err, ErrWeights) {
		t.Errorf("an lm_head that is not the token table: %v, want ErrWeights", err)
	}
}

// FuzzParseSafetensors: any bytes decode or fail with ErrSafetensors (ErrWeights for
// an lm_head that is not the token table), never panic, and never make more values
// than the file has bytes.
func FuzzParseSafetensors(f *testing.F) {
	f.Add([]byte{})
	f.Add(append(binary.LittleEndian.AppendUint64(nil, 2), []byte("{}")...))
	hdr := `{"wte":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"__metadata__":{"heads":"2"}}`
	f.Add(append(append(binary.LittleEndian.AppendUint64(nil, uint64(len(hdr))), hdr...), 0, 60, 0, 188))
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := ParseSafetensors(data)
		if err != nil {
			if !errors.Is(err, ErrSafetensors) && !errors.Is(err, ErrWeights) {
				t.Fatalf("error %v wraps neither ErrSafetensors nor ErrWeights", err)
			}
			return
		}
		values := 0
		for n, ts := range tr.Tensors {
			values += len(ts.Data)
			count := int64(1)
			for _, d := range ts.Shape {
				count *= d
			}
			if int64(len(ts.Data)) != count {
				t.Fatalf("%s: %d values for shape %v", n, len(ts.Data), ts.Shape)
			}
		}
		if values > len(data) {
			t.Fatalf("%d values decoded from %d bytes", values, len(data))
		}
	})
}
