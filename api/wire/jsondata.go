package wire

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/layermesh/layermesh/accel/tensor"
)

// fillJSON parses a tensor's JSON data (flat or nested arrays, or a bare scalar) into
// t, which must end up with exactly n elements. data has already been checked to be
// well-formed JSON by encoding/json, so the scanner here only has to find the scalars;
// it never builds an []any, which would cost tens of bytes per element.
func fillJSON(t *tensor.Tensor, data []byte, n int64) error {
	// Every scalar takes at least one byte of data, so data's length bounds how much
	// a lying shape can make us reserve.
	hint := n
	if limit := int64(len(data)/2 + 1); hint > limit {
		hint = limit
	}
	size := t.DType.Size()
	if t.DType == tensor.String {
		t.Strings = make([]string, 0, hint)
	} else {
		t.Data = make([]byte, 0, hint*int64(size))
	}
	var count int64
	for i := 0; i < len(data); {
		c := data[i]
		switch c {
		case '[', ']', ',', ' ', '\t', '\n', '\r':
			i++
			continue
		}
		end, err := scalarEnd(data, i)
		if err != nil {
			return fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		if count == n {
			return fmt.Errorf("tensor %q: %w: shape %v needs %d elements, data has more", t.Name, tensor.ErrDataLength, t.Shape, n)
		}
		if err := appendScalar(t, data[i:end]); err != nil {
			return fmt.Errorf("tensor %q: element %d: %w", t.Name, count, err)
		}
		count++
		i = end
	}
	if count != n {
		return fmt.Errorf("tensor %q: %w: shape %v needs %d elements, data has %d", t.Name, tensor.ErrDataLength, t.Shape, n, count)
	}
	return nil
}

// scalarEnd returns the index just past the scalar token starting at data[i].
func scalarEnd(data []byte, i int) (int, error) {
	if data[i] == '"' {
		for j := i + 1; j < len(data); j++ {
			switch data[j] {
			case '\\':
				j++
			case '"':
				return j + 1, nil
			}
		}
		return 0, fmt.Errorf("%w: unterminated string", ErrBadJSON)
	}
	if data[i] == '{' {
		return 0, fmt.Errorf("%w: object inside tensor data", ErrBadData)
	}
	j := i
	for j < len(data) {
		switch data[j] {
		case ',', ']', ' ', '\t', '\n', '\r':
			return j, nil
		}
		j++
	}
	return j, nil
}

// appendScalar converts one JSON scalar token to t's element type and appends it.
func appendScalar(t *tensor.Tensor, tok []byte) error {
	if t.DType == tensor.String {
		if tok[0] != '"' {
			return fmt.Errorf("%w: BYTES element %s is not a string", ErrBadData, tok)
		}
		var s string
		if err := json.Unmarshal(tok, &s); err != nil {
			return fmt.Errorf("%w: %w", ErrBadData, err)
		}
		t.Strings = append(t.Strings, s)
		return nil
	}
	if t.DType == tensor.Bool {
		switch string(tok) {
		case "true":
			t.Data = append(t.Data, 1)
		case "false":
			t.Data = append(t.Data, 0)
		default:
			return fmt.Errorf("%w: BOOL element %s is not true or false", ErrBadData, tok)
		}
		return nil
	}
	switch t.DType {
	case tensor.Float32, tensor.Float64, tensor.Float16, tensor.BFloat16:
		f, err := parseFloat(tok)
		if err != nil {
			return err
		}
		switch t.DType {
		case tensor.Float32:
			t.Data = binary.LittleEndian.AppendUint32(t.Data, math.Float32bits(float32(f)))
		case tensor.Float64:
			t.Data = binary.LittleEndian.AppendUint64(t.Data, math.Float64bits(f))
		case tensor.Float16:
			t.Data = binary.LittleEndian.AppendUint16(t.Data, Float32ToHalf(float32(f)))
		case tensor.BFloat16:
			t.Data = binary.LittleEndian.AppendUint16(t.Data, Float32ToBFloat16(float32(f)))
		}
		return nil
	case tensor.Int8, tensor.Int16, tensor.Int32, tensor.Int64:
		bitSize := 8 * t.DType.Size()
		v, err := strconv.ParseInt(string(tok), 10, bitSize)
		if err != nil {
			return fmt.Errorf("%w: %s is not an %s", ErrBadData, tok, t.DType)
		}
		t.Data = appendUint(t.Data, uint64(v), t.DType.Size())
		return nil
	case tensor.Uint8, tensor.Uint16, tensor.Uint32, tensor.Uint64:
		bitSize := 8 * t.DType.Size()
		v, err := strconv.ParseUint(string(tok), 10, bitSize)
		if err != nil {
			return fmt.Errorf("%w: %s is not a %s", ErrBadData, tok, t.DType)
		}
		t.Data = appendUint(t.Data, v, t.DType.Size())
		return nil
	}
	return fmt.Errorf("%w: %s has no JSON form", tensor.ErrUnknownDType, t.DType)
}

// parseFloat reads a JSON number, or one of the strings "NaN", "Infinity" and
// "-Infinity" that AppendJSONData writes for values JSON numbers cannot hold.
func parseFloat(tok []byte) (float64, error) {
	if tok[0] == '"' {
		switch string(tok) {
		case `"NaN"`:
			return math.NaN(), nil
		case `"Infinity"`:
			return math.Inf(1), nil
		case `"-Infinity"`:
			return math.Inf(-1), nil
		}
		return 0, fmt.Errorf("%w: %s is not a number", ErrBadData, tok)
	}
	f, err := strconv.ParseFloat(string(tok), 64)
	if err != nil {
		// ParseFloat returns ±Inf with ErrRange for values beyond float64; JSON data
		// like 1e999 is a client error, not infinity.
		return 0, fmt.Errorf("%w: %s is not a number", ErrBadData, tok)
	}
	return f, nil
}

func appendUint(b []byte, v uint64, size int) []byte {
	switch size {
	case 1:
		return append(b, byte(v))
	case 2:
		return binary.LittleEndian.AppendUint16(b, uint16(v))
	case 4:
		return binary.LittleEndian.AppendUint32(b, uint32(v))
	default:
		return binary.LittleEndian.AppendUint64(b, v)
	}
}

// jsonRepresentable checks that t's elements survive a JSON array: a BYTES element
// must be valid UTF-8, since a JSON string would replace its invalid bytes with
// U+FFFD and hand the other end different data. Such a tensor travels in the binary
// extension instead.
func jsonRepresentable(t *tensor.Tensor) error {
	if t.DType != tensor.String {
		return nil
	}
	for i, s := range t.Strings {
		if !utf8.ValidString(s) {
			return fmt.Errorf("tensor %q: %w: BYTES element %d is not valid UTF-8, which JSON cannot carry; send it as binary data (binary_data)", t.Name, ErrBadData, i)
		}
	}
	return nil
}

// AppendJSONData appends t's elements to b as a flat JSON array, the form Triton
// answers with. Non-finite floats become the strings "NaN", "Infinity", "-Infinity".
func AppendJSONData(b []byte, t *tensor.Tensor) []byte {
	n := int(t.NumElements())
	d := t.Data
	b = append(b, '[')
	for i := 0; i < n; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		switch t.DType {
		case tensor.String:
			q, _ := json.Marshal(t.Strings[i])
			b = append(b, q...)
		case tensor.Bool:
			b = strconv.AppendBool(b, d[i] != 0)
		case tensor.Float32:
			b = appendFloat(b, float64(math.Float32frombits(binary.LittleEndian.Uint32(d[4*i:]))), 32)
		case tensor.Float64:
			b = appendFloat(b, math.Float64frombits(binary.LittleEndian.Uint64(d[8*i:])), 64)
		case tensor.Float16:
			b = appendFloat(b, float64(tensor.HalfToFloat32(binary.LittleEndian.Uint16(d[2*i:]))), 32)
		case tensor.BFloat16:
			b = appendFloat(b, float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(d[2*i:]))<<16)), 32)
		case tensor.Int8:
			b = strconv.AppendInt(b, int64(int8(d[i])), 10)
		case tensor.Int16:
			b = strconv.AppendInt(b, int64(int16(binary.LittleEndian.Uint16(d[2*i:]))), 10)
		case tensor.Int32:
			b = strconv.AppendInt(b, int64(int32(binary.LittleEndian.Uint32(d[4*i:]))), 10)
		case tensor.Int64:
			b = strconv.AppendInt(b, int64(binary.LittleEndian.Uint64(d[8*i:])), 10)
		case tensor.Uint8:
			b = strconv.AppendUint(b, uint64(d[i]), 10)
		case tensor.Uint16:
			b = strconv.AppendUint(b, uint64(binary.LittleEndian.Uint16(d[2*i:])), 10)
		case tensor.Uint32:
			b = strconv.AppendUint(b, uint64(binary.LittleEndian.Uint32(d[4*i:])), 10)
		case tensor.Uint64:
			b = strconv.AppendUint(b, binary.LittleEndian.Uint64(d[8*i:]), 10)
		}
	}
	return append(b, ']')
}

