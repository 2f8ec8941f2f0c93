package node

// The cluster side of a node: a Cluster owns the mesh (libp2p, memberlist, stage RPC,
// blobs), the Raft store, the stage runtime, the router and, on the leader, the
// placement controller. Node constructs one with NewCluster when cluster settings are
// given and hands the API calls for models and cluster to it.
//
// Who writes what into Raft:
//   - every node: its own member record (UpsertMember, at start and when its capacity
//     changes), and model manifests it cut after an upload (PutModel);
//   - the leader only: member liveness from memberlist (SetMemberState alive/dead) and
//     placements (SetPlacement, compare-and-set on the epoch).
//
// Everything the leader does is level-triggered: it recomputes what the state should
// be from the current Raft state and memberlist on every change and every second, so a
// new leader finishes whatever the old one left half done.

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/mesh"
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
	// MemBudget bounds the bytes of stages this node holds; 0 means half the memory
	// the kernel reports available (defaultMemBudget).
	MemBudget int64
	// Speed is this node's compute speed for the planner and the placement, in GFLOP/s;
	// 0 means measure it at start (MeasureSpeed: a short matmul through Backend with
	// Session's thread count). Set it to skip the benchmark or to pin a figure.
	Speed float64
	// Replicas is the default replication factor of a deploy; 0 means 2.
	Replicas int
	Backend  accel.Backend
	Session  accel.SessionOptions
	Router   RouterConfig
	Logger   *slog.Logger
}

