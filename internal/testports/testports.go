// Package testports hands tests ports that a process they restart can bind again.
package testports

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// A node's ports are fixed, as a real device's are, and a restarted node binds the
// same ones again. A port that the kernel may hand out as the source port of an
// outgoing connection (the ephemeral range) cannot be kept that way: between a kill
// and the restart, any connection on the machine (another node's dial, another test
// package's client) may take it, and the node then fails to bind. So Reserve picks
// ports below the ephemeral range, where nothing binds without naming the port, and
// holds a lock file per port so that test processes running side by side
// never pick the same one. The locks are flocks: the kernel drops them when the test
// process exits, however it exits.

// portLockDir holds one lock file per port a test process has reserved.
var portLockDir = filepath.Join(os.TempDir(), "layermesh-test-ports")

// portFloor is the lowest port handed out: below it live well-known services.
const portFloor = 20000

// Range is [lo, hi] of the ports handed out: those between portFloor and the
// kernel's ephemeral range, or above that range when it starts too low to leave room.
var Range = sync.OnceValues(func() (int, int) {
	lo, hi := 32768, 60999 // Linux's default ephemeral range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			l, err1 := strconv.Atoi(f[0])
			h, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil {
				lo, hi = l, h
			}
		}
	}
	if lo-portFloor >= 2000 {
		return portFloor, lo - 1
	}
	return hi + 1, 65535
})

// errNoPort is returned when no port in the range can be reserved.
var errNoPort = errors.New("testports: no free port outside the ephemeral range")

// Reserve picks a port outside the kernel's ephemeral range that no other test
// process holds and that check can bind, and holds it until t ends.
func Reserve(t testing.TB, check func(port int) error) (int, error) {
	if err := os.MkdirAll(portLockDir, 0o777); err != nil {
		return 0, fmt.Errorf("testports: port lock dir: %w", err)
	}
	lo, hi := Range()
	n := hi - lo + 1
	if n <= 0 {
		return 0, errNoPort
	}
	start := rand.IntN(n)
	var last error
	for try := 0; try < 200 && try < n; try++ {
		port := lo + (start+try)%n
		f, err := lockPort(port)
		if err != nil {
			last = err
			continue
		}
		if err := check(port); err != nil {
			f.Close()
			last = err
			continue
		}
		t.Cleanup(func() { f.Close() })
		return port, nil
	}
	return 0, fmt.Errorf("%w in [%d, %d]: %w", errNoPort, lo, hi, last)
}

// lockPort takes the lock of port without waiting; the returned file holds it.
func lockPort(port int) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(portLockDir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("port %d held by another test process: %w", port, err)
	}
	return f, nil
}

// Loopback reserves a port free on 127.0.0.1 for TCP, and for UDP too when udp is set
// (memberlist binds both on one number), failing t when there is none.
func Loopback(t testing.TB, udp bool) int {
	t.Helper()
	port, err := Reserve(t, func(port int) error {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		defer l.Close()
		if !udp {
			return nil
		}
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		return u.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	return port
}
