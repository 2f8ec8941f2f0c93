package api

import (
	"context"
	"errors"
	"net/http"
	"sort"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/tokenizer"
)

// Errors the services behind the API return (wrapped with %w) so that the API can
// answer with the right status and code. node returns them; tests match them.
var (
	ErrModelNotFound    = errors.New("model not found")
	ErrNodeNotFound     = errors.New("node not found")
	ErrInvalidName      = errors.New("invalid name")
	ErrNotReady         = errors.New("not ready")
	ErrNoReplica        = errors.New("no ready replica")
	ErrNotClusterMode   = errors.New("not in cluster mode")
	ErrUnauthorized     = errors.New("missing or unknown token")
	ErrForbidden        = errors.New("token lacks the scope for this call")
	ErrBadRequest       = errors.New("bad request")
	ErrRouteNotFound    = errors.New("no such route")
	ErrMethodNotAllowed = errors.New("method not allowed")
	ErrTokenNotFound    = errors.New("token not found")
	ErrConflict         = errors.New("already exists")
	// ErrInsufficientCapacity: the live members cannot hold the model; the message
	// says by how many bytes it falls short.
	ErrInsufficientCapacity = errors.New("insufficient capacity")
	// Generation: the request is refused before any token is generated.
	ErrContextExceeded  = errors.New("prompt and max_tokens exceed the model's context")
	ErrNotGenerative    = errors.New("model does not generate text")
	ErrInvalidMaxTokens = errors.New("invalid max_tokens")
	ErrInvalidMessages  = errors.New("invalid chat messages")
	ErrInvalidParameter = errors.New("invalid generation parameter")
	// ErrKVExhausted: the stage nodes have no memory left for another session's
	// state; running sessions go on, a new one may retry later.
	ErrKVExhausted = errors.New("session memory exhausted")
	// ErrCompressionFailed: the model compressed at deploy drifted from the upload
	// past the deploy's max_error or min_agreement; the message gives the figures.
	ErrCompressionFailed = errors.New("compression failed")
)

// Code is a stable error code: clients and scripts match on it, so a code never
// changes meaning once released.
type Code string

// The error catalogue's codes. docs/API.md lists them with their statuses.
const (
	CodeBadJSON              Code = "bad_json"
	CodeBadHeaderLength      Code = "bad_header_length"
	CodeBadRequest           Code = "bad_request"
	CodeInvalidData          Code = "invalid_data"
	CodeUnknownDatatype      Code = "unknown_datatype"
	CodeDataLengthMismatch   Code = "data_length_mismatch"
	CodeShapeMismatch        Code = "shape_mismatch"
	CodeDTypeMismatch        Code = "dtype_mismatch"
	CodeInputMismatch        Code = "input_mismatch"
	CodeNegativeDim          Code = "negative_dim"
	CodeInvalidShape         Code = "invalid_shape"
	CodeTensorTooLarge       Code = "tensor_too_large"
	CodeUnsupportedType      Code = "unsupported_type"
	CodeBodyTooLarge         Code = "body_too_large"
	CodeInvalidName          Code = "invalid_name"
	CodeInvalidModel         Code = "invalid_model"
	CodeModelNotFound        Code = "model_not_found"
	CodeNodeNotFound         Code = "node_not_found"
	CodeTokenNotFound        Code = "token_not_found"
	CodeConflict             Code = "conflict"
	CodeRouteNotFound        Code = "route_not_found"
	CodeMethodNotAllowed     Code = "method_not_allowed"
	CodeUnauthorized         Code = "unauthorized"
	CodeForbidden            Code = "forbidden"
	CodeNotReady             Code = "not_ready"
	CodeNoReplica            Code = "no_replica"
	CodeInsufficientCapacity Code = "insufficient_capacity"
	CodeNotClusterMode       Code = "not_cluster_mode"
	CodeUnavailable          Code = "unavailable"
	CodeTimeout              Code = "timeout"
	CodeCompressionFailed    Code = "compression_failed"
	CodeInternal             Code = "internal"
	CodeContextExceeded      Code = "context_exceeded"
	CodeNotGenerative        Code = "not_generative"
	CodeInvalidMaxTokens     Code = "invalid_max_tokens"
	CodeInvalidMessages      Code = "invalid_messages"
	CodeInvalidParameter     Code = "invalid_parameter"
	CodeTokenizerInvalid     Code = "tokenizer_invalid"
	CodeKVExhausted          Code = "kv_exhausted"
)

// Entry is one row of the error catalogue.
type Entry struct {
	Code   Code
	Status int
	// Meaning says when the code is returned; docs/API.md shows it.
	Meaning string
}

