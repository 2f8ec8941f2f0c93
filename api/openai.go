package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/tokenizer"
)

// The OpenAI-compatible API lives under /openai/v1 (/v1 is the admin API), so the
// official clients work with base_url=http://node:port/openai/v1. Its answers have the
// exact shapes of OpenAI's, fields the clients read and no others.

// openAIPrefix marks the routes whose errors take OpenAI's error envelope.
const openAIPrefix = "/openai/"

// completionsDefaultMax is OpenAI's default max_tokens for /completions; chat takes
// the rest of the context.
const completionsDefaultMax = 16

// openAICommon are the request fields completions and chat share.
type openAICommon struct {
	Model               string          `json:"model"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Temperature         *float32        `json:"temperature"`
	TopP                *float32        `json:"top_p"`
	TopK                *int            `json:"top_k"`
	N                   *int            `json:"n"`
	Seed                *int64          `json:"seed"`
	Stop                json.RawMessage `json:"stop"`
	Stream              bool            `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Logprobs         json.RawMessage `json:"logprobs"`
	PresencePenalty  *float32        `json:"presence_penalty"`
	FrequencyPenalty *float32        `json:"frequency_penalty"`
}

type completionRequest struct {
	openAICommon
	Prompt json.RawMessage `json:"prompt"`
	Echo   bool            `json:"echo"`
	BestOf *int            `json:"best_of"`
	Suffix *string         `json:"suffix"`
}

type chatRequest struct {
	openAICommon
	Messages []chatMessageIn `json:"messages"`
}

type chatMessageIn struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// textRequest turns the shared fields into a textRequest, refusing what this server
// does not do rather than ignoring it.
func (c *openAICommon) textRequest() (textRequest, error) {
	tr := textRequest{Model: c.Model, MaxTokens: c.MaxTokens, Temperature: c.Temperature, TopP: c.TopP}
	if c.MaxCompletionTokens != nil {
		tr.MaxTokens = c.MaxCompletionTokens
	}
	if c.TopK != nil {
		tr.TopK = *c.TopK
	}
	if c.Seed != nil {
		seed := uint64(*c.Seed)
		tr.Seed = &seed
	}
	switch {
	case c.N != nil && *c.N != 1:
		return tr, fmt.Errorf("%w: n=%d; only one choice per request", ErrInvalidParameter, *c.N)
	case !isNullOrAbsent(c.Logprobs) && string(c.Logprobs) != "false" && string(c.Logprobs) != "0":
		return tr, fmt.Errorf("%w: logprobs are not supported", ErrInvalidParameter)
	case c.PresencePenalty != nil && *c.PresencePenalty != 0, c.FrequencyPenalty != nil && *c.FrequencyPenalty != 0:
		return tr, fmt.Errorf("%w: presence and frequency penalties are not supported", ErrInvalidParameter)
	case c.StreamOptions != nil && !c.Stream:
		return tr, fmt.Errorf("%w: stream_options needs stream: true", ErrInvalidParameter)
	}
	stop, err := stringOrList(c.Stop, "stop")
	if err != nil {
		return tr, err
	}
	tr.Stop = stop
	return tr, nil
}

