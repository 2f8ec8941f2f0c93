package api

import "context"

// GenerateRequest asks for tokens after a prompt of token ids.
type GenerateRequest struct {
	Model, Version string  // Version "" = latest ready
	Prompt         []int32 // token ids
	MaxTokens      int
	Temperature    float32   // 0 = greedy
	TopK           int       // 0 = off
	TopP           float32   // 0 or 1 = off
	Seed           *uint64   // nil = random
	StopTokens     [][]int32 // stop sequences, as token ids
}

// GeneratedToken is one step's output.
type GeneratedToken struct {
	ID    int32
	Index int
}

// GenerateResult ends a generation.
type GenerateResult struct {
	PromptTokens, CompletionTokens int
	FinishReason                   string /* "stop" | "length" */
}

// Generator is what the HTTP layer needs for generation. emit is called once per token in order;
// an error from emit (client gone) ends the generation and frees its state.
type Generator interface {
	Generate(ctx context.Context, req GenerateRequest, emit func(GeneratedToken) error) (GenerateResult, error)
	// ModelContext returns the context length of the model's version ("" means the
	// latest).
	ModelContext(ctx context.Context, model, version string) (contextLen int, err error)
}
