// Package client is the Go client of layermesh's HTTP API, used by meshctl and the
// system tests: KServe v2 inference (JSON and the binary tensor data extension),
// metadata and health, streamed model uploads with progress, and the admin calls.
// Failed calls return *Error, which carries the API's stable error code.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/layermesh/layermesh/api/wire"
)

// Error is a refusal from the API: the HTTP status and the catalogue's code.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code)
}

// ErrBadResponse means the server answered with something the client cannot read.
var ErrBadResponse = errors.New("unreadable response")

// IsCode reports whether err is an API refusal with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Client calls one node's API. It is safe for concurrent use.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// Option configures a Client.
type Option func(*Client)

// WithToken sends token as a bearer token on every call.
func WithToken(token string) Option { return func(c *Client) { c.token = strings.TrimSpace(token) } }

// WithHTTPClient uses hc (for TLS settings, timeouts or a test transport).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// New returns a client for addr: a URL ("http://host:port") or host:port, which
// means http.
func New(addr string, opts ...Option) (*Client, error) {
	if addr == "" {
		return nil, errors.New("client: empty address")
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("client: bad address %q", addr)
	}
	c := &Client{base: strings.TrimRight(u.String(), "/"), hc: http.DefaultClient}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// BaseURL is the API's base URL.
func (c *Client) BaseURL() string { return c.base }

// do sends a request and returns the response when its status is wanted; otherwise
// it decodes the error body into *Error and closes the response.
func (c *Client) do(ctx context.Context, method, path string, body io.Reader, size int64, hdr http.Header, want ...int) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = size
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	for _, w := range want {
		if resp.StatusCode == w {
			return resp, nil
		}
	}
	defer resp.Body.Close()
	return nil, decodeError(resp)
}

func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb wire.ErrorBody
	if err := json.Unmarshal(b, &eb); err != nil || eb.Code == "" {
		return &Error{Status: resp.StatusCode, Code: "http_" + strconv.Itoa(resp.StatusCode), Message: strings.TrimSpace(string(b))}
	}
	return &Error{Status: resp.StatusCode, Code: eb.Code, Message: eb.Error}
}

// getJSON GETs path into v, accepting the given statuses (200 when none).
func (c *Client) getJSON(ctx context.Context, path string, v any, want ...int) (int, error) {
	if len(want) == 0 {
		want = []int{http.StatusOK}
	}
	resp, err := c.do(ctx, http.MethodGet, path, nil, 0, nil, want...)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return resp.StatusCode, fmt.Errorf("%w: %s: %w", ErrBadResponse, path, err)
	}
	return resp.StatusCode, nil
}

func modelPath(name, version string) string {
	p := "/v2/models/" + url.PathEscape(name)
	if version != "" {
		p += "/versions/" + url.PathEscape(version)
	}
	return p
}

// Live reports whether the node answers at all.
func (c *Client) Live(ctx context.Context) error {
	var r wire.Readiness
	_, err := c.getJSON(ctx, "/v2/health/live", &r)
	return err
}

// Ready returns the node's readiness, layer by layer; a node that is not ready is
// not an error.
func (c *Client) Ready(ctx context.Context) (wire.Readiness, error) {
	var r wire.Readiness
	_, err := c.getJSON(ctx, "/v2/health/ready", &r, http.StatusOK, http.StatusServiceUnavailable)
	return r, err
}

// ServerMetadata is GET /v2.
func (c *Client) ServerMetadata(ctx context.Context) (wire.ServerMetadata, error) {
	var m wire.ServerMetadata
	_, err := c.getJSON(ctx, "/v2", &m)
	return m, err
}

// ModelMetadata is GET /v2/models/{name}[/versions/{version}].
func (c *Client) ModelMetadata(ctx context.Context, name, version string) (wire.ModelMetadata, error) {
	var m wire.ModelMetadata
	_, err := c.getJSON(ctx, modelPath(name, version), &m)
	return m, err
}

// ModelReady is GET /v2/models/{name}[/versions/{version}]/ready.
func (c *Client) ModelReady(ctx context.Context, name, version string) (wire.ModelReadiness, error) {
	var m wire.ModelReadiness
	_, err := c.getJSON(ctx, modelPath(name, version)+"/ready", &m, http.StatusOK, http.StatusServiceUnavailable)
	return m, err
}