func isNullOrAbsent(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

// stringOrList reads a field that is a string, a list of strings, or null.
func stringOrList(raw json.RawMessage, field string) ([]string, error) {
	if isNullOrAbsent(raw) {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("%w: %s is neither a string nor a list of strings", ErrInvalidParameter, field)
	}
	return list, nil
}

// parsePrompt reads a completions prompt: a string, a list of token ids, or a list
// holding one of those. A batch of prompts is refused: one prompt per request.
func parsePrompt(raw json.RawMessage, tr *textRequest) error {
	if isNullOrAbsent(raw) {
		return fmt.Errorf("%w: prompt is required", ErrInvalidParameter)
	}
	var text string
	if err := json.Unmarshal(raw, &text); err == nil {
		tr.Prompt = text
		return nil
	}
	var ids []int32
	if err := json.Unmarshal(raw, &ids); err == nil {
		tr.PromptIDs = ids
		return nil
	}
	var batch []json.RawMessage
	if err := json.Unmarshal(raw, &batch); err != nil {
		return fmt.Errorf("%w: prompt is neither text nor token ids", ErrInvalidParameter)
	}
	if len(batch) != 1 {
		return fmt.Errorf("%w: %d prompts; one prompt per request", ErrInvalidParameter, len(batch))
	}
	if err := json.Unmarshal(batch[0], &text); err == nil {
		tr.Prompt = text
		return nil
	}
	if err := json.Unmarshal(batch[0], &ids); err == nil {
		tr.PromptIDs = ids
		return nil
	}
	return fmt.Errorf("%w: prompt is neither text nor token ids", ErrInvalidParameter)
}

// chatRoles are the roles a chat template may see.
var chatRoles = map[string]bool{"system": true, "developer": true, "user": true, "assistant": true}

// parseMessages checks chat messages: a known role and text content, as a string or
// a list of text parts.
func parseMessages(in []chatMessageIn) ([]tokenizer.ChatMessage, error) {
	if len(in) == 0 {
		return nil, fmt.Errorf("%w: messages is empty", ErrInvalidMessages)
	}
	out := make([]tokenizer.ChatMessage, len(in))
	for i, m := range in {
		if !chatRoles[m.Role] {
			return nil, fmt.Errorf("%w: message %d has role %q (want system, developer, user or assistant)", ErrInvalidMessages, i, m.Role)
		}
		content, err := messageText(m.Content)
		if err != nil {
			return nil, fmt.Errorf("%w: message %d: %w", ErrInvalidMessages, i, err)
		}
		out[i] = tokenizer.ChatMessage{Role: m.Role, Content: content}
	}
	return out, nil
}

func messageText(raw json.RawMessage) (string, error) {
	if isNullOrAbsent(raw) {
		return "", errors.New("content is missing")
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", errors.New("content is neither text nor a list of parts")
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type != "text" || p.Text == nil {
			return "", fmt.Errorf("content part of type %q; only text parts are supported", p.Type)
		}
		b.WriteString(*p.Text)
	}
	return b.String(), nil
}

// decodeJSONBody reads a bounded JSON body into v.
func (s *Server) decodeJSONBody(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%w: %w", wire.ErrBadJSON, err)
	}
	return nil
}

func (s *Server) handleCompletions(w http.ResponseWriter, r *http.Request) error {
	var req completionRequest
	if err := s.decodeJSONBody(w, r, &req); err != nil {
		return err
	}
	tr, err := req.textRequest()
	if err != nil {
		return err
	}
	switch {
	case req.Echo:
		return fmt.Errorf("%w: echo is not supported", ErrInvalidParameter)
	case req.BestOf != nil && *req.BestOf != 1:
		return fmt.Errorf("%w: best_of is not supported", ErrInvalidParameter)
	case req.Suffix != nil && *req.Suffix != "":
		return fmt.Errorf("%w: suffix is not supported", ErrInvalidParameter)
	}
	if err := parsePrompt(req.Prompt, &tr); err != nil {
		return err
	}
	tr.DefaultMax = completionsDefaultMax
	return s.answerOpenAI(w, r, tr, &req.openAICommon, completionShape)
}

func (s *Server) handleChatCompletions(w http.ResponseWriter, r *http.Request) error {
	var req chatRequest
	if err := s.decodeJSONBody(w, r, &req); err != nil {
		return err
	}
	tr, err := req.textRequest()
	if err != nil {
		return err
	}
	if tr.Messages, err = parseMessages(req.Messages); err != nil {
		return err
	}
	return s.answerOpenAI(w, r, tr, &req.openAICommon, chatShape)
}

