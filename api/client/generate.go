package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/layermesh/layermesh/api/wire"
)

// Generate asks model for text after req.TextInput and waits for all of it
// (POST /v2/models/{name}/generate).
func (c *Client) Generate(ctx context.Context, model, version string, req wire.GenerateRequest) (wire.GenerateResponse, error) {
	var out wire.GenerateResponse
	resp, err := c.postJSON(ctx, modelPath(model, version)+"/generate", req)
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return out, fmt.Errorf("%w: generate: %w", ErrBadResponse, err)
	}
	return out, nil
}

// GenerateStream asks model for text and calls onEvent with each event of the stream
// as it arrives (POST /v2/models/{name}/generate_stream); the last event has the
// FinishReason. An error event from the node, after the stream began, is returned as
// *Error. An error from onEvent stops reading and closes the stream, which ends the
// generation on the node.
func (c *Client) GenerateStream(ctx context.Context, model, version string, req wire.GenerateRequest, onEvent func(wire.GenerateResponse) error) error {
	resp, err := c.postJSON(ctx, modelPath(model, version)+"/generate_stream", req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue // blank separators, comments and fields this client has no use for
		}
		var ev struct {
			wire.GenerateResponse
			Error string `json:"error"`
			Code  string `json:"code"`
		}
		if err := json.NewDecoder(bytes.NewReader([]byte(data))).Decode(&ev); err != nil {
			return fmt.Errorf("%w: generate_stream event %q: %w", ErrBadResponse, data, err)
		}
		if ev.Error != "" {
			return &Error{Status: resp.StatusCode, Code: ev.Code, Message: ev.Error}
		}
		if err := onEvent(ev.GenerateResponse); err != nil {
			return err
		}
		if ev.FinishReason != "" {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: generate_stream ended without a finish reason", ErrBadResponse)
}

// postJSON POSTs v as JSON and returns a 200 response.
func (c *Client) postJSON(ctx context.Context, path string, v any) (*http.Response, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	hdr := http.Header{"Content-Type": {"application/json"}}
	return c.do(ctx, http.MethodPost, path, bytes.NewReader(b), int64(len(b)), hdr, http.StatusOK)
}
