package harness

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Errors of process control.
var (
	// ErrRunning is returned by Start when the process is already running.
	ErrRunning = errors.New("harness: process already running")
	// ErrNotRunning is returned when a signal is asked of a process that has exited.
	ErrNotRunning = errors.New("harness: process not running")
	// ErrExitTimeout is returned when a process did not exit within the bounded wait.
	ErrExitTimeout = errors.New("harness: process did not exit in time")
)

// ProcSpec says how to run one process. The same spec is used on every (re)start, so a
// restarted process gets the same flags and the same data dir.
type ProcSpec struct {
	// Name labels the process in logs and failure output.
	Name string
	// Path is the executable.
	Path string
	// Args are the arguments after the executable.
	Args []string
	// Env is appended to the test's environment.
	Env []string
	// Dir is the working directory; empty means the test's.
	Dir string
	// Netns, when set, runs the process inside that network namespace
	// (`ip netns exec`, which execs the program, so the pid is the program's own).
	Netns string
	// LogDir is where the log file goes; empty means a fresh t.TempDir.
	LogDir string
}

// Proc is one process under test. Its output (stdout and stderr) goes to one log file
// across restarts, each start marked with a line; the log's tail is printed when the test
// fails. A Proc is safe for concurrent use.
type Proc struct {
	t       testing.TB
	spec    ProcSpec
	logPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the current process has been reaped
	waitErr error
	starts  int
	paused  bool
}

// logTail is how much of a log is printed when a test fails: enough to see the last
// moments of a node without drowning the report.
const logTail = 32 << 10

// NewProc prepares a process without starting it. t.Cleanup kills it (the whole process
// group) and prints its log's tail when the test has failed.
func NewProc(t testing.TB, spec ProcSpec) *Proc {
	t.Helper()
	if spec.Name == "" {
		spec.Name = filepath.Base(spec.Path)
	}
	logDir := spec.LogDir
	if logDir == "" {
		logDir = t.TempDir()
	}
	p := &Proc{t: t, spec: spec, logPath: filepath.Join(logDir, spec.Name+".log")}
	t.Cleanup(func() {
		_ = p.Kill()
		if t.Failed() && p.Starts() > 0 {
			t.Logf("--- log of %s (%s), last %d KiB ---\n%s", spec.Name, p.logPath, logTail>>10, p.LogTail(logTail))
		}
	})
	return p
}

// StartProc is NewProc followed by Start; a failed start fails the test.
func StartProc(t testing.TB, spec ProcSpec) *Proc {
	t.Helper()
	p := NewProc(t, spec)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	return p
}

// Name returns the process's label.
func (p *Proc) Name() string { return p.spec.Name }

// LogPath returns the path of the process's log file.
func (p *Proc) LogPath() string { return p.logPath }

// Start starts the process. It returns ErrRunning when it is already running.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !p.exitedLocked() {
		return fmt.Errorf("%w: %s", ErrRunning, p.spec.Name)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("harness: log of %s: %w", p.spec.Name, err)
	}
	defer logf.Close() // the child holds its own copy of the descriptor
	p.starts++
	fmt.Fprintf(logf, "=== harness: start #%d of %s at %s\n", p.starts, p.spec.Name, time.Now().Format(time.RFC3339Nano))

	path, args := p.spec.Path, p.spec.Args
	if p.spec.Netns != "" {
		args = append([]string{"netns", "exec", p.spec.Netns, path}, args...)
		path = "ip"
	}
	cmd := exec.Command(path, args...)
	cmd.Dir = p.spec.Dir
	cmd.Env = append(os.Environ(), p.spec.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group, so a signal reaches any child it forks too.
		Setpgid: true,
		// Should the test binary die without running its cleanups (SIGKILL, a timeout
		// panic), the kernel kills the node rather than leaving it running. The kernel
		// sends it when the thread that forked ends, so no goroutine of a test may end
		// while locked to its thread (which ends the thread): unlock it first.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("harness: start %s: %w", p.spec.Name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.waitErr, p.paused = cmd, done, nil, false
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

func (p *Proc) exitedLocked() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Running reports whether the process has been started and has not exited.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !p.exitedLocked()
}

