package api

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/events"
)

// Defaults for Config's limits.
const (
	// DefaultMaxBodyBytes bounds an inference request: a GPT-2 prompt is a few KB and
	// a batch of 224x224 images a few MB; 64 MiB leaves room without letting one
	// client make the node allocate gigabytes.
	DefaultMaxBodyBytes = 64 << 20
	// DefaultMaxModelBytes bounds a model upload (GPT-2 small is 0.5 GB).
	DefaultMaxModelBytes = 8 << 30
	// readHeaderTimeout bounds how long a client may take to send its headers, so
	// slow-loris connections cannot pile up.
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 1 << 20
)

// Config wires the server to the node's services.
type Config struct {
	Models  ModelService
	Health  HealthService
	Cluster ClusterService
	Tokens  TokenVerifier
	// Generator and Text serve text generation (/openai/v1, /v2/.../generate); when
	// either is nil those routes answer not_generative.
	Generator Generator
	Text      TextService
	// MaxTokens bounds max_tokens of one generation; 0 means DefaultMaxTokens.
	MaxTokens int
	// RequireInferToken gates inference and model metadata behind a token of scope
	// infer (or admin). Admin routes always need an admin token.
	RequireInferToken bool
	// MaxBodyBytes bounds inference bodies; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxModelBytes bounds model uploads; 0 means DefaultMaxModelBytes.
	MaxModelBytes int64
	// Version is the software version GET /v2 reports.
	Version string
	// Accelerator is the execution provider GET /v2 reports; nil leaves it out.
	Accelerator *wire.Accelerator
	// Registry receives the API's metrics and is what /metrics serves; nil means a
	// new registry. The node passes its own so every component's metrics share it.
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// Events feeds GET /v1/events; nil means a bus nothing publishes to.
	Events EventSource
	// Links answers GET /v1/links (the dashboard's link figures); nil answers
	// not_cluster_mode.
	Links LinkSource
	// StageStats answers GET /v1/stage-stats; nil answers not_cluster_mode.
	StageStats StageStatsSource
}

// Server is the HTTP API. Its Handler is safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	mux     *http.ServeMux
	metrics *metrics
	handler http.Handler
	// closing closes when the HTTP server shuts down, ending the event streams that
	// would otherwise hold Shutdown until its deadline.
	closing   chan struct{}
	closeOnce sync.Once
}

// New checks cfg and builds the routes.
func New(cfg Config) (*Server, error) {
	if cfg.Models == nil || cfg.Health == nil || cfg.Cluster == nil || cfg.Tokens == nil {
		return nil, errors.New("api: Config needs Models, Health, Cluster and Tokens")
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.MaxModelBytes <= 0 {
		cfg.MaxModelBytes = DefaultMaxModelBytes
	}
	if cfg.MaxTokens <= 0 {
		cfg.MaxTokens = DefaultMaxTokens
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("api: metrics: %w", err)
	}
	if cfg.Events == nil {
		cfg.Events = events.NewBus(0, 0)
	}
	s := &Server{cfg: cfg, log: log.With("component", "api"), mux: http.NewServeMux(), metrics: m, closing: make(chan struct{})}
	s.routes()
	s.handler = s.recoverPanics(s.jsonMuxErrors(s.mux))
	return s, nil
}

// access says who may call a route.
type access int

const (
	open      access = iota // health, server metadata, metrics
	inference               // open unless RequireInferToken
	admin                   // admin token always
)

// routes lays out every endpoint. Method patterns make the mux answer 405 (with Allow)
// for a known path and a wrong method; jsonMuxErrors gives those answers our body.
func (s *Server) routes() {
	s.handle("GET /v2/health/live", open, s.handleLive)
	s.handle("GET /v2/health/ready", open, s.handleReady)
	s.handle("GET /v2", open, s.handleServerMetadata)
	s.handle("GET /v2/models/{name}", inference, s.handleModelMetadata)
	s.handle("GET /v2/models/{name}/versions/{version}", inference, s.handleModelMetadata)
	s.handle("GET /v2/models/{name}/ready", inference, s.handleModelReady)
	s.handle("GET /v2/models/{name}/versions/{version}/ready", inference, s.handleModelReady)
	s.handle("POST /v2/models/{name}/infer", inference, s.handleInfer)
	s.handle("POST /v2/models/{name}/versions/{version}/infer", inference, s.handleInfer)

	s.handle("GET /v1/cluster", admin, s.handleCluster)
	s.handle("GET /v1/nodes", admin, s.handleNodes)
	s.handle("POST /v1/nodes/{name}/drain", admin, s.handleDrain)
	s.handle("DELETE /v1/nodes/{name}", admin, s.handleRemoveNode)
	s.handle("GET /v1/models", admin, s.handleListModels)
	s.handle("PUT /v1/models/{name}", admin, s.handlePutModel)
	s.handle("GET /v1/models/{name}", admin, s.handleGetModel)
	s.handle("DELETE /v1/models/{name}", admin, s.handleDeleteModel)
	s.handle("POST /v1/nodes/{name}/undrain", admin, s.handleUndrain)
	s.handle("GET /v1/doctor", admin, s.handleDoctor)
	s.handle("GET /v1/join-token", admin, s.handleJoinToken)
	s.handle("POST /v1/tokens", admin, s.handleCreateToken)
	s.handle("GET /v1/tokens", admin, s.handleListTokens)
	s.handle("DELETE /v1/tokens/{id}", admin, s.handleRevokeToken)
	s.handle("GET /v1/events", admin, s.handleEvents)
	s.handle("GET /v1/links", admin, s.handleLinks)
	s.handle("GET /v1/stage-stats", admin, s.handleStageStats)
	s.uiRoutes()

	s.handle("POST /v2/models/{name}/generate", inference, s.handleGenerate)
	s.handle("POST /v2/models/{name}/versions/{version}/generate", inference, s.handleGenerate)
	s.handle("POST /v2/models/{name}/generate_stream", inference, s.handleGenerateStream)
	s.handle("POST /v2/models/{name}/versions/{version}/generate_stream", inference, s.handleGenerateStream)

	s.handle("POST /openai/v1/completions", inference, s.handleCompletions)
	s.handle("POST /openai/v1/chat/completions", inference, s.handleChatCompletions)
	s.handle("GET /openai/v1/models", inference, s.handleOpenAIModels)
	s.handle("GET /openai/v1/models/{name}", inference, s.handleOpenAIModel)

	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
}

// handle registers h behind authentication and request metrics.
func (s *Server) handle(pattern string, acc access, h func(http.ResponseWriter, *http.Request) error) {
	route := pattern[strings.IndexByte(pattern, ' ')+1:]
	infer := strings.HasSuffix(route, "/infer") || strings.Contains(route, "/generate") || strings.HasSuffix(route, "/completions")
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := requestIDOf(r)
		w.Header().Set(HeaderRequestID, id)
		r = r.WithContext(WithRequestID(r.Context(), id))
		sw := &statusWriter{ResponseWriter: w}
		if infer {
			s.metrics.inFlight.Inc()
			defer s.metrics.inFlight.Dec()
		}
		err := s.authorize(r, acc)
		if err == nil {
			err = h(sw, r)
		}
		if err != nil {
			s.writeError(sw, r, err)
		}
		took := time.Since(start)
		s.metrics.observe(route, r.PathValue("name"), sw.status(), took)
		s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", sw.status(), "took", took,
			"remote", r.RemoteAddr, "request", id, "model", r.PathValue("name"))
	})
}

