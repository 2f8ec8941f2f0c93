package tensor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"runtime"
	"testing"
	"testing/iotest"
)

func sample() []Tensor {
	return []Tensor{
		FromFloat32("hidden", []int64{1, 2, 3}, []float32{1, -2, 3.5, 0, 1e-7, 6}),
		FromInt64("ids", []int64{2}, []int64{-1, 1 << 40}),
		{Name: "flag", DType: Bool, Shape: []int64{}, Data: []byte{1}},
		{Name: "words", DType: String, Shape: []int64{3}, Strings: []string{"a", "", "héllo"}},
		{Name: "empty", DType: Float16, Shape: []int64{0, 4}, Data: []byte{}},
	}
}

func TestRoundTrip(t *testing.T) {
	in := sample()
	var buf bytes.Buffer
	n, err := Encode(&buf, in)
	if err != nil {
		t.Fatal(err)
	}
	if n != EncodedLen(in) || int64(buf.Len()) != n {
		t.Fatalf("Encode wrote %d, buffer %d, EncodedLen %d", n, buf.Len(), EncodedLen(in))
	}
	out, err := Decode(&buf, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("got %d tensors, want %d", len(out), len(in))
	}
	for i := range in {
		a, b := in[i], out[i]
		if a.Name != b.Name || a.DType != b.DType || !reflect.DeepEqual(a.Shape, b.Shape) ||
			!bytes.Equal(a.Data, b.Data) || !reflect.DeepEqual(a.Strings, b.Strings) {
			t.Errorf("tensor %d: got %+v, want %+v", i, b, a)
		}
	}
	f, _ := out[0].Float32s()
	if f[2] != 3.5 {
		t.Errorf("float32 element 2 = %v", f[2])
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		t    Tensor
		want error
	}{
		{"short data", Tensor{DType: Float32, Shape: []int64{2}, Data: make([]byte, 4)}, ErrDataLength},
		{"long data", Tensor{DType: Float32, Shape: []int64{1}, Data: make([]byte, 8)}, ErrDataLength},
		{"negative dim", Tensor{DType: Float32, Shape: []int64{-1}, Data: nil}, ErrBadShape},
		{"overflow", Tensor{DType: Float32, Shape: []int64{1 << 40, 1 << 40}, Data: nil}, ErrTooLarge},
		{"unknown dtype", Tensor{DType: 99, Shape: []int64{1}, Data: []byte{0}}, ErrUnknownDType},
		{"rank", Tensor{DType: Uint8, Shape: make([]int64, MaxRank+1)}, ErrBadShape},
		{"strings count", Tensor{DType: String, Shape: []int64{2}, Strings: []string{"x"}}, ErrDataLength},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.t.Validate(); !errors.Is(err, c.want) {
				t.Fatalf("Validate() = %v, want %v", err, c.want)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	var good bytes.Buffer
	if _, err := Encode(&good, []Tensor{FromFloat32("x", []int64{4}, []float32{1, 2, 3, 4})}); err != nil {
		t.Fatal(err)
	}
	g := good.Bytes()
	// Offsets: magic 0..4, count 4..8, nameLen 8..10, name 10, dtype 11, rank 12, dim 13..21, payload 21..29.
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), g...)) }
	cases := []struct {
		name string
		b    []byte
		lim  Limits
		want error
	}{
		{"bad magic", mut(func(b []byte) []byte { b[0] = 'X'; return b }), DefaultLimits, ErrMalformed},
		{"truncated data", g[:len(g)-3], DefaultLimits, ErrMalformed},
		{"too many tensors", mut(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[4:], 1<<30); return b }), DefaultLimits, ErrTooLarge},
		{"payload lies", mut(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[21:], 12); return b }), DefaultLimits, ErrDataLength},
		{"huge payload", mut(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[21:], 1<<62); return b }), DefaultLimits, ErrTooLarge},
		{"huge dim", mut(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[13:], 1<<62); return b }), DefaultLimits, ErrMalformed},
		{"negative dim", mut(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[13:], ^uint64(0)); return b }), DefaultLimits, ErrMalformed},
		{"bad dtype", mut(func(b []byte) []byte { b[11] = 77; return b }), DefaultLimits, ErrMalformed},
		{"over byte limit", g, Limits{MaxTensors: 4, MaxBytes: 15}, ErrTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Decode(bytes.NewReader(c.b), c.lim); !errors.Is(err, c.want) {
				t.Fatalf("Decode() = %v, want %v", err, c.want)
			}
		})
	}
}