// Cluster is this node's membership in a layermesh cluster.
type Cluster struct {
	opts    ClusterOptions
	log     *slog.Logger
	mesh    *mesh.Mesh
	store   *consensus.Store
	storeP  atomic.Pointer[consensus.Store] // for the mesh's IsMember before Open returns
	runtime *StageRuntime
	router  *Router
	self    string

	suspectMu sync.Mutex
	suspect   map[string]bool // peers this node's probes report failing

	// caughtUp turns true once this node's state has caught up with the leader's
	// after start (a linearizable read succeeded): until then a restarted node's
	// state may lack models the cluster has, and it must not answer "not found".
	caughtUp atomic.Bool

	deployMu sync.Mutex // one upload is cut at a time on this node: cutting is CPU- and disk-bound

	// boot identifies this run of the node (mesh.NodeMeta.Boot); served is what the
	// runtime last said it serves, which servingLoop commits to the Raft state as
	// this node's consensus.Serving record; servedKick wakes that loop.
	boot       string
	servedMu   sync.Mutex
	served     []consensus.ServedRef
	servedKick chan struct{}

	ctrl controller

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
	c := &Cluster{opts: opts, log: opts.Logger.With("component", "cluster"), suspect: make(map[string]bool),
		ctrl: controller{missing: make(map[string]time.Time), errs: make(map[string]string)},
		boot: consensus.NewRequestID()[:16], served: []consensus.ServedRef{}, servedKick: make(chan struct{}, 1)}
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
			Cores: runtime.NumCPU(), Accels: []string{string(opts.Backend.Provider())}, Speed: opts.Speed,
			Boot: c.boot,
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

	c.runtime = NewStageRuntime(RuntimeConfig{
		Backend: opts.Backend, Session: opts.Session, MemBudget: opts.MemBudget,
		Blobs: meshBlobs{c}, Report: c.reportStages, ReadyElsewhere: c.readyElsewhere, Logger: opts.Logger,
	})
	c.router = NewRouter(opts.Router, clusterPlans{c}, clusterReplicas{c}, meshCaller{c.mesh}, c.runtime, opts.Logger)
	c.mesh.HandleStage(c.serveStage)

	c.goRun(c.joinLoop)
	c.goRun(c.assignmentLoop)
	c.goRun(c.servingLoop)
	c.goRun(c.blobGCLoop)
	c.goRun(c.rejoinLoop)
	c.goRun(c.knownPeersLoop)
	c.goRun(c.memberEventLoop)
	c.goRun(c.leaderLoop)
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
		MDNS: cc.MDNS, DHT: cc.DHT, MemBudget: cc.MemBudgetBytes,
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
	m, err := NewRouterMetrics(reg)
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
func (c *Cluster) Router() *Router { return c.router }

// Runtime is the stage runtime, for status pages and tests.
func (c *Cluster) Runtime() *StageRuntime { return c.runtime }

func (c *Cluster) isMember(p peer.ID) bool {
	s := c.storeP.Load()
	if s == nil {
		return false
	}
	return s.Knows(p)
}

// loadOrCreateSecret reads the cluster secret, creating it when this node bootstraps
// a new cluster and no secret file was named.
func loadOrCreateSecret(opts ClusterOptions) ([]byte, error) {
	path := opts.SecretFile
	if path == "" {
		path = filepath.Join(opts.DataDir, secretFileName)
	}
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if len(s) < 16 {
			return nil, fmt.Errorf("%w: secret in %s is shorter than 16 characters", ErrClusterConfig, path)
		}
		return []byte(s), nil
	}
	if !errors.Is(err, os.ErrNotExist) || !(opts.Bootstrap || opts.BootstrapExpect > 0) || opts.SecretFile != "" {
		return nil, fmt.Errorf("%w: cluster secret: %w", ErrClusterConfig, err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, err
	}
	s := hex.EncodeToString(raw[:])
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, []byte(s+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("cluster secret: %w", err)
	}
	return []byte(s), nil
}

// clusterID derives the cluster id from the secret, so that a joining node needs
// nothing but the secret file.
func clusterID(secret []byte) string {
	h := sha256.Sum256(append([]byte("layermesh cluster id\x00"), secret...))
	return hex.EncodeToString(h[:8])
}

// listenHost is the IP of the first listen multiaddr, "" when there is none.
func listenHost(listen []string) string {
	for _, l := range listen {
		a, err := ma.NewMultiaddr(l)
		if err != nil {
			continue
		}
		if ip, err := a.ValueForProtocol(ma.P_IP4); err == nil {
			return ip
		}
		if ip, err := a.ValueForProtocol(ma.P_IP6); err == nil {
			return ip
		}
	}
	return ""
}

// joinLoop writes this node's member record until it is committed. A joining node
// cannot reach Raft before the leader adds it to the configuration, which the leader
// does for every node memberlist admits (reconcileMembers); until then the writes fail
// with "no leader" and are retried.
func (c *Cluster) joinLoop(ctx context.Context) {
	rec := consensus.Member{
		ID: c.self, Name: c.opts.Name, Addrs: c.mesh.Addrs(), HTTPAddr: c.opts.HTTPAddr,
		Capacity: consensus.Capacity{MemBudget: c.opts.MemBudget, Cores: runtime.NumCPU(), Speed: c.opts.Speed},
		State:    consensus.MemberAlive, StateSince: time.Now(),
	}
	backoff := 200 * time.Millisecond
	for {
		cur, ok := c.store.State().Members[c.self]
		if ok && sameMember(cur, rec) {
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := c.store.Read(rctx, true)
			cancel()
			if err == nil {
				c.caughtUp.Store(true)
				c.log.Info("member record in place and state caught up", "peer", c.self)
				return
			}
			c.log.Info("joining cluster: state not caught up yet", "err", err)
			if sleepCtx(ctx, backoff) != nil {
				return
			}
			continue
		}
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := c.store.Apply(actx, consensus.NewCommand(consensus.UpsertMember{Member: rec}))
		cancel()
		if err == nil {
			continue
		}
		c.log.Info("joining cluster: member record not committed yet", "err", err)
		if sleepCtx(ctx, backoff) != nil {
			return
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// rejoinInterval is how often a node checks that its gossip reaches every member the
// Raft state lists.
const rejoinInterval = 5 * time.Second

// rejoinLoop joins the gossip again through the members the Raft state lists when
// memberlist does not hold some of them alive. A node restarted without seeds (the
// founder, started again with --bootstrap) otherwise stays alone in its member list
// once the others have declared it dead, since they no longer gossip to it: it would
// see no stage of theirs and route nothing to them, although Raft reaches it. One
// successful join per round is enough; gossip brings the rest.
func (c *Cluster) rejoinLoop(ctx context.Context) {
	everyTick(ctx, rejoinInterval, func() {
		live := c.liveMembers()
		for id, m := range c.store.View().Members {
			if _, ok := live[id]; ok || id == c.self || m.State == consensus.MemberDead {
				continue
			}
			infos, err := peer.AddrInfosFromP2pAddrs(p2pAddrs(m.Addrs)...)
			if err != nil || len(infos) != 1 {
				continue
			}
			jctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			err = c.mesh.Connect(jctx, infos[0])
			cancel()
			if err == nil {
				c.log.Info("rejoined the gossip through a cluster member", "member", m.Name)
				break
			}
			c.log.Debug("rejoining the gossip", "member", m.Name, "err", err)
		}
	})
}

// everyTick calls fn every d until ctx ends (first after d).
func everyTick(ctx context.Context, d time.Duration, fn func()) {
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		fn()
	}
}

// p2pAddrs parses the multiaddrs that parse.
func p2pAddrs(addrs []string) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, a := range addrs {
		if m, err := ma.NewMultiaddr(a); err == nil {
			out = append(out, m)
		}
	}
	return out
}

func sameMember(a, b consensus.Member) bool {
	return a.Name == b.Name && a.HTTPAddr == b.HTTPAddr && a.Capacity == b.Capacity &&
		slices.Equal(a.Addrs, b.Addrs) && (a.State == consensus.MemberAlive || a.State == consensus.MemberDraining)
}

// expectLoop tells the store about every peer memberlist knows until it bootstraps.
func (c *Cluster) expectLoop(ctx context.Context) {
	for {
		for _, m := range c.mesh.Members() {
			if err := c.store.Expect(m.PeerID.String()); err != nil {
				c.log.Warn("bootstrap expect", "peer", m.PeerID.String(), "err", err)
			}
		}
		if sleepCtx(ctx, 500*time.Millisecond) != nil {
			return
		}
	}
}

// memberEventLoop keeps the suspect set and wakes the runtime (a replacement may be
// ready now) and the leader on every membership change.
func (c *Cluster) memberEventLoop(ctx context.Context) {
	events, stop := c.mesh.Subscribe()
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			id := ev.Member.PeerID.String()
			c.suspectMu.Lock()
			if ev.Type == mesh.MemberSuspect {
				c.suspect[id] = true
			} else {
				delete(c.suspect, id)
			}
			c.suspectMu.Unlock()
			c.runtime.Kick()
		}
	}
}

