package harness

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// echonode is built once per test binary and shared by the tests of this package.
func echonode(t *testing.T) string {
	t.Helper()
	return BuildBinary(t, "./test/harness/testdata/echonode")
}

// startEcho starts echonode on a fresh data dir and returns it with its HTTP address.
func startEcho(t *testing.T, extra ...string) (*Proc, string) {
	t.Helper()
	dir := t.TempDir()
	p := StartProc(t, ProcSpec{Name: "echo", Path: echonode(t), Args: append([]string{"--data-dir", dir}, extra...)})
	return p, waitAddrFile(t, filepath.Join(dir, "http.addr"))
}

func waitAddrFile(t *testing.T, path string) string {
	t.Helper()
	var addr string
	Eventually(t, 20*time.Second, 20*time.Millisecond, func() error {
		b, err := os.ReadFile(path)
		addr = strings.TrimSpace(string(b))
		return err
	})
	return addr
}

// boots returns echonode's boot count and pid as it reports them over HTTP.
func boots(client *http.Client, addr string) (int, int, error) {
	resp, err := client.Get("http://" + addr + "/boots")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, err
	}
	var n, pid int
	_, err = fmt.Sscanf(string(b), "%d %d", &n, &pid)
	return n, pid, err
}

func TestProcKillRestartPause(t *testing.T) {
	dir := t.TempDir()
	p := StartProc(t, ProcSpec{Name: "echo", Path: echonode(t), Args: []string{"--data-dir", dir, "--http", "127.0.0.1:0"}})
	addr := waitAddrFile(t, filepath.Join(dir, "http.addr"))
	client := &http.Client{Timeout: 2 * time.Second}
	n, pid, err := boots(client, addr)
	if err != nil || n != 1 || pid != p.Pid() {
		t.Fatalf("first boot: n=%d pid=%d (want 1, %d) err=%v", n, pid, p.Pid(), err)
	}

	if err := p.Pause(); err != nil {
		t.Fatal(err)
	}
	short := &http.Client{Timeout: 300 * time.Millisecond}
	if _, _, err := boots(short, addr); err == nil {
		t.Fatal("a paused process answered")
	}
	if !p.Paused() {
		t.Fatal("Paused() = false after Pause")
	}
	if err := p.Resume(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := boots(client, addr); err != nil {
		t.Fatalf("after resume: %v", err)
	}

	oldPid := p.Pid()
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if p.Running() {
		t.Fatal("Running() after Kill")
	}
	_, waitErr := p.Exited()
	var exitErr interface{ Sys() any }
	if err := waitErr(); !errors.As(err, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("exit after Kill: %v, want killed by SIGKILL", err)
	}
	if err := syscall.Kill(oldPid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("pid %d still exists after Kill: %v", oldPid, err)
	}
	if _, _, err := boots(short, addr); err == nil {
		t.Fatal("a killed process answered")
	}

	// Same data dir, same flags: the boot count kept in the data dir goes up.
	_ = os.Remove(filepath.Join(dir, "http.addr"))
	if err := p.Restart(time.Second); err != nil {
		t.Fatal(err)
	}
	addr = waitAddrFile(t, filepath.Join(dir, "http.addr"))
	n, pid, err = boots(client, addr)
	if err != nil || n != 2 || pid != p.Pid() || pid == oldPid {
		t.Fatalf("after restart: n=%d pid=%d (want 2, %d, not %d) err=%v", n, pid, p.Pid(), oldPid, err)
	}
	if p.Starts() != 2 {
		t.Fatalf("Starts() = %d, want 2", p.Starts())
	}
	if err := p.Start(); !errors.Is(err, ErrRunning) {
		t.Fatalf("Start of a running process: %v, want ErrRunning", err)
	}
	if log := p.LogTail(logTail); strings.Count(log, "=== harness: start #") != 2 {
		t.Fatalf("log does not mark both starts:\n%s", log)
	}
}

func TestProcStopGracefulAndForced(t *testing.T) {
	p, _ := startEcho(t)
	if err := p.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, waitErr := p.Exited(); waitErr() != nil {
		t.Fatalf("graceful stop exited with %v, want status 0", waitErr())
	}
	if !strings.Contains(p.LogTail(logTail), "shutting down") {
		t.Fatal("process did not log its graceful shutdown")
	}

	stubborn, addr := startEcho(t, "--ignore-sigterm")
	start := time.Now()
	if err := stubborn.Stop(300 * time.Millisecond); !errors.Is(err, ErrExitTimeout) {
		t.Fatalf("Stop of a process ignoring SIGTERM: %v, want ErrExitTimeout", err)
	}
	if stubborn.Running() || time.Since(start) > 5*time.Second {
		t.Fatalf("still running=%v after %v", stubborn.Running(), time.Since(start))
	}
	if _, _, err := boots(&http.Client{Timeout: 300 * time.Millisecond}, addr); err == nil {
		t.Fatal("a stopped process answered")
	}

	// Stop of a paused process must still end it gracefully: SIGTERM alone would wait
	// for a SIGCONT that never comes.
	paused, _ := startEcho(t)
	if err := paused.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := paused.Stop(5 * time.Second); err != nil {
		t.Fatalf("Stop of a paused process: %v", err)
	}
}

// TestProcCleanupLeavesNothing checks that the cleanup of a finished test kills its
// processes, paused ones included.
func TestProcCleanupLeavesNothing(t *testing.T) {
	var pids []int
	t.Run("inner", func(t *testing.T) {
		a, _ := startEcho(t)
		b, _ := startEcho(t)
		if err := b.Pause(); err != nil {
			t.Fatal(err)
		}
		pids = []int{a.Pid(), b.Pid()}
	})
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("pid %d still exists after its test ended: %v", pid, err)
		}
	}
}

