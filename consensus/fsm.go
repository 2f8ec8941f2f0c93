package consensus

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/hashicorp/raft"
)

// dedupWindow is how many recent request ids every replica remembers. A retry
// arriving after this many newer writes would be applied again; retries come
// within seconds, so the window is generous.
const dedupWindow = 8192

// snapshotVersion is the format of Persist's output. Restore also reads format
// 1 (migrate.go) and refuses a newer one, whose meaning this build cannot know.
const snapshotVersion = 2

// dedupEntry remembers the outcome of one request id so that a duplicate gets
// the same answer as the original.
type dedupEntry struct {
	ID    string `json:"id"`
	Index uint64 `json:"index"`
	Epoch uint64 `json:"epoch,omitempty"`
	// ModelVersion is the version a PutModel allocated.
	ModelVersion string `json:"model_version,omitempty"`
	Code         string `json:"code,omitempty"` // errCode of a rejected command
	Msg          string `json:"msg,omitempty"`
}

// applyResponse is what fsm.Apply hands back through raft's ApplyFuture.
type applyResponse struct {
	result Result
	err    error // wraps ErrFailed and a specific sentinel; the command was rejected
}

// fsm is the thin Raft state machine: decode, deduplicate, dispatch, publish.
// The published state is copy-on-write: a handler changes a private clone that
// replaces the pointer only on success, so readers and snapshots take the
// pointer without copying and never see a half-applied command.
type fsm struct {
	logger *slog.Logger
	notify func() // called after every change, outside mu

	mu      sync.RWMutex
	state   *ClusterState
	applied uint64 // index of the last LogCommand applied (changed or not)
	seen    map[string]dedupEntry
	order   []string // request ids oldest first, at most dedupWindow
	waitCh  chan struct{}
}

func newFSM(logger *slog.Logger, notify func()) *fsm {
	return &fsm{
		logger: logger,
		notify: notify,
		state:  NewClusterState(),
		seen:   map[string]dedupEntry{},
		waitCh: make(chan struct{}),
	}
}

// Apply implements raft.FSM.
func (f *fsm) Apply(l *raft.Log) any {
	cmd, unknown, err := decodeEnvelope(l.Data)
	if unknown {
		// A newer node wrote a command this build does not understand. Skipping it
		// would silently fork this replica's state; stopping is the only safe move.
		panic(fmt.Sprintf("consensus: raft log index %d: %v; upgrade this node", l.Index, err))
	}
	f.mu.Lock()
	resp, changed := f.applyLocked(l.Index, cmd, err)
	ch := f.waitCh
	f.waitCh = make(chan struct{})
	f.mu.Unlock()
	close(ch)
	if changed && f.notify != nil {
		f.notify()
	}
	return resp
}

func (f *fsm) applyLocked(index uint64, cmd Command, decodeErr error) (applyResponse, bool) {
	f.applied = index
	if decodeErr != nil {
		// Deterministic on every replica, so rejecting it keeps them equal.
		return applyResponse{result: Result{Index: index}, err: fmt.Errorf("%w: %w", ErrFailed, decodeErr)}, false
	}
	if e, ok := f.seen[cmd.RequestID]; ok {
		r := Result{Index: e.Index, Epoch: e.Epoch, ModelVersion: e.ModelVersion, Duplicate: true}
		return applyResponse{result: r, err: errorFromCode(classFailed, e.Code, e.Msg)}, false
	}
	next := f.state.Clone()
	out, err := cmd.Payload.apply(next)
	e := dedupEntry{ID: cmd.RequestID, Index: index, Epoch: out.epoch, ModelVersion: out.modelVersion}
	changed := err == nil
	if err != nil {
		e.Code, e.Msg = codeOf(err), err.Error()
	} else {
		next.Index = index
		f.state = next
	}
	f.remember(e)
	resp := applyResponse{result: Result{Index: index, Epoch: out.epoch, ModelVersion: out.modelVersion}}
	if err != nil {
		resp.err = fmt.Errorf("%w: %w", ErrFailed, err)
	}
	return resp, changed
}

