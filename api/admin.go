package api

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/layermesh/layermesh/api/wire"
)

// maxAdminBodyBytes bounds the small JSON bodies of admin calls (a token request is
// a few dozen bytes).
const maxAdminBodyBytes = 64 << 10

func (s *Server) handleUndrain(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Cluster.UndrainNode(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleDoctor runs the mesh's diagnosis for ?target=... (repeatable; none: every
// peer this node knows of).
func (s *Server) handleDoctor(w http.ResponseWriter, r *http.Request) error {
	rep, err := s.cfg.Cluster.Diagnose(r.Context(), r.URL.Query()["target"])
	if err != nil {
		return err
	}
	if rep.Peers == nil {
		rep.Peers = []wire.PeerDiagnosis{}
	}
	writeJSON(w, http.StatusOK, rep)
	return nil
}

func (s *Server) handleJoinToken(w http.ResponseWriter, r *http.Request) error {
	jt, err := s.cfg.Cluster.JoinToken(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, jt)
	return nil
}

func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(w, r, maxAdminBodyBytes)
	if err != nil {
		return err
	}
	var req wire.TokenRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return fmt.Errorf("%w: token request: %w", wire.ErrBadJSON, err)
	}
	scope := Scope(req.Scope)
	if scope != ScopeAdmin && scope != ScopeInfer {
		return fmt.Errorf("%w: scope %q is not %q or %q", ErrBadRequest, req.Scope, ScopeAdmin, ScopeInfer)
	}
	if req.Name != "" && !validName(req.Name) {
		return fmt.Errorf("%w: token name %q", ErrInvalidName, req.Name)
	}
	tok, err := s.cfg.Cluster.CreateToken(r.Context(), scope, req.Name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, tok)
	return nil
}

func (s *Server) handleListTokens(w http.ResponseWriter, r *http.Request) error {
	toks, err := s.cfg.Cluster.ListTokens(r.Context())
	if err != nil {
		return err
	}
	if toks == nil {
		toks = []wire.TokenInfo{}
	}
	writeJSON(w, http.StatusOK, wire.TokenList{Tokens: toks})
	return nil
}

func (s *Server) handleRevokeToken(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Cluster.RevokeToken(r.Context(), r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// validName is the rule for names chosen by clients (tokens): 1-64 characters of
// [A-Za-z0-9._@-], the characters that need no escaping in a path or a shell.
func validName(n string) bool {
	if len(n) == 0 || len(n) > 64 {
		return false
	}
	for _, c := range n {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '@'
		if !ok {
			return false
		}
	}
	return true
}
