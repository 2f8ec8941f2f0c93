package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/control"
	"github.com/layermesh/layermesh/pipeline"
)

// Where a model came from; an uploaded model's file belongs to the node, a model-dir
// file belongs to the user and is never deleted.
const (
	sourceModelDir = "model-dir"
	sourceUpload   = "upload"
)

// singleVersion is the only version a single node serves of a model.
const singleVersion = "1"

// model is one loaded model. Runs hold mu for reading; close takes it for writing,
// so a replaced or deleted model's session closes only after its last run.
type model struct {
	name     string
	version  string
	path     string
	source   string
	sha256   string
	size     int64
	loadedAt time.Time
	inputs   []wire.TensorMetadata
	outputs  []wire.TensorMetadata
	// state are the model's state pairs (detected by name) and contextLen its context:
	// a model with state pairs serves generation (singlenode_generate.go).
	state      []pipeline.StatePair
	contextLen int

	mu     sync.RWMutex
	sess   accel.Session
	closed bool
}

// errModelClosed means a run found its model already replaced or deleted; Infer looks
// the name up again rather than fail a request that raced a redeploy.
var errModelClosed = errors.New("model closed")

func (m *model) run(ctx context.Context, req api.InferRequest) (api.InferResult, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return api.InferResult{}, fmt.Errorf("model %s: %w: %w", m.name, errModelClosed, accel.ErrSessionClosed)
	}
	out, err := m.sess.Run(ctx, req.Inputs, req.Outputs)
	if err != nil {
		return api.InferResult{}, fmt.Errorf("model %s: %w", m.name, err)
	}
	return api.InferResult{Version: m.version, Outputs: out}, nil
}

func (m *model) close(log *slog.Logger) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.closed = true
	if err := m.sess.Close(); err != nil {
		log.Warn("closing model session", "model", m.name, "err", err)
	}
}

func (m *model) status(node string) wire.ModelStatus {
	return wire.ModelStatus{
		Name: m.name, Version: m.version, SHA256: m.sha256, Size: m.size, Source: m.source,
		Ready: true, LoadedAt: m.loadedAt,
		Stages:  []wire.StageStatus{{Index: 0, Replicas: []string{node}, Ready: true}},
		Inputs:  m.inputs,
		Outputs: m.outputs,
	}
}

func tensorMetadata(infos []accel.TensorInfo) []wire.TensorMetadata {
	out := make([]wire.TensorMetadata, len(infos))
	for i, ti := range infos {
		out[i] = wire.TensorMetadata{Name: ti.Name, Datatype: ti.DType.KServe(), Shape: append([]int64{}, ti.Shape...)}
	}
	return out
}

func (n *Node) sessionOptions() accel.SessionOptions {
	return accel.SessionOptions{IntraOpThreads: n.cfg.IntraOpThreads, PoolSize: n.cfg.SessionPool}
}

// openModel hashes the file at path and loads it into the backend.
func (n *Node) openModel(ctx context.Context, name, path, source, sum string, size int64) (*model, error) {
	if sum == "" {
		var err error
		if sum, size, err = hashFile(path); err != nil {
			return nil, err
		}
	}
	sess, err := n.backend.Open(ctx, path, n.sessionOptions())
	if err != nil {
		return nil, err
	}
	m := &model{
		name: name, version: singleVersion, path: path, source: source, sha256: sum, size: size,
		loadedAt: time.Now(), inputs: tensorMetadata(sess.Inputs()), outputs: tensorMetadata(sess.Outputs()),
		sess: sess,
	}
	m.state, m.contextLen = generativeInfo(path, sess)
	return m, nil
}

func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