// TestHalf: float16's zeros, subnormals, normals, largest value, infinities and NaN
// convert exactly.
func TestHalf(t *testing.T) {
	for h, want := range map[uint16]float32{
		0x0000: 0, 0x0001: 1.0 / (1 << 24), 0x03ff: 1023.0 / (1 << 24), 0x8001: -1.0 / (1 << 24),
		0x0400: 1.0 / (1 << 14), 0x3c00: 1, 0xc000: -2, 0x3555: 0.333251953125, 0x7bff: 65504,
		0x7c00: float32(math.Inf(1)), 0xfc00: float32(math.Inf(-1)),
	} {
		if got := HalfToFloat32(h); got != want {
			t.Errorf("HalfToFloat32(%#x) = %v, want %v", h, got, want)
		}
	}
	if got := HalfToFloat32(0x7e00); !math.IsNaN(float64(got)) {
		t.Errorf("HalfToFloat32(0x7e00) = %v, want NaN", got)
	}
	if got := HalfToFloat32(0x8000); got != 0 || !math.Signbit(float64(got)) {
		t.Errorf("HalfToFloat32(0x8000) = %v, want -0", got)
	}
}

func FuzzDecode(f *testing.F) {
	for _, ts := range [][]Tensor{sample(), nil, {FromInt64("a", []int64{1}, []int64{7})}} {
		var b bytes.Buffer
		if _, err := Encode(&b, ts); err != nil {
			f.Fatal(err)
		}
		f.Add(b.Bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		lim := Limits{MaxTensors: 64, MaxBytes: 1 << 20}
		ts, err := Decode(bytes.NewReader(b), lim)
		if err != nil {
			return
		}
		// Whatever decodes must validate and re-encode to the same bytes it came from.
		var out bytes.Buffer
		if _, err := Encode(&out, ts); err != nil {
			t.Fatalf("decoded tensors do not re-encode: %v", err)
		}
		if !bytes.Equal(out.Bytes(), b[:out.Len()]) {
			t.Fatalf("re-encoding differs from input")
		}
	})
}

// TestDecodeLargePayload round-trips tensors on both sides of eagerPayload: a payload
// over it is read into a buffer that grows as the bytes arrive.
func TestDecodeLargePayload(t *testing.T) {
	for _, n := range []int64{eagerPayload / 4, eagerPayload/4 + 1, 5 * eagerPayload / 8} {
		vals := make([]float32, n)
		for i := range vals {
			vals[i] = float32(i % 1000)
		}
		in := []Tensor{FromFloat32("big", []int64{n}, vals)}
		var buf bytes.Buffer
		if _, err := Encode(&buf, in); err != nil {
			t.Fatal(err)
		}
		out, err := Decode(iotest.HalfReader(&buf), DefaultLimits)
		if err != nil {
			t.Fatalf("%d elements: %v", n, err)
		}
		if !bytes.Equal(out[0].Data, in[0].Data) {
			t.Fatalf("%d elements: data differs", n)
		}
	}
}

// TestDecodeDeclaredSizeNotAllocated: a frame that declares a 1 GiB tensor and then
// ends costs the decoder no more than eagerPayload of memory, not the declared size.
func TestDecodeDeclaredSizeNotAllocated(t *testing.T) {
	const n = 1 << 28 // float32 elements: 1 GiB
	var hdr bytes.Buffer
	hdr.WriteString("LMT1")
	hdr.Write(binary.LittleEndian.AppendUint32(nil, 1))
	hdr.Write(binary.LittleEndian.AppendUint16(nil, 1))
	hdr.WriteString("x")
	hdr.Write([]byte{byte(Float32), 1})
	hdr.Write(binary.LittleEndian.AppendUint64(nil, n))
	hdr.Write(binary.LittleEndian.AppendUint64(nil, 4*n))
	hdr.Write(make([]byte, 1000)) // a little data, then the stream ends
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := Decode(&hdr, Limits{MaxTensors: 1, MaxBytes: 4 << 30})
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("Decode() = %v, want %v", err, ErrMalformed)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 2*eagerPayload {
		t.Fatalf("decoding a truncated 1 GiB frame allocated %d bytes", got)
	}
}
