package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/layermesh/layermesh/consensus/badgerstore"
)

// Config configures Open. DataDir, NodeID and Host are required; zero timing
// fields take the defaults noted on each.
type Config struct {
	// DataDir holds the raft log (badger) and snapshots under DataDir/raft.
	DataDir string
	// NodeID is this node's libp2p peer id string; it is also its Raft server
	// id and address. It must equal Host.ID().String().
	NodeID string
	// Host is the node's libp2p host; Raft and forwarding run as stream
	// protocols on it. Peer addresses must be known to its peerstore (the mesh
	// layer's job).
	Host host.Host
	// Bootstrap makes a node with no Raft state start a new cluster as its only
	// voter.
	Bootstrap bool
	// BootstrapExpect > 0 makes a node with no Raft state wait until that many
	// nodes (itself included) are known through Expect, then bootstrap them all
	// as voters. Every one of those nodes must be given the same N and learn the
	// same N peers; they then write identical configurations.
	BootstrapExpect int
	// Logger receives logs with component=consensus (raft's own with
	// component=raft). Default slog.Default().
	Logger *slog.Logger

	// HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout and CommitTimeout
	// are passed to raft (defaults 1s, 1s, 500ms, 50ms).
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// ApplyTimeout bounds one Apply, Read, AddNode or RemoveNode, waiting for a
	// leader included, when the caller's context has no earlier deadline.
	// Default 10s.
	ApplyTimeout time.Duration
	// SnapshotThreshold and SnapshotInterval are passed to raft (defaults 8192
	// and 2m); TrailingLogs too (default 10240).
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// DeadNodeTimeout is how long a member may stay dead before the leader
	// removes it from the Raft configuration, unless ClusterConfig.DeadNodeTimeout
	// overrides it. Default 10m.
	DeadNodeTimeout time.Duration
	// ReconcileInterval is how often the leader reviews voters and dead
	// nodes. Default 2s.
	ReconcileInterval time.Duration
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.HeartbeatTimeout, time.Second)
	def(&c.ElectionTimeout, time.Second)
	def(&c.LeaderLeaseTimeout, 500*time.Millisecond)
	def(&c.CommitTimeout, 50*time.Millisecond)
	def(&c.ApplyTimeout, 10*time.Second)
	def(&c.SnapshotInterval, 2*time.Minute)
	def(&c.DeadNodeTimeout, 10*time.Minute)
	def(&c.ReconcileInterval, 2*time.Second)
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 10240
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Store is a running Raft node holding the cluster state. All methods are safe
// for concurrent use.
//
// Lock order: Store's watchMu, expectMu and deadMu and the FSM's mu are
// never held together; the FSM calls notifyWatchers after releasing its own.
type Store struct {
	cfg    Config
	logger *slog.Logger

	raft      *raft.Raft
	raftReady atomic.Pointer[raft.Raft] // set once raft runs; read by admitted
	fsm       *fsm
	logs      *badgerstore.Store
	trans     *raft.NetworkTransport

	// ctx is cancelled by Close; background loops and forwarded requests
	// served here end with it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{} // wakes the voter manager early
	// waiting counts the goroutines blocked on a raft future (waitFuture).
	waiting atomic.Int64

	watchMu  sync.Mutex
	watchers map[int]chan struct{}
	leaderW  map[int]chan bool
	nextW    int

	expectMu     sync.Mutex
	expected     map[string]bool // peers learned through Expect
	bootstrapped bool

	deadMu    sync.Mutex
	deadSince map[string]time.Time // leader-local first sighting of a dead member

	closeOnce sync.Once
	closeErr  error
}

