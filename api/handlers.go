package api

import (
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/tokenizer"
)

// Extensions of the KServe v2 protocol this server implements, as GET /v2 lists them.
var extensions = []string{"binary_tensor_data"}

// platform is what model metadata reports, Triton's name for an ONNX Runtime model.
const platform = "onnxruntime_onnx"

func (s *Server) handleLive(w http.ResponseWriter, r *http.Request) error {
	// Answering at all is the proof of liveness: this handler needs nothing else.
	writeJSON(w, http.StatusOK, wire.Readiness{Ready: true})
	return nil
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) error {
	checks := s.cfg.Health.Ready(r.Context())
	ready := true
	for _, c := range checks {
		ready = ready && c.Ready
	}
	status := http.StatusOK
	if !ready {
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", retryAfterSeconds)
	}
	writeJSON(w, status, wire.Readiness{Ready: ready, Checks: checks})
	return nil
}

func (s *Server) handleServerMetadata(w http.ResponseWriter, r *http.Request) error {
	ext := extensions
	if s.cfg.Generator != nil && s.cfg.Text != nil {
		ext = append(slices.Clip(ext), "generate")
	}
	writeJSON(w, http.StatusOK, wire.ServerMetadata{Name: "layermesh", Version: s.cfg.Version, Extensions: ext, Accelerator: s.cfg.Accelerator})
	return nil
}

func (s *Server) handleModelMetadata(w http.ResponseWriter, r *http.Request) error {
	st, err := s.cfg.Models.ModelStatus(r.Context(), r.PathValue("name"), r.PathValue("version"))
	if err != nil {
		return err
	}
	versions := []string{st.Version}
	writeJSON(w, http.StatusOK, wire.ModelMetadata{Name: st.Name, Versions: versions, Platform: platform, Inputs: st.Inputs, Outputs: st.Outputs})
	return nil
}

func (s *Server) handleModelReady(w http.ResponseWriter, r *http.Request) error {
	st, err := s.cfg.Models.ModelStatus(r.Context(), r.PathValue("name"), r.PathValue("version"))
	if err != nil {
		return err
	}
	status := http.StatusOK
	if !st.Ready {
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", retryAfterSeconds)
	}
	writeJSON(w, status, wire.ModelReadiness{Name: st.Name, Version: st.Version, Ready: st.Ready, Reason: st.Reason})
	return nil
}

// handleInfer is the hot path. The body is read once into one buffer; binary inputs
// are slices of it. Binary outputs are written straight from the tensors' bytes.
func (s *Server) handleInfer(w http.ResponseWriter, r *http.Request) error {
	name, version := r.PathValue("name"), r.PathValue("version")
	headerLen, err := wire.ParseHeaderLength(r.Header.Get(wire.HeaderContentLength))
	if err != nil {
		return err
	}
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	req, err := wire.DecodeRequest(body, headerLen)
	if err != nil {
		return err
	}
	res, err := s.cfg.Models.Infer(r.Context(), InferRequest{Model: name, Version: version, ID: req.ID, Inputs: req.Inputs, Outputs: req.OutputNames()})
	if err != nil {
		return err
	}
	resp := &wire.Response{ModelName: name, ModelVersion: res.Version, ID: req.ID, Outputs: res.Outputs}
	header, chunks, err := wire.EncodeResponse(resp, req.WantsBinary)
	if err != nil {
		return err
	}
	total := int64(len(header))
	for _, c := range chunks {
		total += int64(len(c))
	}
	h := w.Header()
	if len(chunks) > 0 {
		h.Set(wire.HeaderContentLength, strconv.Itoa(len(header)))
		h.Set("Content-Type", wire.ContentTypeBinary)
	} else {
		h.Set("Content-Type", "application/json")
	}
	h.Set("Content-Length", strconv.FormatInt(total, 10))
	w.WriteHeader(http.StatusOK)
	// A write error means the client went away; there is no one left to tell.
	if _, err := w.Write(header); err != nil {
		return nil
	}
	for _, c := range chunks {
		if _, err := w.Write(c); err != nil {
			return nil
		}
	}
	return nil
}

