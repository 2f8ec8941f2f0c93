package consensus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// Voter targets: 3 voters tolerate one failure; with 5 or more healthy nodes,
// 5 voters tolerate two. More voters would only slow every commit down.
const (
	smallVoterTarget = 3
	largeVoterTarget = 5
)

// Expect tells a node configured with BootstrapExpect about a peer (discovery
// found it). Once BootstrapExpect nodes are known, itself included, and the node
// has no Raft state, it bootstraps them all as voters. If more peers than
// BootstrapExpect are known it takes itself and the others in id order, so nodes
// that learned the same set write the same configuration. Without
// BootstrapExpect, or after bootstrap, Expect does nothing.
func (s *Store) Expect(peerID string) error {
	s.expectMu.Lock()
	defer s.expectMu.Unlock()
	s.expected[peerID] = true
	n := s.cfg.BootstrapExpect
	if n <= 0 || s.bootstrapped || len(s.expected) < n {
		return nil
	}
	others := make([]string, 0, len(s.expected))
	for id := range s.expected {
		if id != s.cfg.NodeID {
			others = append(others, id)
		}
	}
	slices.Sort(others)
	return s.bootstrap(append([]string{s.cfg.NodeID}, others[:n-1]...))
}

// AddNode admits a node into the Raft configuration as a non-voter; the voter
// manager on the leader promotes it when voters are short. Callable on any
// node (forwarded to the leader); adding a node already present is a no-op.
// The node's libp2p addresses must be in the leader's peerstore.
func (s *Store) AddNode(ctx context.Context, id string) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	return s.retry(ctx, func(ctx context.Context) error {
		if s.raft.State() == raft.Leader {
			return s.addNodeLocal(ctx, id)
		}
		_, err := s.forward(ctx, forwardRequest{Op: opAdd, Node: id})
		return err
	})
}

func (s *Store) addNodeLocal(ctx context.Context, id string) error {
	if id == "" {
		return fmt.Errorf("%w: %w: empty node id", ErrFailed, ErrInvalidCommand)
	}
	for _, srv := range s.raft.GetConfiguration().Configuration().Servers {
		if string(srv.ID) == id {
			return nil
		}
	}
	f := s.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(id), 0, remaining(ctx))
	if err := s.waitFuture(ctx, f); err != nil {
		return err
	}
	s.logger.Info("added node as non-voter", "peer", id)
	s.kickVoters()
	return nil
}

// RemoveNode takes a node out of the Raft configuration. Callable on any node
// (forwarded to the leader). Removing the leader itself first hands leadership
// to another voter. Removing an absent node is a no-op.
func (s *Store) RemoveNode(ctx context.Context, id string) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	return s.retry(ctx, func(ctx context.Context) error {
		if s.raft.State() == raft.Leader {
			if id == s.cfg.NodeID && s.otherVoters() > 0 {
				if err := s.waitFuture(ctx, s.raft.LeadershipTransfer()); err != nil {
					return err
				}
				return fmt.Errorf("%w: %w: handed leadership over before removing self", ErrFailed, ErrNotLeader)
			}
			return s.removeNodeLocal(ctx, id)
		}
		_, err := s.forward(ctx, forwardRequest{Op: opRemove, Node: id})
		return err
	})
}

func (s *Store) removeNodeLocal(ctx context.Context, id string) error {
	present := false
	for _, srv := range s.raft.GetConfiguration().Configuration().Servers {
		if string(srv.ID) == id {
			present = true
		}
	}
	if !present {
		return nil
	}
	if err := s.waitFuture(ctx, s.raft.RemoveServer(raft.ServerID(id), 0, remaining(ctx))); err != nil {
		return err
	}
	s.logger.Info("removed node from raft configuration", "peer", id)
	return nil
}

// Leave removes this node from the cluster gracefully: it marks its member
// record left (if it has one), hands leadership over if it leads, and has the
// leader remove it from the Raft configuration. Call Close afterwards.
func (s *Store) Leave(ctx context.Context) error {
	st, _ := s.fsm.current()
	if _, ok := st.Members[s.cfg.NodeID]; ok {
		cmd := NewCommand(SetMemberState{ID: s.cfg.NodeID, State: MemberLeft, At: time.Now()})
		if _, err := s.Apply(ctx, cmd); err != nil {
			return fmt.Errorf("consensus: leave: mark self left: %w", err)
		}
	}
	if err := s.RemoveNode(ctx, s.cfg.NodeID); err != nil {
		return fmt.Errorf("consensus: leave: %w", err)
	}
	return nil
}

