package onnxconv

import (
	"bytes"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// TestTypedFields decodes each typed encoding and checks the little-endian bytes
// against values written out by hand.
func TestTypedFields(t *testing.T) {
	rows := []struct {
		name string
		p    *onnxpb.TensorProto
		want []byte
	}{
		{"float32", &onnxpb.TensorProto{DataType: proto.Int32(1), Dims: []int64{2}, FloatData: []float32{1, -2}}, []byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0}},
		{"float64", &onnxpb.TensorProto{DataType: proto.Int32(11), Dims: []int64{1}, DoubleData: []float64{1}}, []byte{0, 0, 0, 0, 0, 0, 0xf0, 0x3f}},
		{"int64", &onnxpb.TensorProto{DataType: proto.Int32(7), Dims: []int64{1}, Int64Data: []int64{-2}}, []byte{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		{"int32", &onnxpb.TensorProto{DataType: proto.Int32(6), Dims: []int64{1}, Int32Data: []int32{258}}, []byte{2, 1, 0, 0}},
		{"uint32", &onnxpb.TensorProto{DataType: proto.Int32(12), Dims: []int64{1}, Uint64Data: []uint64{0xfffffffe}}, []byte{0xfe, 0xff, 0xff, 0xff}},
		{"uint64", &onnxpb.TensorProto{DataType: proto.Int32(13), Dims: []int64{1}, Uint64Data: []uint64{1 << 63}}, []byte{0, 0, 0, 0, 0, 0, 0, 0x80}},
		{"float16 bits", &onnxpb.TensorProto{DataType: proto.Int32(10), Dims: []int64{1}, Int32Data: []int32{0x3c00}}, []byte{0x00, 0x3c}},
		{"bfloat16 bits", &onnxpb.TensorProto{DataType: proto.Int32(16), Dims: []int64{1}, Int32Data: []int32{0x3f80}}, []byte{0x80, 0x3f}},
		{"int16", &onnxpb.TensorProto{DataType: proto.Int32(5), Dims: []int64{1}, Int32Data: []int32{-1}}, []byte{0xff, 0xff}},
		{"int8", &onnxpb.TensorProto{DataType: proto.Int32(3), Dims: []int64{2}, Int32Data: []int32{-1, 5}}, []byte{0xff, 5}},
		{"bool", &onnxpb.TensorProto{DataType: proto.Int32(9), Dims: []int64{2}, Int32Data: []int32{1, 0}}, []byte{1, 0}},
		{"scalar raw", &onnxpb.TensorProto{DataType: proto.Int32(2), RawData: []byte{9}}, []byte{9}},
		{"zero-sized", &onnxpb.TensorProto{DataType: proto.Int32(1), Dims: []int64{0, 3}}, []byte{}},
	}
	for _, r := range rows {
		got, err := TensorProtoToTensor(r.p)
		if err != nil {
			t.Fatalf("%s: %v", r.name, err)
		}
		if !bytes.Equal(got.Data, r.want) {
			t.Fatalf("%s: data %v, want %v", r.name, got.Data, r.want)
		}
		if err := got.Validate(); err != nil {
			t.Fatalf("%s: %v", r.name, err)
		}
	}
}

func TestRoundTripAndErrors(t *testing.T) {
	in := tensor.Tensor{Name: "s", DType: tensor.String, Shape: []int64{2}, Strings: []string{"a", ""}}
	p, err := TensorToTensorProto(&in)
	if err != nil {
		t.Fatal(err)
	}
	back, err := TensorProtoToTensor(p)
	if err != nil || back.Name != "s" || len(back.Strings) != 2 || back.Strings[0] != "a" {
		t.Fatalf("strings round trip: %+v %v", back, err)
	}
	f := tensor.FromFloat32("f", []int64{1, 2}, []float32{1.5, -3})
	p, _ = TensorToTensorProto(&f)
	if back, err := TensorProtoToTensor(p); err != nil || !bytes.Equal(back.Data, f.Data) {
		t.Fatalf("float round trip: %v", err)
	}
	bad := []struct {
		name string
		p    *onnxpb.TensorProto
		is   error
	}{
		{"complex64", &onnxpb.TensorProto{DataType: proto.Int32(14), Dims: []int64{1}}, ErrUnsupported},
		{"short raw", &onnxpb.TensorProto{DataType: proto.Int32(1), Dims: []int64{2}, RawData: []byte{1, 2, 3}}, ErrMalformed},
		{"typed count", &onnxpb.TensorProto{DataType: proto.Int32(1), Dims: []int64{3}, FloatData: []float32{1}}, ErrMalformed},
		{"negative dim", &onnxpb.TensorProto{DataType: proto.Int32(1), Dims: []int64{-1}}, ErrMalformed},
		{"external", &onnxpb.TensorProto{DataType: proto.Int32(1), Dims: []int64{1}, DataLocation: onnxpb.TensorProto_EXTERNAL.Enum()}, ErrUnsupported},
	}
	for _, b := range bad {
		if _, err := TensorProtoToTensor(b.p); !errors.Is(err, b.is) {
			t.Fatalf("%s: got %v, want %v", b.name, err, b.is)
		}
	}
}
