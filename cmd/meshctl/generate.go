package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/layermesh/layermesh/api/wire"
)

// generateFlags is `meshctl generate MODEL "prompt"`: text printed as the node makes
// it (the generate_stream route), or with --json one JSON event per line as it
// arrives, the last with the finish reason and token counts.
func generateFlags(fs *flag.FlagSet) step {
	maxTokens := fs.Int("max-tokens", 0, "most tokens to generate (0: the node's default)")
	temperature := fs.Float64("temperature", 0, "sampling temperature; 0 is greedy")
	topK := fs.Int("top-k", 0, "sample from the K likeliest tokens (0: off)")
	topP := fs.Float64("top-p", 0, "sample from the smallest set of tokens with this probability (0: off)")
	seed := fs.Int64("seed", -1, "sampling seed, for repeatable output (-1: random)")
	version := fs.String("version", "", "model version (default: latest)")
	var stop stringsFlag
	fs.Var(&stop, "stop", "stop when the text reaches this string (repeatable)")
	check := func(pos []string) error {
		if len(pos) != 2 {
			return usagef(`want MODEL "PROMPT", got %q`, pos)
		}
		if *maxTokens < 0 || *temperature < 0 || *topK < 0 || *topP < 0 || *topP > 1 {
			return usagef("--max-tokens, --temperature, --top-k and --top-p must not be negative, --top-p at most 1")
		}
		return nil
	}
	return step{check: check, call: func(ctx context.Context, in invocation) (output, error) {
		temp, p := float32(*temperature), float32(*topP)
		params := wire.GenerateParameters{Temperature: &temp, TopK: topK, TopP: &p, Stop: wire.StringList(stop)}
		if *maxTokens > 0 {
			params.MaxTokens = maxTokens
		}
		if *seed >= 0 {
			s := uint64(*seed)
			params.Seed = &s
		}
		req := wire.GenerateRequest{TextInput: in.pos[1], Parameters: &params}
		return output{stream: func(w io.Writer) error {
			print := printGeneratedText(w)
			if in.json {
				print = printGeneratedEvent(w)
			}
			err := in.client.GenerateStream(ctx, in.pos[0], *version, req, print)
			if err == nil && !in.json {
				_, err = fmt.Fprintln(w)
			}
			return err
		}}, nil
	}}
}

// printGeneratedText writes each piece of text as it comes.
func printGeneratedText(w io.Writer) func(wire.GenerateResponse) error {
	return func(ev wire.GenerateResponse) error {
		_, err := io.WriteString(w, ev.TextOutput)
		return err
	}
}

// printGeneratedEvent writes each event as one line of JSON.
func printGeneratedEvent(w io.Writer) func(wire.GenerateResponse) error {
	enc := json.NewEncoder(w)
	return func(ev wire.GenerateResponse) error { return enc.Encode(ev) }
}
