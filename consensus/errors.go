package consensus

import (
	"errors"
)

// Outcome classes of a write. Every error returned by Store.Apply wraps exactly
// one of ErrFailed and ErrUnknownOutcome, so callers decide with errors.Is
// whether a retry could double-apply (it cannot: see Command.RequestID).
var (
	// ErrFailed means the command was definitely not applied.
	ErrFailed = errors.New("consensus: write failed (not applied)")
	// ErrUnknownOutcome means the command may or may not have been applied:
	// leadership was lost or the deadline passed after the entry may have been
	// appended. Retrying the same Command (same RequestID) is safe.
	ErrUnknownOutcome = errors.New("consensus: write outcome unknown (may have been applied)")
)

// Specific causes, wrapped together with ErrFailed or ErrUnknownOutcome.
var (
	// ErrNoLeader means no leader was known within the bounded wait: this node
	// is probably on the minority side of a partition.
	ErrNoLeader = errors.New("consensus: no leader (is this node cut off from a majority?)")
	// ErrNotLeader means an operation that only the leader can perform reached a
	// node that is not the leader.
	ErrNotLeader = errors.New("consensus: not the leader")
	// ErrLeadershipLost means the leader stepped down while the entry was in flight.
	ErrLeadershipLost = errors.New("consensus: leadership lost while committing")
	// ErrTimeout means the deadline passed while waiting on a peer or on Raft.
	ErrTimeout = errors.New("consensus: timed out")
	// ErrClosed means the store was closed.
	ErrClosed = errors.New("consensus: store closed")
	// ErrInvalidCommand means the command was malformed and rejected before or
	// by the FSM.
	ErrInvalidCommand = errors.New("consensus: invalid command")
	// ErrEpochMismatch means SetPlacement's expected epoch did not match the
	// committed epoch (a concurrent planner won).
	ErrEpochMismatch = errors.New("consensus: placement epoch mismatch")
	// ErrNotFound means the command referred to a member, model, placement or
	// token that does not exist.
	ErrNotFound = errors.New("consensus: not found")
	// ErrExists means a create-only command found the key already present.
	ErrExists = errors.New("consensus: already exists")
	// ErrForward means the forwarding protocol to the leader broke.
	ErrForward = errors.New("consensus: forwarding to leader failed")
	// ErrCorruptStore means the on-disk Raft data could not be opened. The node
	// must not start; an operator moves the directory aside and rejoins.
	ErrCorruptStore = errors.New("consensus: raft data directory is damaged")
	// ErrInvalidSnapshot means a Raft snapshot could not be read into the state:
	// written by a newer build, or damaged.
	ErrInvalidSnapshot = errors.New("consensus: unreadable snapshot")
	// ErrConfig means Config is missing something required.
	ErrConfig = errors.New("consensus: invalid config")
)