// answerOpenAI prepares the generation (every refusal happens here, as a plain error
// answer) and then answers in one body or as a stream.
func (s *Server) answerOpenAI(w http.ResponseWriter, r *http.Request, tr textRequest, c *openAICommon, shape openAIShape) error {
	p, err := s.prepareText(r.Context(), tr)
	if err != nil {
		return err
	}
	head := openAIHead{ID: shape.idPrefix + RequestID(r.Context()), Created: time.Now().Unix(), Model: c.Model}
	if !c.Stream {
		var text strings.Builder
		res, err := s.runText(r.Context(), p, func(t string) error { text.WriteString(t); return nil })
		if err != nil {
			return err
		}
		head.Object = shape.object
		writeJSON(w, http.StatusOK, shape.whole(head, text.String(), res))
		return nil
	}
	head.Object = shape.chunkObject
	includeUsage := c.StreamOptions != nil && c.StreamOptions.IncludeUsage
	return s.streamOpenAI(w, r, p, head, shape, includeUsage)
}

// streamOpenAI sends one chunk per piece of text, a last chunk with the finish
// reason, optionally a usage chunk, and `data: [DONE]`.
func (s *Server) streamOpenAI(w http.ResponseWriter, r *http.Request, p *preparedText, head openAIHead, shape openAIShape, includeUsage bool) error {
	st := newSSEStream(w)
	var usage json.RawMessage
	if includeUsage {
		usage = json.RawMessage("null")
	}
	first := true
	send := func(text string, finish *string) error {
		err := st.send(shape.chunk(head, text, finish, first, usage))
		first = false
		return err
	}
	res, err := s.runText(r.Context(), p, func(text string) error { return send(text, nil) })
	if err != nil {
		return s.endStreamWithError(st, r, err)
	}
	finish := res.FinishReason
	if err := send("", &finish); err != nil {
		return nil // the client is gone; the generation has ended already
	}
	if includeUsage {
		u, _ := json.Marshal(usageOf(res))
		if err := st.send(shape.usageChunk(head, u)); err != nil {
			return nil
		}
	}
	_ = st.sendRaw([]byte("[DONE]"))
	return nil
}

// endStreamWithError reports an error that came after the answer started as a last
// event (OpenAI's clients raise it); before that, it is an ordinary error answer.
func (s *Server) endStreamWithError(st *sseStream, r *http.Request, err error) error {
	if !st.started {
		return err
	}
	e := Classify(err)
	s.log.Debug("generation ended early", "path", r.URL.Path, "request", RequestID(r.Context()), "code", e.Code, "err", err)
	if r.Context().Err() == nil {
		_ = st.send(openAIError(e, err))
	}
	return nil
}

// openAIHead are the fields every answer and chunk starts with.
type openAIHead struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
}

type openAIUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func usageOf(res textResult) openAIUsage {
	return openAIUsage{res.PromptTokens, res.CompletionTokens, res.PromptTokens + res.CompletionTokens}
}

// openAIShape builds one endpoint's bodies: /completions and /chat/completions differ
// only in object names and in how a choice carries its text.
type openAIShape struct {
	idPrefix, object, chunkObject string
	whole                         func(h openAIHead, text string, res textResult) any
	chunk                         func(h openAIHead, text string, finish *string, first bool, usage json.RawMessage) any
	usageChunk                    func(h openAIHead, usage json.RawMessage) any
}

type completionChoice struct {
	Index        int             `json:"index"`
	Text         string          `json:"text"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason *string         `json:"finish_reason"`
}

type completionBody struct {
	openAIHead
	Choices []completionChoice `json:"choices"`
	Usage   json.RawMessage    `json:"usage,omitempty"`
}

type chatOut struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

type chatChoice struct {
	Index        int             `json:"index"`
	Message      *chatOut        `json:"message,omitempty"`
	Delta        *chatOut        `json:"delta,omitempty"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason *string         `json:"finish_reason"`
}

type chatBody struct {
	openAIHead
	Choices []chatChoice    `json:"choices"`
	Usage   json.RawMessage `json:"usage,omitempty"`
}

