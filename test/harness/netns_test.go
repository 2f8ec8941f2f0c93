package harness

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// echoListener serves a TCP echo inside namespace i on its test address.
func echoListener(t *testing.T, nw *Network, i int) string {
	t.Helper()
	l, err := nw.Listen(i, "tcp", netip.AddrPortFrom(nw.IP(i), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, l)
	return l.Addr().String()
}

// tcpRoundTrip connects from namespace from to addr and echoes one message.
func tcpRoundTrip(nw *Network, from int, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := nw.DialFunc(from)(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return echoOnce(c, timeout)
}

func echoOnce(c net.Conn, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	msg := []byte("ping")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return errors.New("echo mismatch")
	}
	return nil
}

func TestNetworkPartitionAndHeal(t *testing.T) {
	nw := NewNetwork(t, 3)
	addr1 := echoListener(t, nw, 1)
	addr0 := echoListener(t, nw, 0)
	for _, from := range []int{0, 2, ClientNS} {
		if err := tcpRoundTrip(nw, from, addr1, 5*time.Second); err != nil {
			t.Fatalf("before partition, %s -> node 1: %v", nw.NS(from), err)
		}
	}
	// An established connection must be cut too, not only new ones.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	established, err := nw.DialFunc(0)(ctx, "tcp", addr1)
	if err != nil {
		t.Fatal(err)
	}
	defer established.Close()
	if err := echoOnce(established, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	if err := nw.Partition([]int{0}, []int{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := tcpRoundTrip(nw, 0, addr1, 700*time.Millisecond); err == nil {
		t.Fatal("node 0 reached node 1 across a partition")
	}
	if err := tcpRoundTrip(nw, 1, addr0, 700*time.Millisecond); err == nil {
		t.Fatal("node 1 reached node 0 across a partition")
	}
	if err := echoOnce(established, 700*time.Millisecond); err == nil {
		t.Fatal("an established connection still flowed across a partition")
	}
	if err := tcpRoundTrip(nw, 2, addr1, 5*time.Second); err != nil {
		t.Fatalf("nodes 2 and 1 are on the same side: %v", err)
	}
	if err := tcpRoundTrip(nw, ClientNS, addr0, 5*time.Second); err != nil {
		t.Fatalf("the client namespace is not in the partition: %v", err)
	}

	if err := nw.Heal(); err != nil {
		t.Fatal(err)
	}
	if err := tcpRoundTrip(nw, 0, addr1, 5*time.Second); err != nil {
		t.Fatalf("after heal: %v", err)
	}
	if rules, err := nw.Rules(0); err != nil || strings.Contains(rules, "drop") {
		t.Fatalf("rules left after heal (err %v):\n%s", err, rules)
	}
}

// udpDelivery sends n numbered datagrams from namespace from to namespace to and returns
// how many arrived. Sending is paced so that socket buffers never drop anything; the
// tests check that with a control run.
func udpDelivery(t *testing.T, nw *Network, from, to, n int) int {
	t.Helper()
	rx, err := nw.ListenPacket(to, "udp", netip.AddrPortFrom(nw.IP(to), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	// A larger buffer (as far as the kernel allows) rides out a receiver that a busy
	// machine does not schedule for a while.
	_ = rx.(*net.UDPConn).SetReadBuffer(4 << 20)
	tx, err := nw.ListenPacket(from, "udp", netip.AddrPortFrom(nw.IP(from), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	seen := make(map[uint32]bool, n)
	done := make(chan struct{})
	var sent atomic.Bool
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			// Silence ends the count only once the sender is done: a sender that a busy
			// machine does not schedule for a while must not look like loss.
			_ = rx.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			k, _, err := rx.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) && !sent.Load() {
				continue
			}
			if err != nil {
				return
			}
			if k >= 4 {
				seen[binary.BigEndian.Uint32(buf)] = true
			}
		}
	}()
	msg := make([]byte, 16)
	for i := 0; i < n; i++ {
		binary.BigEndian.PutUint32(msg, uint32(i))
		if _, err := tx.WriteTo(msg, rx.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		if i%20 == 19 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	sent.Store(true)
	<-done
	return len(seen)
}

func TestNetworkOneWayPartition(t *testing.T) {
	nw := NewNetwork(t, 2)
	if err := nw.PartitionOneWay([]int{0}, []int{1}); err != nil {
		t.Fatal(err)
	}
	if got := udpDelivery(t, nw, 0, 1, 100); got != 0 {
		t.Fatalf("%d of 100 datagrams crossed the cut direction 0->1", got)
	}
	if got := udpDelivery(t, nw, 1, 0, 100); got != 100 {
		t.Fatalf("only %d of 100 datagrams went the open direction 1->0", got)
	}
}

func TestNetworkRandomLoss(t *testing.T) {
	nw := NewNetwork(t, 3)
	const n = 2000
	if got := udpDelivery(t, nw, 0, 1, n); got < n*995/1000 {
		t.Fatalf("control run without loss: only %d of %d arrived; the measurement itself drops", got, n)
	}
	if err := nw.Loss(20, 0); err != nil {
		t.Fatal(err)
	}
	// 20% of 2000: the standard deviation is about 0.9 points, so 14%..26% is over six.
	for _, dir := range [][2]int{{0, 1}, {1, 0}} {
		got := udpDelivery(t, nw, dir[0], dir[1], n)
		loss := 100 * float64(n-got) / n
		t.Logf("loss %d->%d: %.1f%% (%d of %d arrived)", dir[0], dir[1], loss, got, n)
		if loss < 14 || loss > 26 {
			t.Errorf("loss %d->%d = %.1f%%, want 20%% +- 6", dir[0], dir[1], loss)
		}
	}
	if got := udpDelivery(t, nw, 1, 2, n); got < n*995/1000 {
		t.Errorf("nodes 1 and 2 are not listed, yet only %d of %d arrived", got, n)
	}
	if err := nw.Heal(); err != nil {
		t.Fatal(err)
	}
	if got := udpDelivery(t, nw, 0, 1, n); got < n*995/1000 {
		t.Fatalf("after heal only %d of %d arrived", got, n)
	}
}

// TestNetworkProcessInNamespace runs a real process inside a node namespace and reaches
// it from the test through a loopback forwarder, then pauses and kills it there.
func TestNetworkProcessInNamespace(t *testing.T) {
	nw := NewNetwork(t, 2)
	dir := t.TempDir()
	ip := nw.IP(1).String()
	p := StartProc(t, ProcSpec{Name: "echo-ns", Path: echonode(t), Netns: nw.NS(1),
		Args: []string{"--data-dir", dir, "--http", ip + ":0", "--listen", "/ip4/" + ip + "/tcp/0"}})
	inner := waitAddrFile(t, filepath.Join(dir, "http.addr"))
	if !strings.HasPrefix(inner, ip+":") {
		t.Fatalf("process bound %s, want an address on %s", inner, ip)
	}
	if _, err := http.Get("http://" + inner + "/v2/health/live"); err == nil {
		t.Fatal("the test reached a namespace address from the root namespace; the namespace leaks")
	}
	local := nw.Forward(t, inner)
	client := &http.Client{Timeout: 2 * time.Second}
	n, pid, err := boots(client, local)
	if err != nil || n != 1 || pid != p.Pid() {
		t.Fatalf("through the forwarder: n=%d pid=%d (want 1, %d) err=%v", n, pid, p.Pid(), err)
	}
	peerPort, _ := os.ReadFile(filepath.Join(dir, "p2p.addr"))
	parts := strings.Split(strings.TrimSpace(string(peerPort)), "/")
	tcpAddr := net.JoinHostPort(ip, parts[len(parts)-1])
	if err := tcpRoundTrip(nw, 0, tcpAddr, 5*time.Second); err != nil {
		t.Fatalf("node 0 -> process in node 1: %v", err)
	}
	if err := nw.Partition([]int{0}, []int{1}); err != nil {
		t.Fatal(err)
	}
	if err := tcpRoundTrip(nw, 0, tcpAddr, 500*time.Millisecond); err == nil {
		t.Fatal("partition did not cut the process off from node 0")
	}
	if err := p.Pause(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := boots(&http.Client{Timeout: 300 * time.Millisecond}, local); err == nil {
		t.Fatal("paused process answered")
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if out, err := nsPids(nw, 1); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("processes left in %s after Kill: %q (err %v)", nw.NS(1), out, err)
	}
}

// nsPids lists the processes running inside namespace i.
func nsPids(nw *Network, i int) (string, error) {
	out, err := osexec.Command("ip", "netns", "pids", nw.NS(i)).Output()
	return string(out), err
}

func TestRemoveStaleNamespaces(t *testing.T) {
	RequireRoot(t)
	dead := osexec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := nsPrefix + strconv.Itoa(dead.Process.Pid) + "-1-n0"
	if out, err := osexec.Command("ip", "netns", "add", stale).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { deleteNamespace(stale) })
	RemoveStaleNamespaces(t)
	if _, err := os.Stat("/var/run/netns/" + stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale namespace %s of dead pid survived: %v", stale, err)
	}
}
