package control

import (
	"context"
	"fmt"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/consensus"
)

// memberByName finds a member's peer id by name (or by id).
func (c *Controller) memberByName(name string) (string, error) {
	for id, m := range c.store.State().Members {
		if m.Name == name || id == name {
			return id, nil
		}
	}
	return "", fmt.Errorf("%w: %s", api.ErrNodeNotFound, name)
}

// DrainNode marks the node draining: it gets no new stages and the leader moves its
// stages elsewhere; the node unloads each once a replacement is ready.
func (c *Controller) DrainNode(ctx context.Context, name string) error {
	id, err := c.memberByName(name)
	if err != nil {
		return err
	}
	return c.Apply(ctx, consensus.NewCommand(consensus.SetMemberState{ID: id, State: consensus.MemberDraining, At: nowUTC()}))
}

// UndrainNode lets a drained node take stages again (the end of a maintenance).
func (c *Controller) UndrainNode(ctx context.Context, name string) error {
	id, err := c.memberByName(name)
	if err != nil {
		return err
	}
	switch state := c.store.State().Members[id].State; state {
	case consensus.MemberAlive:
		return nil
	case consensus.MemberDraining:
		return c.Apply(ctx, consensus.NewCommand(consensus.SetMemberState{ID: id, State: consensus.MemberAlive, At: nowUTC()}))
	default:
		return fmt.Errorf("%w: node %s is %s, not draining", api.ErrConflict, name, state)
	}
}

// RemoveNode takes the node out of the Raft configuration and records it as left.
func (c *Controller) RemoveNode(ctx context.Context, name string) error {
	id, err := c.memberByName(name)
	if err != nil {
		return err
	}
	if err := c.Apply(ctx, consensus.NewCommand(consensus.SetMemberState{ID: id, State: consensus.MemberLeft, At: nowUTC()})); err != nil {
		return err
	}
	return c.store.RemoveNode(ctx, id)
}
