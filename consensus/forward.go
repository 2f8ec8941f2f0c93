package consensus

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Operations a follower forwards to the leader on ApplyProtocol.
const (
	opApply   = "apply"
	opBarrier = "barrier"
	opAdd     = "add"
	opRemove  = "remove"
)

// maxForwardFrame bounds one forwarded message; commands are small (a model
// manifest is the largest) and the bound keeps a peer from making us allocate
// without limit.
const maxForwardFrame = 8 << 20

// forwardRequest is one follower-to-leader call: a 4-byte big-endian length and
// this JSON.
type forwardRequest struct {
	Op         string `json:"op"`
	Command    []byte `json:"command,omitempty"` // encoded envelope for opApply
	Node       string `json:"node,omitempty"`    // peer id for opAdd / opRemove
	DeadlineMS int64  `json:"deadline_ms"`       // caller's remaining time
}

// forwardResponse carries the result and, on error, its class and code (see
// codes.go) so the follower returns the same sentinels as the leader would.
type forwardResponse struct {
	Index        uint64 `json:"index"`
	Epoch        uint64 `json:"epoch,omitempty"`
	ModelVersion string `json:"model_version,omitempty"`
	Duplicate    bool   `json:"duplicate,omitempty"`
	Class        string `json:"class,omitempty"`
	Code         string `json:"code,omitempty"`
	Msg          string `json:"msg,omitempty"`
}

func writeFrame(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxForwardFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(b), maxForwardFrame)
	}
	out := make([]byte, 4, 4+len(b))
	binary.BigEndian.PutUint32(out, uint32(len(b)))
	_, err = w.Write(append(out, b...))
	return err
}

func readFrame(r io.Reader, v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxForwardFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", n, maxForwardFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// forward sends req to the current leader and waits for its answer. A failure
// before the request left is ErrFailed; after, the leader may have acted, so it
// is ErrUnknownOutcome. Both wrap ErrForward so Store.retry tries again.
// errLeaderChanged is why a forwarded write stops waiting for the leader it went to.
var errLeaderChanged = errors.New("this node now knows a different leader (or an election)")

// leaderPoll is how often a forwarded write checks whether its leader is still the one
// this node knows.
const leaderPoll = 50 * time.Millisecond

// watchLeader cancels ctx with errLeaderChanged once this node's view of the leader is
// no longer leader.
func (s *Store) watchLeader(ctx context.Context, leader string, cancel context.CancelCauseFunc) {
	t := time.NewTicker(leaderPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if s.Leader() != leader {
				cancel(errLeaderChanged)
				return
			}
		}
	}
}

func (s *Store) forward(ctx context.Context, req forwardRequest) (forwardResponse, error) {
	var resp forwardResponse
	leader := s.Leader()
	if leader == "" {
		return resp, fmt.Errorf("%w: %w", ErrFailed, ErrNoLeader)
	}
	if leader == s.cfg.NodeID {
		// Raft says we lead but State said otherwise a moment ago; let retry
		// take the local path.
		return resp, fmt.Errorf("%w: %w: leadership changing", ErrFailed, ErrNotLeader)
	}
	pid, err := peer.Decode(leader)
	if err != nil {
		return resp, fmt.Errorf("%w: %w: leader id %q: %w", ErrFailed, ErrForward, leader, err)
	}
	if d, ok := ctx.Deadline(); ok {
		req.DeadlineMS = time.Until(d).Milliseconds()
	}
	// A leader that froze (paused, or cut off with its connections still open) never
	// answers. Once this node hears of another leader, or of an election, the attempt
	// is abandoned as of unknown outcome and Apply's retry sends the same request id
	// to the new leader; the FSM's deduplication keeps it applied at most once.
	ctx, abandon := context.WithCancelCause(ctx)
	defer abandon(nil)
	go s.watchLeader(ctx, leader, abandon)
	st, err := s.cfg.Host.NewStream(network.WithAllowLimitedConn(ctx, "raft-apply"), pid, ApplyProtocol)
	if err != nil {
		return resp, fmt.Errorf("%w: %w: open stream to leader %s: %w", ErrFailed, ErrForward, leader, err)
	}
	defer st.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	defer stop()
	if err := writeFrame(st, req); err != nil {
		return resp, fmt.Errorf("%w: %w: send to leader %s: %w", ErrUnknownOutcome, ErrForward, leader, err)
	}
	_ = st.CloseWrite()
	if err := readFrame(st, &resp); err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errLeaderChanged) {
			err = cause
		}
		return resp, fmt.Errorf("%w: %w: answer from leader %s: %w", ErrUnknownOutcome, ErrForward, leader, err)
	}
	if err := errorFromCode(resp.Class, resp.Code, resp.Msg); err != nil {
		return resp, fmt.Errorf("leader %s: %w", leader, err)
	}
	return resp, nil
}

// handleForward serves one forwarded call on the leader. It does not retry:
// the follower does, so that a deposed leader answers not_leader at once.
func (s *Store) handleForward(st network.Stream) {
	defer st.Close()
	remote := st.Conn().RemotePeer()
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req forwardRequest
	if err := readFrame(st, &req); err != nil {
		s.logger.Debug("bad forwarded request", "peer", remote, "err", err)
		_ = st.Reset()
		return
	}
	// A node may always ask to remove itself: during Leave the leader's voter
	// manager can drop a member marked left before its own request arrives.
	selfRemoval := req.Op == opRemove && req.Node == remote.String()
	if !selfRemoval && !s.admitted(remote) {
		s.logger.Warn("refused forwarded request from a non-member", "peer", remote, "op", req.Op)
		_ = st.Reset()
		return
	}
	timeout := s.cfg.ApplyTimeout
	if req.DeadlineMS > 0 && time.Duration(req.DeadlineMS)*time.Millisecond < timeout {
		timeout = time.Duration(req.DeadlineMS) * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	_ = st.SetWriteDeadline(time.Now().Add(timeout + time.Second))

	var resp forwardResponse
	var err error
	if s.raft.State() != raft.Leader {
		err = fmt.Errorf("%w: %w", ErrFailed, ErrNotLeader)
	} else {
		switch req.Op {
		case opApply:
			resp, err = s.applyForwarded(ctx, req.Command)
		case opBarrier:
			resp.Index, err = s.barrierLocal(ctx)
		case opAdd:
			err = s.addNodeLocal(ctx, req.Node)
		case opRemove:
			err = s.removeNodeLocal(ctx, req.Node)
		default:
			err = fmt.Errorf("%w: %w: unknown forwarded op %q", ErrFailed, ErrInvalidCommand, req.Op)
		}
	}
	if err != nil {
		resp.Class, resp.Code, resp.Msg = classOf(err), codeOf(err), err.Error()
	}
	if err := writeFrame(st, resp); err != nil {
		s.logger.Debug("answer forwarded request", "peer", st.Conn().RemotePeer(), "err", err)
	}
}

// applyForwarded appends a follower's command after decoding it here: a command
// this build cannot read (a newer follower's format) is refused to its sender
// instead of stopping every replica that meets it in the log.
func (s *Store) applyForwarded(ctx context.Context, data []byte) (forwardResponse, error) {
	if _, err := DecodeCommand(data); err != nil {
		return forwardResponse{}, fmt.Errorf("%w: %w", ErrFailed, err)
	}
	res, err := s.applyLocal(ctx, data)
	return forwardResponse{Index: res.Index, Epoch: res.Epoch, ModelVersion: res.ModelVersion, Duplicate: res.Duplicate}, err
}
