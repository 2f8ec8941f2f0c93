// Package control is the cluster's control loop: it owns every Raft write about
// models, placements and member states. A deploy (deploy.go) stores the upload, plans
// and cuts the stages and commits the manifest; the leader's placement controller
// (controller.go, placement.go) keeps each model version placed on the live members;
// the serving record (serving.go) tells the others what this node serves; blob
// collection (blobgc.go) removes stage files no model names; members.go drains,
// undrains and removes nodes; catalogue.go describes the models.
//
// Who writes what into Raft:
//   - every node: model manifests it cut after an upload (PutModel), deletes, its own
//     serving record, and the admin's member-state changes (drain, undrain, remove);
//   - the leader only: member liveness from memberlist (SetMemberState alive/dead) and
//     placements (SetPlacement, compare-and-set on the epoch).
//
// Everything the leader does is level-triggered: it recomputes what the state should
// be from the current Raft state and memberlist on every change and every second, so a
// new leader finishes whatever the old one left half done.
//
// It reads which replicas are ready through ModelView (package pipeline's ClusterView
// satisfies it) and never imports the request path.
package control

import (
	"context"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/mesh"
)

// RaftStore is the replicated state as the control loop reads and writes it
// (consensus.Store).
type RaftStore interface {
	// State is a copy of this node's state with Member.Voter filled in; View is the
	// shared, read-only published state.
	State() *consensus.ClusterState
	View() *consensus.ClusterState
	// Read is a read through the leader, linearizable when asked.
	Read(ctx context.Context, linearizable bool) (*consensus.ClusterState, error)
	Apply(ctx context.Context, cmd consensus.Command) (consensus.Result, error)
	// Watch signals every change of this node's copy of the state.
	Watch() (<-chan struct{}, func())
	IsLeader() bool
	AddNode(ctx context.Context, id string) error
	RemoveNode(ctx context.Context, id string) error
}

// ModelView is what the control loop needs to know about serving: the live members,
// which of them serve a stage ready, and which version a name resolves to.
type ModelView interface {
	LiveMembers() map[string]mesh.NodeMeta
	Suspects() map[string]bool
	ReadyReplicas(st *consensus.ClusterState, m consensus.Model, k int, live map[string]mesh.NodeMeta) []string
	ModelReady(st *consensus.ClusterState, m consensus.Model, live map[string]mesh.NodeMeta) bool
	ResolveVersion(st *consensus.ClusterState, name, version string) (consensus.Model, error)
}

// MemberEvents streams memberlist's membership changes (mesh.Mesh).
type MemberEvents interface {
	Subscribe() (<-chan mesh.MemberEvent, func())
}

// LinkProbes gives the measured link to a peer (mesh.Mesh).
type LinkProbes interface {
	Link(p peer.ID) (mesh.LinkStats, bool)
}

// Config configures a Controller.
type Config struct {
	// Self is this node's peer id; Boot identifies this run (mesh.NodeMeta.Boot).
	Self, Boot string
	// DataDir holds deploys in progress.
	DataDir string
	// Replicas is the default replication factor of a deploy.
	Replicas int
	Store    RaftStore
	Blobs    *mesh.BlobStore
	Links    LinkProbes
	View     ModelView
	// Events wakes the leader's controller on every membership change (mesh.Mesh).
	Events MemberEvents
	// CaughtUp says whether this node's state has caught up with the leader's since
	// start; until then models may look missing and blobs unreferenced.
	CaughtUp func() bool
	// Backend runs the models a deploy compresses (calibration-free verification);
	// nil refuses deploys that ask for compression.
	Backend accel.Backend
	// Session is how this node's stages open their sessions (intra-op threads): a
	// measured plan times the model the way its stages will run.
	Session accel.SessionOptions
	Logger  *slog.Logger
}

// Controller owns the Raft writes about models, placements and member states.
//
// Lock order: leader.mu and servedMu are never held together, nor across a Raft
// write or any call out of the package. Deploys are serialised by a semaphore that a
// request's context can abandon, never by a mutex.
type Controller struct {
	cfg   Config
	log   *slog.Logger
	store RaftStore
	blobs *mesh.BlobStore
	links LinkProbes
	view  ModelView

	deploys semaphore
	leader  leaderState

	// served is what the runtime last said it serves, which servingLoop commits as
	// this node's consensus.Serving record; servedKick wakes that loop.
	servedMu   sync.Mutex
	served     []consensus.ServedRef
	servedKick chan struct{}
}

// New returns a controller; Run starts its loops.
func New(cfg Config) *Controller {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 2
	}
	return &Controller{
		cfg: cfg, log: cfg.Logger.With("component", "control"), store: cfg.Store, blobs: cfg.Blobs,
		links: cfg.Links, view: cfg.View,
		deploys:    newSemaphore(1),
		leader:     leaderState{missing: make(map[string]time.Time), errs: make(map[string]string)},
		served:     []consensus.ServedRef{},
		servedKick: make(chan struct{}, 1),
	}
}

// Run runs the leader's controller, the serving-record loop and the blob collector
// until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){c.leaderLoop, c.servingLoop, c.blobGCLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	wg.Wait()
}

// validName keeps model names safe as file names and URL path segments.
var validName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// ValidModelName says whether name may name a model: 1-128 of [A-Za-z0-9._-], not
// starting with . or -. Single-node mode applies the same rule.
func ValidModelName(name string) bool { return validName.MatchString(name) }

// semaphore serialises long work; unlike a mutex, a waiter can give up.
type semaphore chan struct{}

func newSemaphore(n int) semaphore { return make(semaphore, n) }

// acquire takes a slot, or returns ctx's error once ctx ends first.
func (s semaphore) acquire(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s semaphore) release() { <-s }

// everyChange calls fn now, then after every change of the Raft state, every signal on
// kick (nil: none) and every 2 s, until ctx ends: the level-triggered loops that keep
// something equal to the state.
func (c *Controller) everyChange(ctx context.Context, kick <-chan struct{}, fn func()) {
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

func nowUTC() time.Time { return time.Now().UTC() }
