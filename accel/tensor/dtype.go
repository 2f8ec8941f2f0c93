// Package tensor is the tensor type that flows between the HTTP API, the router, the
// stage RPC and ONNX Runtime, and its compact binary wire codec. It is pure Go (no
// cgo) so that mesh and api can use it without linking ONNX Runtime.
//
// Data is always the raw little-endian element bytes, the layout ONNX Runtime and the
// KServe v2 binary extension both use, so a tensor crosses every boundary without a
// conversion. String tensors (ONNX STRING, KServe BYTES) keep their elements in Strings.
package tensor

import (
	"fmt"
	"strings"
)

// DType is an element type. The values are ONNX's TensorProto.DataType numbers, so a
// dtype read from a model needs no translation table.
type DType uint8

// Element types. Numbers follow onnx.proto.
const (
	Invalid  DType = 0
	Float32  DType = 1
	Uint8    DType = 2
	Int8     DType = 3
	Uint16   DType = 4
	Int16    DType = 5
	Int32    DType = 6
	Int64    DType = 7
	String   DType = 8
	Bool     DType = 9
	Float16  DType = 10
	Float64  DType = 11
	Uint32   DType = 12
	Uint64   DType = 13
	BFloat16 DType = 16
)

type dtypeInfo struct {
	name   string // lower-case Go-like name, used in logs and errors
	kserve string // KServe v2 datatype name
	size   int    // bytes per element; 0 for String
}

var dtypes = map[DType]dtypeInfo{
	Float32:  {"float32", "FP32", 4},
	Uint8:    {"uint8", "UINT8", 1},
	Int8:     {"int8", "INT8", 1},
	Uint16:   {"uint16", "UINT16", 2},
	Int16:    {"int16", "INT16", 2},
	Int32:    {"int32", "INT32", 4},
	Int64:    {"int64", "INT64", 8},
	String:   {"string", "BYTES", 0},
	Bool:     {"bool", "BOOL", 1},
	Float16:  {"float16", "FP16", 2},
	Float64:  {"float64", "FP64", 8},
	Uint32:   {"uint32", "UINT32", 4},
	Uint64:   {"uint64", "UINT64", 8},
	BFloat16: {"bfloat16", "BF16", 2},
}

// Valid reports whether d is a supported element type.
func (d DType) Valid() bool { _, ok := dtypes[d]; return ok }

// Size is the number of bytes of one element; 0 for String and unknown types.
func (d DType) Size() int { return dtypes[d].size }

// String is the lower-case name of the type, for logs and error messages.
func (d DType) String() string {
	if i, ok := dtypes[d]; ok {
		return i.name
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// KServe is the KServe v2 datatype name ("FP32", "INT64", "BYTES", ...).
func (d DType) KServe() string { return dtypes[d].kserve }

// ParseKServe maps a KServe v2 datatype name to a DType.
func ParseKServe(name string) (DType, error) {
	up := strings.ToUpper(name)
	for d, i := range dtypes {
		if i.kserve == up {
			return d, nil
		}
	}
	return Invalid, fmt.Errorf("%w: %q", ErrUnknownDType, name)
}

// ParseName maps a lower-case name ("float32") or a KServe name ("FP32") to a DType.
func ParseName(name string) (DType, error) {
	low := strings.ToLower(name)
	for d, i := range dtypes {
		if i.name == low {
			return d, nil
		}
	}
	return ParseKServe(name)
}