// catalogue is the one place where a code gets its HTTP status.
var catalogue = map[Code]Entry{
	CodeBadJSON:              {CodeBadJSON, http.StatusBadRequest, "the body (or its JSON part) does not parse, or a field has the wrong type"},
	CodeBadHeaderLength:      {CodeBadHeaderLength, http.StatusBadRequest, "Inference-Header-Content-Length is not a length inside the body"},
	CodeBadRequest:           {CodeBadRequest, http.StatusBadRequest, "a query parameter or path element is not valid"},
	CodeInvalidData:          {CodeInvalidData, http.StatusBadRequest, "a tensor's data elements are not of its datatype, or binary data lengths disagree"},
	CodeUnknownDatatype:      {CodeUnknownDatatype, http.StatusBadRequest, "the datatype is not a KServe v2 datatype"},
	CodeDataLengthMismatch:   {CodeDataLengthMismatch, http.StatusBadRequest, "the number of elements (or binary bytes) is not what the shape implies"},
	CodeShapeMismatch:        {CodeShapeMismatch, http.StatusBadRequest, "the shape does not fit the model input: wrong rank or a wrong fixed dim"},
	CodeDTypeMismatch:        {CodeDTypeMismatch, http.StatusBadRequest, "the datatype is not the model input's"},
	CodeInputMismatch:        {CodeInputMismatch, http.StatusBadRequest, "an input is unknown, missing or given twice, or an output name is unknown"},
	CodeNegativeDim:          {CodeNegativeDim, http.StatusBadRequest, "a shape has a negative dim"},
	CodeInvalidShape:         {CodeInvalidShape, http.StatusBadRequest, "a shape is not valid (rank above 16)"},
	CodeTensorTooLarge:       {CodeTensorTooLarge, http.StatusBadRequest, "the shape's element or byte count overflows"},
	CodeUnsupportedType:      {CodeUnsupportedType, http.StatusBadRequest, "the model has an input or output type the backend cannot carry"},
	CodeBodyTooLarge:         {CodeBodyTooLarge, http.StatusRequestEntityTooLarge, "the body exceeds the node's limit (--max-body, --max-model-size)"},
	CodeInvalidName:          {CodeInvalidName, http.StatusBadRequest, "a model name is empty, too long or has characters outside [A-Za-z0-9._-]"},
	CodeCompressionFailed:    {CodeCompressionFailed, http.StatusUnprocessableEntity, "the model compressed at deploy drifted from the upload past max_error or min_agreement; the message gives the verification figures"},
	CodeInvalidModel:         {CodeInvalidModel, http.StatusUnprocessableEntity, "the uploaded file is not a model the backend can load (corrupt, truncated)"},
	CodeModelNotFound:        {CodeModelNotFound, http.StatusNotFound, "no model (or model version) of that name"},
	CodeNodeNotFound:         {CodeNodeNotFound, http.StatusNotFound, "no node of that name"},
	CodeTokenNotFound:        {CodeTokenNotFound, http.StatusNotFound, "no token with that id"},
	CodeConflict:             {CodeConflict, http.StatusConflict, "a token (or other named object) of that name exists already"},
	CodeRouteNotFound:        {CodeRouteNotFound, http.StatusNotFound, "no such endpoint"},
	CodeMethodNotAllowed:     {CodeMethodNotAllowed, http.StatusMethodNotAllowed, "the endpoint exists but not for this method; Allow lists the methods"},
	CodeUnauthorized:         {CodeUnauthorized, http.StatusUnauthorized, "no token, or a token the node does not know"},
	CodeForbidden:            {CodeForbidden, http.StatusForbidden, "the token is valid but its scope does not cover this call"},
	CodeNotReady:             {CodeNotReady, http.StatusServiceUnavailable, "the node or the model is not ready yet; retry after Retry-After seconds"},
	CodeNoReplica:            {CodeNoReplica, http.StatusServiceUnavailable, "a pipeline stage has no ready replica; retry after Retry-After seconds"},
	CodeInsufficientCapacity: {CodeInsufficientCapacity, http.StatusInsufficientStorage, "the live members' memory budgets cannot hold the model; the message gives the shortfall in bytes"},
	CodeNotClusterMode:       {CodeNotClusterMode, http.StatusNotImplemented, "the call needs a cluster and the node runs in single-node mode"},
	CodeUnavailable:          {CodeUnavailable, http.StatusServiceUnavailable, "the model was unloaded while the request ran; retry"},
	CodeTimeout:              {CodeTimeout, http.StatusGatewayTimeout, "the request's deadline passed before an answer"},
	CodeInternal:             {CodeInternal, http.StatusInternalServerError, "a fault inside the node; the log has the details"},
	CodeContextExceeded:      {CodeContextExceeded, http.StatusBadRequest, "the prompt's tokens plus max_tokens do not fit in the model's context"},
	CodeNotGenerative:        {CodeNotGenerative, http.StatusBadRequest, "the model was not deployed for generation (no tokenizer, or not a generative model)"},
	CodeInvalidMaxTokens:     {CodeInvalidMaxTokens, http.StatusBadRequest, "max_tokens is below 1 or above the node's limit (4096 unless the node sets another)"},
	CodeInvalidMessages:      {CodeInvalidMessages, http.StatusBadRequest, "chat messages are missing, have an unknown role, or content that is not text"},
	CodeInvalidParameter:     {CodeInvalidParameter, http.StatusBadRequest, "a generation parameter is out of range or unsupported (temperature, top_p, top_k, n, stop, prompt)"},
	CodeTokenizerInvalid:     {CodeTokenizerInvalid, http.StatusBadRequest, "the tokenizer or chat template given at deploy cannot be used (not byte-level BPE, does not parse)"},
	CodeKVExhausted:          {CodeKVExhausted, http.StatusServiceUnavailable, "the stage nodes have no memory left for another session's state; retry after Retry-After seconds"},
}

