package node

// The cluster part of a node is wiring: NewCluster starts the mesh (libp2p,
// memberlist, stage RPC, blobs) and the Raft store, then connects the request path
// (package pipeline: view, runtime, router, inference service, stage server) and the
// control loop (package control: deploys, placements, serving record, blob
// collection) to them and to each other. The loops here only keep the node's own
// place in the cluster (membership.go).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort/gpu"
	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/control"
	"github.com/layermesh/layermesh/mesh"
	"github.com/layermesh/layermesh/pipeline"
)

// Cluster errors.
var (
	// ErrClusterConfig means the cluster settings are incomplete or inconsistent.
	ErrClusterConfig = errors.New("invalid cluster config")
)

// Files the cluster part keeps in the data dir.
const (
	// secretFileName is where a bootstrapping node writes the cluster secret.
	secretFileName = "cluster.secret"
	// p2pAddrFile holds this node's first libp2p multiaddr (with /p2p/ID): the seed
	// other nodes --join, read by harnesses and scripts.
	p2pAddrFile = "p2p.addr"
)

// ClusterOptions configure NewCluster.
type ClusterOptions struct {
	// Name is the node's name; DataDir holds identity, blobs, Raft data and the secret.
	Name    string
	DataDir string
	// HTTPAddr is advertised to the other members (host:port of the API).
	HTTPAddr string
	// Listen are libp2p multiaddrs; default /ip4/127.0.0.1/tcp/0 is NOT assumed: an
	// empty list lets the mesh pick its default.
	Listen     []string
	GossipPort int
	// GossipBind is memberlist's bind address; "" takes the host of the first Listen
	// address (127.0.0.1 for a loopback cluster).
	GossipBind string
	Join       []string
	// Bootstrap creates a new cluster (and its secret, unless SecretFile names an
	// existing file); BootstrapExpect N bootstraps once N nodes know each other.
	Bootstrap       bool
	BootstrapExpect int
	SecretFile      string
	MDNS, DHT       bool
	// FastGossip uses memberlist's local-network timings: failures are detected in
	// seconds. Meant for one-host clusters and tests.
	FastGossip bool
	// GPUs are the GPUs NVML reported at start; nil without NVML.
	GPUs []gpu.Device
	// MemBudget bounds the bytes of stages this node holds; 0 means half the memory
	// the kernel reports available (defaultMemBudget).
	MemBudget int64
	// SessionTTL is how long a generation session's state stays on a stage without a
	// step; 0 means pipeline.DefaultSessionTTL (5 min).
	SessionTTL time.Duration
	// MaxBatch is how many sessions' decode steps one stage run may carry; 0 or 1
	// runs each alone.
	MaxBatch int
	// Speed is this node's compute speed for the planner and the placement, in GFLOP/s;
	// 0 means measure it at start (MeasureSpeed: a short matmul through Backend with
	// Session's thread count). Set it to skip the benchmark or to pin a figure.
	Speed float64
	// Replicas is the default replication factor of a deploy; 0 means 2.
	Replicas int
	Backend  accel.Backend
	Session  accel.SessionOptions
	Router   pipeline.RouterConfig
	Logger   *slog.Logger
}