var null = json.RawMessage("null")

func mustUsage(res textResult) json.RawMessage {
	b, _ := json.Marshal(usageOf(res)) // a struct of ints always marshals
	return b
}

var completionShape = openAIShape{
	idPrefix: "cmpl-", object: "text_completion", chunkObject: "text_completion",
	whole: func(h openAIHead, text string, res textResult) any {
		return completionBody{h, []completionChoice{{Text: text, Logprobs: null, FinishReason: &res.FinishReason}}, mustUsage(res)}
	},
	chunk: func(h openAIHead, text string, finish *string, _ bool, usage json.RawMessage) any {
		return completionBody{h, []completionChoice{{Text: text, Logprobs: null, FinishReason: finish}}, usage}
	},
	usageChunk: func(h openAIHead, usage json.RawMessage) any {
		return completionBody{h, []completionChoice{}, usage}
	},
}

var chatShape = openAIShape{
	idPrefix: "chatcmpl-", object: "chat.completion", chunkObject: "chat.completion.chunk",
	whole: func(h openAIHead, text string, res textResult) any {
		msg := &chatOut{Role: "assistant", Content: &text}
		return chatBody{h, []chatChoice{{Message: msg, Logprobs: null, FinishReason: &res.FinishReason}}, mustUsage(res)}
	},
	chunk: func(h openAIHead, text string, finish *string, first bool, usage json.RawMessage) any {
		delta := &chatOut{}
		if first {
			delta.Role = "assistant"
		}
		if finish == nil || first {
			delta.Content = &text
		}
		return chatBody{h, []chatChoice{{Delta: delta, Logprobs: null, FinishReason: finish}}, usage}
	},
	usageChunk: func(h openAIHead, usage json.RawMessage) any {
		return chatBody{h, []chatChoice{}, usage}
	},
}

// openAIErrorBody is OpenAI's error envelope; code is the catalogue's code.
type openAIErrorBody struct {
	Error openAIErrorDetail `json:"error"`
}

type openAIErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

func openAIError(e Entry, err error) openAIErrorBody {
	b := body(e, err)
	typ := "invalid_request_error"
	if e.Status >= 500 {
		typ = "server_error"
	}
	return openAIErrorBody{openAIErrorDetail{Message: b.Error, Type: typ, Code: b.Code}}
}

// openAIModel is one entry of GET /openai/v1/models.
type openAIModel struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func toOpenAIModel(st wire.ModelStatus) openAIModel {
	var created int64
	if !st.LoadedAt.IsZero() {
		created = st.LoadedAt.Unix()
	}
	return openAIModel{ID: st.Name, Object: "model", Created: created, OwnedBy: "layermesh"}
}

// handleOpenAIModels lists the models that can generate: those with a tokenizer.
func (s *Server) handleOpenAIModels(w http.ResponseWriter, r *http.Request) error {
	models, err := s.cfg.Models.ListModels(r.Context())
	if err != nil {
		return err
	}
	list := struct {
		Object string        `json:"object"`
		Data   []openAIModel `json:"data"`
	}{Object: "list", Data: []openAIModel{}}
	for _, m := range models {
		if s.generative(r, m.Name) {
			list.Data = append(list.Data, toOpenAIModel(m))
		}
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) handleOpenAIModel(w http.ResponseWriter, r *http.Request) error {
	st, err := s.cfg.Models.ModelStatus(r.Context(), r.PathValue("name"), "")
	if err != nil {
		return err
	}
	if !s.generative(r, st.Name) {
		return fmt.Errorf("%w: %s", ErrNotGenerative, st.Name)
	}
	writeJSON(w, http.StatusOK, toOpenAIModel(st))
	return nil
}

func (s *Server) generative(r *http.Request, model string) bool {
	if s.cfg.Text == nil || s.cfg.Generator == nil {
		return false
	}
	_, err := s.cfg.Text.ModelText(r.Context(), model, "")
	return err == nil
}
