package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNetns is returned when a namespace, link or nftables operation fails.
var ErrNetns = errors.New("harness: network namespace operation failed")

// NotRunNeedsRoot is the exact reason a namespace test is skipped without root: such a
// scenario did not run, and the skip says so loudly rather than pass.
const NotRunNeedsRoot = "NOT RUN: needs root"

// ClientNS is the index of the client namespace: it holds the bridge that joins the node
// namespaces, and the test's own connections to the nodes (Dial, HTTPClient, Forward)
// start there, so faults between nodes never cut the test off from them.
const ClientNS = -1

// nsPrefix starts the name of every namespace the harness creates; the next run
// recognises a dead run's leftovers by it and by the pid that follows it.
const nsPrefix = "lmh"

// The test subnet exists only inside the namespaces the test creates: node i has
// 10.99.0.(i+1), the client namespace 10.99.0.254, and no route leads out.
var (
	subnetBase = netip.MustParseAddr("10.99.0.0")
	clientIP   = netip.MustParseAddr("10.99.0.254")
)

// nftTable is the nftables table the harness owns inside each namespace.
const nftTable = "lmfault"

var networkSeq atomic.Int64

// Network is a set of network namespaces, one per node, joined by a bridge in a client
// namespace, with nftables rules inside each node namespace for partitions and loss.
// Nothing touches the root namespace: veth pairs are created with both ends already in
// test namespaces, and deleting the namespaces removes every link and rule.
type Network struct {
	t      testing.TB
	prefix string
	nodes  []string
}

// RequireRoot skips the test with NotRunNeedsRoot unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip(NotRunNeedsRoot)
	}
}

// NewNetwork creates n node namespaces on one bridge. Without root the test is skipped
// with NotRunNeedsRoot; as root, missing ip or nft tools fail it, since CI installs them.
// t.Cleanup removes everything, and leftovers of dead runs are removed first.
func NewNetwork(t testing.TB, n int) *Network {
	t.Helper()
	RequireRoot(t)
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("running as root but %s is missing (install iproute2 and nftables): %v", tool, err)
		}
	}
	if n < 1 || n > 250 {
		t.Fatalf("harness: %d nodes: want 1..250", n)
	}
	RemoveStaleNamespaces(t)
	nw := &Network{t: t, prefix: fmt.Sprintf("%s%d-%d-", nsPrefix, os.Getpid(), networkSeq.Add(1))}
	for i := 0; i < n; i++ {
		nw.nodes = append(nw.nodes, nw.prefix+"n"+strconv.Itoa(i))
	}
	t.Cleanup(nw.destroy)
	if err := nw.create(); err != nil {
		t.Fatal(err)
	}
	return nw
}

// Len returns the number of node namespaces.
func (nw *Network) Len() int { return len(nw.nodes) }

// NS returns the name of namespace i (ClientNS for the client namespace).
func (nw *Network) NS(i int) string {
	if i == ClientNS {
		return nw.prefix + "br"
	}
	return nw.nodes[i]
}

// IP returns the address of namespace i on the test subnet.
func (nw *Network) IP(i int) netip.Addr {
	if i == ClientNS {
		return clientIP
	}
	b := subnetBase.As4()
	b[3] = byte(i + 1)
	return netip.AddrFrom4(b)
}

