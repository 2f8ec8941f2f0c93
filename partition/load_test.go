package partition

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// Helpers that build small ONNX models by hand, for the cases generated models do
// not cover (cycles, dangling inputs, subgraphs, unknown fields).

func vi(name string, dt tensor.DType, dims ...any) *onnxpb.ValueInfoProto {
	tt := &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(int32(dt)), Shape: &onnxpb.TensorShapeProto{}}
	for _, d := range dims {
		dim := &onnxpb.TensorShapeProto_Dimension{}
		switch d := d.(type) {
		case int:
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: int64(d)}
		case string:
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d}
		}
		tt.Shape.Dim = append(tt.Shape.Dim, dim)
	}
	return &onnxpb.ValueInfoProto{Name: proto.String(name), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: tt}}}
}

func node(op string, ins, outs []string, attrs ...*onnxpb.AttributeProto) *onnxpb.NodeProto {
	return &onnxpb.NodeProto{OpType: proto.String(op), Input: ins, Output: outs, Name: proto.String(op + "_" + strings.Join(outs, "_")), Attribute: attrs}
}

func floatInit(name string, dims []int64, fill float32) *onnxpb.TensorProto {
	n := int64(1)
	for _, d := range dims {
		n *= d
	}
	raw := make([]byte, 4*n)
	for i := int64(0); i < n; i++ {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(fill+float32(i%7)*0.01))
	}
	return &onnxpb.TensorProto{Name: proto.String(name), Dims: dims, DataType: proto.Int32(int32(tensor.Float32)), RawData: raw}
}

func model(nodes []*onnxpb.NodeProto, inits []*onnxpb.TensorProto, ins, outs []*onnxpb.ValueInfoProto) *onnxpb.ModelProto {
	return &onnxpb.ModelProto{
		IrVersion:    proto.Int64(8),
		ProducerName: proto.String("partition-test"),
		OpsetImport:  []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}},
		Graph:        &onnxpb.GraphProto{Name: proto.String("test"), Node: nodes, Initializer: inits, Input: ins, Output: outs},
	}
}

func marshal(t testing.TB, m *onnxpb.ModelProto) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// chainModel is x -> (Add w_i -> Relu) x n -> y, with [1, width] activations.
func chainModel(n, width int) *onnxpb.ModelProto {
	var nodes []*onnxpb.NodeProto
	var inits []*onnxpb.TensorProto
	prev := "x"
	for i := 0; i < n; i++ {
		w := "w" + string(rune('a'+i))
		inits = append(inits, floatInit(w, []int64{1, int64(width)}, float32(i)*0.1))
		a, r := "add"+w, "relu"+w
		nodes = append(nodes, node("Add", []string{prev, w}, []string{a}), node("Relu", []string{a}, []string{r}))
		prev = r
	}
	nodes[len(nodes)-1].Output = []string{"y"}
	return model(nodes, inits, []*onnxpb.ValueInfoProto{vi("x", tensor.Float32, 1, width)}, []*onnxpb.ValueInfoProto{vi("y", tensor.Float32, 1, width)})
}

func TestLoadBadInputs(t *testing.T) {
	good := marshal(t, chainModel(3, 4))
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrNotONNX},
		{"text", []byte("hello, this is not a model\n"), ErrNotONNX},
		{"png", []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), ErrNotONNX},
		{"json", []byte(`{"graph": {"node": []}}`), ErrNotONNX},
		{"truncated half", good[:len(good)/2], ErrTruncated},
		{"truncated last byte", good[:len(good)-1], ErrTruncated},
		{"truncated before opsets", good[:bytes.LastIndex(good, []byte{0x42})], ErrTruncated},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.data, "")
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			t.Logf("%v", err)
		})
	}
	// Every prefix of a model fails cleanly, never panics.
	for i := 0; i < len(good); i++ {
		if _, err := Parse(good[:i], ""); err == nil {
			t.Fatalf("prefix of %d/%d bytes parsed without error", i, len(good))
		}
	}
	// Through the file path too.
	path := filepath.Join(t.TempDir(), "cut.onnx")
	if err := os.WriteFile(path, good[:len(good)/3], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Load of a truncated file: %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.onnx")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v", err)
	}
}

