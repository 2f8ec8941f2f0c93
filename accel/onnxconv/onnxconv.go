// Package onnxconv converts between ONNX TensorProto messages and tensor.Tensor. It
// reads every inline encoding ONNX writers use (raw_data and the typed repeated fields,
// where float16, bfloat16, bool and the small integer types travel in int32_data), so
// the conformance suite, partition (initializers as tensors) and tools share one
// reader. Tensors stored as external data are refused: resolving them needs the model's
// folder, which the caller owns.
package onnxconv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// Errors callers match with errors.Is.
var (
	// ErrUnsupported is a TensorProto this package cannot convert: an element type
	// outside tensor.DType, a segmented tensor, or external data.
	ErrUnsupported = errors.New("unsupported tensor proto")
	// ErrMalformed is a TensorProto whose data does not fit its dims.
	ErrMalformed = errors.New("malformed tensor proto")
)

// TensorProtoToTensor decodes p into a tensor with raw little-endian data.
func TensorProtoToTensor(p *onnxpb.TensorProto) (tensor.Tensor, error) {
	t := tensor.Tensor{Name: p.GetName(), DType: tensor.DType(p.GetDataType()), Shape: append([]int64{}, p.GetDims()...)}
	if !t.DType.Valid() {
		return tensor.Tensor{}, fmt.Errorf("%w: tensor %q has element type %d", ErrUnsupported, t.Name, p.GetDataType())
	}
	if p.GetDataLocation() == onnxpb.TensorProto_EXTERNAL || len(p.GetExternalData()) > 0 {
		return tensor.Tensor{}, fmt.Errorf("%w: tensor %q uses external data", ErrUnsupported, t.Name)
	}
	if p.Segment != nil {
		return tensor.Tensor{}, fmt.Errorf("%w: tensor %q is segmented", ErrUnsupported, t.Name)
	}
	n, err := tensor.NumElements(t.Shape)
	if err != nil {
		return tensor.Tensor{}, fmt.Errorf("%w: tensor %q: %w", ErrMalformed, t.Name, err)
	}
	if t.DType == tensor.String {
		if int64(len(p.GetStringData())) != n {
			return tensor.Tensor{}, fmt.Errorf("%w: tensor %q: %d strings for shape %v", ErrMalformed, t.Name, len(p.GetStringData()), t.Shape)
		}
		t.Strings = make([]string, n)
		for i, s := range p.GetStringData() {
			t.Strings[i] = string(s)
		}
		return t, nil
	}
	size := int64(t.DType.Size())
	if p.RawData != nil {
		if int64(len(p.RawData)) != n*size {
			return tensor.Tensor{}, fmt.Errorf("%w: tensor %q: raw_data has %d bytes, shape %v of %s needs %d", ErrMalformed, t.Name, len(p.RawData), t.Shape, t.DType, n*size)
		}
		t.Data = append([]byte{}, p.RawData...)
		return t, nil
	}
	count, put := typedField(p, t.DType)
	if count != n {
		return tensor.Tensor{}, fmt.Errorf("%w: tensor %q: %d typed values, shape %v needs %d", ErrMalformed, t.Name, count, t.Shape, n)
	}
	t.Data = make([]byte, n*size)
	for i := int64(0); i < n; i++ {
		put(t.Data[i*size:], i)
	}
	return t, nil
}

// typedField returns how many values the typed field for d holds and a function that
// writes value i in little-endian form.
func typedField(p *onnxpb.TensorProto, d tensor.DType) (int64, func(dst []byte, i int64)) {
	le := binary.LittleEndian
	switch d {
	case tensor.Float32:
		v := p.GetFloatData()
		return int64(len(v)), func(b []byte, i int64) { le.PutUint32(b, math.Float32bits(v[i])) }
	case tensor.Float64:
		v := p.GetDoubleData()
		return int64(len(v)), func(b []byte, i int64) { le.PutUint64(b, math.Float64bits(v[i])) }
	case tensor.Int64:
		v := p.GetInt64Data()
		return int64(len(v)), func(b []byte, i int64) { le.PutUint64(b, uint64(v[i])) }
	case tensor.Uint64, tensor.Uint32:
		v := p.GetUint64Data()
		if d == tensor.Uint32 {
			return int64(len(v)), func(b []byte, i int64) { le.PutUint32(b, uint32(v[i])) }
		}
		return int64(len(v)), func(b []byte, i int64) { le.PutUint64(b, v[i]) }
	case tensor.Int32:
		v := p.GetInt32Data()
		return int64(len(v)), func(b []byte, i int64) { le.PutUint32(b, uint32(v[i])) }
	case tensor.Int16, tensor.Uint16, tensor.Float16, tensor.BFloat16:
		// float16 and bfloat16 travel as their bit patterns in int32_data.
		v := p.GetInt32Data()
		return int64(len(v)), func(b []byte, i int64) { le.PutUint16(b, uint16(v[i])) }
	default: // Int8, Uint8, Bool
		v := p.GetInt32Data()
		return int64(len(v)), func(b []byte, i int64) { b[0] = byte(v[i]) }
	}
}

// TensorToTensorProto encodes t as a TensorProto with raw_data (string_data for
// strings), the form ONNX Runtime and onnx.numpy_helper read fastest.
func TensorToTensorProto(t *tensor.Tensor) (*onnxpb.TensorProto, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	p := &onnxpb.TensorProto{
		Name:     proto.String(t.Name),
		DataType: proto.Int32(int32(t.DType)),
		Dims:     append([]int64{}, t.Shape...),
	}
	if t.DType == tensor.String {
		p.StringData = make([][]byte, len(t.Strings))
		for i, s := range t.Strings {
			p.StringData[i] = []byte(s)
		}
		return p, nil
	}
	p.RawData = append([]byte{}, t.Data...)
	return p, nil
}
