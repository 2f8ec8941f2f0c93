package node

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	ma "github.com/multiformats/go-multiaddr"
)

// loadOrCreateSecret reads the cluster secret, creating it when this node bootstraps
// a new cluster and no secret file was named.
func loadOrCreateSecret(opts ClusterOptions) ([]byte, error) {
	path := opts.SecretFile
	if path == "" {
		path = filepath.Join(opts.DataDir, secretFileName)
	}
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if len(s) < 16 {
			return nil, fmt.Errorf("%w: secret in %s is shorter than 16 characters", ErrClusterConfig, path)
		}
		return []byte(s), nil
	}
	if !errors.Is(err, os.ErrNotExist) || !(opts.Bootstrap || opts.BootstrapExpect > 0) || opts.SecretFile != "" {
		return nil, fmt.Errorf("%w: cluster secret: %w", ErrClusterConfig, err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, err
	}
	s := hex.EncodeToString(raw[:])
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, []byte(s+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("cluster secret: %w", err)
	}
	return []byte(s), nil
}

// clusterID derives the cluster id from the secret, so that a joining node needs
// nothing but the secret file.
func clusterID(secret []byte) string {
	h := sha256.Sum256(append([]byte("layermesh cluster id\x00"), secret...))
	return hex.EncodeToString(h[:8])
}

// listenHost is the IP of the first listen multiaddr, "" when there is none.
func listenHost(listen []string) string {
	for _, l := range listen {
		a, err := ma.NewMultiaddr(l)
		if err != nil {
			continue
		}
		if ip, err := a.ValueForProtocol(ma.P_IP4); err == nil {
			return ip
		}
		if ip, err := a.ValueForProtocol(ma.P_IP6); err == nil {
			return ip
		}
	}
	return ""
}