func TestAnalyzeBadGraphs(t *testing.T) {
	x := []*onnxpb.ValueInfoProto{vi("x", tensor.Float32, 1, 4)}
	y := []*onnxpb.ValueInfoProto{vi("y", tensor.Float32, 1, 4)}
	cases := []struct {
		name string
		m    *onnxpb.ModelProto
		want error
	}{
		{"cycle", model([]*onnxpb.NodeProto{
			node("Add", []string{"x", "c"}, []string{"a"}),
			node("Relu", []string{"a"}, []string{"b"}),
			node("Neg", []string{"b"}, []string{"c"}),
			node("Identity", []string{"b"}, []string{"y"}),
		}, nil, x, y), ErrCycle},
		{"self loop", model([]*onnxpb.NodeProto{node("Add", []string{"x", "y"}, []string{"y"})}, nil, x, y), ErrCycle},
		{"dangling", model([]*onnxpb.NodeProto{
			node("Add", []string{"x", "nowhere"}, []string{"y"}),
		}, nil, x, y), ErrDanglingInput},
		{"dangling output", model([]*onnxpb.NodeProto{
			node("Relu", []string{"x"}, []string{"a"}),
		}, nil, x, y), ErrDanglingInput},
		{"produced twice", model([]*onnxpb.NodeProto{
			node("Relu", []string{"x"}, []string{"y"}),
			node("Neg", []string{"x"}, []string{"y"}),
		}, nil, x, y), ErrDuplicateOutput},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := Parse(marshal(t, c.m), "")
			if err != nil {
				t.Fatal(err)
			}
			_, err = Analyze(m, nil)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			t.Logf("%v", err)
		})
	}
}

func TestTooManyStages(t *testing.T) {
	m, err := Parse(marshal(t, chainModel(2, 4)), "")
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Nodes) != 4 || len(g.ValidCuts()) != 3 {
		t.Fatalf("want 4 nodes and 3 cut points, got %d and %v", len(g.Nodes), g.ValidCuts())
	}
	if _, err := Plan(g, UniformDevices(5, 1<<30, 1), PlanOptions{Stages: 5}); !errors.Is(err, ErrTooManyStages) {
		t.Fatalf("5 stages of 4 nodes: %v", err)
	} else {
		t.Log(err)
	}
	if _, err := Plan(g, UniformDevices(2, 1<<30, 1), PlanOptions{Stages: 3}); !errors.Is(err, ErrTooManyStages) {
		t.Fatalf("3 stages on 2 devices: %v", err)
	}
	if _, err := Plan(g, nil, PlanOptions{}); !errors.Is(err, ErrNoDevices) {
		t.Fatalf("no devices: %v", err)
	}
	p, err := Plan(g, UniformDevices(4, 1<<30, 1), PlanOptions{Stages: 4})
	if err != nil || len(p.Stages) != 4 {
		t.Fatalf("4 stages of 4 nodes: %v", err)
	}
}

// TestUnknownFieldsKept: fields onnx.proto 1.12 does not know survive Load and
// Extract, at model, graph and node level.
func TestUnknownFieldsKept(t *testing.T) {
	mp := chainModel(2, 4)
	unknown := func(num protowire.Number, s string) []byte {
		b := protowire.AppendTag(nil, num, protowire.BytesType)
		return protowire.AppendString(b, s)
	}
	mp.ProtoReflect().SetUnknown(unknown(999, "model-extension"))
	mp.Graph.ProtoReflect().SetUnknown(unknown(998, "graph-extension"))
	mp.Graph.Node[0].ProtoReflect().SetUnknown(unknown(997, "node-extension"))
	mp.MetadataProps = []*onnxpb.StringStringEntryProto{{Key: proto.String("author"), Value: proto.String("test")}}
	m, err := Parse(marshal(t, mp), "")
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Plan(g, UniformDevices(2, 1<<30, 1), PlanOptions{Stages: 2})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := Extract(m, g, p, dir); err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]string{{"model-extension", "graph-extension", "node-extension", "author"}, {"model-extension", "graph-extension", "author"}} {
		b, err := os.ReadFile(filepath.Join(dir, "stage-"+string(rune('0'+i))+".onnx"))
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if !bytes.Contains(b, []byte(w)) {
				t.Errorf("stage %d lost %q", i, w)
			}
		}
		sm, err := Parse(b, "")
		if err != nil {
			t.Fatal(err)
		}
		if sm.Proto.GetIrVersion() != 8 || sm.Proto.GetProducerName() != "partition-test" || len(sm.Proto.GetOpsetImport()) != 1 {
			t.Errorf("stage %d header not kept: %v", i, sm.Proto.GetOpsetImport())
		}
	}
}

