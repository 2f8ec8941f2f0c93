package wire

import (
	"encoding/json"
	"fmt"
	"slices"
)

// GenerateRequest is the body of the KServe/Triton generate extension:
// POST /v2/models/{name}/generate and /generate_stream. Triton's backends take the
// parameters in a "parameters" object (vLLM) or at the top level (TensorRT-LLM's
// ensemble); both are read, "parameters" winning where both give a field.
type GenerateRequest struct {
	TextInput  string              `json:"text_input"`
	Parameters *GenerateParameters `json:"parameters,omitempty"`
	GenerateParameters
}

// GenerateParameters are the sampling settings of a generate request.
type GenerateParameters struct {
	MaxTokens   *int     `json:"max_tokens,omitempty"`
	Temperature *float32 `json:"temperature,omitempty"`
	TopK        *int     `json:"top_k,omitempty"`
	TopP        *float32 `json:"top_p,omitempty"`
	Seed        *uint64  `json:"seed,omitempty"`
	// Stop ("stop", vLLM's name) and StopWords ("stop_words", TensorRT-LLM's) are stop
	// strings; either may be one string or a list.
	Stop      StringList `json:"stop,omitempty"`
	StopWords StringList `json:"stop_words,omitempty"`
	// Stream is accepted for vLLM's clients; the route decides whether to stream.
	Stream *bool `json:"stream,omitempty"`
}

// Merged returns the top-level parameters overridden by the "parameters" object.
func (r *GenerateRequest) Merged() GenerateParameters {
	out := r.GenerateParameters
	p := r.Parameters
	if p == nil {
		return out
	}
	if p.MaxTokens != nil {
		out.MaxTokens = p.MaxTokens
	}
	if p.Temperature != nil {
		out.Temperature = p.Temperature
	}
	if p.TopK != nil {
		out.TopK = p.TopK
	}
	if p.TopP != nil {
		out.TopP = p.TopP
	}
	if p.Seed != nil {
		out.Seed = p.Seed
	}
	out.Stop = slices.Concat(out.Stop, p.Stop)
	out.StopWords = slices.Concat(out.StopWords, p.StopWords)
	return out
}

// StringList is a JSON string or list of strings; "" is no string at all (Triton's
// examples send "stop_words": "").
type StringList []string

// UnmarshalJSON reads a string, a list of strings or null.
func (l *StringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*l = nil
		if one != "" {
			*l = StringList{one}
		}
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("%w: want a string or a list of strings, got %s", ErrBadJSON, b)
	}
	*l = list
	return nil
}

// GenerateResponse is the answer of /generate, and each event of /generate_stream,
// where TextOutput is the text since the previous event. The last event carries
// FinishReason ("stop" or "length") and the token counts.
type GenerateResponse struct {
	ModelName        string `json:"model_name"`
	ModelVersion     string `json:"model_version"`
	TextOutput       string `json:"text_output"`
	FinishReason     string `json:"finish_reason,omitempty"`
	PromptTokens     int    `json:"prompt_tokens,omitempty"`
	CompletionTokens int    `json:"completion_tokens,omitempty"`
}