// Cluster is this node's membership in a layermesh cluster: the parts, wired.
type Cluster struct {
	opts   ClusterOptions
	log    *slog.Logger
	mesh   *mesh.Mesh
	store  *consensus.Store
	storeP atomic.Pointer[consensus.Store] // for the mesh's IsMember before Open returns
	self   string
	// boot identifies this run of the node (mesh.NodeMeta.Boot).
	boot string

	view    *pipeline.ClusterView
	runtime *pipeline.StageRuntime
	router  *pipeline.Router
	infer   *pipeline.Service
	control *control.Controller
	text    *modelTexts

	// caughtUp turns true once this node's state has caught up with the leader's
	// after start (a linearizable read succeeded): until then a restarted node's
	// state may lack models the cluster has, and it must not answer "not found".
	caughtUp atomic.Bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewCluster starts the mesh, opens the Raft store, joins (or bootstraps) the cluster
// and starts the stage runtime, the router and the leader's controller. ctx bounds
// start-up only.
func NewCluster(ctx context.Context, opts ClusterOptions) (*Cluster, error) {
	if opts.DataDir == "" || opts.Backend == nil {
		return nil, fmt.Errorf("%w: DataDir and Backend are required", ErrClusterConfig)
	}
	if opts.MemBudget <= 0 {
		opts.MemBudget = defaultMemBudget()
	}
	if opts.Replicas <= 0 {
		opts.Replicas = 2
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Speed <= 0 {
		opts.Speed = startupSpeed(ctx, opts)
	}
	secret, err := loadOrCreateSecret(opts)
	if err != nil {
		return nil, err
	}
	if err := keepSecretCopy(opts.DataDir, secret); err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, log: opts.Logger.With("component", "cluster"), boot: consensus.NewRequestID()[:16]}
	var gpuMem gpu.Device
	if usesGPU(opts.Backend.Provider()) && len(opts.GPUs) > 0 {
		gpuMem = opts.GPUs[0]
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())

	gossipBind := opts.GossipBind
	if gossipBind == "" {
		gossipBind = listenHost(opts.Listen)
	}
	c.mesh, err = mesh.New(ctx, mesh.Config{
		DataDir:        opts.DataDir,
		ListenAddrs:    opts.Listen,
		GossipBindAddr: gossipBind,
		GossipPort:     opts.GossipPort,
		ClusterID:      clusterID(secret),
		Secret:         secret,
		Join:           opts.Join,
		MDNS:           opts.MDNS,
		DHT:            opts.DHT,
		FastGossip:     opts.FastGossip,
		Logger:         opts.Logger,
		IsMember:       c.isMember,
		Meta: mesh.NodeMeta{
			Name: opts.Name, HTTPAddr: opts.HTTPAddr, MemBudget: opts.MemBudget, FreeMem: opts.MemBudget,
			Cores: runtime.NumCPU(), Accels: accelMeta(opts.Backend.Provider(), opts.GPUs), Speed: opts.Speed,
			GPUMem: gpuMem.TotalBytes, GPUFree: gpuMem.FreeBytes, Platform: platform(), Boot: c.boot,
		},
	})
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.self = c.mesh.ID().String()
	c.store, err = consensus.Open(ctx, consensus.Config{
		DataDir: opts.DataDir, NodeID: c.self, Host: c.mesh.Host(),
		Bootstrap: opts.Bootstrap, BootstrapExpect: opts.BootstrapExpect, Logger: opts.Logger,
	})
	if err != nil {
		c.cancel()
		_ = c.mesh.Close()
		return nil, err
	}
	c.storeP.Store(c.store)

	c.wire()
	c.goRun(c.joinLoop)
	c.goRun(c.rejoinLoop)
	c.goRun(c.knownPeersLoop)
	c.goRun(c.memberEventLoop)
	c.goRun(c.control.Run)
	c.goRun(func(ctx context.Context) { c.control.WatchAssignments(ctx, c.assign) })
	if opts.BootstrapExpect > 0 {
		c.goRun(c.expectLoop)
	}
	if addrs := c.mesh.Addrs(); len(addrs) > 0 {
		if err := writeFileAtomic(filepath.Join(opts.DataDir, p2pAddrFile), []byte(addrs[0]+"\n"), 0o600); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("node: %w", err)
		}
	}
	c.log.Info("cluster node started", "peer", c.self, "addrs", c.mesh.Addrs(), "gossip", c.mesh.GossipAddr())
	return c, nil
}

// wire builds the request path and the control loop on the mesh and the store. The
// view comes first: the runtime asks it whether a stage is ready elsewhere, the
// router asks it for replicas and plans, the controller for readiness.
func (c *Cluster) wire() {
	opts := c.opts
	c.view = pipeline.NewClusterView(c.self, c.store, c.mesh)
	c.control = control.New(control.Config{
		Self: c.self, Boot: c.boot, DataDir: opts.DataDir, Replicas: opts.Replicas,
		Store: c.store, Blobs: c.mesh.Blobs(), Links: c.mesh, View: c.view, Events: c.mesh,
		CaughtUp: c.caughtUp.Load, Backend: opts.Backend, Session: opts.Session, Logger: opts.Logger,
	})
	c.runtime = pipeline.NewStageRuntime(pipeline.RuntimeConfig{
		Backend: opts.Backend, Session: opts.Session, MemBudget: opts.MemBudget, SessionTTL: opts.SessionTTL, MaxBatch: opts.MaxBatch,
		Blobs: meshBlobs{c}, Report: c.reportStages, ReadyElsewhere: c.view.ReadyElsewhere, Logger: opts.Logger,
	})
	c.view.SetLocal(c.runtime)
	c.router = pipeline.NewRouter(opts.Router, c.view, c.view, pipeline.MeshCaller{Transport: c.mesh}, c.runtime, opts.Logger)
	c.infer = pipeline.NewService(c.store, c.view, c.router, c.caughtUp.Load)
	c.mesh.HandleStage(pipeline.StageServer{Driver: c.router, Local: c.runtime, Sessions: c.runtime}.Handle)
	c.text = newModelTexts(c.modelTextFiles)
}