// Handler is the API with its middleware: panics become 500s, and the mux's own 404
// and 405 answers get the JSON error body.
func (s *Server) Handler() http.Handler { return s.handler }

// HTTPServer returns an http.Server for the handler with the timeouts set. tlsConfig
// may be nil.
func (s *Server) HTTPServer(tlsConfig *tls.Config) *http.Server {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		TLSConfig:         tlsConfig,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	srv.RegisterOnShutdown(s.CloseStreams)
	return srv
}

// CloseStreams ends the open event streams (Shutdown does not wait for them to end
// on their own, which they never would). HTTPServer's server calls it on Shutdown.
func (s *Server) CloseStreams() { s.closeOnce.Do(func() { close(s.closing) }) }

// writeError answers with err's catalogue entry and logs what the client cannot see.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := Classify(err)
	id := RequestID(r.Context())
	switch {
	case e.Code == CodeInternal:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "request", id, "err", err)
	default:
		s.log.Debug("request refused", "method", r.Method, "path", r.URL.Path, "request", id, "code", e.Code, "err", err)
	}
	if e.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", retryAfterSeconds)
	}
	if strings.HasPrefix(r.URL.Path, openAIPrefix) {
		writeJSON(w, e.Status, openAIError(e, err))
		return
	}
	writeJSON(w, e.Status, body(e, err))
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":"internal error","code":"internal"}`)
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// recoverPanics turns a handler panic into a 500 and a log line with the stack: one
// bad request must never take the node down.
func (s *Server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v) // net/http's way to abort a response; it handles this one itself
			}
			s.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			if sw.code == 0 {
				e := catalogue[CodeInternal]
				writeJSON(sw, e.Status, body(e, errors.New("handler panic")))
			}
		}()
		next.ServeHTTP(sw, r)
	})
}

// jsonMuxErrors gives the mux's own answers (no route: 404; a route but not for this
// method: 405 with Allow) the JSON error body of the catalogue. ServeMux reports them
// with an empty pattern; only those requests are recorded and rewritten.
func (s *Server) jsonMuxErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			// Through the mux again: Handler finds the route but does not set the
			// request's path values; ServeHTTP does.
			mux.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		rec := &muxAnswer{header: http.Header{}}
		h.ServeHTTP(rec, r)
		defer func() { s.metrics.observe(unmatchedRoute, "", rec.code, time.Since(start)) }()
		switch rec.code {
		case http.StatusNotFound:
			s.writeError(w, r, fmt.Errorf("%w: %s %s", ErrRouteNotFound, r.Method, r.URL.Path))
		case http.StatusMethodNotAllowed:
			w.Header().Set("Allow", rec.header.Get("Allow"))
			s.writeError(w, r, fmt.Errorf("%w: %s %s (allowed: %s)", ErrMethodNotAllowed, r.Method, r.URL.Path, rec.header.Get("Allow")))
		default: // a redirect to the cleaned path: pass it through
			for k, v := range rec.header {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.code)
			_, _ = w.Write(rec.body)
		}
	})
}

// muxAnswer captures what ServeMux's own handlers (404, 405, redirects) write, so
// jsonMuxErrors can replace their plain-text bodies. Those answers are a few bytes.
type muxAnswer struct {
	header http.Header
	code   int
	body   []byte
}

func (a *muxAnswer) Header() http.Header { return a.header }

func (a *muxAnswer) WriteHeader(code int) {
	if a.code == 0 {
		a.code = code
	}
}

func (a *muxAnswer) Write(b []byte) (int, error) {
	a.WriteHeader(http.StatusOK)
	a.body = append(a.body, b...)
	return len(b), nil
}

// unmatchedRoute labels the metrics of requests that matched no route (404, 405).
const unmatchedRoute = "unmatched"

// statusWriter remembers the status a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

// Unwrap lets http.ResponseController reach the connection underneath.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
