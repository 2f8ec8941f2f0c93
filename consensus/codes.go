package consensus

import (
	"errors"
	"fmt"
)

// Outcome classes and cause codes travel between nodes as strings so that a
// forwarded write fails on the follower with the same sentinels as on the
// leader. This table is the one place that maps them.
const (
	classFailed  = "failed"
	classUnknown = "unknown"
)

var codeSentinels = []struct {
	code string
	err  error
}{
	{"not_leader", ErrNotLeader},
	{"no_leader", ErrNoLeader},
	{"leadership_lost", ErrLeadershipLost},
	{"timeout", ErrTimeout},
	{"closed", ErrClosed},
	{"invalid", ErrInvalidCommand},
	{"epoch_mismatch", ErrEpochMismatch},
	{"not_found", ErrNotFound},
	{"exists", ErrExists},
	{"forward", ErrForward},
}

// codeOf names the most specific sentinel err wraps ("" if none).
func codeOf(err error) string {
	for _, c := range codeSentinels {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return ""
}

// classOf names the outcome class err wraps.
func classOf(err error) string {
	if errors.Is(err, ErrUnknownOutcome) {
		return classUnknown
	}
	return classFailed
}

// errorFromCode rebuilds an error from its class, code and message; nil when
// code and msg are empty.
func errorFromCode(class, code, msg string) error {
	if code == "" && msg == "" {
		return nil
	}
	outer := ErrFailed
	if class == classUnknown {
		outer = ErrUnknownOutcome
	}
	for _, c := range codeSentinels {
		if c.code == code {
			return fmt.Errorf("%w: %w (%s)", outer, c.err, msg)
		}
	}
	return fmt.Errorf("%w: %s", outer, msg)
}
