package node

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
)

// raftStateDir is the folder, in the data dir, where consensus keeps the Raft log and
// snapshots; only a node that ran in cluster mode has one.
const raftStateDir = "raft"

// holdsClusterState reports whether dataDir holds the Raft state of a cluster.
func holdsClusterState(dataDir string) bool {
	entries, err := os.ReadDir(filepath.Join(dataDir, raftStateDir))
	return err == nil && len(entries) > 0
}

// resumeCluster puts a node started without cluster flags back into cluster mode when
// its data dir holds cluster state. A device restarted by a plain init script, or by an
// operator who forgot the flags, would otherwise come up as an empty single node beside
// the Raft state it is a voter of, and its cluster would lose a voter without a word.
// It needs the cluster secret in the data dir (the founder writes it there, a joiner
// keeps a copy, see keepSecretCopy); its peers come from the peers file and the Raft
// state. --model-dir on such a data dir is refused: it would serve a single node and
// silently ignore the cluster.
func resumeCluster(cfg *Config, log *slog.Logger) error {
	if cfg.Cluster.configured() || !holdsClusterState(cfg.DataDir) {
		return nil
	}
	state := filepath.Join(cfg.DataDir, raftStateDir)
	if cfg.ModelDir != "" {
		return fmt.Errorf("%w: --model-dir asks for a single node, but data dir %s holds the Raft state of a cluster (%s); "+
			"start without --model-dir to resume the cluster, or give a fresh --data-dir for a single node", ErrConfig, cfg.DataDir, state)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, secretFileName)); err != nil {
		return fmt.Errorf("%w: data dir %s holds the Raft state of a cluster but no %s to resume it with; "+
			"start with --cluster-secret-file: %w", ErrConfig, cfg.DataDir, secretFileName, err)
	}
	cfg.Cluster.resumed = true
	log.Info("data dir holds cluster state; resuming cluster mode without cluster flags",
		"data_dir", cfg.DataDir, "raft_state", state)
	return nil
}

// keepSecretCopy writes the cluster secret into the data dir of a node that was given
// it in another file (--cluster-secret-file), so that the node can resume its cluster
// from its data dir alone (resumeCluster). The data dir already holds the node's
// identity key and is kept as private (0600).
func keepSecretCopy(dataDir string, secret []byte) error {
	path := filepath.Join(dataDir, secretFileName)
	if _, err := os.Stat(path); err == nil || !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("node: data dir: %w", err)
	}
	if err := writeFileAtomic(path, append(append([]byte(nil), secret...), '\n'), 0o600); err != nil {
		return fmt.Errorf("node: keep a copy of the cluster secret: %w", err)
	}
	return nil
}
