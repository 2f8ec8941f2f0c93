package api

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"net/http"

	"github.com/layermesh/layermesh/api/wire"
)

// LinkSource reports the mesh links the node has measured (GET /v1/links).
type LinkSource interface {
	Links(ctx context.Context) (wire.LinkList, error)
}

// StageStatsSource sums the cluster's stage-call histograms (GET /v1/stage-stats).
type StageStatsSource interface {
	StageStats(ctx context.Context) (wire.StageStats, error)
}

// uiFiles is the dashboard: plain HTML, CSS and JavaScript embedded in the binary,
// because edge sites are often offline (no CDN, no web fonts).
//
//go:embed ui
var uiFiles embed.FS

// uiSecurityHeaders keep the dashboard to its own origin: no inline script, no
// framing, no referrer leaking the node's address.
var uiSecurityHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
		"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
	"X-Content-Type-Options": "nosniff",
	"Referrer-Policy":        "no-referrer",
	"X-Frame-Options":        "DENY",
}

// uiRoutes serves the dashboard under /ui/. The pages themselves hold no data and are
// open: the browser asks for the admin token and sends it on every API call.
func (s *Server) uiRoutes() {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(fmt.Sprintf("api: embedded dashboard: %v", err)) // the embed directive guarantees it
	}
	files := http.StripPrefix("/ui/", http.FileServerFS(sub))
	s.mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
	})
	s.mux.HandleFunc("GET /ui/", func(w http.ResponseWriter, r *http.Request) {
		for k, v := range uiSecurityHeaders {
			w.Header().Set(k, v)
		}
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// handleLinks answers GET /v1/links.
func (s *Server) handleLinks(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Links == nil {
		return fmt.Errorf("%w: a single node has no links", ErrNotClusterMode)
	}
	links, err := s.cfg.Links.Links(r.Context())
	if err != nil {
		return err
	}
	if links.Links == nil {
		links.Links = []wire.Link{}
	}
	writeJSON(w, http.StatusOK, links)
	return nil
}

// handleStageStats answers GET /v1/stage-stats.
func (s *Server) handleStageStats(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.StageStats == nil {
		return fmt.Errorf("%w: a single node has no stage calls", ErrNotClusterMode)
	}
	st, err := s.cfg.StageStats.StageStats(r.Context())
	if err != nil {
		return err
	}
	if st.Stages == nil {
		st.Stages = []wire.StageHistogram{}
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}