// Open starts the Raft node: opens the badger store (a damaged directory
// returns an error wrapping ErrCorruptStore), the snapshot store, the transport
// on RaftProtocol and the forwarding handler on ApplyProtocol, bootstraps when
// asked and the node has no state, and starts the voter manager.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.DataDir == "" || cfg.Host == nil || cfg.NodeID == "" {
		return nil, fmt.Errorf("%w: DataDir, NodeID and Host are required", ErrConfig)
	}
	if cfg.NodeID != cfg.Host.ID().String() {
		return nil, fmt.Errorf("%w: NodeID %s is not the host's peer id %s", ErrConfig, cfg.NodeID, cfg.Host.ID())
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	logger := cfg.Logger.With("component", "consensus")
	dir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("consensus: create %s: %w", dir, err)
	}
	logs, err := badgerstore.Open(filepath.Join(dir, "log"), badgerstore.Options{Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("%w: %w (move %s aside and rejoin the cluster)", ErrCorruptStore, err, dir)
	}
	level := hclog.Info
	if cfg.Logger.Enabled(ctx, slog.LevelDebug) {
		level = hclog.Debug
	}
	hl := newHclogBridge(cfg.Logger, level)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hl.Named("snapshot"))
	if err != nil {
		logs.Close()
		return nil, fmt.Errorf("%w: snapshot store: %w", ErrCorruptStore, err)
	}
	existing, err := raft.HasExistingState(logs, logs, snaps)
	if err != nil {
		logs.Close()
		return nil, fmt.Errorf("%w: read raft state: %w", ErrCorruptStore, err)
	}
	s := &Store{
		cfg:       cfg,
		logger:    logger,
		logs:      logs,
		kick:      make(chan struct{}, 1),
		watchers:  map[int]chan struct{}{},
		leaderW:   map[int]chan bool{},
		expected:  map[string]bool{cfg.NodeID: true},
		deadSince: map[string]time.Time{},
	}
	layer, err := newStreamLayer(cfg.Host, s.admitted)
	if err != nil {
		logs.Close()
		return nil, err
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  layer,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  hl.Named("transport"),
	})
	s.trans = trans
	s.fsm = newFSM(logger, s.notifyWatchers)
	s.ctx, s.cancel = context.WithCancel(context.Background())

	notify := make(chan bool, 8)
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.Logger = hl
	rc.NotifyCh = notify
	r, err := raft.NewRaft(rc, s.fsm, logs, logs, snaps, trans)
	if err != nil {
		trans.Close()
		logs.Close()
		return nil, fmt.Errorf("consensus: start raft: %w", err)
	}
	s.raft = r
	s.raftReady.Store(r)
	s.expectMu.Lock()
	s.bootstrapped = existing
	var bootErr error
	if !existing && cfg.Bootstrap {
		bootErr = s.bootstrap([]string{cfg.NodeID})
	}
	s.expectMu.Unlock()
	if bootErr != nil {
		s.shutdown()
		return nil, bootErr
	}
	cfg.Host.SetStreamHandler(ApplyProtocol, s.handleForward)
	s.wg.Add(2)
	go s.leaderLoop(notify)
	go s.voterLoop()
	logger.Info("raft node open", "id", cfg.NodeID, "existing_state", existing, "bootstrap", cfg.Bootstrap, "bootstrap_expect", cfg.BootstrapExpect)
	return s, nil
}

// bootstrap writes the first configuration; the caller holds expectMu.
func (s *Store) bootstrap(ids []string) error {
	conf := raft.Configuration{}
	for _, id := range ids {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(id)})
	}
	if err := s.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("consensus: bootstrap: %w", err)
	}
	s.bootstrapped = true
	s.logger.Info("bootstrapped cluster", "voters", ids)
	return nil
}

// admitted decides whether a peer may speak Raft or forward requests to this
// node: it must be in the Raft configuration or a member record that is not
// removed or left. A node with an empty configuration (new, waiting to be
// added) admits anyone, since the leader that adds it is not yet known to it.
func (s *Store) admitted(id peer.ID) bool {
	r := s.raftReady.Load()
	if r == nil {
		return true
	}
	if len(r.GetConfiguration().Configuration().Servers) == 0 {
		return true
	}
	return s.Knows(id)
}