func (s *Store) kickVoters() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// voterLoop runs reconcile on the leader every ReconcileInterval and whenever
// the state or leadership changes.
func (s *Store) voterLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
		if s.raft.State() != raft.Leader {
			s.deadMu.Lock()
			clear(s.deadSince) // a future leader term starts its own clock
			s.deadMu.Unlock()
			continue
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ApplyTimeout)
		if err := s.reconcile(ctx); err != nil && !errors.Is(err, ErrClosed) {
			s.logger.Warn("voter reconcile", "err", err)
		}
		cancel()
	}
}

// reconcile brings the Raft configuration in line with the member records:
// members dead past the timeout are removed and marked removed, members that
// left are removed, and healthy non-voters are promoted while healthy voters
// are fewer than the target. The dead clock is the leader's own monotonic
// clock, started when it first sees the member dead, so clock skew between
// nodes cannot remove a node early; a new leader starts the clock again.
func (s *Store) reconcile(ctx context.Context) error {
	st, _ := s.fsm.current()
	conf := s.raft.GetConfiguration().Configuration()
	timeout := s.cfg.DeadNodeTimeout
	if st.Config.DeadNodeTimeout > 0 {
		timeout = st.Config.DeadNodeTimeout
	}
	now := time.Now()
	var expired []string
	s.deadMu.Lock()
	for id := range s.deadSince {
		if m, ok := st.Members[id]; !ok || m.State != MemberDead {
			delete(s.deadSince, id)
		}
	}
	for id, m := range st.Members {
		if m.State != MemberDead || id == s.cfg.NodeID {
			continue
		}
		since, ok := s.deadSince[id]
		if !ok {
			s.deadSince[id] = now
			continue
		}
		if now.Sub(since) >= timeout {
			expired = append(expired, id)
		}
	}
	s.deadMu.Unlock()
	slices.Sort(expired)
	var errs []error
	for _, id := range expired {
		if err := s.removeNodeLocal(ctx, id); err != nil {
			errs = append(errs, err)
			continue
		}
		cmd := NewCommand(SetMemberState{ID: id, State: MemberRemoved, At: time.Now()})
		if _, err := s.Apply(ctx, cmd); err != nil {
			errs = append(errs, err)
			continue
		}
		s.logger.Info("removed dead node", "peer", id, "dead_timeout", timeout)
	}
	for _, srv := range conf.Servers {
		id := string(srv.ID)
		if m, ok := st.Members[id]; ok && (m.State == MemberLeft || m.State == MemberRemoved) && id != s.cfg.NodeID {
			if err := s.removeNodeLocal(ctx, id); err != nil {
				errs = append(errs, err)
			}
		}
	}

	healthy := func(id string) bool {
		m, ok := st.Members[id]
		// A server with no member record has just joined; the node layer
		// writes its record right after, so it counts as healthy.
		return !ok || m.State == MemberAlive
	}
	conf = s.raft.GetConfiguration().Configuration()
	healthyNodes, healthyVoters := 0, 0
	var candidates []string
	for _, srv := range conf.Servers {
		id := string(srv.ID)
		if !healthy(id) {
			continue
		}
		healthyNodes++
		if srv.Suffrage == raft.Voter {
			healthyVoters++
		} else {
			candidates = append(candidates, id)
		}
	}
	target := smallVoterTarget
	if healthyNodes >= largeVoterTarget {
		target = largeVoterTarget
	}
	slices.Sort(candidates)
	for _, id := range candidates {
		if healthyVoters >= target {
			break
		}
		if err := s.waitFuture(ctx, s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(id), 0, remaining(ctx))); err != nil {
			errs = append(errs, err)
			break
		}
		healthyVoters++
		s.logger.Info("promoted node to voter", "peer", id, "voters", healthyVoters, "target", target)
	}
	return errors.Join(errs...)
}
