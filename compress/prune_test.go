package compress

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"

	"github.com/layermesh/layermesh/partition/modelgen"
)

func TestPruningShrinksResNetGPTAndStaysValid(t *testing.T) {
	resnet, err := modelgen.ResNet(modelgen.ResNetConfig{Width: 16, Blocks: []int{1, 1}, ImageSize: 16, Classes: 10, Stem: 1, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	models := []struct {
		name   string
		path   string
		shapes map[string][]int64
	}{
		{"resnet", writeModel(t, resnet, "resnet.onnx"), map[string][]int64{modelgen.ResNetInput: {2, 3, 16, 16}}},
		{"gpt", gptModel(t, smallGPT), map[string][]int64{modelgen.GPTInput: {2, 8}}},
	}
	for _, m := range models {
		for _, ratio := range []float64{0.3, 0.5, 0.95} {
			dst := filepath.Join(t.TempDir(), "p.onnx")
			rep, err := Compress(t.Context(), m.path, dst, Options{Prune: ratio, Backend: backend(t), Verify: 2, InputShapes: m.shapes})
			if err != nil {
				t.Fatalf("%s %.2f: %v", m.name, ratio, err)
			}
			removed := 0
			for _, g := range rep.Pruned {
				removed += g.Removed
			}
			t.Logf("%s prune %.2f: %d groups, %d channels removed, size %.3fx, output cosine %.4f; kept %d layers",
				m.name, ratio, len(rep.Pruned), removed, rep.Ratio(), rep.Verify.MinCosine, len(rep.Kept))
			if removed == 0 || rep.Ratio() >= 1 {
				t.Errorf("%s %.2f: nothing pruned: %+v", m.name, ratio, rep.Pruned)
			}
			checkSplit(t, dst, m.shapes, nil, 2)
		}
	}
}

// constantChannelModel is x [1, 2, 4, 4] -> Conv 1x1 (3 filters; the third has
// zero weights and bias 0.7, so its output is the constant 0.7) -> Relu ->
// Conv 1x1 (2 filters, reading all 3 channels) -> y.
func constantChannelModel() *onnxpb.ModelProto {
	w1 := []float32{0.5, -0.3, 0.2, 0.8, 0, 0}
	b1 := []float32{0.1, -0.2, 0.7}
	w2 := []float32{0.4, -0.6, 1.5, -0.2, 0.3, -2}
	b2 := []float32{0.05, -0.05}
	vi := func(name string, dims ...int64) *onnxpb.ValueInfoProto {
		shape := &onnxpb.TensorShapeProto{}
		for _, d := range dims {
			shape.Dim = append(shape.Dim, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d}})
		}
		return &onnxpb.ValueInfoProto{Name: proto.String(name), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{
			TensorType: &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(int32(onnxpb.TensorProto_FLOAT)), Shape: shape}}}}
	}
	return &onnxpb.ModelProto{
		IrVersion:   proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}},
		Graph: &onnxpb.GraphProto{
			Name: proto.String("constant-channel"),
			Node: []*onnxpb.NodeProto{
				node("Conv", "", "conv1", []string{"x", "w1", "b1"}, []string{"c1"}),
				node("Relu", "", "relu", []string{"c1"}, []string{"r"}),
				node("Conv", "", "conv2", []string{"r", "w2", "b2"}, []string{"y"}),
			},
			Initializer: []*onnxpb.TensorProto{
				floatInit("w1", []int64{3, 2, 1, 1}, w1), floatInit("b1", []int64{3}, b1),
				floatInit("w2", []int64{2, 3, 1, 1}, w2), floatInit("b2", []int64{2}, b2),
			},
			Input:  []*onnxpb.ValueInfoProto{vi("x", 1, 2, 4, 4)},
			Output: []*onnxpb.ValueInfoProto{vi("y", 1, 2, 4, 4)},
		},
	}
}

// Pruning the least-L1 filter (a constant channel) with a calibration set
// moves its mean into the next layer's bias: the output does not change.
// Without one the channel just disappears, and the output moves by its share.
func TestPruningCompensatesRemovedChannelsInTheNextBias(t *testing.T) {
	src := writeModel(t, constantChannelModel(), "m.onnx")
	r := rand.New(rand.NewPCG(4, 4))
	var calib [][]tensor.Tensor
	for range 3 {
		v := make([]float32, 32)
		for i := range v {
			v[i] = r.Float32()*2 - 1
		}
		calib = append(calib, []tensor.Tensor{float32Tensor("x", []int64{1, 2, 4, 4}, v)})
	}
	for _, tc := range []struct {
		calib     [][]tensor.Tensor
		wantExact bool
	}{{calib, true}, {nil, false}} {
		rep, err := Compress(t.Context(), src, filepath.Join(t.TempDir(), "p.onnx"), Options{Prune: 0.34, Calibration: tc.calib,
			Backend: backend(t), Verify: 3, InputShapes: map[string][]int64{"x": {1, 2, 4, 4}}})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Pruned) != 1 || rep.Pruned[0].Removed != 1 || rep.Pruned[0].Layers[0] != "conv1" {
			t.Fatalf("pruned %+v, want one filter of conv1", rep.Pruned)
		}
		if exact := rep.Verify.MaxAbs < 1e-5; exact != tc.wantExact {
			t.Errorf("calibration %v: max error %g after pruning the constant channel", tc.calib != nil, rep.Verify.MaxAbs)
		}
	}
}
