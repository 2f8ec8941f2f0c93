// Package node runs a layermesh node and wires its parts together: the HTTP API,
// whose service interfaces (api.ModelService, api.HealthService, api.ClusterService,
// api.TokenVerifier) it serves, the accel backend, the admin token, and either the
// single-node model service or the cluster part.
//
// A node runs alone ("single-node mode": it serves the models of --model-dir and those
// uploaded to it; singlenode_models.go, singlenode_admin.go) unless cluster settings
// are given. Then the cluster part (*Cluster, cluster_wiring.go) starts the mesh and
// the Raft store and connects the request path (package pipeline) and the control
// loop (package control) to them; cluster_api.go hands the API's calls to those.
//
// Files: node.go (config, start, shutdown), admintoken.go (the admin token and token
// checks), cluster_start.go, cluster_wiring.go, cluster_api.go, cluster_admin.go
// (cluster status answers), cluster_tokens.go, cluster_metrics.go, membership.go (the
// node's member record and gossip), secret.go (cluster secret and id), speed.go and
// membudget.go (what the node offers the planner).
package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort/gpu"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/events"
)

// Errors of the node's own making.
var (
	ErrConfig = errors.New("invalid node config")
)

// Version is the software version the node reports (set at link time with
// -ldflags "-X github.com/layermesh/layermesh/node.Version=...").
var Version = "dev"

// Files and folders inside the data dir.
const (
	adminTokenFile = "admin.token" // the admin token, mode 0600, created at first start
	httpAddrFile   = "http.addr"   // the bound HTTP address, for harnesses and scripts
	modelStoreDir  = "models"      // uploaded models, one <name>.onnx each
	uploadTempDir  = "tmp"         // uploads in progress; same filesystem for an atomic rename
)

// shutdownHTTPTimeout bounds how long in-flight requests may finish once the node
// stops; a GPT-2-small forward pass takes well under a second on a laptop.
const shutdownHTTPTimeout = 10 * time.Second

// ClusterConfig holds the cluster settings; any of them puts the node in cluster mode.
type ClusterConfig struct {
	Listen            []string // libp2p multiaddrs
	GossipPort        int
	Join              []string
	Bootstrap         bool
	BootstrapExpect   int
	ClusterSecretFile string
	MDNS              bool
	DHT               bool
	MemBudgetBytes    int64
	// SessionTTL is how long a generation session's state stays on a stage without a
	// step; 0 means pipeline.DefaultSessionTTL.
	SessionTTL time.Duration
	// MaxBatch is how many sessions' decode steps one stage run may carry
	// (pipeline.RuntimeConfig.MaxBatch); 0 or 1 runs each alone.
	MaxBatch int

	// resumed is set by New when no setting asks for a cluster but the data dir holds
	// one's state (resume.go).
	resumed bool
}

// configured reports whether any setting asks for cluster behaviour, or the data dir
// holds a cluster to resume.
func (c ClusterConfig) configured() bool {
	return len(c.Join) > 0 || c.Bootstrap || c.BootstrapExpect > 0 || c.ClusterSecretFile != "" || c.DHT || c.resumed
}

// Config configures a node.
type Config struct {
	// Name identifies the node; "" means the host name.
	Name string
	// DataDir holds the node's state: admin token, uploaded models, http.addr.
	DataDir string
	// ModelDir, when set, is a folder whose *.onnx files are served at start, each
	// under its file name without .onnx, version "1".
	ModelDir string
	// HTTPAddr is the API's listen address (host:port; port 0 picks a free one).
	HTTPAddr string
	// TLSCertFile and TLSKeyFile, when both set, serve the API over TLS.
	TLSCertFile string
	TLSKeyFile  string
	// Backend runs the models. The caller owns it and closes it after Run returns.
	Backend accel.Backend
	// IntraOpThreads per session; 0 means the backend's default.
	IntraOpThreads int
	// SessionPool is the number of ORT sessions per model (concurrent runs); 0 means 1.
	SessionPool int
	// MaxBodyBytes and MaxModelBytes bound inference bodies and uploads; 0 means the
	// api package defaults.
	MaxBodyBytes  int64
	MaxModelBytes int64
	// RequireInferToken gates inference behind a token.
	RequireInferToken bool
	// GPUs are the GPUs NVML reported at start (accel/ort/gpu.Probe); nil without NVML.
	// The node reports the first one's name and memory when its provider uses a GPU.
	GPUs    []gpu.Device
	Cluster ClusterConfig
	Logger  *slog.Logger
}