// liveMembers maps peer id -> metadata of the members memberlist holds alive.
func (c *Cluster) liveMembers() map[string]mesh.NodeMeta {
	out := make(map[string]mesh.NodeMeta)
	for _, m := range c.mesh.Members() {
		out[m.PeerID.String()] = m.Meta
	}
	return out
}

// readyElsewhere says whether the stage may go from this node: a live member other
// than this one serves it ready, or its model version is no longer deployed at all
// (deleted or superseded), so nobody will take it over.
func (c *Cluster) readyElsewhere(k StageKey) bool {
	st := c.store.View()
	if _, ok := st.Models[consensus.ModelKey(k.Model, k.Version)]; !ok {
		return true
	}
	for id, meta := range c.liveMembers() {
		if id != c.self && servesReady(st, id, meta, k) {
			return true
		}
	}
	return false
}

// servesReady says whether member id, in the run its metadata names, has reported
// stage k ready in the replicated state.
func servesReady(st *consensus.ClusterState, id string, meta mesh.NodeMeta, k StageKey) bool {
	return st.Serving[id].Serves(meta.Boot, k.Model, k.Version, k.Stage)
}

// reportStages records what the runtime serves for servingLoop to commit, and
// publishes the free memory in the membership metadata.
func (c *Cluster) reportStages(served []ServedStage) {
	refs := make([]consensus.ServedRef, len(served))
	for i, s := range served {
		refs[i] = consensus.ServedRef{Model: s.Key.Model, Version: s.Key.Version, Stage: s.Key.Stage, Ready: s.Ready}
	}
	slices.SortFunc(refs, compareServedRefs)
	c.servedMu.Lock()
	c.served = refs
	c.servedMu.Unlock()
	select {
	case c.servedKick <- struct{}{}:
	default:
	}
	used := c.runtime.UsedBytes()
	err := c.mesh.UpdateMeta(func(m *mesh.NodeMeta) { m.FreeMem = max(c.opts.MemBudget-used, 0) })
	if err != nil && !errors.Is(err, mesh.ErrClosed) {
		c.log.Error("publishing free memory", "err", err)
	}
}

