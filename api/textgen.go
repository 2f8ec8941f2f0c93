package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/layermesh/layermesh/tokenizer"
)

// TextService gives the text side of a generative model: the tokenizer and chat
// template it was deployed with. The API turns text into token ids with them, so the
// Generator only ever sees ids.
type TextService interface {
	// ModelText returns the tokenizer and chat template of the model's version (""
	// means the latest), and the version it resolved. An unknown model or version
	// wraps ErrModelNotFound; a model deployed without a tokenizer wraps
	// ErrNotGenerative.
	ModelText(ctx context.Context, model, version string) (ModelText, error)
}

// ModelText is what a generative model was deployed with to read and write text.
type ModelText struct {
	// Version is the model version these belong to: the generation runs on it, so
	// that a redeploy between reading the tokenizer and starting the generation
	// cannot pair one version's tokenizer with another's weights. "" where the
	// service has no versions to tell apart.
	Version   string
	Tokenizer *tokenizer.Tokenizer
	// Chat renders chat messages into a prompt; nil means tokenizer.DefaultChatTemplate.
	Chat *tokenizer.ChatTemplate
}

// Generation limits.
const (
	// DefaultMaxTokens is the most tokens one request may ask for when Config sets no
	// other limit: enough for long answers, small enough that one request cannot hold
	// a model's KV memory for minutes.
	DefaultMaxTokens = 4096
	// maxStopStrings is OpenAI's limit on stop sequences.
	maxStopStrings = 4
)

// textRequest is one generation as the OpenAI and KServe generate routes describe it,
// before tokenization.
type textRequest struct {
	Model, Version string
	// Exactly one of Prompt, PromptIDs and Messages is set.
	Prompt    string
	PromptIDs []int32
	Messages  []tokenizer.ChatMessage
	// MaxTokens is what the client asked for; nil takes DefaultMax, and DefaultMax 0
	// takes the rest of the context.
	MaxTokens   *int
	DefaultMax  int
	Temperature *float32
	TopK        int
	TopP        *float32
	Seed        *uint64
	Stop        []string
}

// preparedText is a validated, tokenized generation, ready to run.
type preparedText struct {
	req   GenerateRequest
	codec *tokenizer.Tokenizer
	// stops are the stop strings, the end-of-text token's text among them: a stop
	// sequence can be generated as other tokens than its own encoding, so the text is
	// checked as well as the ids.
	stops []string
}

// prepareText checks a request and tokenizes its prompt. Everything that can refuse a
// request happens here, before a token is generated and before any answer is written.
func (s *Server) prepareText(ctx context.Context, tr textRequest) (*preparedText, error) {
	if s.cfg.Generator == nil || s.cfg.Text == nil {
		return nil, fmt.Errorf("%w: this node serves no generative models", ErrNotGenerative)
	}
	if err := s.checkSampling(tr); err != nil {
		return nil, err
	}
	text, err := s.cfg.Text.ModelText(ctx, tr.Model, tr.Version)
	if err != nil {
		return nil, err
	}
	// Every later step uses the version the tokenizer came from.
	if text.Version != "" {
		tr.Version = text.Version
	}
	ids, err := promptIDs(text, tr)
	if err != nil {
		return nil, err
	}
	contextLen, err := s.cfg.Generator.ModelContext(ctx, tr.Model, tr.Version)
	if err != nil {
		return nil, err
	}
	maxTokens, err := s.maxTokens(tr, len(ids), contextLen)
	if err != nil {
		return nil, err
	}
	p := &preparedText{codec: text.Tokenizer, stops: tr.Stop, req: GenerateRequest{
		Model: tr.Model, Version: tr.Version, Prompt: ids, MaxTokens: maxTokens,
		TopK: tr.TopK, Seed: tr.Seed,
	}}
	if tr.Temperature != nil {
		p.req.Temperature = *tr.Temperature
	}
	if tr.TopP != nil {
		p.req.TopP = *tr.TopP
	}
	for _, stop := range tr.Stop {
		p.req.StopTokens = append(p.req.StopTokens, text.Tokenizer.Encode(stop))
	}
	if eos, id, ok := text.Tokenizer.EOS(); ok {
		p.req.StopTokens = append(p.req.StopTokens, []int32{id})
		p.stops = append(p.stops, eos)
	}
	return p, nil
}

// checkSampling refuses parameters outside OpenAI's ranges.
func (s *Server) checkSampling(tr textRequest) error {
	switch {
	case tr.Model == "":
		return fmt.Errorf("%w: model is required", ErrInvalidParameter)
	case tr.Temperature != nil && (*tr.Temperature < 0 || *tr.Temperature > 2):
		return fmt.Errorf("%w: temperature %g is outside [0, 2]", ErrInvalidParameter, *tr.Temperature)
	case tr.TopP != nil && (*tr.TopP < 0 || *tr.TopP > 1):
		return fmt.Errorf("%w: top_p %g is outside [0, 1]", ErrInvalidParameter, *tr.TopP)
	case tr.TopK < 0:
		return fmt.Errorf("%w: top_k %d is negative", ErrInvalidParameter, tr.TopK)
	case len(tr.Stop) > maxStopStrings:
		return fmt.Errorf("%w: %d stop sequences, at most %d", ErrInvalidParameter, len(tr.Stop), maxStopStrings)
	case tr.MaxTokens != nil && (*tr.MaxTokens < 1 || *tr.MaxTokens > s.cfg.MaxTokens):
		return fmt.Errorf("%w: %d is not in [1, %d]", ErrInvalidMaxTokens, *tr.MaxTokens, s.cfg.MaxTokens)
	}
	for _, stop := range tr.Stop {
		if stop == "" {
			return fmt.Errorf("%w: a stop sequence is empty", ErrInvalidParameter)
		}
	}
	return nil
}