func appendFloat(b []byte, f float64, bitSize int) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, `"NaN"`...)
	case math.IsInf(f, 1):
		return append(b, `"Infinity"`...)
	case math.IsInf(f, -1):
		return append(b, `"-Infinity"`...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, bitSize)
}

// Float32ToHalf narrows f to IEEE 754 binary16, rounding to nearest even.
func Float32ToHalf(f float32) uint16 {
	x := math.Float32bits(f)
	sign := uint16(x>>16) & 0x8000
	exp := int32(x>>23&0xff) - 127 + 15
	mant := x & 0x7fffff
	switch {
	case x&0x7fffffff == 0:
		return sign
	case x>>23&0xff == 0xff: // Inf or NaN
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp >= 0x1f:
		return sign | 0x7c00
	case exp <= 0:
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint32(14 - exp)
		half := uint32(1) << (shift - 1)
		r := mant >> shift
		rem := mant & (1<<shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(exp)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // a carry into the exponent is the correct rounding, up to Inf
	}
	return sign | uint16(r)
}

// Float32ToBFloat16 narrows f to bfloat16, rounding to nearest even.
func Float32ToBFloat16(f float32) uint16 {
	x := math.Float32bits(f)
	if x&0x7fffffff > 0x7f800000 { // NaN: keep it a quiet NaN
		return uint16(x>>16) | 0x40
	}
	return uint16((x + 0x7fff + (x>>16)&1) >> 16)
}

// TensorFromJSON builds a tensor from a KServe datatype, a shape and JSON data (flat
// or nested arrays), with the same checks the server applies to a request.
func TensorFromJSON(name, datatype string, shape []int64, data []byte) (tensor.Tensor, error) {
	if !json.Valid(data) {
		return tensor.Tensor{}, fmt.Errorf("tensor %q: %w: data is not JSON", name, ErrBadJSON)
	}
	var none []byte
	return decodeTensor(name, shape, datatype, nil, data, &none)
}
