package partition

import (
	"fmt"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// ifModel has an If node whose branches read outer tensors a and b (implicit
// inputs), and a is read again after the If.
func ifModel() *onnxpb.ModelProto {
	branch := func(name, op, in, out string) *onnxpb.GraphProto {
		return &onnxpb.GraphProto{
			Name:   proto.String(name),
			Node:   []*onnxpb.NodeProto{node(op, []string{in, in}, []string{out})},
			Output: []*onnxpb.ValueInfoProto{vi(out, tensor.Float32, 1, 4)},
		}
	}
	ifNode := node("If", []string{"cond"}, []string{"r"},
		&onnxpb.AttributeProto{Name: proto.String("then_branch"), Type: onnxpb.AttributeProto_GRAPH.Enum(), G: branch("then", "Add", "a", "then_out")},
		&onnxpb.AttributeProto{Name: proto.String("else_branch"), Type: onnxpb.AttributeProto_GRAPH.Enum(), G: branch("else", "Mul", "b", "else_out")},
	)
	nodes := []*onnxpb.NodeProto{
		node("Relu", []string{"x"}, []string{"a"}),
		node("Neg", []string{"x"}, []string{"b"}),
		ifNode,
		node("Sigmoid", []string{"r"}, []string{"s"}),
		node("Add", []string{"s", "a"}, []string{"y"}),
	}
	return model(nodes, nil,
		[]*onnxpb.ValueInfoProto{vi("x", tensor.Float32, 1, 4), vi("cond", tensor.Bool)},
		[]*onnxpb.ValueInfoProto{vi("y", tensor.Float32, 1, 4)})
}

// TestSubgraphCaptures: the outer tensors an If body reads are inputs of the If node,
// so every stage holding the If receives them; the chain matches the whole model for
// both branches.
func TestSubgraphCaptures(t *testing.T) {
	path := t.TempDir() + "/if.onnx"
	if err := modelgen.WriteFile(ifModel(), path); err != nil {
		t.Fatal(err)
	}
	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	ifPos := slices.IndexFunc(g.Nodes, func(n Node) bool { return n.OpType == "If" })
	for _, want := range []string{"cond", "a", "b"} {
		if !slices.Contains(g.Nodes[ifPos].Inputs, want) {
			t.Fatalf("If inputs %v lack %q", g.Nodes[ifPos].Inputs, want)
		}
	}
	if !slices.Contains(g.Cuts[ifPos].Crossing, "a") || !slices.Contains(g.Cuts[ifPos].Crossing, "b") {
		t.Fatalf("cut before the If does not carry its captures: %v", g.Cuts[ifPos].Crossing)
	}
	x := tensor.FromFloat32("x", []int64{1, 4}, []float32{-1, 0.5, 2, -3})
	for _, c := range []byte{0, 1} {
		cond := tensor.Tensor{Name: "cond", DType: tensor.Bool, Shape: []int64{}, Data: []byte{c}}
		checkSplits(t, path, nil, []tensor.Tensor{x, cond}, []int{2, 3, 4, 5})
	}
}

// TestTiedWeightsAndLateInputs: the GPT's token table feeds the first Gather and the
// LM head; it never crosses a cut, and both end stages hold and count it. A graph
// input read by a late stage reaches it directly.
func TestTiedWeightsAndLateInputs(t *testing.T) {
	t.Run("tied table held by both end stages", checkTiedWeight)
	t.Run("late graph input reaches its stage directly", checkLateGraphInput)
}

func checkTiedWeight(t *testing.T) {
	mp, err := modelgen.GPTTiny.Build()
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse(marshal(t, mp), "")
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, map[string][]int64{modelgen.GPTInput: {1, 4}})
	if err != nil {
		t.Fatal(err)
	}
	var tied *Weight
	for i := range g.Weights {
		w := &g.Weights[i]
		if len(w.Users) >= 2 && w.Users[0] < len(g.Nodes)/4 && w.Users[len(w.Users)-1] > 3*len(g.Nodes)/4 && w.Bytes > 1000 {
			tied = w
		}
	}
	if tied == nil {
		t.Fatal("no tied weight found in the GPT")
	}
	for _, c := range g.Cuts {
		for _, name := range c.Crossing {
			if g.Values[name].Kind == KindWeight {
				t.Fatalf("weight %q crosses cut %d", name, c.Position)
			}
		}
	}
	p, err := Plan(g, UniformDevices(2, 1<<30, 1), PlanOptions{Stages: 2})
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, s := range p.Stages {
		sum += s.ParamBytes
		if s.ParamBytes < tied.Bytes {
			t.Errorf("stage %d counts %d param bytes, less than the tied table (%d)", s.Index, s.ParamBytes, tied.Bytes)
		}
	}
	if sum < g.ParamBytes+tied.Bytes {
		t.Errorf("stages count %d param bytes, want at least %d (all weights + the tied table twice)", sum, g.ParamBytes+tied.Bytes)
	}
	dir := t.TempDir()
	man, err := Extract(m, g, p, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range man.Stages {
		sm, err := Load(dir + "/" + s.File)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(sm.Proto.GetGraph().GetInitializer(), func(tp *onnxpb.TensorProto) bool { return tp.GetName() == tied.Name }) {
			t.Errorf("stage %d lacks the tied weight %q", s.Index, tied.Name)
		}
	}
}

// maskModel is a chain of 4 Add+Relu layers that all add the graph input mask, with
// value_info from an exporter that traced with batch 5.
func maskModel() *onnxpb.ModelProto {
	var nodes []*onnxpb.NodeProto
	prev := "x"
	for i := 0; i < 4; i++ {
		a, r := "add"+string(rune('0'+i)), "relu"+string(rune('0'+i))
		nodes = append(nodes, node("Add", []string{prev, "mask"}, []string{a}), node("Relu", []string{a}, []string{r}))
		prev = r
	}
	nodes[len(nodes)-1].Output = []string{"y"}
	mm := model(nodes, nil, []*onnxpb.ValueInfoProto{vi("x", tensor.Float32, "n", 8), vi("mask", tensor.Float32, 1, 8)}, []*onnxpb.ValueInfoProto{vi("y", tensor.Float32, "n", 8)})
	// An exporter's value_info that wrote down the batch it traced with (5): stage
	// inputs must not inherit that fixed dim.
	for _, name := range []string{"relu0", "relu1", "relu2", "add1", "add2", "add3"} {
		mm.Graph.ValueInfo = append(mm.Graph.ValueInfo, vi(name, tensor.Float32, 5, 8))
	}
	return mm
}

// checkLateGraphInput: a mask read by every layer: later stages take it as a graph
// input (From -1), and it counts in the bytes of every cut it spans.
func checkLateGraphInput(t *testing.T) {
	path := t.TempDir() + "/mask.onnx"
	if err := modelgen.WriteFile(maskModel(), path); err != nil {
		t.Fatal(err)
	}
	m2, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g2, err := Analyze(m2, map[string][]int64{"x": {3, 8}})
	if err != nil {
		t.Fatal(err)
	}
	if c := g2.Cuts[4]; !slices.Contains(c.Crossing, "mask") || c.Bytes != 3*8*4+8*4 {
		t.Fatalf("cut 4 crossing %v, %d bytes; want mask counted", c.Crossing, c.Bytes)
	}
	p2, err := Plan(g2, UniformDevices(3, 1<<30, 1), PlanOptions{Stages: 3})
	if err != nil {
		t.Fatal(err)
	}
	dir2 := t.TempDir()
	man2, err := Extract(m2, g2, p2, dir2)
	if err != nil {
		t.Fatal(err)
	}
	last := man2.Stages[2]
	i := slices.IndexFunc(last.Inputs, func(s TensorSpec) bool { return s.Name == "mask" })
	if i < 0 || last.Inputs[i].From != -1 {
		t.Fatalf("last stage inputs %+v: want mask from the graph", last.Inputs)
	}
	j := slices.IndexFunc(last.Inputs, func(s TensorSpec) bool { return s.Name != "mask" })
	if j < 0 || last.Inputs[j].From != 1 || last.Inputs[j].Shape[0] != -1 {
		t.Fatalf("last stage inputs %+v: want the activation from stage 1 with a symbolic batch dim", last.Inputs)
	}
	inputs := []tensor.Tensor{
		tensor.FromFloat32("x", []int64{2, 8}, []float32{1, -2, 3, -4, 5, -6, 7, -8, 0.5, 0.25, -1, 2, 3, 4, -5, 6}),
		tensor.FromFloat32("mask", []int64{1, 8}, []float32{0, -1, 1, 0, -0.5, 0.5, 2, -2}),
	}
	// Batch 2 while the plan was made for 3: the symbolic dim stayed symbolic.
	rep, err := Verify(t.Context(), ortBackend(t), path, man2, dir2, inputs)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Outputs[0].Exact {
		t.Fatalf("mask chain differs: %+v", rep.Outputs[0])
	}
}

// TestMeasureValues: shapes and dtypes measured in ONNX Runtime agree with shape
// inference on every tensor of the PP-OCR recognizer and the generated models, and a
// tensor inference cannot size (the output of an op it has no rule for) gets exact
// crossing bytes once measured.
func TestMeasureValues(t *testing.T) {
	ppShapes := map[string][]int64{"x": {1, 3, 48, 96}}
	ppInputs, err := RandomInputs(&Manifest{InputShapes: ppShapes, Inputs: []TensorSpec{{Name: "x", DType: tensor.Float32}}}, 3)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		path   string
		inputs []tensor.Tensor
	}{{"pp-ocr", ppOCRPath, ppInputs}}
	for _, cfg := range []modelgen.Config{modelgen.GPTTiny, modelgen.ResNetTiny, modelgen.LSTMTiny} {
		in, err := cfg.ExampleInputs(2, 3, 1)
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, struct {
			name   string
			path   string
			inputs []tensor.Tensor
		}{fmt.Sprintf("%T", cfg), writeGenerated(t, cfg, t.TempDir()), in})
	}
	for _, c := range cases {
		m, err := Load(c.path)
		if err != nil {
			t.Fatal(err)
		}
		g, err := Analyze(m, map[string][]int64{c.inputs[0].Name: c.inputs[0].Shape})
		if err != nil {
			t.Fatal(err)
		}
		measured, err := MeasureValues(t.Context(), ortBackend(t), g, c.inputs, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if len(measured) < len(g.Nodes) {
			t.Fatalf("%s: measured %d tensors of %d nodes", c.name, len(measured), len(g.Nodes))
		}
		agree, differ := 0, 0
		for name, mv := range measured {
			v := g.Values[name]
			if v.DType == mv.DType && slices.Equal(v.Shape, mv.Shape) {
				agree++
			} else {
				differ++
				t.Logf("%s: %s: inferred %s%v, measured %s%v", c.name, name, v.DType, v.Shape, mv.DType, mv.Shape)
			}
		}
		t.Logf("%s: inference agrees with ONNX Runtime on %d of %d tensors", c.name, agree, agree+differ)
		if differ != 0 {
			t.Errorf("%s: shape inference differs from ONNX Runtime on %d tensors", c.name, differ)
		}
	}

	// An op without a shape rule: Einsum keeps its dtype but not its shape, so the
	// crossing bytes are a guess until measured.
	mp := model([]*onnxpb.NodeProto{
		node("Relu", []string{"x"}, []string{"a"}),
		node("Einsum", []string{"a", "a"}, []string{"b"}, &onnxpb.AttributeProto{Name: proto.String("equation"), Type: onnxpb.AttributeProto_STRING.Enum(), S: []byte("ij,kj->ik")}),
		node("Sigmoid", []string{"b"}, []string{"y"}),
	}, nil, []*onnxpb.ValueInfoProto{vi("x", tensor.Float32, 3, 5)}, []*onnxpb.ValueInfoProto{vi("y", tensor.Float32, 3, 3)})
	path := t.TempDir() + "/einsum.onnx"
	if err := modelgen.WriteFile(mp, path); err != nil {
		t.Fatal(err)
	}
	m2, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g2, err := Analyze(m2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g2.Values["b"].Shape != nil {
		t.Fatalf("Einsum shape inferred as %v; the test needs an op without a rule", g2.Values["b"].Shape)
	}
	x := tensor.FromFloat32("x", []int64{3, 5}, make([]float32, 15))
	mv, err := MeasureValues(t.Context(), ortBackend(t), g2, []tensor.Tensor{x}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	g3, err := AnalyzeWith(m2, AnalyzeOptions{Measured: mv})
	if err != nil {
		t.Fatal(err)
	}
	if got := g3.Cuts[2].Bytes; got != 3*3*4 {
		t.Fatalf("measured cut after Einsum: %d bytes, want 36", got)
	}
}