// Node is one running layermesh node.
//
// Lock order: uploadMu before mu. A model's own mu is never taken while mu is held:
// the model is looked up under mu, mu is released, then the model is run or closed.
type Node struct {
	cfg     Config
	name    string
	log     *slog.Logger
	backend accel.Backend
	tokens  *tokenStore
	reg     *prometheus.Registry
	api     *api.Server
	ln      net.Listener
	http    *http.Server
	tls     bool

	// modelsLoaded turns true once the models found at start are loaded (or failed).
	modelsLoaded atomic.Bool

	mu     sync.RWMutex      // guards models and failed
	models map[string]*model // loaded models by name
	failed map[string]string // models found at start that failed to load, with why

	uploadMu sync.Mutex // serialises the swap step of uploads and deletes of one node

	// texts caches the tokenizers of a single node's generative models.
	texts *modelTexts

	// cluster is the cluster part, set by Run in cluster mode once it has started.
	cluster atomic.Pointer[Cluster]
	// inferInFlight counts inference requests being answered (the load published to
	// the other members).
	inferInFlight atomic.Int64
	// wg tracks the node's own background work, waited for in shutdown.
	wg sync.WaitGroup
	// events is the node's event feed (GET /v1/events, the dashboard).
	events *events.Bus
}

// Compile-time proof that Node serves the API's interfaces.
var (
	_ api.ModelService   = (*Node)(nil)
	_ api.HealthService  = (*Node)(nil)
	_ api.ClusterService = (*Node)(nil)
	_ api.TokenVerifier  = (*Node)(nil)
)

// New prepares a node: data dir, admin token, metrics and the HTTP listener. The
// listener is bound here, so the address is known (Addr) before Run, and Run can
// answer liveness before any model has loaded.
func New(cfg Config) (*Node, error) {
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: DataDir is required", ErrConfig)
	}
	if cfg.Backend == nil {
		return nil, fmt.Errorf("%w: Backend is required", ErrConfig)
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, fmt.Errorf("%w: TLS needs both a certificate and a key", ErrConfig)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	name := cfg.Name
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("%w: no Name and no host name: %w", ErrConfig, err)
		}
		name = h
	}
	if err := resumeCluster(&cfg, log); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:     cfg,
		name:    name,
		log:     log.With("component", "node", "node", name),
		backend: cfg.Backend,
		reg:     prometheus.NewRegistry(),
		models:  make(map[string]*model),
		failed:  make(map[string]string),
		events:  events.NewBus(events.DefaultWindow, events.DefaultClientBuffer),
	}
	n.texts = newModelTexts(n.singleNodeText)
	for _, d := range []string{cfg.DataDir, filepath.Join(cfg.DataDir, modelStoreDir), filepath.Join(cfg.DataDir, uploadTempDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("node: data dir: %w", err)
		}
	}
	// Half-written uploads of a previous run are garbage; nothing refers to them.
	if err := clearDir(filepath.Join(cfg.DataDir, uploadTempDir)); err != nil {
		return nil, fmt.Errorf("node: clear upload dir: %w", err)
	}
	// A single node and a cluster's founder own an admin token; a node joining a
	// cluster uses the cluster's tokens (admintoken.go).
	var err error
	if !cfg.Cluster.configured() || cfg.Cluster.founding() {
		tokens, err := openTokenStore(filepath.Join(cfg.DataDir, adminTokenFile))
		if err != nil {
			return nil, err
		}
		n.tokens = tokens
	}
	if n.api, err = n.newAPI(); err != nil {
		return nil, err
	}
	var tlsConfig *tls.Config
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("node: TLS: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		n.tls = true
	}
	n.http = n.api.HTTPServer(tlsConfig)
	addr := cfg.HTTPAddr
	if addr == "" {
		addr = "127.0.0.1:8000"
	}
	n.ln, err = net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("node: HTTP listener: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(cfg.DataDir, httpAddrFile), []byte(n.ln.Addr().String()+"\n"), 0o600); err != nil {
		n.ln.Close()
		return nil, fmt.Errorf("node: %w", err)
	}
	return n, nil
}

