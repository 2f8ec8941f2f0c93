package partition

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/partition/onnxpb"
	"google.golang.org/protobuf/proto"
)

// TestMeasureNodeCostsPlansOnThem: ONNX Runtime's profile of a with-past GPT's decode
// step times every matrix product; the planner then balances those times (its
// stages' compute seconds sum to them), and the measured plan still splits the model
// into stages that give the whole model's outputs.
func TestMeasureNodeCostsPlansOnThem(t *testing.T) {
	cfg := modelgen.GPTTiny
	// Wide enough that each matrix product takes far longer than the profiler's
	// few microseconds a node, which the node times give back.
	cfg.Layers, cfg.Dim, cfg.Heads, cfg.Vocab, cfg.Context, cfg.WithPast = 4, 256, 4, 2000, 64, true
	path := writeGenerated(t, cfg, t.TempDir())
	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := AnalyzeWith(m, AnalyzeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	inputs, err := g.DecodeInputs(20, VerifySeed)
	if err != nil {
		t.Fatal(err)
	}
	be := ortBackend(t)
	costs, err := MeasureNodeCosts(context.Background(), be.(accel.NodeProfiler), g, inputs, accel.SessionOptions{IntraOpThreads: 1}, 2, 5, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	secs := costs.Seconds
	if len(secs) != len(g.Nodes) {
		t.Fatalf("%d node times for %d nodes", len(secs), len(g.Nodes))
	}
	var total float64
	for i, s := range secs {
		if op := g.Nodes[i].OpType; (op == "MatMul" || op == "Gemm") && !(s > 0) {
			t.Errorf("node %d (%s %q) has no time", i, op, g.Nodes[i].Name)
		}
		total += s
	}
	if total < costs.Run*(1-1e-9) || total > math.Max(costs.Run, costs.Kernels)*(1+1e-9) {
		t.Errorf("node times sum to %g, want a plain run's %g (kernels %g)", total, costs.Run, costs.Kernels)
	}
	const speed = 5e9
	if err := g.SetMeasuredCosts(secs, speed); err != nil {
		t.Fatal(err)
	}
	if !g.Measured() {
		t.Fatal("the graph does not say it plans on measured costs")
	}
	plan, err := Plan(g, UniformDevices(2, 1<<40, speed), PlanOptions{Stages: 2})
	if err != nil {
		t.Fatal(err)
	}
	var planned float64
	for _, s := range plan.Stages {
		planned += s.ComputeSeconds
	}
	if math.Abs(planned-total) > 1e-9*total {
		t.Fatalf("the stages' compute seconds sum to %g, the measured nodes to %g", planned, total)
	}
	dir := t.TempDir()
	man, err := Extract(m, g, plan, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(context.Background(), be, path, man, dir, inputs); err != nil {
		t.Fatalf("the measured plan's stages: %v", err)
	}
	if err := g.SetMeasuredCosts(nil, 0); err != nil || g.Measured() {
		t.Fatalf("nil costs do not go back to FLOPs: %v", err)
	}
}

func TestSetMeasuredCostsRefusesBadTimes(t *testing.T) {
	g := &Graph{Nodes: make([]Node, 3)}
	for _, c := range []struct {
		name  string
		secs  []float64
		speed float64
	}{
		{"too few", []float64{1, 2}, 1},
		{"negative", []float64{1, -2, 3}, 1},
		{"NaN", []float64{1, math.NaN(), 3}, 1},
		{"infinite", []float64{1, math.Inf(1), 3}, 1},
		{"all zero", []float64{0, 0, 0}, 1},
		{"zero speed", []float64{1, 2, 3}, 0},
		{"NaN speed", []float64{1, 2, 3}, math.NaN()},
	} {
		if err := g.SetMeasuredCosts(c.secs, c.speed); !errors.Is(err, ErrNotMeasured) {
			t.Errorf("%s: %v, want ErrNotMeasured", c.name, err)
		}
		if g.Measured() {
			t.Errorf("%s: refused costs were kept", c.name)
		}
	}
}

// TestDecodeInputsBindThePast: the past length goes to the state inputs' own dims
// (and into a dim named as a sum with it, Optimum's attention mask), never to a dim a
// non-state input shares (the batch).
func TestDecodeInputsBindThePast(t *testing.T) {
	cfg := modelgen.GPTTiny
	cfg.WithPast = true
	m, err := Load(writeGenerated(t, cfg, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	g, err := AnalyzeWith(m, AnalyzeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	in, err := g.DecodeInputs(9, 1)
	if err != nil {
		t.Fatal(err)
	}
	hd := int64(cfg.Dim / cfg.Heads)
	for _, x := range in {
		want := []int64{1, 1}
		if strings.HasPrefix(x.Name, "past_key_values.") {
			want = []int64{1, int64(cfg.Heads), 9, hd}
		}
		if !slices.Equal(x.Shape, want) {
			t.Errorf("%s: shape %v, want %v", x.Name, x.Shape, want)
		}
	}
	if _, err := g.DecodeInputs(0, 1); !errors.Is(err, ErrInputShape) {
		t.Errorf("past 0: %v, want ErrInputShape", err)
	}

	// An Optimum-style mask: [batch, "past_sequence_length + 1"].
	dims := func(ds ...any) *onnxpb.TypeProto {
		sp := &onnxpb.TensorShapeProto{}
		for _, d := range ds {
			switch d := d.(type) {
			case string:
				sp.Dim = append(sp.Dim, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d}})
			case int:
				sp.Dim = append(sp.Dim, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: int64(d)}})
			}
		}
		return &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(1), Shape: sp}}}
	}
	vi := func(name string, tp *onnxpb.TypeProto) *onnxpb.ValueInfoProto {
		return &onnxpb.ValueInfoProto{Name: proto.String(name), Type: tp}
	}
	mp := &onnxpb.ModelProto{IrVersion: proto.Int64(8), OpsetImport: []*onnxpb.OperatorSetIdProto{{Version: proto.Int64(17)}},
		Graph: &onnxpb.GraphProto{Name: proto.String("optimum"),
			Node: []*onnxpb.NodeProto{
				{OpType: proto.String("Identity"), Input: []string{"past_key_values.0.key"}, Output: []string{"present.0.key"}},
				{OpType: proto.String("Identity"), Input: []string{"attention_mask"}, Output: []string{"mask_out"}},
			},
			Input: []*onnxpb.ValueInfoProto{
				vi("attention_mask", dims("batch_size", "past_sequence_length + 1")),
				vi("past_key_values.0.key", dims("batch_size", 2, "past_sequence_length", 4)),
			},
			Output: []*onnxpb.ValueInfoProto{vi("present.0.key", dims("batch_size", 2, "past_sequence_length + 1", 4)), vi("mask_out", dims("batch_size", "past_sequence_length + 1"))},
		}}
	og, err := AnalyzeWith(&Model{Proto: mp}, AnalyzeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	oin, err := og.DecodeInputs(5, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range oin {
		want := map[string][]int64{"attention_mask": {1, 6}, "past_key_values.0.key": {1, 2, 5, 4}}[x.Name]
		if !slices.Equal(x.Shape, want) {
			t.Errorf("optimum layout %s: shape %v, want %v", x.Name, x.Shape, want)
		}
	}

	// A batch dim the KV input alone names symbolically (the other inputs fix it at
	// 1) is not the past: the present output keeps it.
	fixed := proto.Clone(mp).(*onnxpb.ModelProto)
	fixed.Graph.Input[0] = vi("attention_mask", dims(1, "past_sequence_length + 1"))
	fixed.Graph.Output[1] = vi("mask_out", dims(1, "past_sequence_length + 1"))
	fg, err := AnalyzeWith(&Model{Proto: fixed}, AnalyzeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fs, err := fg.DecodeShapes(5)
	if err != nil {
		t.Fatal(err)
	}
	if got := fs["past_key_values.0.key"]; !slices.Equal(got, []int64{1, 2, 5, 4}) {
		t.Errorf("KV with its own batch dim: shape %v, want [1 2 5 4]", got)
	}

	// Newer exports name the mask's length as a sum of the past and the new tokens.
	mp.Graph.Input[0] = vi("attention_mask", dims("batch_size", "past_sequence_length + sequence_length"))
	mp.Graph.Output[1] = vi("mask_out", dims("batch_size", "past_sequence_length + sequence_length"))
	mp.Graph.Input = append(mp.Graph.Input, vi("input_ids", dims("batch_size", "sequence_length")))
	mp.Graph.Node = append(mp.Graph.Node, &onnxpb.NodeProto{OpType: proto.String("Identity"), Input: []string{"input_ids"}, Output: []string{"ids_out"}})
	mp.Graph.Output = append(mp.Graph.Output, vi("ids_out", dims("batch_size", "sequence_length")))
	if og, err = AnalyzeWith(&Model{Proto: mp}, AnalyzeOptions{InputShapes: map[string][]int64{"input_ids": {1, 3}}}); err != nil {
		t.Fatal(err)
	}
	if oin, err = og.DecodeInputs(5, 1); err != nil {
		t.Fatal(err)
	}
	for _, x := range oin {
		want := map[string][]int64{"attention_mask": {1, 8}, "past_key_values.0.key": {1, 2, 5, 4}, "input_ids": {1, 3}}[x.Name]
		if !slices.Equal(x.Shape, want) {
			t.Errorf("summed mask %s: shape %v, want %v", x.Name, x.Shape, want)
		}
	}
}
