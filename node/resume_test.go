package node

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestResumeCluster: a node started without cluster flags resumes cluster mode exactly
// when its data dir holds Raft state and the cluster secret; --model-dir there, or a
// missing secret, is an ErrConfig that names the conflict.
func TestResumeCluster(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	clusterDir := func(t *testing.T, secret bool) string {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, raftStateDir, "log"), 0o700); err != nil {
			t.Fatal(err)
		}
		if secret {
			if err := keepSecretCopy(dir, []byte("0123456789abcdef0123")); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	for _, tc := range []struct {
		name        string
		cfg         func(t *testing.T) Config
		wantResumed bool
		wantErr     []string // substrings of an ErrConfig; nil means no error
	}{
		{"empty data dir stays a single node", func(t *testing.T) Config { return Config{DataDir: t.TempDir()} }, false, nil},
		{"cluster data dir resumes", func(t *testing.T) Config { return Config{DataDir: clusterDir(t, true)} }, true, nil},
		{"cluster flags are left alone", func(t *testing.T) Config {
			return Config{DataDir: clusterDir(t, true), Cluster: ClusterConfig{Join: []string{"127.0.0.1:1"}}}
		}, false, nil},
		{"model dir on a cluster data dir is refused", func(t *testing.T) Config {
			return Config{DataDir: clusterDir(t, true), ModelDir: t.TempDir()}
		}, false, []string{"--model-dir asks for a single node", "holds the Raft state of a cluster"}},
		{"no secret to resume with", func(t *testing.T) Config { return Config{DataDir: clusterDir(t, false)} },
			false, []string{"no cluster.secret", "--cluster-secret-file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg(t)
			err := resumeCluster(&cfg, log)
			if tc.wantErr == nil && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("got %v, want ErrConfig", err)
				}
				for _, s := range tc.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Fatalf("error %q does not say %q", err, s)
					}
				}
			}
			if cfg.Cluster.resumed != tc.wantResumed {
				t.Fatalf("resumed = %v, want %v", cfg.Cluster.resumed, tc.wantResumed)
			}
		})
	}
}

// TestKeepSecretCopy: the copy is private, and an existing secret is never replaced.
func TestKeepSecretCopy(t *testing.T) {
	dir := t.TempDir()
	if err := keepSecretCopy(dir, []byte("first-secret-0123456")); err != nil {
		t.Fatal(err)
	}
	if err := keepSecretCopy(dir, []byte("other-secret-0123456")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, secretFileName)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(b)) != "first-secret-0123456" {
		t.Fatalf("secret file holds %q, want the first secret", b)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %v, want 0600", fi.Mode().Perm())
	}
}
