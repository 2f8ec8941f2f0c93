package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"strconv"
	"testing"

	"github.com/layermesh/layermesh/accel/tensor"
)

// everyDType has one tensor of each datatype with awkward values: extremes,
// negative zero, subnormals, escapes in strings.
func everyDType() []tensor.Tensor {
	raw := func(name string, d tensor.DType, shape []int64, b []byte) tensor.Tensor {
		return tensor.Tensor{Name: name, DType: d, Shape: shape, Data: b}
	}
	u16 := func(vs ...uint16) []byte {
		var b []byte
		for _, v := range vs {
			b = binary.LittleEndian.AppendUint16(b, v)
		}
		return b
	}
	u32 := func(vs ...uint32) []byte {
		var b []byte
		for _, v := range vs {
			b = binary.LittleEndian.AppendUint32(b, v)
		}
		return b
	}
	u64 := func(vs ...uint64) []byte {
		var b []byte
		for _, v := range vs {
			b = binary.LittleEndian.AppendUint64(b, v)
		}
		return b
	}
	return []tensor.Tensor{
		tensor.FromFloat32("f32", []int64{2, 2}, []float32{1.5, float32(math.Copysign(0, -1)), math.MaxFloat32, math.SmallestNonzeroFloat32}),
		raw("f64", tensor.Float64, []int64{3}, u64(math.Float64bits(math.Pi), math.Float64bits(-1e300), math.Float64bits(5e-324))),
		raw("f16", tensor.Float16, []int64{3}, u16(0x3c00, 0xc000, 0x0001)), // 1, -2, smallest subnormal
		raw("bf16", tensor.BFloat16, []int64{2}, u16(0x3f80, 0xc2f7)),       // 1, -123.5
		raw("i8", tensor.Int8, []int64{3}, []byte{0x80, 0x7f, 0xff}),        // -128, 127, -1
		raw("u8", tensor.Uint8, []int64{2}, []byte{0, 255}),                 //
		raw("i16", tensor.Int16, []int64{2}, u16(0x8000, 0x7fff)),           //
		raw("u16", tensor.Uint16, []int64{1}, u16(0xffff)),                  //
		raw("i32", tensor.Int32, []int64{2}, u32(0x80000000, 7)),            //
		raw("u32", tensor.Uint32, []int64{1}, u32(0xffffffff)),              //
		tensor.FromInt64("i64", []int64{1, 3}, []int64{math.MinInt64, 0, math.MaxInt64}),
		raw("u64", tensor.Uint64, []int64{1}, u64(math.MaxUint64)),
		raw("bool", tensor.Bool, []int64{2}, []byte{1, 0}),
		{Name: "bytes", DType: tensor.String, Shape: []int64{3}, Strings: []string{"", "a\"b\\c\n", "\u00e9\u4e16"}},
		raw("scalar", tensor.Float32, []int64{}, u32(math.Float32bits(-7))),
		raw("empty", tensor.Int64, []int64{0, 4}, []byte{}),
	}
}

func sameTensor(a, b tensor.Tensor) bool {
	if a.Name != b.Name || a.DType != b.DType || !reflect.DeepEqual(append([]int64{}, a.Shape...), append([]int64{}, b.Shape...)) {
		return false
	}
	if a.DType == tensor.String {
		return reflect.DeepEqual(a.Strings, b.Strings)
	}
	return bytes.Equal(a.Data, b.Data)
}

func TestRequestRoundTrip(t *testing.T) {
	for _, binaryIn := range []bool{false, true} {
		req := &Request{ID: "id-1", Inputs: everyDType(), Outputs: []OutputRequest{{Name: "o1", Binary: true}, {Name: "o2"}}}
		header, chunks, err := EncodeRequest(req, binaryIn)
		if err != nil {
			t.Fatal(err)
		}
		headerLen := int64(-1)
		body := header
		if binaryIn {
			headerLen = int64(len(header))
			body = bytes.Join(append([][]byte{header}, chunks...), nil)
		}
		got, err := DecodeRequest(body, headerLen)
		if err != nil {
			t.Fatalf("binary=%v: %v\n%s", binaryIn, err, header)
		}
		for i, want := range req.Inputs {
			if !sameTensor(got.Inputs[i], want) {
				t.Errorf("binary=%v input %s: got %+v, want %+v", binaryIn, want.Name, got.Inputs[i], want)
			}
		}
		if got.ID != "id-1" || !got.WantsBinary("o1") || got.WantsBinary("o2") || !reflect.DeepEqual(got.OutputNames(), []string{"o1", "o2"}) {
			t.Errorf("binary=%v: request fields %+v", binaryIn, got)
		}
	}
}