// Knows reports whether id is a server in the latest Raft configuration or a member
// record that is not removed or left. The configuration is read from the log at
// start, before the FSM has caught up, so a node restarted from its data dir knows
// its peers at once: the mesh admits them without a join handshake, which is what
// lets the leader's Raft traffic reach a restarted founder that has no seed to join.
func (s *Store) Knows(id peer.ID) bool {
	if r := s.raftReady.Load(); r != nil {
		for _, srv := range r.GetConfiguration().Configuration().Servers {
			if string(srv.ID) == id.String() {
				return true
			}
		}
	}
	st, _ := s.fsm.current()
	m, ok := st.Members[id.String()]
	return ok && m.State != MemberRemoved && m.State != MemberLeft
}

// ID returns this node's id (its peer id).
func (s *Store) ID() string { return s.cfg.NodeID }

// State returns a private deep copy of the locally applied state. On a
// follower it may lag the leader; use Read(ctx, true) where that matters.
// Member.Voter reflects this node's latest view of the Raft configuration.
// View returns the local state as the FSM last published it, without copying: the
// FSM never changes a published state (every command builds the next one aside), so
// the value is safe to read from any goroutine, but it is shared and must never be
// modified. Member.Voter is not filled in (State does that). Meant for the request
// path, where State's deep copy would be paid on every call.
func (s *Store) View() *ClusterState {
	st, _ := s.fsm.current()
	return st
}

func (s *Store) State() *ClusterState {
	st, _ := s.fsm.current()
	c := st.Clone()
	conf := s.raft.GetConfiguration().Configuration()
	for _, srv := range conf.Servers {
		if m, ok := c.Members[string(srv.ID)]; ok {
			m.Voter = srv.Suffrage == raft.Voter
			c.Members[string(srv.ID)] = m
		}
	}
	return c
}

// Read returns the state. With linearizable false it is State(). With true
// it reflects every write acknowledged before Read was called: the leader
// commits a barrier (proving it still leads), and this node waits until its own
// FSM has applied up to that point; a follower asks the leader over
// ApplyProtocol. Errors wrap ErrFailed (no state returned).
func (s *Store) Read(ctx context.Context, linearizable bool) (*ClusterState, error) {
	if !linearizable {
		return s.State(), nil
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var idx uint64
	err := s.retry(ctx, func(ctx context.Context) error {
		var err error
		if s.raft.State() == raft.Leader {
			idx, err = s.barrierLocal(ctx)
			return err
		}
		var resp forwardResponse
		resp, err = s.forward(ctx, forwardRequest{Op: opBarrier})
		idx = resp.Index
		return err
	})
	if err != nil {
		return nil, asFailed(err)
	}
	if !s.fsm.waitApplied(ctx.Done(), idx) {
		return nil, fmt.Errorf("%w: %w: waiting to apply index %d", ErrFailed, ErrTimeout, idx)
	}
	return s.State(), nil
}

// barrierLocal commits a barrier on the leader and returns the index of the
// last command its FSM has applied, which covers every write acknowledged
// before the barrier.
func (s *Store) barrierLocal(ctx context.Context) (uint64, error) {
	if err := s.waitFuture(ctx, s.raft.Barrier(remaining(ctx))); err != nil {
		return 0, err
	}
	_, applied := s.fsm.current()
	return applied, nil
}

// Apply commits cmd through the leader from any node. nil means applied;
// otherwise the error wraps ErrFailed (definitely not applied; a rejection by
// the FSM such as ErrEpochMismatch also lands here) or ErrUnknownOutcome. Apply
// retries by itself while no leader is known or leadership moves, until the
// context's deadline or Config.ApplyTimeout; retrying the same cmd afterwards
// is safe.
func (s *Store) Apply(ctx context.Context, cmd Command) (Result, error) {
	data, err := EncodeCommand(cmd)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrFailed, err)
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var res Result
	err = s.retry(ctx, func(ctx context.Context) error {
		var err error
		if s.raft.State() == raft.Leader {
			res, err = s.applyLocal(ctx, data)
			return err
		}
		var resp forwardResponse
		resp, err = s.forward(ctx, forwardRequest{Op: opApply, Command: data})
		res = Result{Index: resp.Index, Epoch: resp.Epoch, ModelVersion: resp.ModelVersion, Duplicate: resp.Duplicate}
		return err
	})
	return res, err
}

