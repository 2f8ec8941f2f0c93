package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/node"
	"github.com/layermesh/layermesh/tokenizer"
)

// The generation routes are tested here against scriptedGenerator, a deterministic
// Generator that stands in for the mesh in these unit tests only: it "generates" a
// fixed list of token ids. The tokenizer is the real GPT-2 one, whose ids are checked
// against a reference in package tokenizer.

// scriptedGenerator emits script's ids in order, honouring MaxTokens and StopTokens
// (it emits a stop sequence's tokens, then ends). A nil script never ends by itself.
type scriptedGenerator struct {
	contextLen int
	script     []int32

	mu    sync.Mutex
	calls []api.GenerateRequest
	// ended receives how each Generate ended: emit's error, or nil.
	ended chan error
}

func newScripted(contextLen int, script []int32) *scriptedGenerator {
	return &scriptedGenerator{contextLen: contextLen, script: script, ended: make(chan error, 64)}
}

// endlessToken is what a scriptless generator emits: " the".
const endlessToken = 262

func (g *scriptedGenerator) Generate(ctx context.Context, req api.GenerateRequest, emit func(api.GeneratedToken) error) (api.GenerateResult, error) {
	g.mu.Lock()
	g.calls = append(g.calls, req)
	g.mu.Unlock()
	res := api.GenerateResult{PromptTokens: len(req.Prompt), FinishReason: "length"}
	var out []int32
	for i := 0; res.CompletionTokens < req.MaxTokens; i++ {
		id := int32(endlessToken)
		if g.script != nil {
			if i >= len(g.script) {
				res.FinishReason = "stop"
				break
			}
			id = g.script[i]
		} else {
			time.Sleep(time.Millisecond) // a step of a real model takes time too
		}
		if err := emit(api.GeneratedToken{ID: id, Index: i}); err != nil {
			g.ended <- err
			return res, fmt.Errorf("generation ended by its consumer: %w", err)
		}
		res.CompletionTokens++
		out = append(out, id)
		if slices.ContainsFunc(req.StopTokens, func(s []int32) bool { return len(s) > 0 && endsWith(out, s) }) {
			res.FinishReason = "stop"
			break
		}
	}
	g.ended <- nil
	return res, nil
}

func endsWith(ids, suffix []int32) bool {
	return len(ids) >= len(suffix) && slices.Equal(ids[len(ids)-len(suffix):], suffix)
}

func (g *scriptedGenerator) ModelContext(ctx context.Context, model, version string) (int, error) {
	return g.contextLen, nil
}

func (g *scriptedGenerator) requests() []api.GenerateRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.calls)
}

// The non-generation services, as far as the generation routes use them. Embedding
// the interface makes any other call panic, which the test would see as a 500.
type genModels struct{ api.ModelService }

var genModelNames = []string{"gpt", "add"}

func (genModels) ListModels(ctx context.Context) ([]wire.ModelStatus, error) {
	var out []wire.ModelStatus
	for _, n := range genModelNames {
		out = append(out, wire.ModelStatus{Name: n, Version: "1", Ready: true, LoadedAt: time.Unix(1700000000, 0)})
	}
	return out, nil
}

func (genModels) ModelStatus(ctx context.Context, name, version string) (wire.ModelStatus, error) {
	if !slices.Contains(genModelNames, name) || (version != "" && version != "1") {
		return wire.ModelStatus{}, fmt.Errorf("%w: %s version %q", api.ErrModelNotFound, name, version)
	}
	return wire.ModelStatus{Name: name, Version: "1", Ready: true, LoadedAt: time.Unix(1700000000, 0)}, nil
}

type genHealth struct{ api.HealthService }
type genCluster struct{ api.ClusterService }

// The tokens genTokens knows.
const (
	inferToken = "infer-secret"
	adminToken = "admin-secret"
)

type genTokens struct{}

func (genTokens) VerifyToken(ctx context.Context, token string) (api.Scope, error) {
	switch token {
	case inferToken:
		return api.ScopeInfer, nil
	case adminToken:
		return api.ScopeAdmin, nil
	}
	return "", api.ErrUnauthorized
}

// genTextVersion is the version genModels and genText resolve "gpt" to.
const genTextVersion = "1"

// genText serves "gpt" (its version genTextVersion) with GPT-2's tokenizer; "add" is a
// model without one.
type genText struct{ gpt2 *tokenizer.Tokenizer }

func (t genText) ModelText(ctx context.Context, model, version string) (api.ModelText, error) {
	switch model {
	case "gpt":
		if version != "" && version != genTextVersion {
			return api.ModelText{}, fmt.Errorf("%w: gpt has no version %s", api.ErrModelNotFound, version)
		}
		return api.ModelText{Version: genTextVersion, Tokenizer: t.gpt2}, nil
	case "add":
		return api.ModelText{}, fmt.Errorf("%w: %s has no tokenizer", api.ErrNotGenerative, model)
	}
	return api.ModelText{}, fmt.Errorf("%w: %s", api.ErrModelNotFound, model)
}

