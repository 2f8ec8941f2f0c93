package wire

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/layermesh/layermesh/accel/tensor"
)

// HeaderContentLength is the binary tensor data extension's header: the length of the
// JSON part at the start of a body whose tensors follow as raw bytes.
const HeaderContentLength = "Inference-Header-Content-Length"

// ContentTypeBinary is the Content-Type of a body with binary tensor data.
const ContentTypeBinary = "application/octet-stream"

// Errors of the codec. The API maps each to its own status and code; tensor's
// sentinels (ErrUnknownDType, ErrDataLength, ErrTooLarge, ErrBadShape) come through
// wrapped as they are.
var (
	// ErrBadJSON means the JSON part does not parse or has the wrong shape.
	ErrBadJSON = errors.New("malformed JSON")
	// ErrBadHeaderLength means Inference-Header-Content-Length is not a length
	// inside the body.
	ErrBadHeaderLength = errors.New("invalid " + HeaderContentLength)
	// ErrBadData means a tensor's data elements are not of its datatype
	// (a string in an FP32 tensor, 1.5 in an INT64 tensor, an out-of-range value).
	ErrBadData = errors.New("invalid tensor data")
	// ErrNegativeDim means a shape has a dim below zero.
	ErrNegativeDim = errors.New("negative dimension")
	// ErrBinaryLength means the binary part does not hold exactly the bytes that the
	// inputs' binary_data_size parameters announce.
	ErrBinaryLength = errors.New("binary data length mismatch")
)

// Parameters is a KServe parameters object.
type Parameters map[string]any

// RequestInput is one input tensor of an inference request as it appears in JSON.
// Data is absent when the tensor travels in the binary part.
type RequestInput struct {
	Name       string          `json:"name"`
	Shape      []int64         `json:"shape"`
	Datatype   string          `json:"datatype"`
	Parameters Parameters      `json:"parameters,omitempty"`
	Data       json.RawMessage `json:"data,omitempty"`
}

// RequestOutput names an output the client wants; parameters.binary_data asks for it
// in the binary part of the response.
type RequestOutput struct {
	Name       string     `json:"name"`
	Parameters Parameters `json:"parameters,omitempty"`
}

// RequestHeader is the JSON part of an inference request.
type RequestHeader struct {
	ID         string          `json:"id,omitempty"`
	Parameters Parameters      `json:"parameters,omitempty"`
	Inputs     []RequestInput  `json:"inputs"`
	Outputs    []RequestOutput `json:"outputs,omitempty"`
}

// ResponseOutput is one output tensor of an inference response as it appears in JSON.
type ResponseOutput struct {
	Name       string          `json:"name"`
	Shape      []int64         `json:"shape"`
	Datatype   string          `json:"datatype"`
	Parameters Parameters      `json:"parameters,omitempty"`
	Data       json.RawMessage `json:"data,omitempty"`
}

// ResponseHeader is the JSON part of an inference response.
type ResponseHeader struct {
	ModelName    string           `json:"model_name"`
	ModelVersion string           `json:"model_version,omitempty"`
	ID           string           `json:"id,omitempty"`
	Parameters   Parameters       `json:"parameters,omitempty"`
	Outputs      []ResponseOutput `json:"outputs"`
}

// OutputRequest is a decoded requested output.
type OutputRequest struct {
	Name string
	// Binary is true when the client asked for this output in the binary part.
	Binary bool
}

// Request is a decoded inference request.
type Request struct {
	ID     string
	Inputs []tensor.Tensor
	// Outputs are the outputs asked for, in order; empty means all of the model's.
	Outputs []OutputRequest
	// BinaryOutputs is the request-wide default (parameters.binary_data_output) for
	// outputs not listed in Outputs.
	BinaryOutputs bool
}

// WantsBinary reports whether output name goes into the binary part of the response.
func (r *Request) WantsBinary(name string) bool {
	for _, o := range r.Outputs {
		if o.Name == name {
			return o.Binary || r.BinaryOutputs
		}
	}
	return r.BinaryOutputs
}