func TestResponseRoundTrip(t *testing.T) {
	for _, binaryOut := range []bool{false, true} {
		resp := &Response{ModelName: "m", ModelVersion: "1", ID: "x", Outputs: everyDType()}
		header, chunks, err := EncodeResponse(resp, func(string) bool { return binaryOut })
		if err != nil {
			t.Fatal(err)
		}
		if (len(chunks) > 0) != binaryOut {
			t.Fatalf("binary=%v but %d chunks", binaryOut, len(chunks))
		}
		// Binary outputs are the tensors' own bytes, not copies.
		if binaryOut && &chunks[0][0] != &resp.Outputs[0].Data[0] {
			t.Errorf("binary output chunk is a copy")
		}
		headerLen := int64(-1)
		if binaryOut {
			headerLen = int64(len(header))
		}
		got, err := DecodeResponse(bytes.Join(append([][]byte{header}, chunks...), nil), headerLen)
		if err != nil {
			t.Fatalf("binary=%v: %v\n%s", binaryOut, err, header)
		}
		if got.ModelName != "m" || got.ModelVersion != "1" || got.ID != "x" {
			t.Errorf("header fields %+v", got)
		}
		for i, want := range resp.Outputs {
			if !sameTensor(got.Outputs[i], want) {
				t.Errorf("binary=%v output %s: got %+v, want %+v", binaryOut, want.Name, got.Outputs[i], want)
			}
		}
	}
}

// TestBinaryInputsAreSlices proves the zero-copy claim: a binary input's Data
// points into the body.
func TestBinaryInputsAreSlices(t *testing.T) {
	hdr := `{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}`
	body := append([]byte(hdr), make([]byte, 8)...)
	req, err := DecodeRequest(body, int64(len(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	if &req.Inputs[0].Data[0] != &body[len(hdr)] {
		t.Errorf("binary input was copied")
	}
}

func TestNonFiniteFloatsInJSON(t *testing.T) {
	x := tensor.FromFloat32("x", []int64{3}, []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))})
	data := AppendJSONData(nil, &x)
	if string(data) != `["NaN","Infinity","-Infinity"]` {
		t.Fatalf("got %s", data)
	}
	back := tensor.Tensor{Name: "x", DType: tensor.Float32, Shape: []int64{3}}
	if err := fillJSON(&back, data, 3); err != nil {
		t.Fatal(err)
	}
	f, _ := back.Float32s()
	if !math.IsNaN(float64(f[0])) || !math.IsInf(float64(f[1]), 1) || !math.IsInf(float64(f[2]), -1) {
		t.Errorf("got %v", f)
	}
}

