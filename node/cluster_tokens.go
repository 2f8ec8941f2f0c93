package node

// API tokens in cluster mode live in the Raft state: the token calls of the admin API
// write them there, and wait until this node's copy of the state has them.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/consensus"
)

// tokenWait bounds how long a token call waits for its change to reach this node's
// copy of the state, so that the next call here already sees it.
const tokenWait = 10 * time.Second

func (s clusterServices) CreateToken(ctx context.Context, scope api.Scope, name string) (wire.TokenCreated, error) {
	c, err := s.part()
	if err != nil {
		return wire.TokenCreated{}, err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return wire.TokenCreated{}, err
	}
	secret := hex.EncodeToString(raw)
	id := name
	if id == "" {
		id = "tok-" + secret[:8]
	}
	// A name taken twice at the same moment can still race here; the later write
	// replaces the earlier token, whose holder then gets 401 and asks again.
	if _, ok := c.store.State().Tokens[id]; ok {
		return wire.TokenCreated{}, fmt.Errorf("%w: token %s", api.ErrConflict, id)
	}
	tok := consensus.Token{ID: id, Hash: consensus.TokenHash(secret), Scope: consensus.TokenScope(scope), Created: nowUTC()}
	if err := c.control.Apply(ctx, consensus.NewCommand(consensus.PutToken{Token: tok})); err != nil {
		return wire.TokenCreated{}, err
	}
	if err := waitState(ctx, c, func(st *consensus.ClusterState) bool { _, ok := st.Tokens[id]; return ok }); err != nil {
		return wire.TokenCreated{}, err
	}
	s.n.log.Info("token created", "token", id, "scope", scope)
	return wire.TokenCreated{TokenInfo: tokenInfo(tok), Secret: secret}, nil
}

func (s clusterServices) ListTokens(ctx context.Context) ([]wire.TokenInfo, error) {
	c, err := s.part()
	if err != nil {
		return nil, err
	}
	toks := c.store.State().Tokens
	out := make([]wire.TokenInfo, 0, len(toks))
	for _, id := range slices.Sorted(maps.Keys(toks)) {
		out = append(out, tokenInfo(toks[id]))
	}
	return out, nil
}

func (s clusterServices) RevokeToken(ctx context.Context, id string) error {
	c, err := s.part()
	if err != nil {
		return err
	}
	if _, ok := c.store.State().Tokens[id]; !ok {
		return fmt.Errorf("%w: %s", api.ErrTokenNotFound, id)
	}
	if err := c.control.Apply(ctx, consensus.NewCommand(consensus.RevokeToken{ID: id, At: nowUTC()})); err != nil {
		return err
	}
	s.n.log.Info("token revoked", "token", id)
	return waitState(ctx, c, func(st *consensus.ClusterState) bool { return st.Tokens[id].Revoked })
}

func tokenInfo(t consensus.Token) wire.TokenInfo {
	return wire.TokenInfo{ID: t.ID, Scope: string(t.Scope), Created: t.Created, Revoked: t.Revoked, RevokedAt: t.RevokedAt}
}

// waitState waits until this node's copy of the state satisfies ok: a write forwarded
// to the leader is committed before this node has applied it.
func waitState(ctx context.Context, c *Cluster, ok func(*consensus.ClusterState) bool) error {
	ctx, cancel := context.WithTimeout(ctx, tokenWait)
	defer cancel()
	changes, stop := c.store.Watch()
	defer stop()
	for !ok(c.store.State()) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: the change was committed but has not reached this node yet", api.ErrNotReady)
		case <-changes:
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}
