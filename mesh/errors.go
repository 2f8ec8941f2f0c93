package mesh

import (
	"context"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Sentinel errors. Errors returned by the mesh wrap one of these; match with errors.Is.
var (
	ErrConfig          = errors.New("mesh: invalid config")
	ErrClosed          = errors.New("mesh: closed")
	ErrRefused         = errors.New("mesh: refused by peer")
	ErrSecretMismatch  = errors.New("mesh: cluster secret mismatch")
	ErrClusterMismatch = errors.New("mesh: different cluster id")
	ErrRateLimited     = errors.New("mesh: rate limited")
	ErrNotAdmitted     = errors.New("mesh: peer not admitted")
	ErrMalformedFrame  = errors.New("mesh: malformed frame")
	ErrFrameTooLarge   = errors.New("mesh: frame too large")
	ErrMetaTooLarge    = errors.New("mesh: node metadata too large")
	ErrNoDataAddr      = errors.New("mesh: peer has no data address")
	ErrUnreachable     = errors.New("mesh: peer unreachable")

	// ErrRemote matches every error a peer reported through a RemoteError.
	ErrRemote = errors.New("mesh: remote error")
	// ErrStageNotLoaded is returned by a stage handler that does not serve the stage.
	ErrStageNotLoaded = errors.New("mesh: stage not loaded")
	// ErrBadRequest is returned by a stage handler for inputs it cannot run.
	ErrBadRequest = errors.New("mesh: bad request")
	// ErrOverloaded is returned by a stage handler that sheds load.
	ErrOverloaded = errors.New("mesh: overloaded")
	// ErrNoHandler means the peer has no stage handler registered.
	ErrNoHandler = errors.New("mesh: no handler")
	// ErrDeadline means the request's deadline passed on the serving side.
	ErrDeadline = errors.New("mesh: deadline exceeded")
	// ErrBlobNotFound means the holder does not have the complete blob.
	ErrBlobNotFound = errors.New("mesh: blob not found")
	// ErrHashMismatch means received content does not hash to its address.
	ErrHashMismatch = errors.New("mesh: hash mismatch")
	// ErrNoHolders means no holder could deliver a needed chunk.
	ErrNoHolders = errors.New("mesh: no holder could serve the blob")
)

// ErrorCode is the stable wire code of an error a peer reports.
type ErrorCode uint16

// Wire error codes; never renumber.
const (
	CodeInternal       ErrorCode = 1
	CodeStageNotLoaded ErrorCode = 2
	CodeBadRequest     ErrorCode = 3
	CodeDeadline       ErrorCode = 4
	CodeCanceled       ErrorCode = 5
	CodeOverloaded     ErrorCode = 6
	CodeNotAdmitted    ErrorCode = 7
	CodeNoHandler      ErrorCode = 8
	CodeBlobNotFound   ErrorCode = 9
	CodeMalformed      ErrorCode = 10
)

var codeSentinels = map[ErrorCode]error{
	CodeStageNotLoaded: ErrStageNotLoaded,
	CodeBadRequest:     ErrBadRequest,
	CodeDeadline:       ErrDeadline,
	CodeOverloaded:     ErrOverloaded,
	CodeNotAdmitted:    ErrNotAdmitted,
	CodeNoHandler:      ErrNoHandler,
	CodeBlobNotFound:   ErrBlobNotFound,
	CodeMalformed:      ErrMalformedFrame,
}

// RemoteError is an error a peer reported on the wire. errors.Is matches it against
// ErrRemote and against the sentinel of its code (ErrStageNotLoaded for
// CodeStageNotLoaded, and so on).
type RemoteError struct {
	Peer    peer.ID
	Code    ErrorCode
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("mesh: peer %s: code %d: %s", e.Peer, e.Code, e.Message)
}

// Is lets errors.Is see through to ErrRemote and the code's sentinel.
func (e *RemoteError) Is(target error) bool {
	if target == ErrRemote {
		return true
	}
	s, ok := codeSentinels[e.Code]
	return ok && s == target
}

// codeOf maps a handler's error to its wire code.
func codeOf(err error) ErrorCode {
	for code, s := range codeSentinels {
		if errors.Is(err, s) {
			return code
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return CodeDeadline
	case errors.Is(err, context.Canceled):
		return CodeCanceled
	}
	return CodeInternal
}
