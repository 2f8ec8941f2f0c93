// Package events is the node's feed of cluster events: membership and leader changes,
// placement epochs, stages loaded and unloaded, failovers, drains and deploys. The
// node derives most of them from the Raft state it applies and adds what it observes
// itself (memberlist, its router's failovers); GET /v1/events streams them and the
// dashboard draws them.
//
// A Bus numbers events in the order they are published and keeps the newest of them
// in a bounded window, so a client that lost its connection resumes after the last
// id it saw (SSE's Last-Event-ID). Every subscriber has a bounded buffer: one that
// does not keep up is cut off rather than make the bus hold memory for it; it may
// reconnect and resume from the window.
package events

import (
	"errors"
	"sync"
	"time"
)

// Type says what an event is about.
type Type string

// Event types.
const (
	// MemberState: a node joined, changed health (alive, suspect, dead) or left.
	MemberState Type = "member"
	// LeaderChange: the Raft leader changed; Node is the new one ("" while none).
	LeaderChange Type = "leader"
	// Placement: a model version's placement got a new epoch; Moved lists the
	// replicas each stage gained and lost.
	Placement Type = "placement"
	// StageReady and StageUnloaded: a node reports a stage ready, or no longer holds it.
	StageReady    Type = "stage_ready"
	StageUnloaded Type = "stage_unloaded"
	// Failover: a stage call failed on one replica (From) and succeeded on another (To).
	Failover Type = "failover"
	// SessionReplay: a generation session lost a stage replica and replayed its
	// tokens on another one (From, To). Published by the generation path.
	SessionReplay Type = "session_replay"
	// Drain and Undrain: an operator drained a node, or let it take stages again.
	Drain   Type = "drain"
	Undrain Type = "undrain"
	// Deploy: a model version's deploy progressed; State is the phase (recorded,
	// placed, loading with Detail "k/n stages ready", ready, deleted).
	Deploy Type = "deploy"
)

// Deploy phases, in Event.State of a Deploy event.
const (
	DeployRecorded = "recorded"
	DeployPlaced   = "placed"
	DeployLoading  = "loading"
	DeployReady    = "ready"
	DeployDeleted  = "deleted"
)