// applyLocal applies on this node, which believes it is the leader.
func (s *Store) applyLocal(ctx context.Context, data []byte) (Result, error) {
	f := s.raft.Apply(data, remaining(ctx))
	if err := s.waitFuture(ctx, f); err != nil {
		return Result{}, err
	}
	resp, ok := f.Response().(applyResponse)
	if !ok {
		return Result{}, fmt.Errorf("%w: unexpected FSM response %T", ErrUnknownOutcome, f.Response())
	}
	return resp.result, resp.err
}

// waitFuture waits for a raft future and maps raft's errors onto the outcome
// classes. The future keeps running if ctx ends first, and so does the goroutine
// waiting on it, until raft resolves it on commit, step-down or as it leaves a
// state. Raft never resolves a future still queued when it shuts down (a
// configuration change queued behind one that cannot commit, say), so shutdown
// lets raft resolve them first (settleFutures).
func (s *Store) waitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	s.waiting.Add(1)
	go func() {
		defer s.waiting.Add(-1)
		done <- f.Error()
	}()
	select {
	case err := <-done:
		return mapRaftError(err)
	case <-ctx.Done():
		return fmt.Errorf("%w: %w: %w", ErrUnknownOutcome, ErrTimeout, ctx.Err())
	}
}

func mapRaftError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w: %w: %w", ErrFailed, ErrNotLeader, err)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %w: %w", ErrFailed, ErrTimeout, err)
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrAbortedByRestore):
		return fmt.Errorf("%w: %w: %w", ErrUnknownOutcome, ErrLeadershipLost, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: %w: %w", ErrUnknownOutcome, ErrClosed, err)
	default:
		return fmt.Errorf("%w: %w", ErrUnknownOutcome, err)
	}
}

// retry runs op until it succeeds, fails for a reason a retry cannot cure, or
// ctx ends. Not-leader, no-leader, lost leadership and broken forwarding are
// retried (safe: the FSM deduplicates on the request id). If any attempt had an
// unknown outcome, a later definite failure cannot prove the write absent, so
// the result stays unknown.
func (s *Store) retry(ctx context.Context, op func(context.Context) error) error {
	unknown := false
	backoff := 20 * time.Millisecond
	for {
		if s.ctx.Err() != nil {
			err := fmt.Errorf("%w: %w", ErrFailed, ErrClosed)
			if unknown {
				err = fmt.Errorf("%w: %w", ErrUnknownOutcome, ErrClosed)
			}
			return err
		}
		err := op(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrUnknownOutcome) {
			unknown = true
		}
		retryable := errors.Is(err, ErrNotLeader) || errors.Is(err, ErrNoLeader) ||
			errors.Is(err, ErrLeadershipLost) || errors.Is(err, ErrForward)
		if !retryable || ctx.Err() != nil {
			return settle(err, unknown)
		}
		select {
		case <-ctx.Done():
			return settle(err, unknown)
		case <-s.ctx.Done():
			return settle(err, unknown)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 250*time.Millisecond)
	}
}

// settle upgrades a definite failure to unknown when an earlier attempt may
// have been applied. A rejection by the FSM stays as it is: it is the
// remembered outcome of the request id, so it is definitive.
func settle(err error, unknown bool) error {
	if !unknown || errors.Is(err, ErrUnknownOutcome) || isFSMRejection(err) {
		return err
	}
	return reclass(err, ErrUnknownOutcome, "an earlier attempt may have landed; last attempt")
}

func isFSMRejection(err error) bool {
	return errors.Is(err, ErrEpochMismatch) || errors.Is(err, ErrNotFound) ||
		errors.Is(err, ErrExists) || errors.Is(err, ErrInvalidCommand)
}

