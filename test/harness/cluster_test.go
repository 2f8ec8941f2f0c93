package harness

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func echoCluster(t *testing.T, n int, nw *Network) *Cluster {
	t.Helper()
	return StartCluster(t, n, ClusterOptions{Binary: echonode(t), Network: nw, StartTimeout: 20 * time.Second, StopGrace: 5 * time.Second})
}

// checkClusterMechanics kills, restarts, pauses and stops nodes of an echonode cluster
// and checks each through the addresses the harness hands out.
func checkClusterMechanics(t *testing.T, c *Cluster) {
	client := &http.Client{Timeout: 2 * time.Second}
	short := &http.Client{Timeout: 300 * time.Millisecond}
	for i := 0; i < c.Len(); i++ {
		n, pid, err := boots(client, c.HTTPAddr(i))
		if err != nil || n != 1 || pid != c.Node(i).Pid() {
			t.Fatalf("node %d: boots=%d pid=%d (want 1, %d) err=%v", i, n, pid, c.Node(i).Pid(), err)
		}
	}
	if tok, err := c.AdminToken(); err != nil || tok == "" {
		t.Fatalf("admin token: %q, %v", tok, err)
	}
	// The joiners were given node 0's libp2p address and a copy of its secret.
	log := c.Node(1).LogTail(logTail)
	if !strings.Contains(log, "--join "+c.P2PAddr(0)) || !strings.Contains(log, "--cluster-secret-file "+c.SecretPath()) {
		t.Fatalf("node 1 was not told to join node 0 (%s):\n%s", c.P2PAddr(0), log)
	}

	addr := c.HTTPAddr(1)
	if err := c.Kill(1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	if err := c.WaitReady(ctx, 1); err == nil {
		t.Fatal("WaitReady succeeded on a killed node")
	}
	cancel()
	if err := c.Restart(1); err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr(1) != addr {
		t.Fatalf("restarted node moved from %s to %s; its port should be pinned", addr, c.HTTPAddr(1))
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if n, _, err := boots(client, addr); err != nil || n != 2 {
		t.Fatalf("restarted node: boots=%d err=%v, want 2 (same data dir)", n, err)
	}
	gossip := "--gossip-port " + strconv.Itoa(c.Node(1).GossipPort)
	if c.Node(1).GossipPort == 0 || strings.Count(c.Node(1).LogTail(logTail), gossip) != 2 {
		t.Fatalf("node 1 was not given the same reserved gossip port (%s) at both starts", gossip)
	}

	if err := c.Pause(2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := boots(short, c.HTTPAddr(2)); err == nil {
		t.Fatal("paused node answered")
	}
	if err := c.Resume(2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := boots(client, c.HTTPAddr(2)); err != nil {
		t.Fatalf("resumed node: %v", err)
	}
	if err := c.Stop(0); err != nil {
		t.Fatal(err)
	}
	if c.Node(0).Running() {
		t.Fatal("node 0 runs after Stop")
	}
}

func TestClusterLoopback(t *testing.T) {
	c := echoCluster(t, 3, nil)
	for i := 0; i < c.Len(); i++ {
		if !strings.HasPrefix(c.HTTPAddr(i), "127.0.0.1:") {
			t.Fatalf("node %d at %s, want loopback", i, c.HTTPAddr(i))
		}
	}
	checkClusterMechanics(t, c)
}

func TestClusterInNamespaces(t *testing.T) {
	nw := NewNetwork(t, 3)
	c := echoCluster(t, 3, nw)
	if !strings.HasPrefix(c.P2PAddr(0), "/ip4/"+nw.IP(0).String()+"/tcp/") {
		t.Fatalf("node 0 listens on %s, want its namespace address %s", c.P2PAddr(0), nw.IP(0))
	}
	checkClusterMechanics(t, c)
	// A partition that includes the client cuts the test off from a node, through the
	// very forwarder the harness handed out.
	if err := nw.Partition([]int{2}, []int{0, 1, ClientNS}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := boots(&http.Client{Timeout: 500 * time.Millisecond}, c.HTTPAddr(2)); err == nil {
		t.Fatal("node 2 answered across a partition from the client")
	}
	if err := nw.Heal(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := boots(&http.Client{Timeout: 5 * time.Second}, c.HTTPAddr(2)); err != nil {
		t.Fatalf("after heal: %v", err)
	}
}

func TestReadAddrFileGivesUpWhenTheProcessDies(t *testing.T) {
	dir := t.TempDir()
	// echonode refuses to start without a data dir: it exits at once, writing nothing.
	p := StartProc(t, ProcSpec{Name: "dies", Path: echonode(t), Args: []string{"--http", "127.0.0.1:0"}})
	start := time.Now()
	if _, err := ReadAddrFile(p, dir+"/http.addr", 30*time.Second); !errors.Is(err, ErrNodeStart) || time.Since(start) > 10*time.Second {
		t.Fatalf("ReadAddrFile on a process that died: %v after %v; want ErrNodeStart at once", err, time.Since(start))
	}
}

func TestClusterLeaderTracking(t *testing.T) {
	leaderFile := t.TempDir() + "/leader"
	if err := os.WriteFile(leaderFile, []byte("node0"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := StartCluster(t, 3, ClusterOptions{Binary: echonode(t), StartTimeout: 20 * time.Second,
		Flags: func(c *Cluster, n *Node) []string { return append(c.DefaultFlags(n), "--leader-file", leaderFile) }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if i, err := c.WaitForLeader(ctx); err != nil || i != 0 {
		t.Fatalf("leader = %d, %v; want 0", i, err)
	}
	if err := c.Kill(0); err != nil {
		t.Fatal(err)
	}
	// Nodes 1 and 2 still name the dead node 0: no new leader yet.
	short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelShort()
	if i, err := c.WaitForNewLeader(short, 0); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("new leader while every node names the old one: %d, %v", i, err)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		_ = os.WriteFile(leaderFile, []byte("node2"), 0o644)
	}()
	if i, err := c.WaitForNewLeader(ctx, 0); err != nil || i != 2 {
		t.Fatalf("new leader = %d, %v; want 2", i, err)
	}
}

// TestClusterSeedLatency checks that joiners are pointed at a latency proxy in front of
// node 0 and that traffic through the seed address they were given is delayed.
func TestClusterSeedLatency(t *testing.T) {
	for _, netns := range []bool{false, true} {
		t.Run(map[bool]string{false: "loopback", true: "namespaces"}[netns], func(t *testing.T) {
			var nw *Network
			if netns {
				nw = NewNetwork(t, 2)
			}
			const delay = 30 * time.Millisecond
			c := StartCluster(t, 2, ClusterOptions{Binary: echonode(t), Network: nw, StartTimeout: 20 * time.Second, SeedLatency: delay})
			seed := c.seedAddr
			if seed == c.P2PAddr(0) || !strings.Contains(c.Node(1).LogTail(logTail), "--join "+seed) {
				t.Fatalf("node 1 was not pointed at the proxy: seed %s, node 0 at %s", seed, c.P2PAddr(0))
			}
			// Round trip from node 1's side through the seed address: echonode echoes on
			// its libp2p port, so the proxy's delay shows twice.
			addr := net.JoinHostPort(multiaddrIP4(seed), multiaddrTCPPort(seed))
			dial := (&net.Dialer{}).DialContext
			if nw != nil {
				dial = nw.DialFunc(1)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := dial(ctx, "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// The best of 10 round trips: a busy machine delays some, not all.
			best := time.Hour
			for i := 0; i < 10; i++ {
				start := time.Now()
				if err := echoOnce(conn, 5*time.Second); err != nil {
					t.Fatal(err)
				}
				best = min(best, time.Since(start))
			}
			// The delay once each way, not twice (4 x delay) nor per chunk.
			if best < 2*delay || best >= 4*delay {
				t.Fatalf("round trip through the seed = %v, want about %v", best, 2*delay)
			}
			c.SeedProxy().SetDelay(0)
			best = time.Hour
			for i := 0; i < 10; i++ {
				start := time.Now()
				if err := echoOnce(conn, 5*time.Second); err != nil {
					t.Fatal(err)
				}
				best = min(best, time.Since(start))
			}
			if best >= delay {
				t.Fatalf("round trip after SetDelay(0) = %v, the delay is still there", best)
			}
		})
	}
}

func TestClusterAddAndWipe(t *testing.T) {
	wrongSecret := filepath.Join(t.TempDir(), "wrong.secret")
	if err := os.WriteFile(wrongSecret, []byte("not the cluster's secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := StartCluster(t, 2, ClusterOptions{Binary: echonode(t), StartTimeout: 20 * time.Second,
		Flags: func(c *Cluster, n *Node) []string {
			f := c.DefaultFlags(n)
			if n.Index == 2 {
				f = append(f, "--cluster-secret-file", wrongSecret) // the last flag wins
			}
			return f
		}})
	i, err := c.Add()
	if err != nil || i != 2 || c.Len() != 3 {
		t.Fatalf("Add = %d, %v; len %d", i, err, c.Len())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if log := c.Node(2).LogTail(logTail); !strings.Contains(log, "--cluster-secret-file "+wrongSecret) || !strings.Contains(log, "--join "+c.P2PAddr(0)) {
		t.Fatalf("added node's flags:\n%s", log)
	}

	client := &http.Client{Timeout: 2 * time.Second}
	if err := c.WipeDataDir(1); !errors.Is(err, ErrRunning) {
		t.Fatalf("wipe of a running node: %v, want ErrRunning", err)
	}
	if err := c.Stop(1); err != nil {
		t.Fatal(err)
	}
	if err := c.WipeDataDir(1); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(1); err != nil {
		t.Fatal(err)
	}
	if n, _, err := boots(client, c.HTTPAddr(1)); err != nil || n != 1 {
		t.Fatalf("wiped node: boots=%d err=%v, want 1 (a fresh data dir)", n, err)
	}
}
