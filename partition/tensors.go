package partition

import (
	"encoding/binary"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// maxFoldElems bounds the integer tensors whose values shape inference tracks: shape
// arithmetic (Shape -> Gather -> Concat -> Reshape) uses a handful of int64s, and
// bigger tensors are data, not shapes.
const maxFoldElems = 64

// tensorDataBytes returns the bytes a TensorProto's elements occupy in memory (the same
// for raw_data, typed fields or external data). known is false for strings and unknown
// dtypes.
func tensorDataBytes(t *onnxpb.TensorProto) (int64, bool) {
	d := tensor.DType(t.GetDataType())
	if !d.Valid() || d.Size() == 0 {
		return int64(len(t.GetRawData())), false
	}
	n, err := tensor.ByteSize(d, t.GetDims())
	if err != nil {
		return 0, false
	}
	return n, true
}

// tensorInts returns the values of a small integer TensorProto (int64, int32, int8,
// uint8, bool...), or ok=false when it is not a small inline integer tensor.
func tensorInts(t *onnxpb.TensorProto) ([]int64, bool) {
	if isExternal(t) {
		return nil, false
	}
	n := int64(1)
	for _, d := range t.GetDims() {
		if d < 0 {
			return nil, false
		}
		n *= d
		if n > maxFoldElems {
			return nil, false
		}
	}
	d := tensor.DType(t.GetDataType())
	raw := t.GetRawData()
	out := make([]int64, 0, n)
	switch d {
	case tensor.Int64:
		if len(t.GetInt64Data()) > 0 {
			return append(out, t.GetInt64Data()...), int64(len(t.GetInt64Data())) == n
		}
		if int64(len(raw)) != 8*n {
			return nil, false
		}
		for i := int64(0); i < n; i++ {
			out = append(out, int64(binary.LittleEndian.Uint64(raw[8*i:])))
		}
	case tensor.Int32:
		if len(t.GetInt32Data()) > 0 {
			for _, v := range t.GetInt32Data() {
				out = append(out, int64(v))
			}
			return out, int64(len(out)) == n
		}
		if int64(len(raw)) != 4*n {
			return nil, false
		}
		for i := int64(0); i < n; i++ {
			out = append(out, int64(int32(binary.LittleEndian.Uint32(raw[4*i:]))))
		}
	default:
		return nil, false
	}
	return out, true
}