// asFailed reclassifies a read or membership failure: nothing was written,
// so an unknown outcome is simply a failure.
func asFailed(err error) error {
	if !errors.Is(err, ErrUnknownOutcome) {
		return err
	}
	return reclass(err, ErrFailed, "")
}

// reclass rewraps err under another outcome class, keeping its specific cause
// sentinel and its text, so that it wraps exactly one class.
func reclass(err, class error, note string) error {
	text := err.Error()
	for _, c := range []error{ErrFailed, ErrUnknownOutcome} {
		text = strings.ReplaceAll(text, c.Error()+": ", "")
	}
	if note != "" {
		text = note + ": " + text
	}
	for _, c := range codeSentinels {
		if errors.Is(err, c.err) {
			return &reclassified{class: class, cause: c.err, text: class.Error() + ": " + text}
		}
	}
	return &reclassified{class: class, text: class.Error() + ": " + text}
}

// reclassified is an error that matches its class and cause sentinels only.
type reclassified struct {
	class, cause error
	text         string
}

func (e *reclassified) Error() string { return e.text }

func (e *reclassified) Unwrap() []error {
	if e.cause == nil {
		return []error{e.class}
	}
	return []error{e.class, e.cause}
}

// bound applies Config.ApplyTimeout when ctx has no earlier deadline.
func (s *Store) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= s.cfg.ApplyTimeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.cfg.ApplyTimeout)
}

func remaining(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		if r := time.Until(d); r > 0 {
			return r
		}
		return time.Millisecond
	}
	return 0
}

// IsLeader reports whether this node is the Raft leader now.
func (s *Store) IsLeader() bool { return s.raft.State() == raft.Leader }

// Leader returns the current leader's id, "" when none is known.
func (s *Store) Leader() string {
	_, id := s.raft.LeaderWithID()
	return string(id)
}

// WaitLeader blocks until a leader is known (this node or another) and
// returns its id; the error wraps ErrNoLeader when ctx ends first.
func (s *Store) WaitLeader(ctx context.Context) (string, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if id := s.Leader(); id != "" {
			return id, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-s.ctx.Done():
			return "", ErrClosed
		case <-t.C:
		}
	}
}

// Watch returns a channel that receives (coalesced) after every applied change
// and a cancel func that stops the notifications and closes the channel.
func (s *Store) Watch() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.watchMu.Lock()
	id := s.nextW
	s.nextW++
	s.watchers[id] = ch
	s.watchMu.Unlock()
	return ch, func() {
		s.watchMu.Lock()
		defer s.watchMu.Unlock()
		if _, ok := s.watchers[id]; ok { // Close may have closed it already
			delete(s.watchers, id)
			close(ch)
		}
	}
}

func (s *Store) notifyWatchers() {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	for _, ch := range s.watchers {
		select {
		case ch <- struct{}{}:
		default: // a notification is already pending; it covers this change too
		}
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// LeaderCh returns a channel that receives true when this node becomes leader
// and false when it stops being leader (only the latest value is kept if the
// reader is slow), and a cancel func that closes it.
func (s *Store) LeaderCh() (<-chan bool, func()) {
	ch := make(chan bool, 1)
	s.watchMu.Lock()
	id := s.nextW
	s.nextW++
	s.leaderW[id] = ch
	s.watchMu.Unlock()
	return ch, func() {
		s.watchMu.Lock()
		defer s.watchMu.Unlock()
		if _, ok := s.leaderW[id]; ok { // Close may have closed it already
			delete(s.leaderW, id)
			close(ch)
		}
	}
}

// leaderLoop fans raft's leadership notifications out to LeaderCh readers and
// wakes the voter manager on gaining leadership.
func (s *Store) leaderLoop(notify <-chan bool) {
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case v := <-notify:
			s.logger.Info("leadership changed", "leader", v)
			s.watchMu.Lock()
			for _, ch := range s.leaderW {
				select {
				case <-ch: // drop the stale value; the newest one matters
				default:
				}
				ch <- v
			}
			s.watchMu.Unlock()
			if v {
				select {
				case s.kick <- struct{}{}:
				default:
				}
			}
		}
	}
}