// OutputNames lists the requested outputs' names (nil for all).
func (r *Request) OutputNames() []string {
	if len(r.Outputs) == 0 {
		return nil
	}
	names := make([]string, len(r.Outputs))
	for i, o := range r.Outputs {
		names[i] = o.Name
	}
	return names
}

// Response is a decoded inference response.
type Response struct {
	ModelName    string
	ModelVersion string
	ID           string
	Outputs      []tensor.Tensor
}

// Output returns the output called name.
func (r *Response) Output(name string) (tensor.Tensor, bool) {
	for _, t := range r.Outputs {
		if t.Name == name {
			return t, true
		}
	}
	return tensor.Tensor{}, false
}

// splitBody separates the JSON part from the binary part. headerLen < 0 means the
// header was absent: the whole body is JSON.
func splitBody(body []byte, headerLen int64) (jsonPart, binPart []byte, err error) {
	if headerLen < 0 {
		return body, nil, nil
	}
	if headerLen > int64(len(body)) {
		return nil, nil, fmt.Errorf("%w: %d exceeds body length %d", ErrBadHeaderLength, headerLen, len(body))
	}
	return body[:headerLen], body[headerLen:], nil
}

// ParseHeaderLength reads the Inference-Header-Content-Length value; "" gives -1.
func ParseHeaderLength(v string) (int64, error) {
	if v == "" {
		return -1, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: %q", ErrBadHeaderLength, v)
	}
	return n, nil
}

// DecodeRequest decodes an inference request body. headerLen is the
// Inference-Header-Content-Length value (-1 when absent). Binary inputs' Data are
// slices of body, not copies: body must outlive the request.
func DecodeRequest(body []byte, headerLen int64) (*Request, error) {
	jsonPart, binPart, err := splitBody(body, headerLen)
	if err != nil {
		return nil, err
	}
	var h RequestHeader
	if err := json.Unmarshal(jsonPart, &h); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadJSON, err)
	}
	req := &Request{ID: h.ID, Inputs: make([]tensor.Tensor, 0, len(h.Inputs))}
	if v, ok, err := boolParam(h.Parameters, "binary_data_output"); err != nil {
		return nil, err
	} else if ok {
		req.BinaryOutputs = v
	}
	for _, in := range h.Inputs {
		t, err := decodeTensor(in.Name, in.Shape, in.Datatype, in.Parameters, in.Data, &binPart)
		if err != nil {
			return nil, err
		}
		req.Inputs = append(req.Inputs, t)
	}
	if len(binPart) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last binary input", ErrBinaryLength, len(binPart))
	}
	for _, o := range h.Outputs {
		if o.Name == "" {
			return nil, fmt.Errorf("%w: requested output without a name", ErrBadJSON)
		}
		b, _, err := boolParam(o.Parameters, "binary_data")
		if err != nil {
			return nil, err
		}
		req.Outputs = append(req.Outputs, OutputRequest{Name: o.Name, Binary: b})
	}
	return req, nil
}

// DecodeResponse decodes an inference response body, the client's side of
// DecodeRequest. Binary outputs' Data are slices of body.
func DecodeResponse(body []byte, headerLen int64) (*Response, error) {
	jsonPart, binPart, err := splitBody(body, headerLen)
	if err != nil {
		return nil, err
	}
	var h ResponseHeader
	if err := json.Unmarshal(jsonPart, &h); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadJSON, err)
	}
	resp := &Response{ModelName: h.ModelName, ModelVersion: h.ModelVersion, ID: h.ID}
	for _, o := range h.Outputs {
		t, err := decodeTensor(o.Name, o.Shape, o.Datatype, o.Parameters, o.Data, &binPart)
		if err != nil {
			return nil, err
		}
		resp.Outputs = append(resp.Outputs, t)
	}
	if len(binPart) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last binary output", ErrBinaryLength, len(binPart))
	}
	return resp, nil
}