func (f *fsm) remember(e dedupEntry) {
	f.seen[e.ID] = e
	f.order = append(f.order, e.ID)
	if len(f.order) > dedupWindow {
		drop := len(f.order) - dedupWindow
		for _, id := range f.order[:drop] {
			delete(f.seen, id)
		}
		f.order = append(f.order[:0:0], f.order[drop:]...)
	}
}

// current returns the published state; callers must not modify it.
func (f *fsm) current() (*ClusterState, uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state, f.applied
}

// waitApplied blocks until a command at index >= idx has been applied, or done closes.
func (f *fsm) waitApplied(done <-chan struct{}, idx uint64) bool {
	for {
		f.mu.RLock()
		applied, ch := f.applied, f.waitCh
		f.mu.RUnlock()
		if applied >= idx {
			return true
		}
		select {
		case <-ch:
		case <-done:
			return false
		}
	}
}

// snapshotData is the persisted form of the FSM.
type snapshotData struct {
	Version int           `json:"version"`
	Applied uint64        `json:"applied"`
	State   *ClusterState `json:"state"`
	Dedup   []dedupEntry  `json:"dedup"`
}

// Snapshot implements raft.FSM: it only takes the immutable state pointer and a
// copy of the bounded dedup window, so it returns at once; Persist does the I/O.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	d := snapshotData{Version: snapshotVersion, Applied: f.applied, State: f.state, Dedup: make([]dedupEntry, 0, len(f.order))}
	for _, id := range f.order {
		d.Dedup = append(d.Dedup, f.seen[id])
	}
	return &fsmSnapshot{data: d}, nil
}

// Restore implements raft.FSM: it decodes the whole snapshot aside and swaps it
// in only when it is complete.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	raw, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("consensus: read snapshot: %w", err)
	}
	// The format number first: a newer format may not even parse as this one.
	var format struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(raw, &format); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSnapshot, err)
	}
	if err := checkSnapshotFormat(format.Version); err != nil {
		return err
	}
	var d snapshotData
	if err := json.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("%w: format %d: %w", ErrInvalidSnapshot, format.Version, err)
	}
	st, err := restoredState(d)
	if err != nil {
		return err
	}
	seen := make(map[string]dedupEntry, len(d.Dedup))
	order := make([]string, 0, len(d.Dedup))
	for _, e := range d.Dedup {
		if _, dup := seen[e.ID]; dup {
			continue
		}
		seen[e.ID] = e
		order = append(order, e.ID)
	}
	f.mu.Lock()
	f.state, f.applied, f.seen, f.order = st, d.Applied, seen, order
	ch := f.waitCh
	f.waitCh = make(chan struct{})
	f.mu.Unlock()
	close(ch)
	f.logger.Info("restored state from snapshot", "format", d.Version, "applied", d.Applied, "members", len(st.Members), "models", len(st.Models))
	if f.notify != nil {
		f.notify()
	}
	return nil
}

// checkSnapshotFormat accepts the formats this build reads.
func checkSnapshotFormat(v int) error {
	if v > snapshotVersion {
		return fmt.Errorf("%w: snapshot format %d is newer than this build's %d; upgrade this node",
			ErrInvalidSnapshot, v, snapshotVersion)
	}
	if v != 1 && v != snapshotVersion {
		return fmt.Errorf("%w: snapshot format %d was never written", ErrInvalidSnapshot, v)
	}
	return nil
}

// restoredState brings the state of a snapshot in a format this build reads to
// the current form.
func restoredState(d snapshotData) (*ClusterState, error) {
	st := NewClusterState()
	if d.State != nil {
		st = d.State.Clone() // Clone allocates any map the JSON left nil
	}
	if d.Version == 1 {
		if err := migrateFormatOne(st); err != nil {
			return nil, fmt.Errorf("%w: format-1 snapshot: %w", ErrInvalidSnapshot, err)
		}
	}
	return st, nil
}

type fsmSnapshot struct{ data snapshotData }

// Persist implements raft.FSMSnapshot.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(&s.data); err != nil {
		return errors.Join(fmt.Errorf("consensus: persist snapshot: %w", err), sink.Cancel())
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot; the state is immutable, nothing to free.
func (s *fsmSnapshot) Release() {}