// newAPI builds the HTTP API on this node's services: its own in single-node mode,
// the cluster's (clusterServices) in cluster mode.
func (n *Node) newAPI() (*api.Server, error) {
	cfg := n.cfg
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	var (
		models     api.ModelService   = n
		health     api.HealthService  = n
		cluster    api.ClusterService = n
		text       api.TextService    = n
		gen        api.Generator      = n
		links      api.LinkSource
		stageStats api.StageStatsSource
	)
	if cfg.Cluster.configured() {
		if cfg.ModelDir != "" {
			return nil, fmt.Errorf("%w: --model-dir serves models on a single node; in a cluster, deploy them with meshctl deploy", ErrConfig)
		}
		svc := clusterServices{n}
		models, health, cluster, text, gen = svc, svc, svc, svc, svc
		links, stageStats = svc, svc
	}
	n.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := registerAccelMetrics(n.reg, cfg.Backend, cfg.GPUs); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	return api.New(api.Config{
		Models:            models,
		Health:            health,
		Cluster:           cluster,
		Tokens:            n,
		Text:              text,
		Generator:         gen,
		RequireInferToken: cfg.RequireInferToken,
		MaxBodyBytes:      cfg.MaxBodyBytes,
		MaxModelBytes:     cfg.MaxModelBytes,
		Version:           Version,
		Accelerator:       accelerator(cfg.Backend.Provider(), cfg.GPUs),
		Registry:          n.reg,
		Logger:            log,
		Events:            n.events,
		Links:             links,
		StageStats:        stageStats,
	})
}

// Events is the node's event feed. Components outside the node's own loops (the
// generation path's session replays) publish on it.
func (n *Node) Events() *events.Bus { return n.events }

// Name is the node's name.
func (n *Node) Name() string { return n.name }

// Addr is the bound HTTP address (host:port).
func (n *Node) Addr() string { return n.ln.Addr().String() }

// URL is the API's base URL.
func (n *Node) URL() string {
	if n.tls {
		return "https://" + n.Addr()
	}
	return "http://" + n.Addr()
}

// Handler is the node's HTTP API, for in-process tests and benchmarks.
func (n *Node) Handler() http.Handler { return n.api.Handler() }

// Registry is the node's metrics registry; components register their series on it.
func (n *Node) Registry() *prometheus.Registry { return n.reg }

// Run serves until ctx is cancelled, then shuts down. HTTP comes up first so that
// liveness answers (and readiness says "loading") while models load.
func (n *Node) Run(ctx context.Context) error {
	// The node's background work (cluster start, token publishing) ends with runCtx,
	// which shutdown's callers cancel first, whatever made Run stop.
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	serveErr := make(chan error, 1)
	go func() {
		var err error
		if n.tls {
			err = n.http.ServeTLS(n.ln, "", "")
		} else {
			err = n.http.Serve(n.ln)
		}
		serveErr <- err
	}()
	n.log.Info("http api listening", "url", n.URL())

	if n.cfg.Cluster.configured() {
		if err := n.startCluster(runCtx); err != nil {
			stop()
			n.shutdown()
			return err
		}
	}
	n.loadAtStart(ctx)
	n.modelsLoaded.Store(true)
	n.log.Info("node ready", "models", len(n.modelNames()))

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("node: http server: %w", err)
	}
	stop()
	n.shutdown()
	return err
}

// shutdown stops the node in an order that loses no answered work:
//  1. stop taking HTTP requests and let those in flight finish (bounded), because
//     they hold model sessions;
//  2. leave the cluster part: hand Raft leadership over, unload stages once their
//     in-flight runs end, close the mesh (the others then see us gone and heal);
//  3. close the model sessions, now idle;
//  4. remove http.addr, so a harness never dials a dead node's address.
//
// The backend is the caller's to close, after this.
func (n *Node) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownHTTPTimeout)
	defer cancel()
	if err := n.http.Shutdown(ctx); err != nil {
		n.log.Warn("http shutdown did not drain in time; closing connections", "err", err)
		_ = n.http.Close()
	}
	n.wg.Wait() // background work ends with Run's ctx, before the cluster part closes
	if c := n.cluster.Load(); c != nil {
		if err := c.Close(); err != nil {
			n.log.Warn("cluster part did not close cleanly", "err", err)
		}
	}
	n.mu.Lock()
	models := n.models
	n.models = make(map[string]*model)
	n.mu.Unlock()
	for _, m := range models {
		m.close(n.log)
	}
	n.events.Close()
	_ = os.Remove(filepath.Join(n.cfg.DataDir, httpAddrFile))
	n.log.Info("node stopped")
}

// writeFileAtomic writes data to path through a temp file and a rename, so a reader
// never sees half a file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func clearDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}