// modelTextFiles finds a model's text side in the state; its tokenizer blob is
// fetched from a holder the first time this node needs it.
func (c *Cluster) modelTextFiles(ctx context.Context, model, version string) (textFiles, error) {
	info, version, err := c.control.ModelTextInfo(ctx, model, version)
	if err != nil {
		return textFiles{}, err
	}
	read := func(ctx context.Context) ([]byte, error) {
		if err := (meshBlobs{c}).Fetch(ctx, info.TokenizerSHA256, info.TokenizerSize); err != nil {
			return nil, err
		}
		return os.ReadFile(c.mesh.Blobs().Path(info.TokenizerSHA256))
	}
	return textFiles{key: info.TokenizerSHA256, version: version, tokenizer: read, chatTemplate: info.ChatTemplate}, nil
}

// assign hands the runtime the stages the committed placements give this node.
func (c *Cluster) assign(as []control.Assignment) {
	want := make([]pipeline.StageAssignment, len(as))
	st := c.store.State()
	for i, a := range as {
		want[i] = pipeline.StageAssignment{
			Key:  pipeline.StageKey{Model: a.Model, Version: a.Version, Stage: a.Stage},
			Blob: a.Blob, Size: a.Size, MemBytes: a.MemBytes,
		}
		// The state pairs the stage owns: with any, it serves generation sessions.
		if m, ok := st.Models[consensus.ModelKey(a.Model, a.Version)]; ok && a.Stage < len(m.Stages) {
			for _, p := range m.Stages[a.Stage].State {
				want[i].State = append(want[i].State, pipeline.StatePair{In: p.In, Out: p.Out})
			}
		}
	}
	c.runtime.SetAssignments(want)
}

// startupSpeed measures this node's speed score, or falls back to 1 GFLOP/s (with an
// error logged) when the benchmark cannot run: a node that cannot measure itself still
// serves, it just looks slow to the planner.
func startupSpeed(ctx context.Context, opts ClusterOptions) float64 {
	log := opts.Logger.With("component", "node")
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		log.Error("speed score not measured, using 1 GFLOP/s", "err", err)
		return 1
	}
	start := time.Now()
	gflops, err := MeasureSpeed(ctx, opts.Backend, opts.Session, opts.DataDir)
	if err != nil {
		log.Error("speed score not measured, using 1 GFLOP/s", "err", err)
		return 1
	}
	log.Info("speed score", "gflops", fmt.Sprintf("%.1f", gflops), "intra_op_threads", opts.Session.IntraOpThreads,
		"provider", string(opts.Backend.Provider()), "took", time.Since(start).Round(time.Millisecond).String())
	return gflops
}

// NewNodeCluster is the hook Node.New calls when cluster settings are given (after its
// HTTP listener is bound, so the address is known): it maps the node's configuration
// onto ClusterOptions and starts the cluster part. Node then serves api.ModelService,
// api.ClusterService and the "cluster" readiness check from the returned *Cluster,
// and closes it in shutdown after HTTP has drained and before its own sessions.
func NewNodeCluster(ctx context.Context, cfg Config, name, httpAddr string, log *slog.Logger) (*Cluster, error) {
	cc := cfg.Cluster
	return NewCluster(ctx, ClusterOptions{
		Name: name, DataDir: cfg.DataDir, HTTPAddr: httpAddr,
		Listen: cc.Listen, GossipPort: cc.GossipPort, Join: cc.Join,
		Bootstrap: cc.Bootstrap, BootstrapExpect: cc.BootstrapExpect, SecretFile: cc.ClusterSecretFile,
		MDNS: cc.MDNS, DHT: cc.DHT, MemBudget: cc.MemBudgetBytes, SessionTTL: cc.SessionTTL, MaxBatch: cc.MaxBatch, GPUs: cfg.GPUs,
		Backend: cfg.Backend, Session: accel.SessionOptions{IntraOpThreads: cfg.IntraOpThreads, PoolSize: cfg.SessionPool},
		Logger: log,
	})
}

func (c *Cluster) goRun(fn func(ctx context.Context)) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		fn(c.ctx)
	}()
}