// Event is one thing that happened in the cluster, as a node saw it. Subject is what
// a one-line feed shows it about (a node's name or model@version); the other fields
// are filled where they apply.
type Event struct {
	// ID numbers the events of one node's bus in order; 0 until published.
	ID      uint64    `json:"id"`
	Type    Type      `json:"type"`
	Time    time.Time `json:"time"`
	Subject string    `json:"subject"`
	// Node is a node's name (the member, the leader, the replica).
	Node    string `json:"node,omitempty"`
	Model   string `json:"model,omitempty"`
	Version string `json:"version,omitempty"`
	// Stage is the stage index for stage events; nil where none applies.
	Stage *int `json:"stage,omitempty"`
	// State is a member's health or a deploy's phase.
	State string `json:"state,omitempty"`
	// Epoch is a placement's epoch.
	Epoch uint64      `json:"epoch,omitempty"`
	Moved []StageMove `json:"moved,omitempty"`
	// From and To are the replicas of a failover or replay.
	From   string `json:"from,omitempty"`
	To     string `json:"to,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// StageMove is what one stage's replica set gained and lost in a placement epoch.
type StageMove struct {
	Stage   int      `json:"stage"`
	Added   []string `json:"added,omitempty"`
	Removed []string `json:"removed,omitempty"`
}

// StageIndex returns a pointer to k, for Event.Stage.
func StageIndex(k int) *int { return &k }

// Publisher takes events; the bus is one. Producers outside the node's own loops (the
// generation path's session replays) publish through it.
type Publisher interface {
	Publish(Event) Event
}

// ErrSlowConsumer is a subscription's Err when it was cut off because its buffer
// was full.
var ErrSlowConsumer = errors.New("events: subscriber too slow, cut off")

// ErrClosed is a subscription's Err when the bus closed.
var ErrClosed = errors.New("events: bus closed")

// Defaults for NewBus.
const (
	// DefaultWindow is how many recent events a bus keeps for resuming clients: a
	// few minutes of a busy cluster's churn, a few hundred KB.
	DefaultWindow = 1024
	// DefaultClientBuffer is how many events may wait for one subscriber.
	DefaultClientBuffer = 256
)

// Bus numbers events, keeps a window of the newest for resuming, and fans them out
// to subscribers. It is safe for concurrent use. Its lock is never held across a
// call out of the package; fan-out sends never block.
type Bus struct {
	mu      sync.Mutex
	window  []Event // ring of the newest events, oldest at start
	start   int     // index of the oldest event in window once full
	next    uint64  // id of the next event
	bufSize int
	subs    map[*Subscription]struct{}
	closed  bool
}

// NewBus returns a bus keeping window events for resuming and allowing clientBuffer
// events to wait per subscriber; values <= 0 take the defaults.
func NewBus(window, clientBuffer int) *Bus {
	if window <= 0 {
		window = DefaultWindow
	}
	if clientBuffer <= 0 {
		clientBuffer = DefaultClientBuffer
	}
	return &Bus{window: make([]Event, 0, window), next: 1, bufSize: clientBuffer, subs: map[*Subscription]struct{}{}}
}

// Publish numbers e, stamps its time when unset, keeps it in the window and hands it
// to every subscriber. A subscriber whose buffer is full is cut off. It returns e as
// published.
func (b *Bus) Publish(e Event) Event {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return e
	}
	e.ID = b.next
	b.next++
	if len(b.window) < cap(b.window) {
		b.window = append(b.window, e)
	} else {
		b.window[b.start] = e
		b.start = (b.start + 1) % len(b.window)
	}
	for s := range b.subs {
		select {
		case s.ch <- e:
		default:
			b.dropLocked(s, ErrSlowConsumer)
		}
	}
	return e
}

// Subscribe registers a subscriber that gets every event published after the
// event with id after (0: only new events). Backlog is the window's events after
// that id; Gap is true when some of them are gone from the window (or after is not
// an id this bus gave out, as after the node restarted), in which case Backlog is
// the whole window and the client should refresh its picture of the cluster.
func (b *Bus) Subscribe(after uint64) (backlog []Event, gap bool, sub *Subscription) {
	b.mu.Lock()
	defer b.mu.Unlock()
	sub = b.subscribeLocked()
	if after == 0 || b.closed {
		return nil, false, sub
	}
	ordered := b.orderedLocked()
	oldest := b.next // the id the window starts at
	if len(ordered) > 0 {
		oldest = ordered[0].ID
	}
	if after >= b.next || after+1 < oldest {
		return ordered, true, sub
	}
	for i, e := range ordered {
		if e.ID > after {
			return ordered[i:], false, sub
		}
	}
	return nil, false, sub
}

// SubscribeRecent registers a subscriber whose backlog is up to n of the newest
// events: what a fresh dashboard shows before the live ones.
func (b *Bus) SubscribeRecent(n int) (backlog []Event, sub *Subscription) {
	b.mu.Lock()
	defer b.mu.Unlock()
	sub = b.subscribeLocked()
	if b.closed {
		return nil, sub
	}
	return b.recentLocked(n), sub
}

func (b *Bus) subscribeLocked() *Subscription {
	sub := &Subscription{ch: make(chan Event, b.bufSize), done: make(chan struct{}), bus: b}
	if b.closed {
		sub.err = ErrClosed
		close(sub.done)
		return sub
	}
	b.subs[sub] = struct{}{}
	return sub
}

// Recent returns up to n of the newest events, oldest first.
func (b *Bus) Recent(n int) []Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.recentLocked(n)
}

func (b *Bus) recentLocked(n int) []Event {
	ordered := b.orderedLocked()
	if n < len(ordered) {
		ordered = ordered[len(ordered)-max(n, 0):]
	}
	return ordered
}

// Subscribers is how many subscriptions are open.
func (b *Bus) Subscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// Close ends every subscription with ErrClosed; later publishes are dropped.
func (b *Bus) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for s := range b.subs {
		b.dropLocked(s, ErrClosed)
	}
}

func (b *Bus) orderedLocked() []Event {
	out := make([]Event, 0, len(b.window))
	out = append(out, b.window[b.start:]...)
	return append(out, b.window[:b.start]...)
}

func (b *Bus) dropLocked(s *Subscription, err error) {
	if _, ok := b.subs[s]; !ok {
		return
	}
	delete(b.subs, s)
	s.err = err
	close(s.done)
}

// Subscription is one subscriber's live feed.
type Subscription struct {
	ch   chan Event
	done chan struct{}
	bus  *Bus
	err  error // set before done closes
}

// C delivers the events in order.
func (s *Subscription) C() <-chan Event { return s.ch }

// Done closes when the subscription ends (cut off, cancelled, bus closed); Err says why.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err is why the subscription ended, nil while it runs or after Cancel.
func (s *Subscription) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Cancel ends the subscription; it is safe to call more than once.
func (s *Subscription) Cancel() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.bus.dropLocked(s, nil)
}