// decodeTensor builds one tensor from its JSON description, taking its bytes from the
// front of *bin when parameters.binary_data_size is set.
func decodeTensor(name string, shape []int64, datatype string, params Parameters, data json.RawMessage, bin *[]byte) (tensor.Tensor, error) {
	if name == "" {
		return tensor.Tensor{}, fmt.Errorf("%w: tensor without a name", ErrBadJSON)
	}
	dt, err := tensor.ParseKServe(datatype)
	if err != nil {
		return tensor.Tensor{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	for i, d := range shape {
		if d < 0 {
			return tensor.Tensor{}, fmt.Errorf("tensor %q: %w: dim %d is %d", name, ErrNegativeDim, i, d)
		}
	}
	n, err := tensor.NumElements(shape)
	if err != nil {
		return tensor.Tensor{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	if shape == nil {
		shape = []int64{}
	}
	t := tensor.Tensor{Name: name, DType: dt, Shape: shape}
	size, hasBinary, err := intParam(params, "binary_data_size")
	if err != nil {
		return tensor.Tensor{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	if hasBinary {
		if len(data) != 0 && string(data) != "null" {
			return tensor.Tensor{}, fmt.Errorf("tensor %q: %w: both data and binary_data_size", name, ErrBadJSON)
		}
		if size > int64(len(*bin)) {
			return tensor.Tensor{}, fmt.Errorf("tensor %q: %w: binary_data_size %d but %d bytes left", name, ErrBinaryLength, size, len(*bin))
		}
		raw := (*bin)[:size:size]
		*bin = (*bin)[size:]
		if err := fillBinary(&t, raw, n); err != nil {
			return tensor.Tensor{}, err
		}
		return t, nil
	}
	if len(data) == 0 {
		return tensor.Tensor{}, fmt.Errorf("tensor %q: %w: no data and no binary_data_size", name, ErrBadJSON)
	}
	if err := fillJSON(&t, data, n); err != nil {
		return tensor.Tensor{}, err
	}
	return t, nil
}

// fillBinary sets t's elements from raw bytes: a slice for fixed-size types, 4-byte
// little-endian length-prefixed elements for BYTES (Triton's convention).
func fillBinary(t *tensor.Tensor, raw []byte, n int64) error {
	if t.DType != tensor.String {
		want, err := tensor.ByteSize(t.DType, t.Shape)
		if err != nil {
			return fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		if int64(len(raw)) != want {
			return fmt.Errorf("tensor %q: %w: shape %v of %s needs %d bytes, binary_data_size is %d", t.Name, tensor.ErrDataLength, t.Shape, t.DType, want, len(raw))
		}
		t.Data = raw
		return nil
	}
	// Every element takes at least its 4-byte prefix, so n is bounded by the bytes at hand.
	if n > int64(len(raw))/4 {
		return fmt.Errorf("tensor %q: %w: shape %v needs %d elements, %d bytes cannot hold them", t.Name, tensor.ErrDataLength, t.Shape, n, len(raw))
	}
	t.Strings = make([]string, 0, n)
	for len(raw) > 0 {
		if len(raw) < 4 {
			return fmt.Errorf("tensor %q: %w: truncated BYTES length prefix", t.Name, ErrBadData)
		}
		l := binary.LittleEndian.Uint32(raw)
		raw = raw[4:]
		if uint64(l) > uint64(len(raw)) {
			return fmt.Errorf("tensor %q: %w: BYTES element of %d bytes, %d left", t.Name, ErrBadData, l, len(raw))
		}
		t.Strings = append(t.Strings, string(raw[:l]))
		raw = raw[l:]
	}
	if int64(len(t.Strings)) != n {
		return fmt.Errorf("tensor %q: %w: shape %v needs %d elements, got %d", t.Name, tensor.ErrDataLength, t.Shape, n, len(t.Strings))
	}
	return nil
}

// intParam reads a non-negative integer parameter.
func intParam(p Parameters, key string) (int64, bool, error) {
	v, ok := p[key]
	if !ok {
		return 0, false, nil
	}
	f, isNum := v.(float64)
	if !isNum || f < 0 || f != math.Trunc(f) || f > 1<<62 {
		return 0, false, fmt.Errorf("%w: parameter %s must be a non-negative integer, got %v", ErrBadJSON, key, v)
	}
	return int64(f), true, nil
}

// boolParam reads a boolean parameter.
func boolParam(p Parameters, key string) (bool, bool, error) {
	v, ok := p[key]
	if !ok {
		return false, false, nil
	}
	b, isBool := v.(bool)
	if !isBool {
		return false, false, fmt.Errorf("%w: parameter %s must be a boolean, got %v", ErrBadJSON, key, v)
	}
	return b, true, nil
}

// EncodeRequest builds a request body: the JSON part, then the chunks of the binary
// part in order (nil when binary is false). Tensor bytes are not copied into chunks.
// The caller sends Inference-Header-Content-Length = len(header) when chunks exist.
func EncodeRequest(req *Request, binaryInputs bool) (header []byte, chunks [][]byte, err error) {
	h := RequestHeader{ID: req.ID, Inputs: make([]RequestInput, 0, len(req.Inputs))}
	if req.BinaryOutputs {
		h.Parameters = Parameters{"binary_data_output": true}
	}
	for i := range req.Inputs {
		t := &req.Inputs[i]
		if err := t.Validate(); err != nil {
			return nil, nil, err
		}
		in := RequestInput{Name: t.Name, Shape: t.Shape, Datatype: t.DType.KServe()}
		if binaryInputs {
			c := binaryChunk(t)
			in.Parameters = Parameters{"binary_data_size": len(c)}
			chunks = append(chunks, c)
		} else {
			if err := jsonRepresentable(t); err != nil {
				return nil, nil, err
			}
			in.Data = AppendJSONData(nil, t)
		}
		h.Inputs = append(h.Inputs, in)
	}
	for _, o := range req.Outputs {
		ro := RequestOutput{Name: o.Name}
		if o.Binary {
			ro.Parameters = Parameters{"binary_data": true}
		}
		h.Outputs = append(h.Outputs, ro)
	}
	header, err = json.Marshal(h)
	if err != nil {
		return nil, nil, fmt.Errorf("encode request: %w", err)
	}
	return header, chunks, nil
}

// EncodeResponse builds a response body: the JSON part, then the chunks of the binary
// part (the outputs for which binary reports true, in order). Output bytes are handed
// out as they are, never copied or JSON-encoded. The JSON part is written by hand:
// json.Marshal would re-scan (and copy) a JSON tensor's data, which for a 25 MB
// output costs as much again as formatting it.
func EncodeResponse(resp *Response, binary func(name string) bool) (header []byte, chunks [][]byte, err error) {
	h := make([]byte, 0, 256)
	h = append(h, `{"model_name":`...)
	h = appendJSONString(h, resp.ModelName)
	if resp.ModelVersion != "" {
		h = append(h, `,"model_version":`...)
		h = appendJSONString(h, resp.ModelVersion)
	}
	if resp.ID != "" {
		h = append(h, `,"id":`...)
		h = appendJSONString(h, resp.ID)
	}
	h = append(h, `,"outputs":[`...)
	for i := range resp.Outputs {
		t := &resp.Outputs[i]
		if err := t.Validate(); err != nil {
			return nil, nil, fmt.Errorf("encode response: %w", err)
		}
		if i > 0 {
			h = append(h, ',')
		}
		h = append(h, `{"name":`...)
		h = appendJSONString(h, t.Name)
		h = append(h, `,"datatype":"`...)
		h = append(h, t.DType.KServe()...)
		h = append(h, `","shape":[`...)
		for j, d := range t.Shape {
			if j > 0 {
				h = append(h, ',')
			}
			h = strconv.AppendInt(h, d, 10)
		}
		h = append(h, ']')
		if binary(t.Name) {
			c := binaryChunk(t)
			h = append(h, `,"parameters":{"binary_data_size":`...)
			h = strconv.AppendInt(h, int64(len(c)), 10)
			h = append(h, '}')
			chunks = append(chunks, c)
		} else {
			if err := jsonRepresentable(t); err != nil {
				return nil, nil, err
			}
			h = append(h, `,"data":`...)
			h = AppendJSONData(h, t)
		}
		h = append(h, '}')
	}
	h = append(h, "]}"...)
	return h, chunks, nil
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}

// binaryChunk is t's binary form: its Data as-is, or length-prefixed BYTES elements.
func binaryChunk(t *tensor.Tensor) []byte {
	if t.DType != tensor.String {
		return t.Data
	}
	b := make([]byte, 0, t.ByteLen())
	for _, s := range t.Strings {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}