// Close stops the node's part in the cluster in an order that loses no answered work:
// announce the departure in memberlist (peers stop routing stage calls here at once
// instead of after a failure detection), stop the loops (no new placements or loads),
// hand Raft leadership over and close the store (so the others elect quickly), then
// unload stages once their in-flight runs end, and close the mesh last, because the
// store and in-flight stage calls ride on it.
func (c *Cluster) Close() error {
	var errs []error
	if err := c.mesh.Leave(2 * time.Second); err != nil {
		errs = append(errs, fmt.Errorf("leave: %w", err))
	}
	c.cancel()
	c.wg.Wait()
	if err := c.store.Close(); err != nil {
		errs = append(errs, err)
	}
	c.runtime.Close()
	if err := c.mesh.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// RegisterMetrics registers the cluster's Prometheus series (router latencies,
// retries, stages served) on reg; Node calls it with its registry.
func (c *Cluster) RegisterMetrics(reg prometheus.Registerer) error {
	m, err := pipeline.NewRouterMetrics(reg)
	if err != nil {
		return err
	}
	c.router.SetMetrics(m)
	for _, col := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "layermesh_stage_memory_bytes",
			Help: "Memory budget bytes taken by the stages this node holds or is loading.",
		}, func() float64 { return float64(c.runtime.UsedBytes()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "layermesh_blob_served_bytes_total",
			Help: "Blob bytes (stage files) this node has sent to peers since start.",
		}, func() float64 { return float64(c.mesh.BlobBytesServed()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "layermesh_sessions_active",
			Help: "Generation sessions whose state this node's stages hold (one per session and stage).",
		}, func() float64 { return float64(c.runtime.SessionStats().Sessions) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "layermesh_session_state_bytes",
			Help: "Bytes of session state (KV caches) this node's stages hold, counted against --mem-budget.",
		}, func() float64 { return float64(c.runtime.SessionStats().Bytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "layermesh_sessions_expired_total",
			Help: "Session states this node freed after their idle TTL (or when their stage left).",
		}, func() float64 { return float64(c.runtime.SessionStats().Expired) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "layermesh_decode_batches_total",
			Help: "Stage runs that carried the decode steps of several sessions at once (--max-batch).",
		}, func() float64 { return float64(c.runtime.SessionStats().Batched.Runs) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "layermesh_decode_batched_steps_total",
			Help: "Decode steps that ran in a batch with other sessions' (--max-batch).",
		}, func() float64 { return float64(c.runtime.SessionStats().Batched.Steps) }),
	} {
		if err := reg.Register(col); err != nil {
			return err
		}
	}
	return nil
}

// Self is this node's peer id.
func (c *Cluster) Self() string { return c.self }

// Addrs are this node's libp2p multiaddrs (with /p2p/), the seeds others join through.
func (c *Cluster) Addrs() []string { return c.mesh.Addrs() }

// Store is the Raft store, for status pages and tests.
func (c *Cluster) Store() *consensus.Store { return c.store }

// Router is the request router, for metrics.
func (c *Cluster) Router() *pipeline.Router { return c.router }

// Runtime is the stage runtime, for status pages and tests.
func (c *Cluster) Runtime() *pipeline.StageRuntime { return c.runtime }

// Control is the control loop: deploys, placements, member states.
func (c *Cluster) Control() *control.Controller { return c.control }

// Inference is the request path's entry: version, validation, routing.
func (c *Cluster) Inference() *pipeline.Service { return c.infer }

func (c *Cluster) isMember(p peer.ID) bool {
	s := c.storeP.Load()
	if s == nil {
		return false
	}
	return s.Knows(p)
}

// reportStages hands what the runtime serves to the control loop (which commits it
// as this node's serving record) and publishes the free memory in the membership
// metadata. The runtime calls it from its reporting goroutine with no lock held, so
// a gossip update that blocks delays nothing else.
func (c *Cluster) reportStages(served []pipeline.ServedStage) {
	refs := make([]consensus.ServedRef, len(served))
	for i, s := range served {
		refs[i] = consensus.ServedRef{Model: s.Key.Model, Version: s.Key.Version, Stage: s.Key.Stage, Ready: s.Ready}
	}
	c.control.SetServed(refs)
	used := c.runtime.UsedBytes()
	err := c.mesh.UpdateMeta(func(m *mesh.NodeMeta) { m.FreeMem = max(c.opts.MemBudget-used, 0) })
	if err != nil && !errors.Is(err, mesh.ErrClosed) {
		c.log.Error("publishing free memory", "err", err)
	}
}

// meshBlobs lets the runtime pull stage blobs from whichever live members hold them.
type meshBlobs struct{ c *Cluster }

func (b meshBlobs) Path(hash string) string { return b.c.mesh.Blobs().Path(hash) }

func (b meshBlobs) Fetch(ctx context.Context, hash string, size int64) error {
	store := b.c.mesh.Blobs()
	if store.Has(hash) {
		return nil
	}
	// Any live member may hold it (the node that cut the model, the stage's other
	// replicas); those that do not answer "not found" and the fetch uses the rest.
	var holders []peer.ID
	for _, m := range b.c.mesh.Members() {
		if m.PeerID.String() != b.c.self {
			holders = append(holders, m.PeerID)
		}
	}
	if len(holders) == 0 {
		return fmt.Errorf("%w: blob %s: no live peer to fetch from", mesh.ErrNoHolders, hash)
	}
	return b.c.mesh.FetchBlob(ctx, hash, size, holders, store)
}