// Pid returns the process id of the current (or last) run, 0 before the first start.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Starts returns how many times the process has been started.
func (p *Proc) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// Exited returns a channel closed when the current run has exited, and the run's wait
// error once it has (nil for exit status 0).
func (p *Proc) Exited() (<-chan struct{}, func() error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	done := p.done
	if done == nil {
		closed := make(chan struct{})
		close(closed)
		done = closed
	}
	return done, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.waitErr
	}
}

// signal sends sig to the process group of the running process.
func (p *Proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.exitedLocked() {
		return fmt.Errorf("%w: %s", ErrNotRunning, p.spec.Name)
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("harness: %v to %s: %w", sig, p.spec.Name, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		p.paused = true
	case syscall.SIGCONT:
		p.paused = false
	}
	return nil
}

// Kill sends SIGKILL to the process group, as a power cut would, and waits for the exit.
// Killing a process that is not running is not an error.
func (p *Proc) Kill() error {
	err := p.signal(syscall.SIGKILL)
	if errors.Is(err, ErrNotRunning) {
		return nil
	}
	if err != nil {
		return err
	}
	return p.waitExit(10 * time.Second)
}

// Stop asks the process to shut down with SIGTERM (and SIGCONT, should it be paused,
// since a stopped process does not act on SIGTERM), waits up to grace, then kills it.
// It returns ErrExitTimeout, after the kill, when the process ignored SIGTERM.
func (p *Proc) Stop(grace time.Duration) error {
	if err := p.signal(syscall.SIGTERM); err != nil {
		if errors.Is(err, ErrNotRunning) {
			return nil
		}
		return err
	}
	_ = p.signal(syscall.SIGCONT)
	if err := p.waitExit(grace); err != nil {
		if kerr := p.Kill(); kerr != nil {
			return kerr
		}
		return err
	}
	return nil
}

// Restart starts the process again with the same spec (same flags, same data dir),
// stopping it first with Stop(grace) if it is still running.
func (p *Proc) Restart(grace time.Duration) error {
	if err := p.Stop(grace); err != nil && !errors.Is(err, ErrExitTimeout) {
		return err
	}
	return p.Start()
}

// Pause stops the process group with SIGSTOP: the process stays alive, holds its sockets
// and answers nothing, as a node stuck in a long GC pause or a frozen VM would. It
// returns once the kernel reports the process stopped, since signal delivery is
// asynchronous and a test's next request must not race it.
func (p *Proc) Pause() error {
	if err := p.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	return p.waitState(func(s byte) bool { return s == 'T' }, "stopped")
}

// Resume continues a paused process with SIGCONT and returns once it runs again.
func (p *Proc) Resume() error {
	if err := p.signal(syscall.SIGCONT); err != nil {
		return err
	}
	return p.waitState(func(s byte) bool { return s != 'T' }, "running")
}

// ErrState is returned when a process does not reach the state a signal asked for.
var ErrState = errors.New("harness: process did not change state")

// waitState polls /proc/<pid>/stat until the state letter satisfies ok.
func (p *Proc) waitState(ok func(byte) bool, want string) error {
	pid := p.Pid()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrNotRunning, p.spec.Name, err)
		}
		// The state follows the command name, which is in parentheses and may hold
		// spaces: "pid (comm) S ...".
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && ok(b[i+2]) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s not %s", ErrState, p.spec.Name, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Paused reports whether Pause was called without a Resume since.
func (p *Proc) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused && p.cmd != nil && !p.exitedLocked()
}

func (p *Proc) waitExit(timeout time.Duration) error {
	done, _ := p.Exited()
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%w: %s after %v", ErrExitTimeout, p.spec.Name, timeout)
	}
}

// LogTail returns up to the last n bytes of the process's log.
func (p *Proc) LogTail(n int64) string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return string(b)
}