// loadAtStart loads the model dir, then the uploads kept in the data dir (which win
// over a model-dir file of the same name: they were put there later, on purpose). A
// model that fails to load is logged and listed as failed; the others serve.
func (n *Node) loadAtStart(ctx context.Context) {
	var found []struct{ name, path, source string }
	add := func(dir, source string) {
		if dir == "" {
			return
		}
		paths, err := filepath.Glob(filepath.Join(dir, "*.onnx"))
		if err != nil {
			n.log.Error("listing models", "dir", dir, "err", err)
			return
		}
		sort.Strings(paths)
		for _, p := range paths {
			found = append(found, struct{ name, path, source string }{strings.TrimSuffix(filepath.Base(p), ".onnx"), p, source})
		}
	}
	add(n.cfg.ModelDir, sourceModelDir)
	add(filepath.Join(n.cfg.DataDir, modelStoreDir), sourceUpload)
	for _, f := range found {
		if ctx.Err() != nil {
			return
		}
		if !control.ValidModelName(f.name) {
			n.log.Warn("skipping model with an invalid name", "path", f.path)
			continue
		}
		start := time.Now()
		m, err := n.openModel(ctx, f.name, f.path, f.source, "", 0)
		if err != nil {
			n.log.Error("model failed to load", "model", f.name, "path", f.path, "err", err)
			n.mu.Lock()
			n.failed[f.name] = err.Error()
			n.mu.Unlock()
			continue
		}
		n.log.Info("model loaded", "model", f.name, "path", f.path, "size", m.size, "sha256", m.sha256, "took", time.Since(start).Round(time.Millisecond))
		n.swapModel(m)
	}
}

// swapModel installs m and closes the model it replaces (after that one's last run).
func (n *Node) swapModel(m *model) {
	n.mu.Lock()
	old := n.models[m.name]
	n.models[m.name] = m
	delete(n.failed, m.name)
	n.mu.Unlock()
	if old != nil {
		old.close(n.log)
	}
}

func (n *Node) lookup(name, version string) (*model, error) {
	n.mu.RLock()
	m, ok := n.models[name]
	reason, failed := n.failed[name]
	n.mu.RUnlock()
	switch {
	case ok && (version == "" || version == m.version):
		return m, nil
	case ok:
		return nil, fmt.Errorf("%w: %s has no version %q (versions: %s)", api.ErrModelNotFound, name, version, m.version)
	case failed:
		return nil, fmt.Errorf("%w: %s failed to load: %s", api.ErrNotReady, name, reason)
	case !n.modelsLoaded.Load():
		return nil, fmt.Errorf("%w: models are still loading", api.ErrNotReady)
	}
	return nil, fmt.Errorf("%w: %s", api.ErrModelNotFound, name)
}

