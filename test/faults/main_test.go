package faults

import (
	"os"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// requireFaults skips a scenario, saying so, unless the fault suite was asked for: the
// scenarios take minutes and start many processes, so `make test` leaves them to
// `make test-faults`.
func requireFaults(t *testing.T) {
	t.Helper()
	if os.Getenv("LAYERMESH_FAULTS") != "1" {
		t.Skip("NOT RUN: fault scenarios run with LAYERMESH_FAULTS=1 (make test-faults)")
	}
}

// addBias is what the add model adds to its input: y = x + addBias.
var addBias = []float32{1, 2, 3}

// addModel returns an ONNX model y = x + [1,2,3] for x of shape [N,3] FP32: small
// enough to load in milliseconds, with a fixed dim, a dynamic dim and one dtype, so
// that every kind of input error has something to disagree with.
func addModel(t testing.TB) []byte {
	t.Helper()
	return addModelWithBias(t, addBias)
}

// addModelWithBias is addModel with another bias, so that each uploaded model answers
// differently and a mix-up of stored models shows in its output.
func addModelWithBias(t testing.TB, b []float32) []byte {
	t.Helper()
	bias := tensor.FromFloat32("bias", []int64{3}, b)
	dim := func(d int64) *onnxpb.TensorShapeProto_Dimension {
		if d < 0 {
			return &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: "N"}}
		}
		return &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d}}
	}
	vi := func(name string) *onnxpb.ValueInfoProto {
		return &onnxpb.ValueInfoProto{
			Name: proto.String(name),
			Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{
				ElemType: proto.Int32(int32(tensor.Float32)),
				Shape:    &onnxpb.TensorShapeProto{Dim: []*onnxpb.TensorShapeProto_Dimension{dim(-1), dim(3)}},
			}}},
		}
	}
	m := &onnxpb.ModelProto{
		IrVersion:   proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}},
		Graph: &onnxpb.GraphProto{
			Name:        proto.String("add"),
			Node:        []*onnxpb.NodeProto{{OpType: proto.String("Add"), Input: []string{"x", "bias"}, Output: []string{"y"}}},
			Initializer: []*onnxpb.TensorProto{{Name: proto.String("bias"), DataType: proto.Int32(int32(tensor.Float32)), Dims: []int64{3}, RawData: bias.Data}},
			Input:       []*onnxpb.ValueInfoProto{vi("x")},
			Output:      []*onnxpb.ValueInfoProto{vi("y")},
		},
	}
	raw, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