var gpt2Once = sync.OnceValues(func() (*tokenizer.Tokenizer, error) {
	return tokenizer.Load("../third_party/tokenizers/gpt2")
})

func gpt2(t testing.TB) *tokenizer.Tokenizer {
	t.Helper()
	tok, err := gpt2Once()
	if err != nil {
		t.Fatalf("GPT-2 tokenizer (make setup fetches it): %v", err)
	}
	return tok
}

// genLimits are the server's limits in these tests, small enough to reach.
const (
	genMaxTokens  = 64
	genMaxBody    = 1 << 14
	genContextLen = 32
)

// startGenServer serves the API over real HTTP on 127.0.0.1 with gen behind it.
func startGenServer(t *testing.T, gen api.Generator) string {
	t.Helper()
	srv, err := api.New(api.Config{
		Models: genModels{}, Health: genHealth{}, Cluster: genCluster{}, Tokens: genTokens{},
		Generator: gen, Text: genText{gpt2(t)}, RequireInferToken: true,
		MaxTokens: genMaxTokens, MaxBodyBytes: genMaxBody, Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return hs.URL
}

func post(t *testing.T, ctx context.Context, url, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+inferToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// readSSE reads a whole event stream: the data of each event, in order. It insists
// on the framing: only `data: ` lines, each event ended by a blank line.
func readSSE(t *testing.T, resp *http.Response) []string {
	t.Helper()
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("Content-Type %q (status %d, body %s), want text/event-stream", ct, resp.StatusCode, b)
	}
	var events []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	var cur *string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "" && cur != nil:
			events = append(events, *cur)
			cur = nil
		case strings.HasPrefix(line, "data: ") && cur == nil:
			d := strings.TrimPrefix(line, "data: ")
			cur = &d
		default:
			t.Fatalf("unexpected SSE line %q", line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("event %q not ended by a blank line", *cur)
	}
	return events
}

// Strict shapes: for each object, the fields the official OpenAI clients read
// (required) and the ones they accept (optional). Any other field is an error.
type shape struct {
	required, optional []string
	nested             map[string]*shape
}

var (
	usageShape       = &shape{required: []string{"prompt_tokens", "completion_tokens", "total_tokens"}, optional: []string{"completion_tokens_details", "prompt_tokens_details"}}
	completionChoice = &shape{required: []string{"index", "text", "finish_reason"}, optional: []string{"logprobs"}}
	completionShape  = &shape{required: []string{"id", "object", "created", "model", "choices"}, optional: []string{"usage", "system_fingerprint"},
		nested: map[string]*shape{"choices": completionChoice, "usage": usageShape}}
	deltaShape      = &shape{optional: []string{"role", "content", "refusal", "tool_calls", "function_call"}}
	chatChunkChoice = &shape{required: []string{"index", "delta", "finish_reason"}, optional: []string{"logprobs"}, nested: map[string]*shape{"delta": deltaShape}}
	chatChunkShape  = &shape{required: []string{"id", "object", "created", "model", "choices"}, optional: []string{"usage", "system_fingerprint", "service_tier"},
		nested: map[string]*shape{"choices": chatChunkChoice, "usage": usageShape}}
	messageShape    = &shape{required: []string{"role"}, optional: []string{"content", "refusal", "tool_calls", "function_call", "audio", "annotations"}}
	chatChoiceShape = &shape{required: []string{"index", "message", "finish_reason"}, optional: []string{"logprobs"}, nested: map[string]*shape{"message": messageShape}}
	chatWholeShape  = &shape{required: []string{"id", "object", "created", "model", "choices"}, optional: []string{"usage", "system_fingerprint", "service_tier"},
		nested: map[string]*shape{"choices": chatChoiceShape, "usage": usageShape}}
)

// checkShape fails on a missing required field or a field the shape does not know,
// recursing into nested objects and lists of objects; null is allowed where optional.
func checkShape(t *testing.T, where string, raw json.RawMessage, s *shape) {
	t.Helper()
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		t.Fatalf("%s: not an object: %s", where, raw)
	}
	for _, k := range s.required {
		if _, ok := obj[k]; !ok {
			t.Errorf("%s: lacks %q in %s", where, k, raw)
		}
	}
	for k, v := range obj {
		if !slices.Contains(s.required, k) && !slices.Contains(s.optional, k) {
			t.Errorf("%s: unexpected field %q in %s", where, k, raw)
		}
		n := s.nested[k]
		if n == nil || string(v) == "null" {
			continue
		}
		if v[0] == '[' {
			var list []json.RawMessage
			if err := json.Unmarshal(v, &list); err != nil {
				t.Fatal(err)
			}
			for i, e := range list {
				checkShape(t, fmt.Sprintf("%s.%s[%d]", where, k, i), e, n)
			}
			continue
		}
		checkShape(t, where+"."+k, v, n)
	}
}

// Typed views of the answers, for the values.
type usage struct{ PromptTokens, CompletionTokens, TotalTokens int }

func (u *usage) UnmarshalJSON(b []byte) error {
	var v struct {
		P int `json:"prompt_tokens"`
		C int `json:"completion_tokens"`
		T int `json:"total_tokens"`
	}
	err := json.Unmarshal(b, &v)
	*u = usage{v.P, v.C, v.T}
	return err
}

type answer struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index        int     `json:"index"`
		Text         *string `json:"text"`
		FinishReason *string `json:"finish_reason"`
		Delta        *struct {
			Role    *string `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		Message *struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
	} `json:"choices"`
	Usage *usage `json:"usage"`
}

func decodeAnswer(t *testing.T, raw string) answer {
	t.Helper()
	var a answer
	if err := json.Unmarshal([]byte(raw), &a); err != nil {
		t.Fatalf("answer %s: %v", raw, err)
	}
	return a
}

func TestCompletionStreamSendsTokensInOrderThenDone(t *testing.T) {
	script := []int32{530, 734, 1115, 1440} // " one two three four"
	gen := newScripted(genContextLen, script)
	url := startGenServer(t, gen)
	resp := post(t, context.Background(), url+"/openai/v1/completions",
		`{"model":"gpt","prompt":"Hello world","max_tokens":4,"stream":true,"seed":7,"temperature":0.5,"top_k":40,"top_p":0.9}`)
	events := readSSE(t, resp)
	if len(events) != len(script)+2 || events[len(events)-1] != "[DONE]" {
		t.Fatalf("events = %q, want one per token, a finish chunk and [DONE]", events)
	}
	var text strings.Builder
	for i, e := range events[:len(events)-1] {
		checkShape(t, fmt.Sprintf("chunk %d", i), json.RawMessage(e), completionShape)
		a := decodeAnswer(t, e)
		if a.Object != "text_completion" || a.Model != "gpt" || !strings.HasPrefix(a.ID, "cmpl-") || a.Created == 0 || len(a.Choices) != 1 {
			t.Fatalf("chunk %d: %s", i, e)
		}
		c := a.Choices[0]
		last := i == len(events)-2
		if (c.FinishReason != nil) != last {
			t.Errorf("chunk %d: finish_reason %v; only the last chunk has one", i, c.FinishReason)
		}
		if last && *c.FinishReason != "length" {
			t.Errorf("finish_reason %q, want length (max_tokens reached)", *c.FinishReason)
		}
		text.WriteString(*c.Text)
	}
	if text.String() != " one two three four" {
		t.Errorf("streamed text %q", text.String())
	}
	reqs := gen.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d generations, want 1", len(reqs))
	}
	r := reqs[0]
	// The client named no version: the generation runs on the one the tokenizer came
	// from, never on whatever is latest by the time it starts.
	if r.Version != genTextVersion {
		t.Errorf("generation ran on version %q, want %q, the tokenizer's", r.Version, genTextVersion)
	}
	if !slices.Equal(r.Prompt, []int32{15496, 995}) || r.MaxTokens != 4 || r.Temperature != 0.5 || r.TopK != 40 || r.TopP != 0.9 || r.Seed == nil || *r.Seed != 7 || r.Model != "gpt" {
		t.Errorf("generator got %+v", r)
	}
}

func TestCompletionAnswerCountsUsage(t *testing.T) {
	gen := newScripted(genContextLen, []int32{530, 734, 1115})
	url := startGenServer(t, gen)
	resp := post(t, context.Background(), url+"/openai/v1/completions", `{"model":"gpt","prompt":["Hello world"],"max_tokens":10}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	checkShape(t, "answer", b, completionShape)
	a := decodeAnswer(t, string(b))
	// "Hello world" is 2 GPT-2 tokens; the script ends after 3, so the model stopped.
	if a.Usage == nil || *a.Usage != (usage{2, 3, 5}) {
		t.Errorf("usage = %+v, want 2 + 3 = 5", a.Usage)
	}
	if *a.Choices[0].Text != " one two three" || *a.Choices[0].FinishReason != "stop" {
		t.Errorf("choice = %q, %q", *a.Choices[0].Text, *a.Choices[0].FinishReason)
	}
}

func TestChatStreamHasRoleFirstFinishLastAndUsage(t *testing.T) {
	gen := newScripted(genContextLen, []int32{530, 734})
	url := startGenServer(t, gen)
	resp := post(t, context.Background(), url+"/openai/v1/chat/completions",
		`{"model":"gpt","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],"stream":true,"stream_options":{"include_usage":true}}`)
	events := readSSE(t, resp)
	if len(events) != 5 || events[4] != "[DONE]" {
		t.Fatalf("events = %q, want 2 token chunks, a finish chunk, a usage chunk, [DONE]", events)
	}
	var text strings.Builder
	for i, e := range events[:4] {
		checkShape(t, fmt.Sprintf("chunk %d", i), json.RawMessage(e), chatChunkShape)
		a := decodeAnswer(t, e)
		if a.Object != "chat.completion.chunk" || !strings.HasPrefix(a.ID, "chatcmpl-") {
			t.Errorf("chunk %d: %s", i, e)
		}
		switch i {
		case 3:
			if len(a.Choices) != 0 || a.Usage == nil {
				t.Errorf("usage chunk %s: want no choices and the usage", e)
			}
			continue
		case 0:
			if d := a.Choices[0].Delta; d.Role == nil || *d.Role != "assistant" {
				t.Errorf("first chunk %s has no assistant role", e)
			}
		}
		if !strings.Contains(e, `"usage":null`) {
			t.Errorf("chunk %d %s: with include_usage every chunk carries usage: null", i, e)
		}
		c := a.Choices[0]
		if i == 2 {
			if c.FinishReason == nil || *c.FinishReason != "stop" || c.Delta.Content != nil {
				t.Errorf("finish chunk %s: want an empty delta and finish_reason stop", e)
			}
			continue
		}
		text.WriteString(*c.Delta.Content)
	}
	if text.String() != " one two" {
		t.Errorf("streamed %q", text.String())
	}
	want := gpt2(t).Encode("system: Be brief.\nuser: Hi\nassistant:")
	if got := decodeAnswer(t, events[3]).Usage; *got != (usage{len(want), 2, len(want) + 2}) {
		t.Errorf("usage %+v, want %d prompt tokens and 2 completion tokens", got, len(want))
	}
	if reqs := gen.requests(); len(reqs) != 1 || !slices.Equal(reqs[0].Prompt, want) {
		t.Errorf("prompt ids %v, want the default template's %v", reqs, want)
	}
}

func TestChatAnswerIsOneMessage(t *testing.T) {
	gen := newScripted(genContextLen, []int32{530, 734})
	url := startGenServer(t, gen)
	resp := post(t, context.Background(), url+"/openai/v1/chat/completions", `{"model":"gpt","messages":[{"role":"user","content":"Hi"}],"max_completion_tokens":1}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	checkShape(t, "answer", b, chatWholeShape)
	a := decodeAnswer(t, string(b))
	if a.Object != "chat.completion" || a.Choices[0].Message.Role != "assistant" || a.Choices[0].Message.Content != " one" || *a.Choices[0].FinishReason != "length" {
		t.Errorf("answer %s", b)
	}
}

func TestStopStringsEndGenerationAndAreTrimmed(t *testing.T) {
	tok := gpt2(t)
	script := tok.Encode(" alpha beta STOP gamma delta")
	for _, stream := range []bool{false, true} {
		gen := newScripted(genContextLen, script)
		url := startGenServer(t, gen)
		// "ta ST" spans three tokens (" beta", " ST", "OP"): only the text shows it.
		body := fmt.Sprintf(`{"model":"gpt","prompt":"x","max_tokens":20,"stop":["ta ST","never"],"stream":%v}`, stream)
		resp := post(t, context.Background(), url+"/openai/v1/completions", body)
		var text, finish string
		if stream {
			events := readSSE(t, resp)
			for _, e := range events[:len(events)-1] {
				c := decodeAnswer(t, e).Choices[0]
				if strings.Contains(*c.Text, "ST") {
					t.Errorf("a chunk shows part of the stop string: %q", *c.Text)
				}
				text += *c.Text
				if c.FinishReason != nil {
					finish = *c.FinishReason
				}
			}
		} else {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			a := decodeAnswer(t, string(b))
			text, finish = *a.Choices[0].Text, *a.Choices[0].FinishReason
		}
		if text != " alpha be" || finish != "stop" {
			t.Errorf("stream=%v: text %q finish %q, want \" alpha be\" stop", stream, text, finish)
		}
		if err := <-gen.ended; err == nil {
			t.Errorf("stream=%v: the generator was not told to stop (emit returned no error)", stream)
		}
		want := [][]int32{tok.Encode("ta ST"), tok.Encode("never"), {50256}}
		if got := gen.requests()[0].StopTokens; !slices.EqualFunc(got, want, slices.Equal) {
			t.Errorf("StopTokens %v, want the stop strings' ids and <|endoftext|>: %v", got, want)
		}
	}
}

func TestEndOfTextTokenStopsWithoutShowingIt(t *testing.T) {
	gen := newScripted(genContextLen, []int32{530, 50256, 734})
	url := startGenServer(t, gen)
	resp := post(t, context.Background(), url+"/openai/v1/completions", `{"model":"gpt","prompt":"x","max_tokens":5}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	a := decodeAnswer(t, string(b))
	if *a.Choices[0].Text != " one" || *a.Choices[0].FinishReason != "stop" || a.Usage.CompletionTokens != 2 {
		t.Errorf("answer %s: want \" one\", stop, 2 completion tokens", b)
	}
}

func TestStreamNeverSplitsACharacter(t *testing.T) {
	script := gpt2(t).Encode(" naïve café 😀 ok") // 😀 is two tokens
	gen := newScripted(genContextLen, script)
	url := startGenServer(t, gen)
	events := readSSE(t, post(t, context.Background(), url+"/openai/v1/completions", `{"model":"gpt","prompt":"x","stream":true,"max_tokens":10}`))
	var text string
	for _, e := range events[:len(events)-1] {
		piece := *decodeAnswer(t, e).Choices[0].Text
		if !utf8.ValidString(piece) || strings.ContainsRune(piece, utf8.RuneError) {
			t.Errorf("chunk %q is not whole characters", piece)
		}
		text += piece
	}
	if text != " naïve café 😀 ok" {
		t.Errorf("text %q", text)
	}
}

func TestClientDisconnectEndsGeneration(t *testing.T) {
	gen := newScripted(1<<20, nil) // never ends by itself
	url := startGenServer(t, gen)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := post(t, ctx, url+"/openai/v1/completions", `{"model":"gpt","prompt":"x","max_tokens":64,"stream":true}`)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "data: {") {
		t.Fatalf("first event %q, %v", line, err)
	}
	cancel()
	resp.Body.Close()
	select {
	case err := <-gen.ended:
		if err == nil {
			t.Fatal("generation ran to its end although the client left")
		}
	case <-time.After(time.Minute):
		t.Fatal("generation still running a minute after the client left")
	}
}

func TestOpenAIModelsListsGenerativeModels(t *testing.T) {
	url := startGenServer(t, newScripted(genContextLen, nil))
	req, _ := http.NewRequest(http.MethodGet, url+"/openai/v1/models", nil)
	req.Header.Set("Authorization", "Bearer "+inferToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != `{"object":"list","data":[{"id":"gpt","object":"model","created":1700000000,"owned_by":"layermesh"}]}`+"\n" {
		t.Errorf("models = %s", b)
	}
}

func TestGenerationBadInputsAreRefusedBeforeGenerating(t *testing.T) {
	long := strings.Repeat(" word", genContextLen) // 32 tokens: no room left
	cases := []struct {
		name, path, body string
		status           int
		code             api.Code
	}{
		{"bad json", "completions", `{"model":`, 400, api.CodeBadJSON},
		{"wrong type", "completions", `{"model":"gpt","prompt":"x","max_tokens":"5"}`, 400, api.CodeBadJSON},
		{"max_tokens 0", "completions", `{"model":"gpt","prompt":"x","max_tokens":0}`, 400, api.CodeInvalidMaxTokens},
		{"max_tokens negative", "chat/completions", `{"model":"gpt","messages":[{"role":"user","content":"x"}],"max_tokens":-1}`, 400, api.CodeInvalidMaxTokens},
		{"max_tokens over limit", "completions", `{"model":"gpt","prompt":"x","max_tokens":65}`, 400, api.CodeInvalidMaxTokens},
		{"prompt fills the context", "completions", `{"model":"gpt","prompt":"` + long + `"}`, 400, api.CodeContextExceeded},
		{"prompt + max_tokens over context", "completions", `{"model":"gpt","prompt":"Hello world","max_tokens":31}`, 400, api.CodeContextExceeded},
		{"no messages", "chat/completions", `{"model":"gpt","messages":[]}`, 400, api.CodeInvalidMessages},
		{"unknown role", "chat/completions", `{"model":"gpt","messages":[{"role":"wizard","content":"x"}]}`, 400, api.CodeInvalidMessages},
		{"null content", "chat/completions", `{"model":"gpt","messages":[{"role":"user","content":null}]}`, 400, api.CodeInvalidMessages},
		{"image part", "chat/completions", `{"model":"gpt","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`, 400, api.CodeInvalidMessages},
		{"content a number", "chat/completions", `{"model":"gpt","messages":[{"role":"user","content":5}]}`, 400, api.CodeInvalidMessages},
		{"no model", "completions", `{"prompt":"x"}`, 400, api.CodeInvalidParameter},
		{"no prompt", "completions", `{"model":"gpt"}`, 400, api.CodeInvalidParameter},
		{"empty prompt", "completions", `{"model":"gpt","prompt":""}`, 400, api.CodeInvalidParameter},
		{"two prompts", "completions", `{"model":"gpt","prompt":["a","b"]}`, 400, api.CodeInvalidParameter},
		{"token outside vocabulary", "completions", `{"model":"gpt","prompt":[15496,50257]}`, 400, api.CodeInvalidParameter},
		{"temperature", "completions", `{"model":"gpt","prompt":"x","temperature":2.5}`, 400, api.CodeInvalidParameter},
		{"top_p", "completions", `{"model":"gpt","prompt":"x","top_p":1.5}`, 400, api.CodeInvalidParameter},
		{"top_k", "completions", `{"model":"gpt","prompt":"x","top_k":-1}`, 400, api.CodeInvalidParameter},
		{"n", "chat/completions", `{"model":"gpt","messages":[{"role":"user","content":"x"}],"n":2}`, 400, api.CodeInvalidParameter},
		{"five stops", "completions", `{"model":"gpt","prompt":"x","stop":["a","b","c","d","e"]}`, 400, api.CodeInvalidParameter},
		{"empty stop", "completions", `{"model":"gpt","prompt":"x","stop":""}`, 400, api.CodeInvalidParameter},
		{"stop a number", "completions", `{"model":"gpt","prompt":"x","stop":5}`, 400, api.CodeInvalidParameter},
		{"echo", "completions", `{"model":"gpt","prompt":"x","echo":true}`, 400, api.CodeInvalidParameter},
		{"logprobs", "completions", `{"model":"gpt","prompt":"x","logprobs":2}`, 400, api.CodeInvalidParameter},
		{"penalty", "completions", `{"model":"gpt","prompt":"x","presence_penalty":1}`, 400, api.CodeInvalidParameter},
		{"stream_options without stream", "completions", `{"model":"gpt","prompt":"x","stream_options":{"include_usage":true}}`, 400, api.CodeInvalidParameter},
		{"unknown model", "completions", `{"model":"nope","prompt":"x"}`, 404, api.CodeModelNotFound},
		{"model without tokenizer", "completions", `{"model":"add","prompt":"x","stream":true}`, 400, api.CodeNotGenerative},
		{"body too large", "completions", `{"model":"gpt","prompt":"` + strings.Repeat("x", genMaxBody) + `"}`, 413, api.CodeBodyTooLarge},
	}
	gen := newScripted(genContextLen, []int32{530})
	url := startGenServer(t, gen)
	for _, c := range cases {
		resp := post(t, context.Background(), url+"/openai/v1/"+c.path, c.body)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e struct {
			Error struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Param   *string `json:"param"`
				Code    string  `json:"code"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &e); err != nil || resp.StatusCode != c.status || e.Error.Code != string(c.code) || e.Error.Message == "" || e.Error.Type != "invalid_request_error" {
			t.Errorf("%s: %d %s, want %d with OpenAI's error envelope and code %s", c.name, resp.StatusCode, b, c.status, c.code)
		}
	}
	if reqs := gen.requests(); len(reqs) != 0 {
		t.Errorf("the generator ran %d times for refused requests", len(reqs))
	}
}

func TestGenerationRoutesNeedAnInferToken(t *testing.T) {
	url := startGenServer(t, newScripted(genContextLen, []int32{530}))
	for _, path := range []string{"/openai/v1/completions", "/openai/v1/chat/completions", "/openai/v1/models"} {
		method := http.MethodPost
		if strings.HasSuffix(path, "models") {
			method = http.MethodGet
		}
		req, _ := http.NewRequest(method, url+path, strings.NewReader(`{}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s without a token: %d, want 401", path, resp.StatusCode)
		}
	}
}

func TestGenerationWithoutGeneratorIsNotGenerative(t *testing.T) {
	srv, err := api.New(api.Config{Models: genModels{}, Health: genHealth{}, Cluster: genCluster{}, Tokens: genTokens{}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	resp := post(t, context.Background(), hs.URL+"/openai/v1/completions", `{"model":"gpt","prompt":"x"}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), `"code":"not_generative"`) {
		t.Errorf("%d %s, want 400 not_generative", resp.StatusCode, b)
	}
}

func TestKServeGenerateStreamSendsTextThenFinish(t *testing.T) {
	gen := newScripted(genContextLen, []int32{530, 734, 1115, 1440})
	url := startGenServer(t, gen)
	c, err := client.New(url, client.WithToken(inferToken))
	if err != nil {
		t.Fatal(err)
	}
	three, topLevel, half := 3, 9, float32(0.5)
	req := wire.GenerateRequest{TextInput: "Hello world", Parameters: &wire.GenerateParameters{MaxTokens: &three, Temperature: &half}}
	req.MaxTokens = &topLevel // "parameters" wins
	var events []wire.GenerateResponse
	err = c.GenerateStream(context.Background(), "gpt", "", req, func(ev wire.GenerateResponse) error {
		events = append(events, ev)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []wire.GenerateResponse{
		{ModelName: "gpt", ModelVersion: "1", TextOutput: " one"},
		{ModelName: "gpt", ModelVersion: "1", TextOutput: " two"},
		{ModelName: "gpt", ModelVersion: "1", TextOutput: " three"},
		{ModelName: "gpt", ModelVersion: "1", FinishReason: "length", PromptTokens: 2, CompletionTokens: 3},
	}
	if !slices.Equal(events, want) {
		t.Errorf("events %+v\nwant   %+v", events, want)
	}
	if r := gen.requests()[0]; r.MaxTokens != 3 || r.Temperature != 0.5 {
		t.Errorf("generator got max_tokens %d temperature %g, want the parameters object's 3 and 0.5", r.MaxTokens, r.Temperature)
	}
}

func TestKServeGenerateAnswersTritonShape(t *testing.T) {
	gen := newScripted(genContextLen, tokenizerEncode(t, " alpha beta STOP gamma"))
	url := startGenServer(t, gen)
	// TensorRT-LLM's ensemble takes its parameters at the top level, stop_words "" included.
	resp := post(t, context.Background(), url+"/v2/models/gpt/versions/1/generate",
		`{"text_input":"Hello world","max_tokens":10,"bad_words":"","stop_words":["STOP"],"parameters":{"temperature":0}}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := `{"model_name":"gpt","model_version":"1","text_output":" alpha beta ","finish_reason":"stop","prompt_tokens":2,"completion_tokens":3}` + "\n"
	if resp.StatusCode != 200 || string(b) != want {
		t.Errorf("%d %s\nwant %s", resp.StatusCode, b, want)
	}
}

func tokenizerEncode(t *testing.T, s string) []int32 { return gpt2(t).Encode(s) }

func TestKServeGenerateBadInputs(t *testing.T) {
	gen := newScripted(genContextLen, []int32{530})
	url := startGenServer(t, gen)
	cases := []struct {
		name, path, body string
		status           int
		code             api.Code
	}{
		{"bad json", "gpt/generate", `{"text_input":`, 400, api.CodeBadJSON},
		{"stop_words a number", "gpt/generate_stream", `{"text_input":"x","stop_words":5}`, 400, api.CodeBadJSON},
		{"max_tokens 0", "gpt/generate_stream", `{"text_input":"x","parameters":{"max_tokens":0}}`, 400, api.CodeInvalidMaxTokens},
		{"max_tokens over limit", "gpt/generate", `{"text_input":"x","max_tokens":1000}`, 400, api.CodeInvalidMaxTokens},
		{"context", "gpt/generate", `{"text_input":"Hello world","max_tokens":31}`, 400, api.CodeContextExceeded},
		{"empty text", "gpt/generate", `{"text_input":""}`, 400, api.CodeInvalidParameter},
		{"unknown model", "nope/generate", `{"text_input":"x"}`, 404, api.CodeModelNotFound},
		{"unknown version", "gpt/versions/7/generate", `{"text_input":"x"}`, 404, api.CodeModelNotFound},
		{"not generative", "add/generate_stream", `{"text_input":"x"}`, 400, api.CodeNotGenerative},
	}
	for _, c := range cases {
		resp := post(t, context.Background(), url+"/v2/models/"+c.path, c.body)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e wire.ErrorBody
		if err := json.Unmarshal(b, &e); err != nil || resp.StatusCode != c.status || e.Code != string(c.code) {
			t.Errorf("%s: %d %s, want %d %s", c.name, resp.StatusCode, b, c.status, c.code)
		}
	}
	if n := len(gen.requests()); n != 0 {
		t.Errorf("the generator ran %d times for refused requests", n)
	}
}

// deployRecorder is a ModelService that keeps what PutModel got.
type deployRecorder struct {
	genModels
	model []byte
	opts  api.DeployOptions
}

func (d *deployRecorder) PutModel(ctx context.Context, name string, body io.Reader, opts api.DeployOptions) (wire.ModelStatus, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return wire.ModelStatus{}, err
	}
	d.model, d.opts = b, opts
	return wire.ModelStatus{Name: name, Version: "1"}, nil
}

func TestDeployCarriesTokenizerAndChatTemplate(t *testing.T) {
	rec := &deployRecorder{}
	srv, err := api.New(api.Config{Models: rec, Health: genHealth{}, Cluster: genCluster{}, Tokens: genTokens{}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	c, err := client.New(hs.URL, client.WithToken(adminToken))
	if err != nil {
		t.Fatal(err)
	}
	tokJSON, err := json.Marshal(gpt2(t))
	if err != nil {
		t.Fatal(err)
	}
	model := []byte("not really onnx, the service only stores it")
	tmpl := "{{range .Messages}}<{{.Role}}>{{.Content}}{{end}}<assistant>"
	var sent, total int64
	opts := client.UploadOptions{Tokenizer: tokJSON, ChatTemplate: tmpl, Progress: func(s, t int64) { sent, total = s, t }}
	if _, err := c.UploadModel(context.Background(), "gpt", bytes.NewReader(model), int64(len(model)), opts); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rec.model, model) || !bytes.Equal(rec.opts.Tokenizer, tokJSON) || rec.opts.ChatTemplate != tmpl {
		t.Errorf("service got model %q, %d tokenizer bytes, template %q", rec.model, len(rec.opts.Tokenizer), rec.opts.ChatTemplate)
	}
	if sent != total || total <= int64(len(model)+len(tokJSON)) {
		t.Errorf("progress %d of %d: the multipart length must be known and reached", sent, total)
	}

	rec.opts = api.DeployOptions{}
	for name, o := range map[string]client.UploadOptions{
		"tokenizer not BPE":       {Tokenizer: []byte(`{"model":{"type":"WordPiece"}}`)},
		"template does not parse": {ChatTemplate: "{{range .Messages}"},
	} {
		_, err := c.UploadModel(context.Background(), "gpt", bytes.NewReader(model), int64(len(model)), o)
		if !client.IsCode(err, string(api.CodeTokenizerInvalid)) {
			t.Errorf("%s: %v, want tokenizer_invalid", name, err)
		}
	}
	for name, body := range map[string]string{
		"no model part": "--b\r\nContent-Disposition: form-data; name=\"chat_template\"\r\n\r\nx\r\n--b--\r\n",
		"unknown part":  "--b\r\nContent-Disposition: form-data; name=\"weights\"\r\n\r\nx\r\n--b--\r\n",
	} {
		req, _ := http.NewRequest(http.MethodPut, hs.URL+"/v1/models/gpt", strings.NewReader(body))
		req.Header.Set("Content-Type", "multipart/form-data; boundary=b")
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(b), `"code":"bad_request"`) {
			t.Errorf("%s: %d %s, want 400 bad_request", name, resp.StatusCode, b)
		}
	}
	if rec.opts.Tokenizer != nil || rec.opts.ChatTemplate != "" {
		t.Errorf("a refused deploy reached the service: %+v", rec.opts)
	}
}

// TestSingleNodeServesTokenizerBesideModel: a real single node finds NAME.tokenizer.json
// and NAME.chat.tmpl beside NAME.onnx in its model dir, and keeps those of an upload
// beside the uploaded file, replacing and deleting them with the model.
func TestSingleNodeServesTokenizerBesideModel(t *testing.T) {
	tokJSON, err := json.Marshal(gpt2(t))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := "{{range .Messages}}<|{{.Role}}|>{{.Content}}{{end}}<|assistant|>"
	n := startNode(t, func(cfg *node.Config) {
		for name, b := range map[string][]byte{"add.tokenizer.json": tokJSON, "add.chat.tmpl": []byte(tmpl)} {
			if err := os.WriteFile(filepath.Join(cfg.ModelDir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	ctx := context.Background()
	mt, err := n.ModelText(ctx, "add", "")
	if err != nil {
		t.Fatal(err)
	}
	prompt, err := mt.Chat.Render([]tokenizer.ChatMessage{{Role: "user", Content: "Hello world"}}, "")
	if err != nil || prompt != "<|user|>Hello world<|assistant|>" || mt.Tokenizer.VocabSize() != 50257 {
		t.Errorf("model-dir text: prompt %q (%v), vocabulary %d", prompt, err, mt.Tokenizer.VocabSize())
	}
	for model, want := range map[string]error{"scale": api.ErrNotGenerative, "nope": api.ErrModelNotFound} {
		if _, err := n.ModelText(ctx, model, ""); !errors.Is(err, want) {
			t.Errorf("ModelText(%s) = %v, want %v", model, err, want)
		}
	}

	c := n.client(t, n.token)
	upload := func(opts client.UploadOptions) {
		t.Helper()
		b := addModel(t)
		if _, err := c.UploadModel(ctx, "up", bytes.NewReader(b), int64(len(b)), opts); err != nil {
			t.Fatal(err)
		}
	}
	upload(client.UploadOptions{Tokenizer: tokJSON})
	if mt, err := n.ModelText(ctx, "up", ""); err != nil || mt.Tokenizer == nil || mt.Chat != nil {
		t.Errorf("uploaded with a tokenizer: %+v, %v", mt, err)
	}
	upload(client.UploadOptions{})
	if _, err := n.ModelText(ctx, "up", ""); !errors.Is(err, api.ErrNotGenerative) {
		t.Errorf("re-uploaded without a tokenizer: %v, want not generative", err)
	}
	upload(client.UploadOptions{Tokenizer: tokJSON, ChatTemplate: tmpl})
	if err := c.DeleteModel(ctx, "up"); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(n.dataDir, "*", "up.*"))
	if len(left) != 0 {
		t.Errorf("files of the deleted upload left: %v", left)
	}
}

// failingGenerator emits `before` tokens of " the", then fails with err.
type failingGenerator struct {
	before int
	err    error
}

func (g failingGenerator) Generate(ctx context.Context, req api.GenerateRequest, emit func(api.GeneratedToken) error) (api.GenerateResult, error) {
	for i := range g.before {
		if err := emit(api.GeneratedToken{ID: endlessToken, Index: i}); err != nil {
			return api.GenerateResult{}, err
		}
	}
	return api.GenerateResult{}, g.err
}

func (g failingGenerator) ModelContext(ctx context.Context, model, version string) (int, error) {
	return genContextLen, nil
}

func TestGenerationFailureBeforeAndAfterTheStreamStarts(t *testing.T) {
	failure := fmt.Errorf("stage 1: %w", api.ErrNoReplica)
	// Before any token: an ordinary error answer, with its status and Retry-After.
	url := startGenServer(t, failingGenerator{before: 0, err: failure})
	resp := post(t, context.Background(), url+"/openai/v1/chat/completions", `{"model":"gpt","messages":[{"role":"user","content":"x"}],"stream":true}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), `"code":"no_replica"`) {
		t.Errorf("failure before the stream: %d %s", resp.StatusCode, b)
	}
	// After a token: the stream ends with an error event and no [DONE].
	url = startGenServer(t, failingGenerator{before: 1, err: failure})
	events := readSSE(t, post(t, context.Background(), url+"/openai/v1/completions", `{"model":"gpt","prompt":"x","stream":true}`))
	if len(events) != 2 || !strings.Contains(events[1], `"code":"no_replica"`) || !strings.HasPrefix(events[1], `{"error":{`) {
		t.Errorf("failure during an OpenAI stream: events %q", events)
	}
	events = readSSE(t, post(t, context.Background(), url+"/v2/models/gpt/generate_stream", `{"text_input":"x"}`))
	if len(events) != 2 || events[1] != `{"error":"stage 1: no ready replica","code":"no_replica"}` {
		t.Errorf("failure during a generate stream: events %q", events)
	}
}