func compareServedRefs(a, b consensus.ServedRef) int {
	return cmp.Or(strings.Compare(a.Model, b.Model), strings.Compare(a.Version, b.Version), cmp.Compare(a.Stage, b.Stage))
}

// servingWriteTimeout bounds one commit of this node's serving record; a failed one
// is tried again on the next wake-up.
const servingWriteTimeout = 5 * time.Second

// servingLoop keeps this node's consensus.Serving record equal to what the runtime
// serves, in this run: after every runtime change, every state change (a restore, a
// new leader) and every 2 s it compares and, when they differ, commits the record.
// Routers take a stage as ready on a node only from that record, so it has no size
// limit (membership metadata has 512 bytes).
func (c *Cluster) servingLoop(ctx context.Context) {
	c.everyChange(ctx, c.servedKick, func() {
		c.servedMu.Lock()
		want := consensus.Serving{Boot: c.boot, Stages: c.served}
		c.servedMu.Unlock()
		have, ok := c.store.View().Serving[c.self]
		if ok && have.Boot == want.Boot && slices.Equal(have.Stages, want.Stages) {
			return
		}
		wctx, cancel := context.WithTimeout(ctx, servingWriteTimeout)
		defer cancel()
		err := c.applyRetrying(wctx, consensus.NewCommand(consensus.ReportServing{Node: c.self, Serving: want}))
		if err != nil && ctx.Err() == nil {
			c.log.Debug("committing the served stages; will try again", "stages", len(want.Stages), "err", err)
		}
	})
}

// everyChange calls fn now, then after every change of the Raft state, every signal on
// kick (nil: none) and every 2 s, until ctx ends: the level-triggered loops that keep
// something equal to the state.
func (c *Cluster) everyChange(ctx context.Context, kick <-chan struct{}, fn func()) {
	changes, stop := c.store.Watch()
	defer stop()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		fn()
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-changes:
		case <-tick.C:
		}
	}
}

// assignmentLoop keeps the runtime's assignments equal to what the committed
// placements give this node.
func (c *Cluster) assignmentLoop(ctx context.Context) {
	c.everyChange(ctx, nil, func() { c.runtime.SetAssignments(assignmentsFor(c.store.State(), c.self)) })
}

// assignmentsFor lists the stages the committed placements give node self.
func assignmentsFor(st *consensus.ClusterState, self string) []StageAssignment {
	var out []StageAssignment
	for key, pl := range st.Placements {
		model, ok := st.Models[key]
		if !ok {
			continue
		}
		ann := deployAnnotation(st, model)
		for k, reps := range pl.Stages {
			if k >= len(model.Stages) || !slices.Contains(reps, self) {
				continue
			}
			sm := model.Stages[k]
			out = append(out, StageAssignment{
				Key:  StageKey{Model: model.Name, Version: model.Version, Stage: k},
				Blob: sm.SHA256, Size: sm.Size, MemBytes: ann.memBytes(model, k),
			})
		}
	}
	return out
}

// serveStage answers peers' stage RPCs: one stage from the runtime, or a whole request
// handed over to this node as driver.
func (c *Cluster) serveStage(ctx context.Context, req *mesh.StageRequest) ([]tensor.Tensor, error) {
	if req.Drive {
		out, err := c.router.Drive(ctx, StageCall{RequestID: req.RequestID, Model: req.Model, Version: req.Version,
			Stage: DriveStage, Inputs: req.Tensors, Outputs: req.Outputs})
		return out, toMeshError(err)
	}
	out, err := c.runtime.RunStage(ctx, req.Model, req.Version, req.Stage, req.Tensors, req.Outputs)
	return out, toMeshError(err)
}