func (nw *Network) create() error {
	br := nw.NS(ClientNS)
	steps := [][]string{
		{"netns", "add", br},
		{"-n", br, "link", "set", "lo", "up"},
		{"-n", br, "link", "add", "br0", "type", "bridge"},
		{"-n", br, "addr", "add", clientIP.String() + "/24", "dev", "br0"},
		{"-n", br, "link", "set", "br0", "up"},
	}
	for i, ns := range nw.nodes {
		port := "p" + strconv.Itoa(i)
		steps = append(steps,
			[]string{"netns", "add", ns},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			// Both ends are created directly inside test namespaces; the root namespace
			// never holds an interface of the test, even for a moment.
			[]string{"link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", br},
			[]string{"-n", br, "link", "set", port, "master", "br0"},
			[]string{"-n", br, "link", "set", port, "up"},
			[]string{"-n", ns, "addr", "add", nw.IP(i).String() + "/24", "dev", "eth0"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
		)
	}
	for _, s := range steps {
		if err := runTool("ip", s, ""); err != nil {
			return err
		}
	}
	for _, i := range nw.all() {
		base := fmt.Sprintf("table inet %s {\n\tchain input { type filter hook input priority 0; policy accept; }\n}\n", nftTable)
		if err := nw.nft(i, base); err != nil {
			return err
		}
	}
	return nil
}

// destroy kills whatever still runs in the namespaces and deletes them; the veth pairs,
// the bridge and the nftables tables go with them.
func (nw *Network) destroy() {
	for _, ns := range append(append([]string{}, nw.nodes...), nw.NS(ClientNS)) {
		deleteNamespace(ns)
	}
}

func deleteNamespace(ns string) {
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	_ = exec.Command("ip", "netns", "del", ns).Run()
}

// RemoveStaleNamespaces deletes harness namespaces whose creating test binary has died
// (a run killed before its cleanups); namespaces of live runs are left alone.
func RemoveStaleNamespaces(t testing.TB) {
	t.Helper()
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, nsPrefix) {
			continue
		}
		pidPart, _, ok := strings.Cut(strings.TrimPrefix(name, nsPrefix), "-")
		pid, err := strconv.Atoi(pidPart)
		if !ok || err != nil || pid == os.Getpid() || pidAlive(pid) {
			continue
		}
		t.Logf("harness: removing stale namespace %s of dead run %d", name, pid)
		deleteNamespace(name)
	}
}