// classifiers map sentinel errors to codes. Order matters: the first match wins, so
// refinements (ErrShapeMismatch) come before what they refine (ErrInputMismatch).
var classifiers = []struct {
	err  error
	code Code
}{
	{wire.ErrBadJSON, CodeBadJSON},
	{wire.ErrBadHeaderLength, CodeBadHeaderLength},
	{wire.ErrBadData, CodeInvalidData},
	{wire.ErrBinaryLength, CodeInvalidData},
	{wire.ErrNegativeDim, CodeNegativeDim},
	{tensor.ErrUnknownDType, CodeUnknownDatatype},
	{tensor.ErrTooLarge, CodeTensorTooLarge},
	{tensor.ErrDataLength, CodeDataLengthMismatch},
	{tensor.ErrBadShape, CodeInvalidShape},
	{accel.ErrDTypeMismatch, CodeDTypeMismatch},
	{accel.ErrShapeMismatch, CodeShapeMismatch},
	{accel.ErrInputMismatch, CodeInputMismatch},
	{accel.ErrUnsupportedInput, CodeUnsupportedType},
	{accel.ErrUnsupportedOutput, CodeUnsupportedType},
	{accel.ErrInvalidModel, CodeInvalidModel},
	{accel.ErrSessionClosed, CodeUnavailable},
	{ErrModelNotFound, CodeModelNotFound},
	{ErrNodeNotFound, CodeNodeNotFound},
	{ErrTokenNotFound, CodeTokenNotFound},
	{ErrConflict, CodeConflict},
	{ErrInvalidName, CodeInvalidName},
	{ErrBadRequest, CodeBadRequest},
	{ErrRouteNotFound, CodeRouteNotFound},
	{ErrMethodNotAllowed, CodeMethodNotAllowed},
	{ErrUnauthorized, CodeUnauthorized},
	{ErrForbidden, CodeForbidden},
	{ErrNoReplica, CodeNoReplica},
	{ErrInsufficientCapacity, CodeInsufficientCapacity},
	{ErrNotReady, CodeNotReady},
	{ErrNotClusterMode, CodeNotClusterMode},
	{ErrContextExceeded, CodeContextExceeded},
	{ErrNotGenerative, CodeNotGenerative},
	{ErrInvalidMaxTokens, CodeInvalidMaxTokens},
	{ErrInvalidMessages, CodeInvalidMessages},
	{ErrInvalidParameter, CodeInvalidParameter},
	{tokenizer.ErrInvalid, CodeTokenizerInvalid},
	{ErrKVExhausted, CodeKVExhausted},
	{ErrCompressionFailed, CodeCompressionFailed},
	{context.DeadlineExceeded, CodeTimeout},
}

// Classify returns the catalogue entry for err. An error the catalogue does not know
// is internal: the client sees a generic message and the log keeps the detail.
func Classify(err error) Entry {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return catalogue[CodeBodyTooLarge]
	}
	for _, c := range classifiers {
		if errors.Is(err, c.err) {
			return catalogue[c.code]
		}
	}
	return catalogue[CodeInternal]
}

// Catalogue lists every entry, sorted by code, for documentation and tests.
func Catalogue() []Entry {
	out := make([]Entry, 0, len(catalogue))
	for _, e := range catalogue {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Code < out[j].Code })
	return out
}

// retryAfterSeconds is what a 503 tells a client to wait: long enough for a model
// load or a replica failover, short enough that a client does not give up.
const retryAfterSeconds = "2"

// body builds the JSON error body for err. Internal errors keep their detail out of
// the response: it can name files and peers.
func body(e Entry, err error) wire.ErrorBody {
	msg := err.Error()
	if e.Code == CodeInternal {
		msg = "internal error"
	}
	return wire.ErrorBody{Error: msg, Code: string(e.Code)}
}