// Stats are Raft figures for metrics and status pages.
type Stats struct {
	State        string // Leader, Follower, Candidate, Shutdown
	Leader       string
	Term         uint64
	CommitIndex  uint64
	AppliedIndex uint64
	LastIndex    uint64
	Voters       int
	NonVoters    int
}

// Stats returns current Raft figures.
func (s *Store) Stats() Stats {
	st := Stats{
		State:        s.raft.State().String(),
		Leader:       s.Leader(),
		Term:         s.raft.CurrentTerm(),
		CommitIndex:  s.raft.CommitIndex(),
		AppliedIndex: s.raft.AppliedIndex(),
		LastIndex:    s.raft.LastIndex(),
	}
	for _, srv := range s.raft.GetConfiguration().Configuration().Servers {
		if srv.Suffrage == raft.Voter {
			st.Voters++
		} else {
			st.NonVoters++
		}
	}
	return st
}

// Snapshot asks raft to take a snapshot now (for tests and operators).
func (s *Store) Snapshot() error {
	if err := s.raft.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return fmt.Errorf("consensus: snapshot: %w", err)
	}
	return nil
}

// Close shuts the node down in a bounded way: if it leads and other voters
// exist it hands leadership over first (so the cluster does not wait out an
// election timeout), then stops raft, the transport and the badger store.
// Close does not remove the node from the cluster; see Leave.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.raft.State() == raft.Leader && s.otherVoters() > 0 {
			f := s.raft.LeadershipTransfer()
			ctx, cancel := context.WithTimeout(context.Background(), 2*s.cfg.ElectionTimeout+time.Second)
			if err := s.waitFuture(ctx, f); err != nil {
				s.logger.Warn("leadership transfer on close failed", "err", err)
			}
			cancel()
		}
		s.closeErr = s.shutdown()
	})
	return s.closeErr
}

// settleFutures gives raft up to limit to resolve the futures this node still
// waits on, polling, before it shuts down: any state resolves what it dequeues,
// and a leader that cannot commit steps down within its lease and answers the
// rest as a follower. What is left after limit stays blocked for good, and says so.
func (s *Store) settleFutures(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for s.waiting.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.waiting.Load(); n > 0 {
		s.logger.Warn("raft futures unresolved at shutdown; their waiters stay blocked", "futures", n, "waited", limit)
	}
}

// shutdown stops everything without handing leadership over.
func (s *Store) shutdown() error {
	s.cancel()
	s.cfg.Host.RemoveStreamHandler(ApplyProtocol)
	s.settleFutures(s.cfg.LeaderLeaseTimeout + 2*s.cfg.ElectionTimeout)
	var errs []error
	if err := s.raft.Shutdown().Error(); err != nil {
		errs = append(errs, fmt.Errorf("consensus: raft shutdown: %w", err))
	}
	if err := s.trans.Close(); err != nil {
		errs = append(errs, fmt.Errorf("consensus: transport close: %w", err))
	}
	s.wg.Wait()
	if err := s.logs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("consensus: close raft log store: %w", err))
	}
	s.watchMu.Lock()
	for id, ch := range s.watchers {
		delete(s.watchers, id)
		close(ch)
	}
	for id, ch := range s.leaderW {
		delete(s.leaderW, id)
		close(ch)
	}
	s.watchMu.Unlock()
	s.logger.Info("raft node closed", "id", s.cfg.NodeID)
	return errors.Join(errs...)
}

func (s *Store) otherVoters() int {
	n := 0
	for _, srv := range s.raft.GetConfiguration().Configuration().Servers {
		if srv.Suffrage == raft.Voter && string(srv.ID) != s.cfg.NodeID {
			n++
		}
	}
	return n
}