// TestExternalData loads a model whose weights live in a .data file, splits it with
// and without external data in the stages, and checks the chains in ONNX Runtime.
func TestExternalData(t *testing.T) {
	cfg := modelgen.GPTTiny
	mp, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "gpt.onnx")
	if err := modelgen.WriteFileWith(mp, path, modelgen.WriteOptions{ExternalData: true}); err != nil {
		t.Fatal(err)
	}
	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ext := 0
	for _, t := range m.Proto.GetGraph().GetInitializer() {
		if isExternal(t) {
			ext++
		}
	}
	if ext == 0 {
		t.Fatal("model has no external initializers")
	}
	inputs, err := cfg.ExampleInputs(1, 5, 1)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, map[string][]int64{inputs[0].Name: inputs[0].Shape})
	if err != nil {
		t.Fatal(err)
	}
	p, err := Plan(g, UniformDevices(3, 1<<30, 1), PlanOptions{Stages: 3})
	if err != nil {
		t.Fatal(err)
	}
	be := ortBackend(t)
	whole, err := runModel(t.Context(), be, path, inputs, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, above := range []int64{0, -1} {
		out := t.TempDir()
		man, err := ExtractWith(m, g, p, out, ExtractOptions{ExternalAbove: above})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range man.Stages {
			if (above < 0) != (s.DataFile != "") {
				t.Fatalf("ExternalAbove %d: stage %d data file %q", above, s.Index, s.DataFile)
			}
		}
		chain, err := RunChain(t.Context(), be, man, out, inputs)
		if err != nil {
			t.Fatal(err)
		}
		d, err := compareTensors(whole[modelgen.GPTOutput], chain[modelgen.GPTOutput])
		if err != nil || d.MaxRelToScale > chainTolerance {
			t.Fatalf("ExternalAbove %d: %v %+v", above, err, d)
		}
	}

	// A location that leaves the model's folder is refused.
	bad := chainModel(1, 4)
	bad.Graph.Initializer[0].RawData = nil
	bad.Graph.Initializer[0].DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
	bad.Graph.Initializer[0].ExternalData = []*onnxpb.StringStringEntryProto{{Key: proto.String("location"), Value: proto.String("../../etc/passwd")}}
	badPath := filepath.Join(dir, "bad.onnx")
	if err := os.WriteFile(badPath, marshal(t, bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(badPath); !errors.Is(err, ErrExternalData) {
		t.Fatalf("escaping location: %v", err)
	}
	bad.Graph.Initializer[0].ExternalData[0].Value = proto.String("missing.data")
	if err := os.WriteFile(badPath, marshal(t, bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(badPath); !errors.Is(err, ErrExternalData) {
		t.Fatalf("missing data file: %v", err)
	}
}

// FuzzLoad feeds arbitrary bytes through Parse and, when they parse, Analyze and
// Plan: none may panic or hang.
func FuzzLoad(f *testing.F) {
	f.Add(marshal(f, chainModel(3, 4)))
	f.Add([]byte{})
	f.Add([]byte("not a model"))
	tiny, err := modelgen.GPTTiny.Build()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(marshal(f, tiny))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data, "")
		if err != nil {
			if !errors.Is(err, ErrNotONNX) && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrExternalData) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		g, err := Analyze(m, nil)
		if err != nil || len(g.Nodes) == 0 {
			return
		}
		if p, err := Plan(g, UniformDevices(2, 1<<40, 1), PlanOptions{}); err == nil && len(p.Stages) == 0 {
			t.Fatal("plan without stages")
		}
	})
}

// TestDeadNodesDropped: a branch nothing reads is not part of any stage.
func TestDeadNodesDropped(t *testing.T) {
	mp := chainModel(2, 4)
	mp.Graph.Node = append(mp.Graph.Node, node("Neg", []string{"x"}, []string{"unused"}), node("Abs", []string{"unused"}, []string{"unused2"}))
	m, err := Parse(marshal(t, mp), "")
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Nodes) != 4 {
		t.Fatalf("want the 4 live nodes, got %d", len(g.Nodes))
	}
	for _, nd := range g.Nodes {
		if nd.OpType == "Neg" || nd.OpType == "Abs" {
			t.Fatalf("dead node %s kept", nd.Name)
		}
	}
}

// TestExtractRejectsBadPlan: a plan that does not tile the graph is refused.
func TestExtractRejectsBadPlan(t *testing.T) {
	m, err := Parse(marshal(t, chainModel(3, 4)), "")
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*StagePlan{
		nil,
		{Stages: []Stage{{Index: 0, Start: 0, End: 3}}},
		{Stages: []Stage{{Index: 0, Start: 0, End: 3}, {Index: 1, Start: 4, End: 6}}},
		{Stages: []Stage{{Index: 0, Start: 0, End: 6}, {Index: 1, Start: 6, End: 6}}},
	} {
		if _, err := Extract(m, g, p, t.TempDir()); !errors.Is(err, ErrBadPlan) {
			t.Fatalf("plan %+v: %v", p, err)
		}
	}
}
