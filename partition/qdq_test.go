package partition

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// A statically quantized graph (QuantizeLinear -> DequantizeLinear around each
// op, which ONNX Runtime fuses into integer kernels) may only be cut between a
// QuantizeLinear and its DequantizeLinear, where the int8 tensor crosses.
func TestQuantizedGraphCutsOnlyBetweenQuantizeAndDequantize(t *testing.T) {
	zero := &onnxpb.TensorProto{Name: proto.String("z"), DataType: proto.Int32(int32(tensor.Uint8)), RawData: []byte{128}}
	nodes := []*onnxpb.NodeProto{
		node("QuantizeLinear", []string{"x", "s", "z"}, []string{"xq"}),
		node("DequantizeLinear", []string{"xq", "s", "z"}, []string{"xd"}),
		node("MatMul", []string{"xd", "w"}, []string{"m"}),
		node("QuantizeLinear", []string{"m", "s", "z"}, []string{"mq"}),
		node("DequantizeLinear", []string{"mq", "s", "z"}, []string{"md"}),
		node("Relu", []string{"md"}, []string{"y"}),
	}
	mp := model(nodes, []*onnxpb.TensorProto{floatInit("w", []int64{8, 8}, 0.1), floatInit("s", nil, 0.05), zero},
		[]*onnxpb.ValueInfoProto{vi("x", tensor.Float32, 1, 8)}, []*onnxpb.ValueInfoProto{vi("y", tensor.Float32, 1, 8)})
	m, err := Parse(marshal(t, mp), "")
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := g.ValidCuts(), []int{1, 4}; !slices.Equal(got, want) {
		for _, c := range g.Cuts {
			t.Logf("cut %d: crossing %v valid %v (%s)", c.Position, c.Crossing, c.Valid, c.Reason)
		}
		t.Fatalf("valid cuts %v, want %v (after each QuantizeLinear)", got, want)
	}
}