// InferOptions tune one inference call.
type InferOptions struct {
	// Version of the model; "" means the latest.
	Version string
	// BinaryInputs sends the inputs with the binary tensor data extension.
	BinaryInputs bool
	// Buffer, when its capacity holds the response body, receives it instead of a
	// fresh allocation; the response's binary tensors then alias Buffer, so the
	// caller reuses it only once done with them. For a large output (a GPT's 25 MB
	// of logits) this saves the page faults of a new buffer on every call.
	Buffer []byte
}

// Infer runs model on req. Outputs come back in binary where req asks for it
// (OutputRequest.Binary or Request.BinaryOutputs); the response's tensors then slice
// one buffer holding the whole body.
func (c *Client) Infer(ctx context.Context, model string, req *wire.Request, opts InferOptions) (*wire.Response, error) {
	header, chunks, err := wire.EncodeRequest(req, opts.BinaryInputs)
	if err != nil {
		return nil, err
	}
	readers := make([]io.Reader, 0, 1+len(chunks))
	readers = append(readers, bytes.NewReader(header))
	size := int64(len(header))
	for _, ch := range chunks {
		readers = append(readers, bytes.NewReader(ch))
		size += int64(len(ch))
	}
	hdr := http.Header{}
	if len(chunks) > 0 {
		hdr.Set(wire.HeaderContentLength, strconv.Itoa(len(header)))
		hdr.Set("Content-Type", wire.ContentTypeBinary)
	} else {
		hdr.Set("Content-Type", "application/json")
	}
	resp, err := c.do(ctx, http.MethodPost, modelPath(model, opts.Version)+"/infer", io.MultiReader(readers...), size, hdr, http.StatusOK)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body []byte
	if resp.ContentLength >= 0 {
		if int64(cap(opts.Buffer)) >= resp.ContentLength {
			body = opts.Buffer[:resp.ContentLength]
		} else {
			body = make([]byte, resp.ContentLength)
		}
		_, err = io.ReadFull(resp.Body, body)
	} else {
		body, err = io.ReadAll(resp.Body)
	}
	if err != nil {
		return nil, fmt.Errorf("reading inference response: %w", err)
	}
	headerLen, err := wire.ParseHeaderLength(resp.Header.Get(wire.HeaderContentLength))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	out, err := wire.DecodeResponse(body, headerLen)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	return out, nil
}

// UploadOptions tune a model upload.
type UploadOptions struct {
	// Stages and Replicas are the deploy's plan; 0 lets the cluster choose.
	Stages   int
	Replicas int
	// State declares the model's state pairs, each "IN=OUT"; none lets the cluster
	// detect them by name.
	State []string
	// Progress, when set, is called as bytes go out (sent so far, total; total is -1
	// when unknown).
	Progress func(sent, total int64)
	// Tokenizer (a tokenizer.json) and ChatTemplate (a Go template) go with a model
	// that generates text; the upload is then multipart/form-data.
	Tokenizer    []byte
	ChatTemplate string
	// Compress asks the receiving node to compress the model before it plans; the
	// zero value deploys it as it is.
	Compress CompressOptions
	// Plan says what the planner balances; the zero value balances FLOPs.
	Plan PlanOptions
}

// PlanOptions say what a deploy's planner balances (wire.PlanOptions).
type PlanOptions = wire.PlanOptions

// Plan bases (wire.PlanFLOPs, wire.PlanMeasured).
const (
	PlanFLOPs    = wire.PlanFLOPs
	PlanMeasured = wire.PlanMeasured
)

// CompressOptions are a deploy's compression (wire.CompressOptions).
type CompressOptions = wire.CompressOptions

