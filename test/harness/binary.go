package harness

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ErrNoRepo is returned when the layermesh module root cannot be found above the working
// directory.
var ErrNoRepo = errors.New("harness: layermesh repository root not found")

const modulePath = "github.com/layermesh/layermesh"

// RepoRoot returns the root of the layermesh module by walking up from the working
// directory to the go.mod that declares it; go test runs each package in its own folder.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNoRepo, err)
	}
	for {
		mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(mod), []byte("module "+modulePath)) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", ErrNoRepo
		}
		dir = parent
	}
}

// MeshnodeBinary returns the meshnode binary the tests run: $LAYERMESH_BIN when set,
// else <repo>/bin/meshnode when it is newer than every Go source of the module (make
// build leaves it there), else one built from ./cmd/meshnode once per test binary, so
// that a test never runs a node older than the code beside it.
func MeshnodeBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("LAYERMESH_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("LAYERMESH_BIN=%s: %v", p, err)
		}
		return p
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if p := filepath.Join(root, "bin", "meshnode"); isFile(p) {
		newer, err := newestSource(root)
		if st, serr := os.Stat(p); err == nil && serr == nil && !st.ModTime().Before(newer) {
			return p
		}
		t.Logf("harness: %s is older than the sources; building a fresh meshnode", p)
	}
	return BuildBinary(t, "./cmd/meshnode")
}

// newestSource returns the latest modification time of the module's non-test Go files,
// go.mod and go.sum, skipping test/, testdata, hidden folders and third_party.
func newestSource(root string) (time.Time, error) {
	var newest time.Time
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "third_party" || name == "bin" ||
				path == filepath.Join(root, "test")) {
				return filepath.SkipDir
			}
			return nil
		}
		if (strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go")) || path == filepath.Join(root, "go.mod") || path == filepath.Join(root, "go.sum") {
			info, err := d.Info()
			if err != nil {
				return err
			}
			if info.ModTime().After(newest) {
				newest = info.ModTime()
			}
		}
		return nil
	})
	return newest, err
}

var builds struct {
	sync.Mutex
	paths map[string]string
}

// BuildBinary builds the main package pkg (a path relative to the repository root, for
// example "./cmd/meshnode") once per test binary and returns the executable's path.
// Binaries go to <repo>/.cache/harness/<pid>/ (git-ignored) rather than t.TempDir,
// because they outlive the test that first asked for them; folders of test binaries that
// are no longer running are removed here.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	builds.Lock()
	defer builds.Unlock()
	if p, ok := builds.paths[pkg]; ok {
		return p
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(root, ".cache", "harness")
	removeDeadPIDDirs(cache)
	out := filepath.Join(cache, strconv.Itoa(os.Getpid()), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	if builds.paths == nil {
		builds.paths = make(map[string]string)
	}
	builds.paths[pkg] = out
	return out
}

// removeDeadPIDDirs deletes the build folders of test binaries that have exited.
func removeDeadPIDDirs(cache string) {
	entries, err := os.ReadDir(cache)
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || pidAlive(pid) {
			continue
		}
		_ = os.RemoveAll(filepath.Join(cache, e.Name()))
	}
}

// pidAlive reports whether a process with this id exists (EPERM still means it does).
func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