func (n *Node) modelNames() []string {
	n.mu.RLock()
	defer n.mu.RUnlock()
	names := make([]string, 0, len(n.models))
	for name := range n.models {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// ListModels returns the loaded models and, not ready, those that failed to load.
func (n *Node) ListModels(ctx context.Context) ([]wire.ModelStatus, error) {
	n.mu.RLock()
	out := make([]wire.ModelStatus, 0, len(n.models)+len(n.failed))
	for _, m := range n.models {
		out = append(out, m.status(n.name))
	}
	for name, reason := range n.failed {
		out = append(out, wire.ModelStatus{Name: name, Version: singleVersion, Reason: reason, Stages: []wire.StageStatus{}})
	}
	n.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ModelStatus describes one model; version "" means the latest.
func (n *Node) ModelStatus(ctx context.Context, name, version string) (wire.ModelStatus, error) {
	m, err := n.lookup(name, version)
	if err != nil {
		return wire.ModelStatus{}, err
	}
	return m.status(n.name), nil
}

// Infer runs a model on the request's inputs. A request that looked the model up just
// before an upload or delete swapped it out is looked up again, so a redeploy fails no
// request: it runs on the new model, or finds the name gone.
func (n *Node) Infer(ctx context.Context, req api.InferRequest) (api.InferResult, error) {
	const attempts = 3 // each retry follows a completed swap; more in a row is a storm of uploads
	var err error
	for range attempts {
		var m *model
		if m, err = n.lookup(req.Model, req.Version); err != nil {
			return api.InferResult{}, err
		}
		var res api.InferResult
		if res, err = m.run(ctx, req); !errors.Is(err, errModelClosed) {
			return res, err
		}
	}
	return api.InferResult{}, err
}

// PutModel streams body into a temp file in the data dir, hashing it on the way,
// loads it to prove it is a model the backend can run, and only then renames it into
// place and swaps it in. A corrupt or truncated upload is refused with
// accel.ErrInvalidModel and leaves the serving models untouched.
func (n *Node) PutModel(ctx context.Context, name string, body io.Reader, opts api.DeployOptions) (wire.ModelStatus, error) {
	if !control.ValidModelName(name) {
		return wire.ModelStatus{}, fmt.Errorf("%w: %q (want 1-128 of [A-Za-z0-9._-], not starting with . or -)", api.ErrInvalidName, name)
	}
	if opts.Stages > 1 || opts.Replicas > 1 {
		return wire.ModelStatus{}, fmt.Errorf("%w: stages=%d replicas=%d need a cluster", api.ErrNotClusterMode, opts.Stages, opts.Replicas)
	}
	if opts.Plan.Basis == api.PlanMeasured {
		return wire.ModelStatus{}, fmt.Errorf("%w: plan=%s chooses where a cluster cuts the model: a single node runs it whole", api.ErrNotClusterMode, api.PlanMeasured)
	}
	if opts.Compress.Enabled() {
		// A single node keeps the upload as its model file; compress it with meshctl
		// compress and upload the result instead.
		return wire.ModelStatus{}, fmt.Errorf("%w: compression at deploy needs a cluster: compress the model with meshctl compress and deploy the result", api.ErrNotClusterMode)
	}
	if opts.ChatTemplate != "" && opts.Tokenizer == nil {
		return wire.ModelStatus{}, fmt.Errorf("%w: a chat template needs a tokenizer", api.ErrBadRequest)
	}
	tmp, err := os.CreateTemp(filepath.Join(n.cfg.DataDir, uploadTempDir), name+".*.part")
	if err != nil {
		return wire.ModelStatus{}, fmt.Errorf("upload %s: %w", name, err)
	}
	tmpPath := tmp.Name()
	defer os.Remove(tmpPath) // a no-op once renamed into place
	h := sha256.New()
	buf := make([]byte, 1<<20)
	size, err := io.CopyBuffer(io.MultiWriter(tmp, h), body, buf)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return wire.ModelStatus{}, fmt.Errorf("upload %s: after %d bytes: %w", name, size, err)
	}
	if size == 0 {
		return wire.ModelStatus{}, fmt.Errorf("upload %s: %w: empty body", name, accel.ErrInvalidModel)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	final := filepath.Join(n.cfg.DataDir, modelStoreDir, name+".onnx")
	m, err := n.openModel(ctx, name, tmpPath, sourceUpload, sum, size)
	if err != nil {
		if !errors.Is(err, accel.ErrInvalidModel) && ctx.Err() == nil {
			// The backend could not load the bytes: for an upload that is the
			// upload's fault, whatever the backend called it.
			err = fmt.Errorf("%w: %w", accel.ErrInvalidModel, err)
		}
		return wire.ModelStatus{}, fmt.Errorf("upload %s: %w", name, err)
	}
	m.path = final
	n.uploadMu.Lock()
	defer n.uploadMu.Unlock()
	// The text files first: a model that turns up generates with its own tokenizer.
	if err := writeUploadText(final, opts); err != nil {
		m.close(n.log)
		return wire.ModelStatus{}, fmt.Errorf("upload %s: %w", name, err)
	}
	if err := os.Rename(tmpPath, final); err != nil {
		m.close(n.log)
		return wire.ModelStatus{}, fmt.Errorf("upload %s: %w", name, err)
	}
	syncDir(filepath.Dir(final))
	n.swapModel(m)
	n.log.Info("model uploaded", "model", name, "size", size, "sha256", sum)
	return m.status(n.name), nil
}

// DeleteModel unloads a model. An uploaded model's file is deleted; a model-dir file
// is the user's and stays, so it is served again after a restart.
func (n *Node) DeleteModel(ctx context.Context, name string) error {
	n.uploadMu.Lock()
	defer n.uploadMu.Unlock()
	n.mu.Lock()
	m, ok := n.models[name]
	_, failed := n.failed[name]
	delete(n.models, name)
	delete(n.failed, name)
	n.mu.Unlock()
	if !ok {
		if failed {
			return nil
		}
		return fmt.Errorf("%w: %s", api.ErrModelNotFound, name)
	}
	m.close(n.log)
	if m.source == sourceUpload {
		if err := os.Remove(m.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("delete %s: %w", name, err)
		}
		if err := removeUploadText(m.path); err != nil {
			return fmt.Errorf("delete %s: %w", name, err)
		}
	}
	n.log.Info("model deleted", "model", name, "source", m.source)
	return nil
}

// syncDir makes a rename durable; a failure only weakens durability, so it is logged
// by nobody and ignored.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}
