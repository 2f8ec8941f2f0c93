package gen

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// completionChunk is a chunk of a streamed /openai/v1/completions answer with the
// fields OpenAI's clients read.
type completionChunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index        int             `json:"index"`
		Text         string          `json:"text"`
		Logprobs     json.RawMessage `json:"logprobs"`
		FinishReason *string         `json:"finish_reason"`
	} `json:"choices"`
	Usage *usage `json:"usage"`
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// streamed is a whole streamed completion as the client saw it.
type streamed struct {
	text   string
	finish string
	usage  usage
	pieces int
}

// postJSON posts body to url with the admin token.
func postJSON(url, token string, body any) (*http.Response, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	return http.DefaultClient.Do(req)
}

// streamCompletion posts a streamed completion and reads it strictly: only
// `data: ...` records each ended by a blank line, every chunk a text_completion of
// the same id and model, one choice per text chunk and a finish reason only on the
// last, then the usage chunk (the request must ask for it), then `data: [DONE]` and
// the end of the body. onPiece runs as each text chunk arrives (i counts them from 1).
func streamCompletion(url, token string, body map[string]any, onPiece func(i int, at time.Time)) (streamed, error) {
	var out streamed
	resp, err := postJSON(url, token, body)
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		msg, _ := io.ReadAll(resp.Body)
		return out, fmt.Errorf("answer %s (%s): %s", resp.Status, resp.Header.Get("Content-Type"), msg)
	}
	var text strings.Builder
	var id string
	done := false
	err = readSSE(resp.Body, func(data string) error {
		if done {
			return fmt.Errorf("a record after [DONE]: %q", data)
		}
		if data == "[DONE]" {
			done = true
			return nil
		}
		var c completionChunk
		dec := json.NewDecoder(strings.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return fmt.Errorf("chunk %q: %w", data, err)
		}
		if id == "" {
			id = c.ID
		}
		if c.ID != id || !strings.HasPrefix(c.ID, "cmpl-") || c.Object != "text_completion" || c.Model != body["model"] || c.Created == 0 {
			return fmt.Errorf("chunk head %+v (first id %q)", c, id)
		}
		if out.finish != "" && len(c.Choices) != 0 {
			return fmt.Errorf("a text chunk after the finish reason: %q", data)
		}
		switch {
		case len(c.Choices) == 0 && c.Usage != nil:
			out.usage = *c.Usage
		case len(c.Choices) == 1 && c.Choices[0].Index == 0 && string(c.Choices[0].Logprobs) == "null":
			text.WriteString(c.Choices[0].Text)
			if f := c.Choices[0].FinishReason; f != nil {
				out.finish = *f
			} else {
				out.pieces++
				if onPiece != nil {
					onPiece(out.pieces, time.Now())
				}
			}
		default:
			return fmt.Errorf("chunk %q is neither text nor usage", data)
		}
		return nil
	})
	out.text = text.String()
	if err == nil && (!done || out.finish == "" || out.usage.CompletionTokens == 0) {
		err = fmt.Errorf("stream ended without finish reason, usage and [DONE] (finish %q, usage %+v, done %v)", out.finish, out.usage, done)
	}
	return out, err
}

// readSSE calls record with the data of each record of an event stream, refusing
// any line other than `data: ...` and blank lines.
func readSSE(r io.Reader, record func(data string) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	pending := ""
	have := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "" && have:
			if err := record(pending); err != nil {
				return err
			}
			have = false
		case line == "":
		case strings.HasPrefix(line, "data: ") && !have:
			pending, have = strings.TrimPrefix(line, "data: "), true
		default:
			return fmt.Errorf("not a `data: ` line of a server-sent event: %q", line)
		}
	}
	if have {
		return fmt.Errorf("record %q not ended by a blank line", pending)
	}
	return sc.Err()
}
