package harness

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// loopbackEcho serves a TCP echo on 127.0.0.1:0.
func loopbackEcho(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, l)
	return l.Addr().String()
}

// serveEcho echoes every connection l accepts until the test ends, then closes the
// listener and every connection: a connection whose peer vanished behind a partition
// would otherwise keep its goroutine reading forever.
func serveEcho(t *testing.T, l net.Listener) {
	var (
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
		wg     sync.WaitGroup
	)
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				_ = c.Close()
				return
			}
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// bestRTT returns the fastest of a few echo round trips over one connection, so that a
// busy shared machine inflates the figure as little as possible.
func bestRTT(t *testing.T, addr string) time.Duration {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The best of 10 round trips: a busy machine delays some, not all.
	best := time.Hour
	for i := 0; i < 10; i++ {
		start := time.Now()
		if err := echoOnce(c, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		best = min(best, time.Since(start))
	}
	return best
}

func TestProxyAddsOneWayDelay(t *testing.T) {
	target := loopbackEcho(t)
	direct := bestRTT(t, target)
	const delay = 40 * time.Millisecond
	p := StartProxy(t, ProxyConfig{Target: target, Delay: delay})
	through := bestRTT(t, p.Addr())
	t.Logf("round trip: direct %v, through a %v one-way proxy %v", direct, delay, through)
	// A round trip crosses the delay twice: once each way, not twice each way (4 x
	// delay) nor once per chunk.
	if through < 2*delay || through-direct >= 4*delay {
		t.Fatalf("round trip through the proxy = %v, want %v plus a little", through, 2*delay)
	}
	p.SetDelay(0)
	if rtt := bestRTT(t, p.Addr()); rtt-direct >= delay {
		t.Fatalf("round trip with the delay set to 0 = %v, the delay is still there", rtt)
	}
}

func TestProxyBandwidthCap(t *testing.T) {
	target := loopbackEcho(t)
	const rate = 4 << 20 // bytes per second
	p := StartProxy(t, ProxyConfig{Target: target, BytesPerSec: rate})
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size = 2 << 20
	go func() { _, _ = c.Write(make([]byte, size)) }()
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	// 2 MiB at 4 MiB/s is 500 ms each way; the two directions pipeline, and the first
	// chunk leaves at once.
	t.Logf("2 MiB echoed through a 4 MiB/s cap in %v", elapsed)
	if elapsed < 400*time.Millisecond || elapsed > 3*time.Second {
		t.Fatalf("2 MiB took %v through a 4 MiB/s cap, want about 0.5 s", elapsed)
	}
}

func TestProxyCloseEndsConnections(t *testing.T) {
	p, err := NewProxy(ProxyConfig{Target: loopbackEcho(t)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoOnce(c, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(c, time.Second); err == nil {
		t.Fatal("a connection through a closed proxy still echoed")
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Fatal("a closed proxy still accepts")
	}
}
