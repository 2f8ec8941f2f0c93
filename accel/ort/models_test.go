package ort

import (
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// Tiny ONNX models for the tests, built here with the generated protobuf types so
// that every expected value can be computed by hand.

// valueInfo describes a tensor; a dim of -1 becomes a symbolic dim "N", and a nil
// shape means rank 0.
func valueInfo(name string, d tensor.DType, shape ...int64) *onnxpb.ValueInfoProto {
	dims := make([]*onnxpb.TensorShapeProto_Dimension, len(shape))
	for i, s := range shape {
		if s < 0 {
			dims[i] = &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: "N"}}
		} else {
			dims[i] = &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: s}}
		}
	}
	return &onnxpb.ValueInfoProto{
		Name: proto.String(name),
		Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{
			ElemType: proto.Int32(int32(d)),
			Shape:    &onnxpb.TensorShapeProto{Dim: dims},
		}}},
	}
}

func node(op string, in, out []string) *onnxpb.NodeProto {
	return &onnxpb.NodeProto{OpType: proto.String(op), Input: in, Output: out}
}

// writeModel writes a one-graph model (opset 17) to a temp file and returns its path.
func writeModel(t testing.TB, g *onnxpb.GraphProto) string {
	t.Helper()
	g.Name = proto.String("test")
	m := &onnxpb.ModelProto{
		IrVersion:   proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}},
		Graph:       g,
	}
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// addModel: z = x + y, float32 [2 3].
func addModel(t testing.TB) string {
	return writeModel(t, &onnxpb.GraphProto{
		Node:   []*onnxpb.NodeProto{node("Add", []string{"x", "y"}, []string{"z"})},
		Input:  []*onnxpb.ValueInfoProto{valueInfo("x", tensor.Float32, 2, 3), valueInfo("y", tensor.Float32, 2, 3)},
		Output: []*onnxpb.ValueInfoProto{valueInfo("z", tensor.Float32, 2, 3)},
	})
}

// matMulModel: c = a [N 2] x b [2 2], plus d = Neg(c).
func matMulModel(t testing.TB) string {
	return writeModel(t, &onnxpb.GraphProto{
		Node: []*onnxpb.NodeProto{
			node("MatMul", []string{"a", "b"}, []string{"c"}),
			node("Neg", []string{"c"}, []string{"d"}),
		},
		Input:  []*onnxpb.ValueInfoProto{valueInfo("a", tensor.Float32, -1, 2), valueInfo("b", tensor.Float32, 2, 2)},
		Output: []*onnxpb.ValueInfoProto{valueInfo("c", tensor.Float32, -1, 2), valueInfo("d", tensor.Float32, -1, 2)},
	})
}

// identityModel: y = Identity(x) for dtype d and the given model shape.
func identityModel(t testing.TB, d tensor.DType, shape ...int64) string {
	return writeModel(t, &onnxpb.GraphProto{
		Node:   []*onnxpb.NodeProto{node("Identity", []string{"x"}, []string{"y"})},
		Input:  []*onnxpb.ValueInfoProto{valueInfo("x", d, shape...)},
		Output: []*onnxpb.ValueInfoProto{valueInfo("y", d, shape...)},
	})
}

// sequenceModel: s = SequenceConstruct(x), plus a tensor output y = Identity(x).
func sequenceModel(t testing.TB) string {
	seq := &onnxpb.ValueInfoProto{
		Name: proto.String("s"),
		Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_SequenceType{SequenceType: &onnxpb.TypeProto_Sequence{
			ElemType: valueInfo("", tensor.Float32, 2).Type,
		}}},
	}
	return writeModel(t, &onnxpb.GraphProto{
		Node: []*onnxpb.NodeProto{
			node("SequenceConstruct", []string{"x"}, []string{"s"}),
			node("Identity", []string{"x"}, []string{"y"}),
		},
		Input:  []*onnxpb.ValueInfoProto{valueInfo("x", tensor.Float32, 2)},
		Output: []*onnxpb.ValueInfoProto{seq, valueInfo("y", tensor.Float32, 2)},
	})
}

// slowModel chains n MatMuls of x [dim dim] with a constant weight, long enough to
// cancel mid-run.
func slowModel(t testing.TB, dim int64, n int) string {
	w := make([]float32, dim*dim)
	for i := range w {
		w[i] = 1 / float32(dim)
	}
	wt := tensor.FromFloat32("w", []int64{dim, dim}, w)
	g := &onnxpb.GraphProto{
		Initializer: []*onnxpb.TensorProto{{
			Name: proto.String("w"), DataType: proto.Int32(int32(tensor.Float32)), Dims: wt.Shape, RawData: wt.Data,
		}},
		Input: []*onnxpb.ValueInfoProto{valueInfo("x", tensor.Float32, dim, dim)},
	}
	prev := "x"
	for i := range n {
		out := "h" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		g.Node = append(g.Node, node("MatMul", []string{prev, "w"}, []string{out}))
		prev = out
	}
	g.Output = []*onnxpb.ValueInfoProto{valueInfo(prev, tensor.Float32, dim, dim)}
	return writeModel(t, g)
}
