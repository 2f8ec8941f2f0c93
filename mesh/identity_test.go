package mesh

import (
	"os"
	"path/filepath"
	"testing"
)

func TestIdentityPersisted(t *testing.T) {
	dir := t.TempDir()
	k1, err := loadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, identityFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity.key has mode %v, want 0600", fi.Mode().Perm())
	}
	k2, err := loadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equals(k2) {
		t.Fatalf("reloaded identity differs")
	}
	if err := os.WriteFile(filepath.Join(dir, identityFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadIdentity(dir); err == nil {
		t.Fatalf("a corrupt identity file was accepted (a silent new identity would split the node)")
	}
}
