package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/layermesh/layermesh/api/wire"
)

// The KServe/Triton generate extension: text in, text out, on the same Generator and
// tokenizer as the OpenAI routes. /generate answers once; /generate_stream sends one
// server-sent event per piece of text, the last with the finish reason and counts.

func (s *Server) handleGenerate(w http.ResponseWriter, r *http.Request) error {
	p, head, err := s.prepareKServeGenerate(w, r)
	if err != nil {
		return err
	}
	var text strings.Builder
	res, err := s.runText(r.Context(), p, func(t string) error { text.WriteString(t); return nil })
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, finished(head, text.String(), res))
	return nil
}

func (s *Server) handleGenerateStream(w http.ResponseWriter, r *http.Request) error {
	p, head, err := s.prepareKServeGenerate(w, r)
	if err != nil {
		return err
	}
	st := newSSEStream(w)
	res, err := s.runText(r.Context(), p, func(t string) error {
		ev := head
		ev.TextOutput = t
		return st.send(ev)
	})
	if err != nil {
		if !st.started {
			return err
		}
		// Triton reports an error after the stream began as an event with "error".
		if r.Context().Err() == nil {
			e := Classify(err)
			_ = st.send(body(e, err))
		}
		return nil
	}
	_ = st.send(finished(head, "", res))
	return nil
}

func finished(head wire.GenerateResponse, text string, res textResult) wire.GenerateResponse {
	head.TextOutput = text
	head.FinishReason = res.FinishReason
	head.PromptTokens = res.PromptTokens
	head.CompletionTokens = res.CompletionTokens
	return head
}

// prepareKServeGenerate reads and checks a generate request; the answer's head names
// the model version that serves it.
func (s *Server) prepareKServeGenerate(w http.ResponseWriter, r *http.Request) (*preparedText, wire.GenerateResponse, error) {
	name, version := r.PathValue("name"), r.PathValue("version")
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return nil, wire.GenerateResponse{}, err
	}
	var req wire.GenerateRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, wire.GenerateResponse{}, fmt.Errorf("%w: %w", wire.ErrBadJSON, err)
	}
	st, err := s.cfg.Models.ModelStatus(r.Context(), name, version)
	if err != nil {
		return nil, wire.GenerateResponse{}, err
	}
	params := req.Merged()
	// The version the answer's head names is the one that runs.
	tr := textRequest{
		Model: name, Version: st.Version, Prompt: req.TextInput, MaxTokens: params.MaxTokens,
		DefaultMax: completionsDefaultMax, Temperature: params.Temperature, TopP: params.TopP, Seed: params.Seed,
		Stop: append(append([]string(nil), params.Stop...), params.StopWords...),
	}
	if params.TopK != nil {
		tr.TopK = *params.TopK
	}
	p, err := s.prepareText(r.Context(), tr)
	if err != nil {
		return nil, wire.GenerateResponse{}, err
	}
	return p, wire.GenerateResponse{ModelName: st.Name, ModelVersion: st.Version}, nil
}