// promptIDs tokenizes the prompt, rendering chat messages through the template first.
func promptIDs(text ModelText, tr textRequest) ([]int32, error) {
	var ids []int32
	switch {
	case tr.Messages != nil:
		chat := text.Chat
		if chat == nil {
			chat = tokenizer.DefaultChatTemplate
		}
		eos, _, _ := text.Tokenizer.EOS()
		prompt, err := chat.Render(tr.Messages, eos)
		if err != nil {
			return nil, err
		}
		ids = text.Tokenizer.Encode(prompt)
	case tr.PromptIDs != nil:
		for _, id := range tr.PromptIDs {
			if id < 0 || int(id) >= text.Tokenizer.VocabSize() {
				return nil, fmt.Errorf("%w: prompt token %d is outside the vocabulary of %d", ErrInvalidParameter, id, text.Tokenizer.VocabSize())
			}
		}
		ids = tr.PromptIDs
	default:
		ids = text.Tokenizer.Encode(tr.Prompt)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%w: the prompt is empty", ErrInvalidParameter)
	}
	return ids, nil
}

// maxTokens settles how many tokens to generate: what the client asked for, or the
// default, never past the model's context.
func (s *Server) maxTokens(tr textRequest, promptLen, contextLen int) (int, error) {
	room := contextLen - promptLen
	if room < 1 {
		return 0, fmt.Errorf("%w: the prompt has %d tokens, the model's context %d", ErrContextExceeded, promptLen, contextLen)
	}
	if tr.MaxTokens != nil {
		if *tr.MaxTokens > room {
			return 0, fmt.Errorf("%w: %d prompt tokens + max_tokens %d > context %d", ErrContextExceeded, promptLen, *tr.MaxTokens, contextLen)
		}
		return *tr.MaxTokens, nil
	}
	n := min(room, s.cfg.MaxTokens)
	if tr.DefaultMax > 0 {
		n = min(n, tr.DefaultMax)
	}
	return n, nil
}

// textResult is how a generation ended.
type textResult struct {
	PromptTokens, CompletionTokens int
	FinishReason                   string
}

// errStopText ends a generation from inside emit when the text reaches a stop string.
var errStopText = errors.New("stop sequence generated")

// runText generates and hands the text to out in pieces of whole UTF-8 characters. A
// token can end inside a character, and the end of the text so far can be the start
// of a stop string; both are held back until the next token settles them, so out never
// sees a broken character nor any part of a stop string. An error from out (the client
// is gone) ends the generation: it is emit's error, and the Generator frees the state.
func (s *Server) runText(ctx context.Context, p *preparedText, out func(text string) error) (textResult, error) {
	var pending []byte
	generated, stopped := 0, false
	emit := func(tok GeneratedToken) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		generated++
		b, err := p.codec.Decode([]int32{tok.ID})
		if err != nil {
			return err
		}
		pending = append(pending, b...)
		if at := firstStop(pending, p.stops); at >= 0 {
			stopped = true
			head := pending[:at]
			pending = nil
			if len(head) > 0 {
				if err := out(string(head)); err != nil {
					return err
				}
			}
			return errStopText
		}
		n := releasable(pending, p.stops)
		if n == 0 {
			return nil
		}
		head := string(pending[:n])
		pending = append(pending[:0:0], pending[n:]...)
		return out(head)
	}
	res, err := s.cfg.Generator.Generate(ctx, p.req, emit)
	result := textResult{PromptTokens: len(p.req.Prompt), CompletionTokens: generated, FinishReason: res.FinishReason}
	if stopped {
		// Whatever the Generator made of emit's errStopText, the answer is complete.
		result.FinishReason = "stop"
		return result, nil
	}
	if err != nil {
		return result, err
	}
	if len(pending) > 0 {
		if err := out(strings.ToValidUTF8(string(pending), "\uFFFD")); err != nil {
			return result, err
		}
	}
	return result, nil
}

// firstStop is the offset of the earliest stop string in b, or -1.
func firstStop(b []byte, stops []string) int {
	at := -1
	for _, s := range stops {
		if i := bytes.Index(b, []byte(s)); i >= 0 && (at < 0 || i < at) {
			at = i
		}
	}
	return at
}

// releasable is how many leading bytes of b can be shown: not a tail that may grow
// into a stop string, and not a character that is still incomplete.
func releasable(b []byte, stops []string) int {
	n := len(b)
	for _, s := range stops {
		for k := min(len(s)-1, len(b)); k > 0; k-- {
			if bytes.HasSuffix(b, []byte(s[:k])) {
				n = min(n, len(b)-k)
				break
			}
		}
	}
	// Step back over an incomplete character at the end (at most 3 bytes of one).
	for i := n - 1; i >= 0 && i >= n-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:n]) {
				n = i
			}
			break
		}
	}
	return n
}