func TestHalfConversions(t *testing.T) {
	// Every finite half value survives half -> float32 -> half exactly.
	for h := 0; h < 1<<16; h++ {
		if h&0x7c00 == 0x7c00 && h&0x3ff != 0 {
			continue // NaN payloads are not preserved, only NaN-ness
		}
		f := tensor.HalfToFloat32(uint16(h))
		if back := Float32ToHalf(f); back != uint16(h) {
			t.Fatalf("half %#04x -> %v -> %#04x", h, f, back)
		}
	}
	for _, c := range []struct {
		f    float32
		want uint16
	}{
		{65504, 0x7bff}, {65520, 0x7c00}, {1e-8, 0}, {1 + 1.0/2048, 0x3c00}, {1 + 3.0/2048, 0x3c02},
	} {
		if got := Float32ToHalf(c.f); got != c.want {
			t.Errorf("Float32ToHalf(%v) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
	if got := Float32ToBFloat16(1 + 1.0/256); got != 0x3f80 { // tie, rounds to even
		t.Errorf("bf16 tie = %#04x", got)
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, c := range []struct {
		body      string
		headerLen int64
		want      error
	}{
		{`{`, -1, ErrBadJSON},
		{`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}`, -1, ErrBadJSON},
		{`{"inputs":[{"name":"","shape":[1],"datatype":"FP32","data":[1]}]}`, -1, ErrBadJSON},
		{`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}` + "abcd", 102, ErrBadJSON},
		{`{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","data":[1]}]}`, -1, ErrBadData},
		{`{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[256]}]}`, -1, ErrBadData},
		{`{"inputs":[{"name":"x","shape":[1],"datatype":"FP64","data":[1e999]}]}`, -1, ErrBadData},
		{`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":[1]}]}`, -1, ErrBadData},
		{`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[{"a":1}]}]}`, -1, ErrBadData},
		{`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"parameters":{"binary_data_output":"yes"}}`, -1, ErrBadJSON},
		{`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}` + "\x05\x00\x00\x00ab", 92, ErrBadData},
		{`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}`, 1000, ErrBadHeaderLength},
		{`{"inputs":[{"name":"x","shape":[17],"datatype":"FP32","data":[1]}]}`, -1, tensor.ErrDataLength},
		{`{"inputs":[{"name":"x","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"datatype":"FP32","data":[1]}]}`, -1, tensor.ErrBadShape},
	} {
		_, err := DecodeRequest([]byte(c.body), c.headerLen)
		if !errors.Is(err, c.want) {
			t.Errorf("%s (header %d): got %v, want %v", c.body, c.headerLen, err, c.want)
		}
	}
}

func TestParseHeaderLength(t *testing.T) {
	for v, want := range map[string]int64{"": -1, "0": 0, "17": 17} {
		if got, err := ParseHeaderLength(v); err != nil || got != want {
			t.Errorf("%q: %d %v", v, got, err)
		}
	}
	for _, v := range []string{"-1", "x", "1e3", strconv.Itoa(-5)} {
		if _, err := ParseHeaderLength(v); !errors.Is(err, ErrBadHeaderLength) {
			t.Errorf("%q: %v", v, err)
		}
	}
}

// TestBytesNotUTF8TravelOnlyAsBinary: a BYTES element that is not valid UTF-8 keeps
// its bytes through the binary extension, and is refused with invalid tensor data,
// not silently replaced by U+FFFD, where it would have to be a JSON string.
func TestBytesNotUTF8TravelOnlyAsBinary(t *testing.T) {
	s := tensor.Tensor{Name: "s", DType: tensor.String, Shape: []int64{2}, Strings: []string{"ok", "0\xea0"}}
	req := &Request{Inputs: []tensor.Tensor{s}}
	if _, _, err := EncodeRequest(req, false); !errors.Is(err, ErrBadData) {
		t.Fatalf("JSON request with invalid UTF-8: %v, want %v", err, ErrBadData)
	}
	header, chunks, err := EncodeRequest(req, true)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRequest(bytes.Join(append([][]byte{header}, chunks...), nil), int64(len(header)))
	if err != nil {
		t.Fatal(err)
	}
	if !sameTensor(got.Inputs[0], s) {
		t.Fatalf("binary request changed the bytes: %q, want %q", got.Inputs[0].Strings, s.Strings)
	}
	resp := &Response{ModelName: "m", Outputs: []tensor.Tensor{s}}
	if _, _, err := EncodeResponse(resp, func(string) bool { return false }); !errors.Is(err, ErrBadData) {
		t.Fatalf("JSON response with invalid UTF-8: %v, want %v", err, ErrBadData)
	}
	header, chunks, err = EncodeResponse(resp, func(string) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeResponse(bytes.Join(append([][]byte{header}, chunks...), nil), int64(len(header)))
	if err != nil {
		t.Fatal(err)
	}
	if !sameTensor(back.Outputs[0], s) {
		t.Fatalf("binary response changed the bytes: %q, want %q", back.Outputs[0].Strings, s.Strings)
	}
}