// toMeshError gives a handler's error the wire code the caller's router acts on: a
// rejected input is final everywhere, a stage this node does not serve is retried on
// another replica.
func toMeshError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, accel.ErrInputMismatch), errors.Is(err, accel.ErrShapeMismatch), errors.Is(err, accel.ErrDTypeMismatch):
		return fmt.Errorf("%w: %w", mesh.ErrBadRequest, err)
	case errors.Is(err, ErrStageNotServed), errors.Is(err, ErrUnknownModel):
		return fmt.Errorf("%w: %w", mesh.ErrStageNotLoaded, err)
	}
	return err
}

// meshCaller adapts the mesh's stage RPC to the router's StageCaller.
type meshCaller struct{ m *mesh.Mesh }

func (mc meshCaller) CallStage(ctx context.Context, node string, call StageCall) ([]tensor.Tensor, error) {
	p, err := peer.Decode(node)
	if err != nil {
		return nil, fmt.Errorf("stage call to %q: %w", node, err)
	}
	req := &mesh.StageRequest{
		RequestID: call.RequestID, Model: call.Model, Version: call.Version, Stage: call.Stage,
		Tensors: call.Inputs, Outputs: call.Outputs,
	}
	if call.Stage == DriveStage {
		// A hand-over travels as the stage RPC's drive flag; the wire's stage index
		// is never negative and means nothing then.
		req.Drive, req.Stage = true, 0
	}
	out, err := mc.m.CallStage(ctx, p, req)
	if errors.Is(err, mesh.ErrBadRequest) {
		// The peer's model rejected the inputs: every replica would.
		return nil, fmt.Errorf("%w: %w", accel.ErrInputMismatch, err)
	}
	return out, err
}

// clusterReplicas is the router's view of ready replicas: live members whose serving
// record (of the run their metadata names) has the stage ready, this node from its
// runtime directly.
type clusterReplicas struct{ c *Cluster }

func (v clusterReplicas) Replicas(model, version string, stage int) []Replica {
	k := StageKey{Model: model, Version: version, Stage: stage}
	var out []Replica
	v.c.suspectMu.Lock()
	suspect := maps.Clone(v.c.suspect)
	v.c.suspectMu.Unlock()
	st := v.c.store.View()
	for _, m := range v.c.mesh.Members() {
		id := m.PeerID.String()
		if id == v.c.self {
			if v.c.runtime.Serves(k) {
				out = append(out, Replica{Node: id, Local: true})
			}
			continue
		}
		if suspect[id] || !servesReady(st, id, m.Meta, k) {
			continue
		}
		r := Replica{Node: id}
		if ls, ok := v.c.mesh.Link(m.PeerID); ok {
			r.RTT = ls.RTT
		}
		out = append(out, r)
	}
	return out
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

// clusterPlans derives route plans from the committed manifests.
type clusterPlans struct{ c *Cluster }

func (p clusterPlans) RoutePlan(model, version string) (RoutePlan, error) {
	st := p.c.store.View()
	m, ok := st.Models[consensus.ModelKey(model, version)]
	if !ok || len(m.Stages) == 0 {
		return RoutePlan{}, fmt.Errorf("%w: %s version %s", ErrUnknownModel, model, version)
	}
	plan := RoutePlan{Model: model, Version: version}
	for _, s := range m.Stages {
		plan.Stages = append(plan.Stages, RouteStage{Inputs: slices.Clone(s.Inputs), Outputs: slices.Clone(s.Outputs)})
	}
	for _, o := range m.Signature.Outputs {
		plan.Outputs = append(plan.Outputs, o.Name)
	}
	plan.DriveFromLast = signatureBytes(m.Signature.Outputs) > signatureBytes(m.Signature.Inputs)
	return plan, nil
}

// signatureBytes estimates the bytes of a set of tensors with every dynamic dim taken
// as 1: the same guess on both sides, enough to tell a GPT (ids in, logits out) from a
// CNN (image in, scores out).
func signatureBytes(specs []consensus.TensorSpec) int64 {
	var total int64
	for _, s := range specs {
		n := int64(max(tensor.DType(s.DType).Size(), 1))
		for _, d := range s.Shape {
			n *= max(d, 1)
		}
		total += n
	}
	return total
}