// readBody reads the whole body into one buffer of exactly Content-Length bytes when
// the client declared it, refusing early when that is over limit.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	rd := http.MaxBytesReader(w, r.Body, limit)
	if r.ContentLength >= 0 {
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(rd, buf); err != nil {
			return nil, fmt.Errorf("%w: reading body: %w", ErrBadRequest, err)
		}
		return buf, nil
	}
	buf, err := io.ReadAll(rd)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: reading body: %w", ErrBadRequest, err)
	}
	return buf, nil
}

func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) error {
	st, err := s.cfg.Cluster.Cluster(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

func (s *Server) handleNodes(w http.ResponseWriter, r *http.Request) error {
	nodes, err := s.cfg.Cluster.Nodes(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.NodeList{Nodes: nodes})
	return nil
}

func (s *Server) handleDrain(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Cluster.DrainNode(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) handleRemoveNode(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Cluster.RemoveNode(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) handleListModels(w http.ResponseWriter, r *http.Request) error {
	models, err := s.cfg.Models.ListModels(r.Context())
	if err != nil {
		return err
	}
	if models == nil {
		models = []wire.ModelStatus{}
	}
	writeJSON(w, http.StatusOK, wire.ModelList{Models: models})
	return nil
}

func (s *Server) handleGetModel(w http.ResponseWriter, r *http.Request) error {
	st, err := s.cfg.Models.ModelStatus(r.Context(), r.PathValue("name"), "")
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

// handlePutModel streams the upload to the model service; nothing here buffers it.
func (s *Server) handlePutModel(w http.ResponseWriter, r *http.Request) error {
	opts := DeployOptions{Size: r.ContentLength}
	var err error
	if opts.Stages, err = queryInt(r, "stages"); err != nil {
		return err
	}
	if opts.Replicas, err = queryInt(r, "replicas"); err != nil {
		return err
	}
	opts.State = r.URL.Query()["state"]
	if opts.Compress, err = queryCompress(r); err != nil {
		return err
	}
	if opts.Plan, err = queryPlan(r); err != nil {
		return err
	}
	if r.ContentLength > s.cfg.MaxModelBytes {
		return &http.MaxBytesError{Limit: s.cfg.MaxModelBytes}
	}
	var body io.Reader = http.MaxBytesReader(w, r.Body, s.cfg.MaxModelBytes)
	if mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "multipart/form-data" {
		opts.Size = -1 // the length counts the other parts too
		if body, err = readDeployParts(multipart.NewReader(body, params["boundary"]), &opts); err != nil {
			return err
		}
	}
	st, err := s.cfg.Models.PutModel(r.Context(), r.PathValue("name"), body, opts)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, st)
	return nil
}

func (s *Server) handleDeleteModel(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Models.DeleteModel(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Limits on the small parts of a multipart deploy. GPT-2's tokenizer.json is 1.4 MB;
// the largest byte-level BPE vocabularies (250k tokens) stay under 32 MB.
const (
	maxTokenizerBytes    = 32 << 20
	maxChatTemplateBytes = 1 << 20
)

// readDeployParts reads a multipart deploy: "tokenizer" and "chat_template" parts,
// which are checked here so a bad one is refused before the model is stored, then the
// "model" part, which must come last and is returned unread for the service to stream.
func readDeployParts(mr *multipart.Reader, opts *DeployOptions) (io.Reader, error) {
	for {
		part, err := mr.NextPart()
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: multipart deploy without a model part: %w", ErrBadRequest, err)
		}
		switch part.FormName() {
		case "model":
			return part, nil
		case "tokenizer":
			b, err := readPart(part, maxTokenizerBytes)
			if err != nil {
				return nil, err
			}
			if _, err := tokenizer.Parse(b); err != nil {
				return nil, err
			}
			opts.Tokenizer = b
		case "chat_template":
			b, err := readPart(part, maxChatTemplateBytes)
			if err != nil {
				return nil, err
			}
			if _, err := tokenizer.ParseChatTemplate(string(b)); err != nil {
				return nil, err
			}
			opts.ChatTemplate = string(b)
		default:
			return nil, fmt.Errorf("%w: unknown multipart deploy part %q (want tokenizer, chat_template, model)", ErrBadRequest, part.FormName())
		}
	}
}

// readPart reads a small part whole, refusing one over limit.
func readPart(part *multipart.Part, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(part, limit+1))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: reading part %s: %w", ErrBadRequest, part.FormName(), err)
	}
	if int64(len(b)) > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	return b, nil
}

// queryInt reads a non-negative integer query parameter; absent or "auto" is 0.
func queryInt(r *http.Request, key string) (int, error) {
	v := r.URL.Query().Get(key)
	if v == "" || strings.EqualFold(v, "auto") {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: %s=%q is not a non-negative integer", ErrBadRequest, key, v)
	}
	return n, nil
}

// queryPlan reads what a deploy's planner balances from its query.
func queryPlan(r *http.Request) (PlanOptions, error) {
	o := PlanOptions{Basis: r.URL.Query().Get("plan")}
	var err error
	if o.Past, err = queryInt(r, "plan_past"); err != nil {
		return o, err
	}
	switch {
	case o.Basis != "" && o.Basis != PlanFLOPs && o.Basis != PlanMeasured:
		return o, fmt.Errorf("%w: plan=%q (want %s or %s)", ErrBadRequest, o.Basis, PlanFLOPs, PlanMeasured)
	case o.Past > 0 && o.Basis != PlanMeasured:
		return o, fmt.Errorf("%w: plan_past needs plan=%s", ErrBadRequest, PlanMeasured)
	case o.Past > MaxPlanPast:
		return o, fmt.Errorf("%w: plan_past=%d is above %d", ErrBadRequest, o.Past, MaxPlanPast)
	}
	return o, nil
}

// queryCompress reads a deploy's compression options from its query.
func queryCompress(r *http.Request) (CompressOptions, error) {
	q := r.URL.Query()
	o := CompressOptions{Quantize: q.Get("compress")}
	var err error
	if o.BlockSize, err = queryInt(r, "block_size"); err != nil {
		return o, err
	}
	if o.Verify, err = queryInt(r, "verify"); err != nil {
		return o, err
	}
	for _, f := range []struct {
		key string
		dst *float64
	}{{"prune", &o.Prune}, {"max_error", &o.MaxError}, {"min_agreement", &o.MinAgreement}} {
		if *f.dst, err = queryFloat(r, f.key); err != nil {
			return o, err
		}
	}
	for _, b := range []struct {
		key string
		dst *bool
	}{{"symmetric", &o.Symmetric}, {"prune_global", &o.PruneGlobal}} {
		if v := q.Get(b.key); v != "" {
			if *b.dst, err = strconv.ParseBool(v); err != nil {
				return o, fmt.Errorf("%w: %s=%q is not a boolean", ErrBadRequest, b.key, v)
			}
		}
	}
	return o, nil
}

// queryFloat reads a non-negative number query parameter; absent is 0.
func queryFloat(r *http.Request, key string) (float64, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return 0, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f >= 0) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("%w: %s=%q is not a non-negative number", ErrBadRequest, key, v)
	}
	return f, nil
}

// authorize checks the bearer token a route needs.
func (s *Server) authorize(r *http.Request, acc access) error {
	if acc == open || (acc == inference && !s.cfg.RequireInferToken) {
		return nil
	}
	tok, ok := bearerToken(r)
	if !ok {
		return fmt.Errorf("%w: send Authorization: Bearer <token>", ErrUnauthorized)
	}
	scope, err := s.cfg.Tokens.VerifyToken(r.Context(), tok)
	if err != nil {
		return err
	}
	if acc == admin && scope != ScopeAdmin {
		return fmt.Errorf("%w: %s needs an admin token, this one is %s", ErrForbidden, r.URL.Path, scope)
	}
	return nil
}

func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", false
	}
	return strings.TrimSpace(h[len(prefix):]), true
}
