package wire

import (
	"bytes"
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/layermesh/layermesh/accel/tensor"
)

// checkDecoded holds for anything a decoder accepts: every tensor is valid, so what
// reaches the backend or the caller never lies about its size.
func checkDecoded(t *testing.T, ts []tensor.Tensor) {
	for i := range ts {
		if err := ts[i].Validate(); err != nil {
			t.Fatalf("decoder accepted an invalid tensor: %v", err)
		}
	}
}

func seedBodies(f *testing.F) {
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}`), int64(-1))
	f.Add([]byte(`{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["a","\u00e9"]}]}`), int64(-1))
	hdr := `{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]}`
	f.Add(append([]byte(hdr), 1, 0, 0, 0, 2, 0, 0, 0), int64(len(hdr)))
	hdr = `{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}]}`
	f.Add(append([]byte(hdr), 3, 0, 0, 0, 'a', 'b', 'c'), int64(len(hdr)))
	f.Add([]byte(`{"inputs":[{"name":"b","shape":[],"datatype":"BOOL","data":true}],"parameters":{"binary_data_output":true}}`), int64(-1))
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[4611686018427387904,3],"datatype":"FP16","data":[1]}]}`), int64(-1))
}

// FuzzDecodeRequest feeds arbitrary bodies and header lengths to the server's
// decoder: it must never panic, and what it accepts must be valid and re-encode to
// an equal request.
func FuzzDecodeRequest(f *testing.F) {
	seedBodies(f)
	f.Fuzz(func(t *testing.T, body []byte, headerLen int64) {
		req, err := DecodeRequest(body, headerLen)
		if err != nil {
			return
		}
		checkDecoded(t, req.Inputs)
		for _, binaryIn := range []bool{false, true} {
			header, chunks, err := EncodeRequest(req, binaryIn)
			if !binaryIn && errors.Is(err, ErrBadData) && notUTF8(req.Inputs) {
				continue // BYTES that JSON cannot carry are refused, not altered
			}
			if err != nil {
				t.Fatalf("re-encode: %v", err)
			}
			hl := int64(-1)
			if binaryIn {
				hl = int64(len(header))
			}
			again, err := DecodeRequest(bytes.Join(append([][]byte{header}, chunks...), nil), hl)
			if err != nil {
				t.Fatalf("decode of re-encoded request: %v\n%s", err, header)
			}
			for i := range req.Inputs {
				a, b := req.Inputs[i], again.Inputs[i]
				// NaN payloads may change through JSON; compare via the codec's own view.
				if !binaryIn && (a.DType == tensor.Float32 || a.DType == tensor.Float64 || a.DType == tensor.Float16 || a.DType == tensor.BFloat16) {
					continue
				}
				if !sameTensor(a, b) {
					t.Fatalf("round trip changed input %d: %+v -> %+v", i, a, b)
				}
			}
		}
	})
}

// FuzzDecodeResponse is the client's side: a hostile server must not crash it.
func FuzzDecodeResponse(f *testing.F) {
	f.Add([]byte(`{"model_name":"m","outputs":[{"name":"y","shape":[2],"datatype":"FP32","data":[1,2]}]}`), int64(-1))
	hdr := `{"model_name":"m","outputs":[{"name":"y","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":8}}]}`
	f.Add(append([]byte(hdr), 7, 0, 0, 0, 0, 0, 0, 0), int64(len(hdr)))
	f.Fuzz(func(t *testing.T, body []byte, headerLen int64) {
		resp, err := DecodeResponse(body, headerLen)
		if err != nil {
			return
		}
		checkDecoded(t, resp.Outputs)
	})
}

// notUTF8 says whether some BYTES element of ts is not valid UTF-8.
func notUTF8(ts []tensor.Tensor) bool {
	for _, t := range ts {
		for _, s := range t.Strings {
			if !utf8.ValidString(s) {
				return true
			}
		}
	}
	return false
}
