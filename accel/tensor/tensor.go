package tensor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
)

// Errors returned by validation and decoding. Callers match them with errors.Is; the
// API maps each to its own status and code.
var (
	ErrUnknownDType = errors.New("unknown datatype")
	ErrBadShape     = errors.New("invalid shape")
	ErrDataLength   = errors.New("data length does not match shape")
	ErrTooLarge     = errors.New("tensor too large")
	ErrMalformed    = errors.New("malformed tensor frame")
)

// MaxRank bounds the number of dimensions; ONNX Runtime itself has no use for more.
const MaxRank = 16

// Tensor is a named n-dimensional array. Data holds the raw little-endian elements
// (len == NumElements*DType.Size()); String tensors use Strings instead.
type Tensor struct {
	Name    string
	DType   DType
	Shape   []int64
	Data    []byte
	Strings []string
}

// NumElements returns the product of dims, rejecting negative dims, ranks above
// MaxRank and products that overflow int64.
func NumElements(shape []int64) (int64, error) {
	if len(shape) > MaxRank {
		return 0, fmt.Errorf("%w: rank %d exceeds %d", ErrBadShape, len(shape), MaxRank)
	}
	n := int64(1)
	for i, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("%w: dim %d is negative (%d)", ErrBadShape, i, d)
		}
		hi, lo := bits.Mul64(uint64(n), uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return 0, fmt.Errorf("%w: element count of %v overflows", ErrTooLarge, shape)
		}
		n = int64(lo)
	}
	return n, nil
}

// ByteSize returns the number of data bytes a tensor of this dtype and shape holds,
// with the same checks as NumElements.
func ByteSize(d DType, shape []int64) (int64, error) {
	if !d.Valid() {
		return 0, fmt.Errorf("%w: %d", ErrUnknownDType, uint8(d))
	}
	n, err := NumElements(shape)
	if err != nil {
		return 0, err
	}
	size := int64(d.Size())
	if size > 0 && n > math.MaxInt64/size {
		return 0, fmt.Errorf("%w: %v of %s overflows", ErrTooLarge, shape, d)
	}
	return n * size, nil
}

// Validate checks that the dtype is known, the shape is sane and the data length is
// exactly what the shape and dtype imply.
func (t *Tensor) Validate() error {
	n, err := NumElements(t.Shape)
	if err != nil {
		return fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	if !t.DType.Valid() {
		return fmt.Errorf("tensor %q: %w: %d", t.Name, ErrUnknownDType, uint8(t.DType))
	}
	if t.DType == String {
		if int64(len(t.Strings)) != n {
			return fmt.Errorf("tensor %q: %w: shape %v needs %d strings, got %d", t.Name, ErrDataLength, t.Shape, n, len(t.Strings))
		}
		return nil
	}
	want := n * int64(t.DType.Size())
	if int64(len(t.Data)) != want {
		return fmt.Errorf("tensor %q: %w: shape %v of %s needs %d bytes, got %d", t.Name, ErrDataLength, t.Shape, t.DType, want, len(t.Data))
	}
	return nil
}

// NumElements is the element count of t's shape (0 if the shape is invalid).
func (t *Tensor) NumElements() int64 {
	n, _ := NumElements(t.Shape)
	return n
}

// ByteLen is the size of the tensor's payload on the wire.
func (t *Tensor) ByteLen() int64 {
	if t.DType == String {
		var n int64
		for _, s := range t.Strings {
			n += 4 + int64(len(s))
		}
		return n
	}
	return int64(len(t.Data))
}

// FromFloat32 builds a Float32 tensor, copying vals.
func FromFloat32(name string, shape []int64, vals []float32) Tensor {
	b := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return Tensor{Name: name, DType: Float32, Shape: append([]int64(nil), shape...), Data: b}
}

// FromInt64 builds an Int64 tensor, copying vals.
func FromInt64(name string, shape []int64, vals []int64) Tensor {
	b := make([]byte, 8*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(v))
	}
	return Tensor{Name: name, DType: Int64, Shape: append([]int64(nil), shape...), Data: b}
}

// Float32s decodes a Float32 tensor's elements.
func (t *Tensor) Float32s() ([]float32, error) {
	if t.DType != Float32 {
		return nil, fmt.Errorf("tensor %q is %s, not float32", t.Name, t.DType)
	}
	out := make([]float32, len(t.Data)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return out, nil
}

// Int64s decodes an Int64 tensor's elements.
func (t *Tensor) Int64s() ([]int64, error) {
	if t.DType != Int64 {
		return nil, fmt.Errorf("tensor %q is %s, not int64", t.Name, t.DType)
	}
	out := make([]int64, len(t.Data)/8)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(t.Data[8*i:]))
	}
	return out, nil
}

// Float64s converts any numeric tensor's elements to float64, for comparisons in tests
// and tools. Float16 and BFloat16 are widened exactly.
func (t *Tensor) Float64s() ([]float64, error) {
	n := int(t.NumElements())
	out := make([]float64, n)
	d := t.Data
	for i := 0; i < n; i++ {
		switch t.DType {
		case Float32:
			out[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(d[4*i:])))
		case Float64:
			out[i] = math.Float64frombits(binary.LittleEndian.Uint64(d[8*i:]))
		case Float16:
			out[i] = float64(HalfToFloat32(binary.LittleEndian.Uint16(d[2*i:])))
		case BFloat16:
			out[i] = float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(d[2*i:])) << 16))
		case Int8:
			out[i] = float64(int8(d[i]))
		case Uint8, Bool:
			out[i] = float64(d[i])
		case Int16:
			out[i] = float64(int16(binary.LittleEndian.Uint16(d[2*i:])))
		case Uint16:
			out[i] = float64(binary.LittleEndian.Uint16(d[2*i:]))
		case Int32:
			out[i] = float64(int32(binary.LittleEndian.Uint32(d[4*i:])))
		case Uint32:
			out[i] = float64(binary.LittleEndian.Uint32(d[4*i:]))
		case Int64:
			out[i] = float64(int64(binary.LittleEndian.Uint64(d[8*i:])))
		case Uint64:
			out[i] = float64(binary.LittleEndian.Uint64(d[8*i:]))
		default:
			return nil, fmt.Errorf("tensor %q: %s is not numeric", t.Name, t.DType)
		}
	}
	return out, nil
}

// HalfToFloat32 widens an IEEE 754 binary16 value.
func HalfToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0 && mant == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: normalise
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		mant &= 0x3ff
		return math.Float32frombits(sign | e<<23 | mant<<13)
	case exp == 0x1f:
		return math.Float32frombits(sign | 0xff<<23 | mant<<13)
	default:
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	}
}