// compressQuery adds the options of o that are set to q.
func compressQuery(o CompressOptions, q url.Values) {
	if o.Quantize != "" {
		q.Set("compress", o.Quantize)
	}
	for key, v := range map[string]int{"block_size": o.BlockSize, "verify": o.Verify} {
		if v > 0 {
			q.Set(key, strconv.Itoa(v))
		}
	}
	for key, v := range map[string]float64{"prune": o.Prune, "max_error": o.MaxError, "min_agreement": o.MinAgreement} {
		if v > 0 {
			q.Set(key, strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	for key, v := range map[string]bool{"symmetric": o.Symmetric, "prune_global": o.PruneGlobal} {
		if v {
			q.Set(key, "true")
		}
	}
}

// UploadModel streams an ONNX model to PUT /v1/models/{name}. size is the model's
// length (-1 if unknown; a known size lets the node refuse an oversized model at
// once).
func (c *Client) UploadModel(ctx context.Context, name string, r io.Reader, size int64, opts UploadOptions) (wire.ModelStatus, error) {
	q := url.Values{}
	if opts.Stages > 0 {
		q.Set("stages", strconv.Itoa(opts.Stages))
	}
	if opts.Replicas > 0 {
		q.Set("replicas", strconv.Itoa(opts.Replicas))
	}
	for _, s := range opts.State {
		q.Add("state", s)
	}
	compressQuery(opts.Compress, q)
	if opts.Plan.Basis != "" {
		q.Set("plan", opts.Plan.Basis)
	}
	if opts.Plan.Past > 0 {
		q.Set("plan_past", strconv.Itoa(opts.Plan.Past))
	}
	path := "/v1/models/" + url.PathEscape(name)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	hdr := http.Header{"Content-Type": {"application/octet-stream"}}
	if opts.Tokenizer != nil || opts.ChatTemplate != "" {
		var err error
		if r, size, hdr, err = multipartDeploy(r, size, opts); err != nil {
			return wire.ModelStatus{}, err
		}
	}
	if opts.Progress != nil {
		r = &progressReader{r: r, total: size, fn: opts.Progress}
	}
	resp, err := c.do(ctx, http.MethodPut, path, r, size, hdr, http.StatusCreated, http.StatusOK)
	if err != nil {
		return wire.ModelStatus{}, err
	}
	defer resp.Body.Close()
	var st wire.ModelStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return wire.ModelStatus{}, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	return st, nil
}

// multipartDeploy frames a deploy as multipart/form-data: the tokenizer and chat
// template parts first, the model last so the node can stream it. The framing is
// built around the model's reader, so a known model size gives a known body size.
func multipartDeploy(model io.Reader, size int64, opts UploadOptions) (io.Reader, int64, http.Header, error) {
	var head bytes.Buffer
	mw := multipart.NewWriter(&head)
	if opts.Tokenizer != nil {
		if err := writePart(mw, "tokenizer", "tokenizer.json", opts.Tokenizer); err != nil {
			return nil, 0, nil, err
		}
	}
	if opts.ChatTemplate != "" {
		if err := writePart(mw, "chat_template", "chat.tmpl", []byte(opts.ChatTemplate)); err != nil {
			return nil, 0, nil, err
		}
	}
	if _, err := mw.CreateFormFile("model", "model.onnx"); err != nil {
		return nil, 0, nil, err
	}
	prefix := bytes.Clone(head.Bytes())
	head.Reset()
	if err := mw.Close(); err != nil {
		return nil, 0, nil, err
	}
	suffix := head.Bytes()
	total := int64(-1)
	if size >= 0 {
		total = int64(len(prefix)) + size + int64(len(suffix))
	}
	hdr := http.Header{"Content-Type": {mw.FormDataContentType()}}
	return io.MultiReader(bytes.NewReader(prefix), model, bytes.NewReader(suffix)), total, hdr, nil
}

func writePart(mw *multipart.Writer, field, file string, data []byte) error {
	w, err := mw.CreateFormFile(field, file)
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

type progressReader struct {
	r     io.Reader
	sent  int64
	total int64
	fn    func(sent, total int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.sent += int64(n)
		p.fn(p.sent, p.total)
	}
	return n, err
}

// DeleteModel is DELETE /v1/models/{name}.
func (c *Client) DeleteModel(ctx context.Context, name string) error {
	resp, err := c.do(ctx, http.MethodDelete, "/v1/models/"+url.PathEscape(name), nil, 0, nil, http.StatusNoContent, http.StatusOK)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// Models is GET /v1/models.
func (c *Client) Models(ctx context.Context) ([]wire.ModelStatus, error) {
	var l wire.ModelList
	_, err := c.getJSON(ctx, "/v1/models", &l)
	return l.Models, err
}

// Model is GET /v1/models/{name}: status and plan.
func (c *Client) Model(ctx context.Context, name string) (wire.ModelStatus, error) {
	var st wire.ModelStatus
	_, err := c.getJSON(ctx, "/v1/models/"+url.PathEscape(name), &st)
	return st, err
}

// Cluster is GET /v1/cluster.
func (c *Client) Cluster(ctx context.Context) (wire.ClusterStatus, error) {
	var st wire.ClusterStatus
	_, err := c.getJSON(ctx, "/v1/cluster", &st)
	return st, err
}

// Nodes is GET /v1/nodes.
func (c *Client) Nodes(ctx context.Context) ([]wire.NodeStatus, error) {
	var l wire.NodeList
	_, err := c.getJSON(ctx, "/v1/nodes", &l)
	return l.Nodes, err
}

// DrainNode is POST /v1/nodes/{name}/drain.
func (c *Client) DrainNode(ctx context.Context, name string) error {
	resp, err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/drain", nil, 0, nil, http.StatusNoContent, http.StatusOK, http.StatusAccepted)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// RemoveNode is DELETE /v1/nodes/{name}.
func (c *Client) RemoveNode(ctx context.Context, name string) error {
	resp, err := c.do(ctx, http.MethodDelete, "/v1/nodes/"+url.PathEscape(name), nil, 0, nil, http.StatusNoContent, http.StatusOK)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// UndrainNode is POST /v1/nodes/{name}/undrain: the node may take stages again.
func (c *Client) UndrainNode(ctx context.Context, name string) error {
	resp, err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/undrain", nil, 0, nil, http.StatusNoContent, http.StatusOK)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// Doctor is GET /v1/doctor: why the answering node can or cannot see each target
// (node names, peer ids or addresses; none means every peer it knows of).
func (c *Client) Doctor(ctx context.Context, targets ...string) (wire.DoctorReport, error) {
	q := url.Values{}
	for _, t := range targets {
		q.Add("target", t)
	}
	path := "/v1/doctor"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var rep wire.DoctorReport
	_, err := c.getJSON(ctx, path, &rep)
	return rep, err
}

// JoinToken is GET /v1/join-token: the cluster secret and seed addresses.
func (c *Client) JoinToken(ctx context.Context) (wire.JoinToken, error) {
	var jt wire.JoinToken
	_, err := c.getJSON(ctx, "/v1/join-token", &jt)
	return jt, err
}

// CreateToken is POST /v1/tokens. The answer holds the secret, shown this once.
func (c *Client) CreateToken(ctx context.Context, scope, name string) (wire.TokenCreated, error) {
	b, err := json.Marshal(wire.TokenRequest{Scope: scope, Name: name})
	if err != nil {
		return wire.TokenCreated{}, err
	}
	hdr := http.Header{"Content-Type": {"application/json"}}
	resp, err := c.do(ctx, http.MethodPost, "/v1/tokens", bytes.NewReader(b), int64(len(b)), hdr, http.StatusCreated)
	if err != nil {
		return wire.TokenCreated{}, err
	}
	defer resp.Body.Close()
	var tok wire.TokenCreated
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil {
		return wire.TokenCreated{}, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	return tok, nil
}

// Tokens is GET /v1/tokens.
func (c *Client) Tokens(ctx context.Context) ([]wire.TokenInfo, error) {
	var l wire.TokenList
	_, err := c.getJSON(ctx, "/v1/tokens", &l)
	return l.Tokens, err
}

// RevokeToken is DELETE /v1/tokens/{id}.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	resp, err := c.do(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(id), nil, 0, nil, http.StatusNoContent, http.StatusOK)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// Metrics is GET /metrics, Prometheus' text format.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	resp, err := c.do(ctx, http.MethodGet, "/metrics", nil, 0, nil, http.StatusOK)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return string(b), err
}