func runTool(tool string, args []string, stdin string) error {
	cmd := exec.Command(tool, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s %s: %w: %s", ErrNetns, tool, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// nft loads an nftables script inside namespace i.
func (nw *Network) nft(i int, script string) error {
	return runTool("ip", []string{"netns", "exec", nw.NS(i), "nft", "-f", "-"}, script)
}

// Command returns a command that runs inside namespace i.
func (nw *Network) Command(i int, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", nw.NS(i), name}, args...)...)
}

// Rules returns the nftables rules now in force inside namespace i, for logs.
func (nw *Network) Rules(i int) (string, error) {
	out, err := nw.Command(i, "nft", "list", "table", "inet", nftTable).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%w: nft list in %s: %w: %s", ErrNetns, nw.NS(i), err, out)
	}
	return string(out), nil
}

func (nw *Network) ipSet(idx []int) string {
	s := make([]string, len(idx))
	for k, i := range idx {
		s[k] = nw.IP(i).String()
	}
	return "{ " + strings.Join(s, ", ") + " }"
}

// addRules adds input-chain rules inside namespace i. Every fault is a drop on the
// receiving side: a drop on the sender's output hook makes send() fail with EPERM,
// which tells the sender what a real network never would.
func (nw *Network) addRules(i int, rules []string) error {
	if len(rules) == 0 {
		return nil
	}
	var b strings.Builder
	for _, r := range rules {
		fmt.Fprintf(&b, "add rule inet %s input %s\n", nftTable, r)
	}
	return nw.nft(i, b.String())
}

// all returns the indexes of every namespace that holds rules: the nodes and ClientNS.
func (nw *Network) all() []int {
	idx := []int{ClientNS}
	for i := range nw.nodes {
		idx = append(idx, i)
	}
	return idx
}

// Partition cuts every packet between nodes of different groups, in both directions,
// established connections included; a node in no group keeps talking to everyone. A
// group may hold ClientNS to cut nodes off from the test's own connections too. Rules
// add up until Heal.
func (nw *Network) Partition(groups ...[]int) error {
	for g, group := range groups {
		var others []int
		for h, other := range groups {
			if h != g {
				others = append(others, other...)
			}
		}
		if len(others) == 0 {
			continue
		}
		for _, i := range group {
			if err := nw.addRules(i, []string{"ip saddr " + nw.ipSet(others) + " drop"}); err != nil {
				return err
			}
		}
	}
	return nil
}

// PartitionOneWay drops packets sent from any namespace in from to any in to, while
// packets the other way still arrive: the asymmetric link that confuses failure
// detectors (a node hears its peers but cannot answer). TCP cannot connect either way
// across it (the handshake needs both directions); datagrams flow one way.
func (nw *Network) PartitionOneWay(from, to []int) error {
	for _, i := range to {
		if err := nw.addRules(i, []string{"ip saddr " + nw.ipSet(from) + " drop"}); err != nil {
			return err
		}
	}
	return nil
}

// Loss drops percent% of the packets, at random, between each listed node and every
// other node, in both directions. Each packet meets the random drop exactly once, at
// its receiver. Traffic from and to the client namespace is not affected.
func (nw *Network) Loss(percent int, nodes ...int) error {
	if percent < 0 || percent > 100 {
		return fmt.Errorf("%w: loss %d%% out of range", ErrNetns, percent)
	}
	listed := make(map[int]bool, len(nodes))
	for _, i := range nodes {
		listed[i] = true
	}
	for j := range nw.nodes {
		// Node j loses packets from every other node if j is listed, else from the
		// listed ones.
		var from []int
		for i := range nw.nodes {
			if i != j && (listed[j] || listed[i]) {
				from = append(from, i)
			}
		}
		if len(from) == 0 {
			continue
		}
		rule := fmt.Sprintf("ip saddr %s numgen random mod 100 < %d drop", nw.ipSet(from), percent)
		if err := nw.addRules(j, []string{rule}); err != nil {
			return err
		}
	}
	return nil
}

// Heal removes every partition and loss rule in every namespace.
func (nw *Network) Heal() error {
	for _, i := range nw.all() {
		if err := nw.nft(i, "flush table inet "+nftTable+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// Do runs fn on an OS thread switched into namespace i. Sockets that fn creates belong
// to that namespace for their whole life, whichever thread uses them later; that is how
// the test dials and listens inside a namespace without a helper process.
func (nw *Network) Do(i int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is locked for the switch; if switching back fails, it stays locked
		// and this goroutine parks on it for good, so no other goroutine ever runs in
		// the wrong namespace. It must not end either: the runtime would destroy the
		// thread, and a node started from it gets SIGKILL then (ProcSpec's Pdeathsig
		// follows the thread that forked, not the process).
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("%w: %w", ErrNetns, err)
			return
		}
		defer orig.Close()
		target, err := os.Open("/var/run/netns/" + nw.NS(i))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("%w: %w", ErrNetns, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("%w: setns %s: %w", ErrNetns, nw.NS(i), err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("%w: setns back: %w", ErrNetns, err)
			select {}
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialFunc returns a dial function whose sockets live in namespace i.
func (nw *Network) DialFunc(i int) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := nw.Do(i, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// Listen listens inside namespace i.
func (nw *Network) Listen(i int, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := nw.Do(i, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ListenPacket opens a packet socket inside namespace i.
func (nw *Network) ListenPacket(i int, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := nw.Do(i, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// HTTPClient returns a client whose connections start in the client namespace.
func (nw *Network) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: nw.DialFunc(ClientNS), MaxIdleConnsPerHost: 64}}
}

// Forward returns a 127.0.0.1 address in the test's own namespace that forwards each
// connection to target (an address inside the namespaces) from the client namespace;
// tools that cannot be handed a dialer (meshctl, plain http.Get) reach nodes through it.
func (nw *Network) Forward(t testing.TB, target string) string {
	t.Helper()
	return StartProxy(t, ProxyConfig{Target: target, Dial: nw.DialFunc(ClientNS)}).Addr()
}
