package node

// The node's API tokens: the admin token a single node or a cluster's founder writes
// to its data dir, and the checks of a bearer token in either mode.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/consensus"
)

// tokenStore holds the sha256 of this node's admin token; the plain token stays only
// in the file the operator reads. In cluster mode the Raft state holds the hashes of
// every token (cluster_tokens.go).
type tokenStore struct {
	adminHash [sha256.Size]byte
}

// openTokenStore reads the admin token file, creating it with a fresh random token
// (mode 0600) at first start, as k3s leaves its node-token on the server.
func openTokenStore(path string) (*tokenStore, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return nil, fmt.Errorf("node: admin token: %w", err)
		}
		b = []byte(hex.EncodeToString(raw) + "\n")
		if err := writeFileAtomic(path, b, 0o600); err != nil {
			return nil, fmt.Errorf("node: admin token: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("node: admin token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("%w: %s is empty", ErrConfig, path)
	}
	return &tokenStore{adminHash: sha256.Sum256([]byte(tok))}, nil
}

// hashHex is the token's hash in the form the cluster state keeps (consensus.TokenHash).
func (s *tokenStore) hashHex() string { return hex.EncodeToString(s.adminHash[:]) }

func (s *tokenStore) verify(token string) (api.Scope, error) {
	h := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(h[:], s.adminHash[:]) == 1 {
		return api.ScopeAdmin, nil
	}
	return "", fmt.Errorf("%w: token not recognised", api.ErrUnauthorized)
}

// VerifyToken checks a bearer token: against the cluster's tokens in cluster mode,
// else against this node's admin token.
func (n *Node) VerifyToken(ctx context.Context, token string) (api.Scope, error) {
	if n.cfg.Cluster.configured() {
		return n.verifyClusterToken(token)
	}
	return n.tokens.verify(token)
}

// Tokens in cluster mode are the cluster's: their sha256 lives in the Raft state, so
// every node accepts the same tokens and a revocation reaches all of them. A node that
// founds the cluster (--bootstrap or --bootstrap-expect) publishes the admin token it
// wrote to <data-dir>/admin.token; a joining node has no token of its own.

// adminTokenID names the published admin token of the node called name.
func adminTokenID(name string) string { return "admin@" + name }

// founding reports whether this node may found the cluster and so owns an admin token.
func (c ClusterConfig) founding() bool { return c.Bootstrap || c.BootstrapExpect > 0 }

// verifyClusterToken checks token against the replicated tokens, and against this
// node's own admin token while the cluster state is not reachable yet (so the operator
// of a founding node can use its token from the first second).
func (n *Node) verifyClusterToken(token string) (api.Scope, error) {
	if c := n.cluster.Load(); c != nil {
		if t, ok := c.Store().View().TokenForSecret(token); ok {
			if t.Revoked {
				return "", fmt.Errorf("%w: token %s was revoked", api.ErrUnauthorized, t.ID)
			}
			return api.Scope(t.Scope), nil
		}
	}
	if n.tokens != nil {
		return n.tokens.verify(token)
	}
	return "", fmt.Errorf("%w: token not recognised", api.ErrUnauthorized)
}

// publishAdminToken commits this founding node's admin token to the cluster state,
// retrying until it is there or ctx ends (the first leader election takes a moment).
func (n *Node) publishAdminToken(ctx context.Context, c *Cluster) {
	if n.tokens == nil {
		return
	}
	id, hash := adminTokenID(n.name), n.tokens.hashHex()
	for {
		if t, ok := c.Store().State().Tokens[id]; ok && t.Hash == hash && !t.Revoked {
			return
		}
		if t, ok := c.Store().State().Tokens[id]; ok && t.Revoked {
			n.log.Warn("this node's admin token was revoked; not publishing it again", "token", id)
			return
		}
		cmd := consensus.NewCommand(consensus.PutToken{Token: consensus.Token{
			ID: id, Hash: hash, Scope: consensus.ScopeAdmin, Created: time.Now().UTC(),
		}})
		_, err := c.Store().Apply(ctx, cmd)
		if err == nil {
			n.log.Info("admin token published to the cluster", "token", id)
			return
		}
		n.log.Debug("publishing the admin token failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