func TestEventuallyAndPoll(t *testing.T) {
	calls := 0
	err := Poll(time.Second, time.Millisecond, func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("Poll: err=%v after %d calls, want nil after 3", err, calls)
	}
	want := errors.New("never")
	if err := Poll(30*time.Millisecond, 5*time.Millisecond, func() error { return want }); !errors.Is(err, want) {
		t.Fatalf("Poll past its deadline: %v, want the last error", err)
	}
}

// TestProcOrphanedByKilledTestBinary kills a test binary with SIGKILL, so that none of
// its cleanups run, and checks that the node it had started dies with it.
func TestProcOrphanedByKilledTestBinary(t *testing.T) {
	if os.Getenv("HARNESS_ORPHAN_PARENT") == "1" {
		// The child test binary: start a node, say its pid, wait to be killed.
		p, _ := startEcho(t)
		fmt.Printf("node-pid %d\n", p.Pid())
		time.Sleep(time.Minute)
		return
	}
	echonode(t) // build it here, so that the child does not race the build
	parent := osexec.Command(os.Args[0], "-test.run", "^TestProcOrphanedByKilledTestBinary$", "-test.v")
	parent.Env = append(os.Environ(), "HARNESS_ORPHAN_PARENT=1")
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = parent.Process.Kill(); _ = parent.Wait() })
	var nodePid int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "node-pid %d", &nodePid); err == nil {
			break
		}
	}
	if nodePid == 0 {
		t.Fatal("the child test binary never reported its node")
	}
	if err := syscall.Kill(nodePid, 0); err != nil {
		t.Fatalf("node %d not running before the kill: %v", nodePid, err)
	}
	if err := parent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = parent.Wait()
	Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if pidRunning(nodePid) {
			return fmt.Errorf("node %d outlived its SIGKILLed test binary", nodePid)
		}
		return nil
	})
}

// pidRunning reports whether pid exists and is not a zombie waiting for a reaper that
// may never come (in a container, PID 1 need not reap orphans).
func pidRunning(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}
