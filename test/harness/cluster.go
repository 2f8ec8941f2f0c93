package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/api/wire"
)

// ErrNodeStart is returned when a node does not come up (no address file, not ready).
var ErrNodeStart = errors.New("harness: node did not start")

// Files a meshnode leaves in its data dir that the harness reads.
const (
	// HTTPAddrFile holds the bound HTTP host:port.
	HTTPAddrFile = "http.addr"
	// P2PAddrFile holds the bound libp2p listen multiaddr; the other nodes join it.
	P2PAddrFile = "p2p.addr"
	// SecretFile is the cluster secret the bootstrap node creates.
	SecretFile = "cluster.secret"
	// AdminTokenFile is the admin token the bootstrap node creates.
	AdminTokenFile = "admin.token"
)

// ClusterOptions configures a cluster of node processes.
type ClusterOptions struct {
	// Binary is the node executable; empty means MeshnodeBinary.
	Binary string
	// Flags, when set, returns node n's flags instead of DefaultFlags; it may call
	// DefaultFlags and append.
	Flags func(c *Cluster, n *Node) []string
	// Command, when set, returns the command line that runs node n, before its flags:
	// the program and its leading arguments, or nil for Binary. It lets one node of a
	// cluster run another build, such as an arm64 meshnode under qemu-user.
	Command func(n *Node) []string
	// Env is added to each node's environment.
	Env []string
	// Network, when set, runs node i inside namespace i, listening on its test address;
	// the test reaches it through a loopback forwarder.
	Network *Network
	// StartTimeout bounds each node's start (address file written); default 60 s.
	StartTimeout time.Duration
	// StopGrace is how long Stop and Restart wait after SIGTERM; default 15 s.
	StopGrace time.Duration
	// SeedLatency, when set, puts a latency proxy in front of node 0's libp2p listener
	// and gives the joiners its address as their seed, so that their links to node 0
	// carry that one-way delay (libp2p reuses the one connection it has to a peer).
	// SeedProxy returns the proxy, to change the delay mid-test.
	SeedLatency time.Duration
}

// Node is one node process of a Cluster.
type Node struct {
	*Proc
	Index   int
	Name    string
	DataDir string

	// HTTPListen and P2PListen are what the node is told to listen on: ports the
	// harness reserves outside the ephemeral range (ports.go), kept across restarts so
	// that a restarted node comes back on the addresses its peers and clients know, as
	// a real device's would. A test may set one to port 0 before a start; the bound
	// port is then pinned for later restarts.
	HTTPListen string
	P2PListen  string
	// GossipPort is the memberlist port, reserved like the others (TCP and UDP free at
	// once) and kept across restarts: memberlist refuses a known node that comes back
	// on another address ("conflicting address") until the old one is declared dead,
	// which a real device with its fixed port never causes.
	GossipPort int

	httpAddr string // bound, as the node sees it
	p2pAddr  string
	client   string // reachable from the test: httpAddr, or its forwarder in a namespace
}

// Cluster is a set of node processes started by one test: node 0 bootstraps, the others
// join it with its cluster secret.
type Cluster struct {
	t         testing.TB
	opts      ClusterOptions
	dir       string
	Nodes     []*Node
	seedProxy *Proxy
	seedAddr  string // what the joiners are told: node 0's address, or the proxy's
}

// NewCluster prepares n nodes without starting them.
func NewCluster(t testing.TB, n int, opts ClusterOptions) *Cluster {
	t.Helper()
	if opts.Binary == "" {
		opts.Binary = MeshnodeBinary(t)
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 60 * time.Second
	}
	if opts.StopGrace <= 0 {
		opts.StopGrace = 15 * time.Second
	}
	if opts.Network != nil && opts.Network.Len() < n {
		t.Fatalf("harness: %d nodes on a network of %d namespaces", n, opts.Network.Len())
	}
	c := &Cluster{t: t, opts: opts, dir: t.TempDir()}
	for i := 0; i < n; i++ {
		c.addNode()
	}
	return c
}

// addNode prepares one more node with the next index.
func (c *Cluster) addNode() *Node {
	i := len(c.Nodes)
	host := "127.0.0.1"
	netns := ""
	if nw := c.opts.Network; nw != nil {
		if i >= nw.Len() {
			c.t.Fatalf("harness: node %d on a network of %d namespaces", i, nw.Len())
		}
		host = nw.IP(i).String()
		netns = nw.NS(i)
	}
	name := "node" + strconv.Itoa(i)
	node := &Node{Index: i, Name: name, DataDir: filepath.Join(c.dir, name)}
	if err := os.MkdirAll(node.DataDir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	if err := c.pickPorts(node, host); err != nil {
		c.t.Fatal(err)
	}
	// Args are filled in at each start, since the pinned ports change them once.
	node.Proc = NewProc(c.t, ProcSpec{Name: name, Path: c.opts.Binary, Env: c.opts.Env, Netns: netns, LogDir: c.dir})
	c.Nodes = append(c.Nodes, node)
	return node
}

// pickPorts reserves node n's HTTP, libp2p and gossip ports on host (see ports.go).
func (c *Cluster) pickPorts(n *Node, host string) error {
	httpPort, err := c.reserveNodePort(n.Index, host, false)
	if err != nil {
		return err
	}
	p2pPort, err := c.reserveNodePort(n.Index, host, false)
	if err != nil {
		return err
	}
	gossipPort, err := c.reserveNodePort(n.Index, host, true)
	if err != nil {
		return err
	}
	n.HTTPListen = net.JoinHostPort(host, strconv.Itoa(httpPort))
	n.P2PListen = "/ip4/" + host + "/tcp/" + strconv.Itoa(p2pPort)
	n.GossipPort = gossipPort
	return nil
}

// Add prepares and starts one more node (it joins node 0, like the others) and returns
// its index; it does not wait for ready. The Flags option shapes it like the rest, so a
// test can give it, say, a wrong secret by checking n.Index there.
func (c *Cluster) Add() (int, error) {
	n := c.addNode()
	return n.Index, c.Start(n.Index)
}

// WipeDataDir deletes the data dir of a stopped node i, so that its next start is a
// new device under the old name: new identity, no blobs, no Raft state.
func (c *Cluster) WipeDataDir(i int) error {
	n := c.Nodes[i]
	if n.Running() {
		return fmt.Errorf("%w: %s", ErrRunning, n.Name)
	}
	if err := os.RemoveAll(n.DataDir); err != nil {
		return err
	}
	host := "127.0.0.1"
	if nw := c.opts.Network; nw != nil {
		host = nw.IP(i).String()
	}
	// A new device comes with its own ports.
	if err := c.pickPorts(n, host); err != nil {
		return err
	}
	n.client = ""
	if i == 0 {
		// Node 0 comes back bootstrapping a new cluster; joiners started after this
		// follow its new address.
		c.seedAddr = ""
	}
	return os.MkdirAll(n.DataDir, 0o700)
}

// StartCluster starts n nodes, node 0 first, and waits until all are ready.
func StartCluster(t testing.TB, n int, opts ClusterOptions) *Cluster {
	t.Helper()
	c := NewCluster(t, n, opts)
	for i := range c.Nodes {
		if err := c.Start(i); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.StartTimeout)
	defer cancel()
	for i := range c.Nodes {
		if err := c.WaitReady(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// Len returns the number of nodes.
func (c *Cluster) Len() int { return len(c.Nodes) }

// Node returns node i.
func (c *Cluster) Node(i int) *Node { return c.Nodes[i] }

// SecretPath is the cluster secret the joining nodes are given: a copy of the one node
// 0 created, kept outside every data dir so that any node can be wiped and rejoin.
func (c *Cluster) SecretPath() string { return filepath.Join(c.dir, SecretFile) }

// DefaultFlags are meshnode's flags for node n: its data dir, name, addresses (pinned
// after the first start), its reserved gossip port, no mDNS (tests of different engineers share the machine's
// loopback), JSON logs; node 0 bootstraps, the others join node 0.
func (c *Cluster) DefaultFlags(n *Node) []string {
	flags := []string{
		"--data-dir", n.DataDir,
		"--name", n.Name,
		"--http", n.HTTPListen,
		"--listen", n.P2PListen,
		"--gossip-port", strconv.Itoa(n.GossipPort),
		"--no-mdns",
		"--log-format", "json",
	}
	if n.Index == 0 {
		return append(flags, "--bootstrap")
	}
	return append(flags, "--join", c.seedAddr, "--cluster-secret-file", c.SecretPath())
}

// SeedProxy returns the latency proxy in front of node 0 (nil without SeedLatency).
func (c *Cluster) SeedProxy() *Proxy { return c.seedProxy }

// startSeedProxy puts a latency proxy in front of node 0's libp2p address and returns
// the multiaddr that reaches node 0 through it (same /p2p/ID, the proxy's ip and port).
func (c *Cluster) startSeedProxy() (string, error) {
	seed := c.Nodes[0].p2pAddr
	host, port := multiaddrIP4(seed), multiaddrTCPPort(seed)
	if host == "" || port == "" {
		return "", fmt.Errorf("%w: seed address %q is not an /ip4/A/tcp/P multiaddr", ErrNodeStart, seed)
	}
	cfg := ProxyConfig{Target: net.JoinHostPort(host, port), Delay: c.opts.SeedLatency}
	if nw := c.opts.Network; nw != nil {
		// The joiners reach the proxy on the bridge, from their own namespaces.
		ln, err := nw.Listen(ClientNS, "tcp", net.JoinHostPort(nw.IP(ClientNS).String(), "0"))
		if err != nil {
			return "", err
		}
		cfg.Listener, cfg.Dial = ln, nw.DialFunc(ClientNS)
	}
	c.seedProxy = StartProxy(c.t, cfg)
	phost, pport, err := net.SplitHostPort(c.seedProxy.Addr())
	if err != nil {
		return "", err
	}
	return strings.Replace(strings.Replace(seed, "/ip4/"+host+"/", "/ip4/"+phost+"/", 1), "/tcp/"+port, "/tcp/"+pport, 1), nil
}

// Start starts node i and waits until it has written its addresses (not until ready).
// A joining node waits for node 0's addresses and secret first.
func (c *Cluster) Start(i int) error {
	if err := c.launch(i); err != nil {
		return err
	}
	return c.readAddrs(c.Nodes[i])
}

// StartAll starts the nodes in idx at once, as power coming back starts every box,
// then waits until each has written its addresses. Node 0, if among them, must have
// been started before (its addresses name the seed the others join).
func (c *Cluster) StartAll(idx []int) error {
	for _, i := range idx {
		if err := c.launch(i); err != nil {
			return err
		}
	}
	for _, i := range idx {
		if err := c.readAddrs(c.Nodes[i]); err != nil {
			return err
		}
	}
	return nil
}

// launch starts node i's process without waiting for it.
func (c *Cluster) launch(i int) error {
	n := c.Nodes[i]
	if i > 0 {
		if err := c.awaitSeed(); err != nil {
			return err
		}
	}
	// Stale address files would be read as this run's before the node rewrites them.
	for _, f := range []string{HTTPAddrFile, P2PAddrFile} {
		if err := os.Remove(filepath.Join(n.DataDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	flags := c.DefaultFlags(n)
	if c.opts.Flags != nil {
		flags = c.opts.Flags(c, n)
	}
	n.spec.Path, n.spec.Args = c.opts.Binary, flags
	var cmd []string
	if c.opts.Command != nil {
		cmd = c.opts.Command(n)
	}
	if len(cmd) > 0 {
		n.spec.Path, n.spec.Args = cmd[0], append(slices.Clone(cmd[1:]), flags...)
	}
	return n.Start()
}

// awaitSeed waits for node 0's libp2p address and copies its secret for the joiners.
func (c *Cluster) awaitSeed() error {
	seed := c.Nodes[0]
	if seed.p2pAddr == "" {
		return fmt.Errorf("%w: node 0 has not written %s; it must be started first", ErrNodeStart, P2PAddrFile)
	}
	if c.seedAddr == "" {
		c.seedAddr = seed.p2pAddr
		if c.opts.SeedLatency > 0 {
			addr, err := c.startSeedProxy()
			if err != nil {
				return err
			}
			c.seedAddr = addr
		}
	}
	if _, err := os.Stat(c.SecretPath()); err == nil {
		return nil
	}
	var secret []byte
	err := Poll(c.opts.StartTimeout, 20*time.Millisecond, func() error {
		var err error
		secret, err = os.ReadFile(filepath.Join(seed.DataDir, SecretFile))
		return err
	})
	if err != nil {
		return fmt.Errorf("%w: node 0 wrote no cluster secret: %w", ErrNodeStart, err)
	}
	return os.WriteFile(c.SecretPath(), secret, 0o600)
}

// readAddrs waits for the node's address files, pins its ports for later restarts and,
// in a namespace, sets up the loopback forwarder the test reaches it through.
func (c *Cluster) readAddrs(n *Node) error {
	read := func(name string) (string, error) {
		return ReadAddrFile(n.Proc, filepath.Join(n.DataDir, name), c.opts.StartTimeout)
	}
	httpAddr, err := read(HTTPAddrFile)
	if err != nil {
		return err
	}
	p2pAddr, err := read(P2PAddrFile)
	if err != nil {
		return err
	}
	n.httpAddr, n.p2pAddr = httpAddr, p2pAddr
	n.HTTPListen = httpAddr
	if port := multiaddrTCPPort(p2pAddr); port != "" && strings.HasSuffix(n.P2PListen, "/tcp/0") {
		n.P2PListen = strings.TrimSuffix(n.P2PListen, "/tcp/0") + "/tcp/" + port
	}
	if n.client == "" || c.opts.Network == nil {
		n.client = httpAddr
		if c.opts.Network != nil {
			n.client = c.opts.Network.Forward(c.t, httpAddr)
		}
	}
	return nil
}

// ReadAddrFile waits up to timeout for the file at path (an address a process writes
// once it listens) and returns its trimmed content; it gives up at once if p exits.
func ReadAddrFile(p *Proc, path string, timeout time.Duration) (string, error) {
	done, waitErr := p.Exited()
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if v := strings.TrimSpace(string(b)); err == nil && v != "" {
			return v, nil
		}
		select {
		case <-done:
			return "", fmt.Errorf("%w: %s exited before writing %s: %v", ErrNodeStart, p.Name(), filepath.Base(path), waitErr())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%w: %s wrote no %s within %v: %v", ErrNodeStart, p.Name(), filepath.Base(path), timeout, err)
		}
	}
}

// multiaddrIP4 returns the address after /ip4/ in a multiaddr, "" if none.
func multiaddrIP4(ma string) string {
	parts := strings.Split(ma, "/")
	for i := 0; i+1 < len(parts); i++ {
		if parts[i] == "ip4" {
			return parts[i+1]
		}
	}
	return ""
}

// multiaddrTCPPort returns the port after /tcp/ in a multiaddr, "" if none.
func multiaddrTCPPort(ma string) string {
	parts := strings.Split(ma, "/")
	for i := 0; i+1 < len(parts); i++ {
		if parts[i] == "tcp" {
			return parts[i+1]
		}
	}
	return ""
}

// HTTPAddr returns the host:port at which the test reaches node i's HTTP API.
func (c *Cluster) HTTPAddr(i int) string { return c.Nodes[i].client }

// HTTPAddrs returns the HTTP addresses of all nodes, in order.
func (c *Cluster) HTTPAddrs() []string {
	out := make([]string, len(c.Nodes))
	for i := range c.Nodes {
		out[i] = c.HTTPAddr(i)
	}
	return out
}

// URL returns http://<node i>/path.
func (c *Cluster) URL(i int, path string) string { return "http://" + c.HTTPAddr(i) + path }

// P2PAddr returns node i's libp2p multiaddr as the node wrote it.
func (c *Cluster) P2PAddr(i int) string { return c.Nodes[i].p2pAddr }

// AdminToken returns the admin token node 0 created.
func (c *Cluster) AdminToken() (string, error) {
	b, err := os.ReadFile(filepath.Join(c.Nodes[0].DataDir, AdminTokenFile))
	return strings.TrimSpace(string(b)), err
}

// Status returns node i's view of the cluster (GET /v1/cluster, with the admin token).
func (c *Cluster) Status(ctx context.Context, i int) (wire.ClusterStatus, error) {
	var st wire.ClusterStatus
	tok, err := c.AdminToken()
	if err != nil {
		return st, fmt.Errorf("harness: admin token: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL(i, "/v1/cluster"), nil)
	if err != nil {
		return st, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%w: %s: GET /v1/cluster answered %s", ErrNoLeader, c.Nodes[i].Name, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("%s: /v1/cluster: %w", c.Nodes[i].Name, err)
	}
	return st, nil
}

// ErrNoLeader is returned while the nodes asked do not agree on one live leader.
var ErrNoLeader = errors.New("harness: no agreed leader")

// Leader returns the index of the leader that a majority of the cluster's nodes name,
// asking only running, unpaused nodes other than those in exclude. A node names itself
// in Status.Self, which maps the leader's name to an index.
func (c *Cluster) Leader(ctx context.Context, exclude ...int) (int, error) {
	votes := map[string]int{}
	index := map[string]int{}
	for i, n := range c.Nodes {
		if slices.Contains(exclude, i) || !n.Running() || n.Paused() {
			continue
		}
		st, err := c.Status(ctx, i)
		if err != nil {
			continue
		}
		index[st.Self] = i
		if st.Leader != "" {
			votes[st.Leader]++
		}
	}
	for name, v := range votes {
		i, known := index[name]
		if v > len(c.Nodes)/2 && known && !slices.Contains(exclude, i) {
			return i, nil
		}
	}
	return -1, fmt.Errorf("%w: leaders named %v", ErrNoLeader, votes)
}

// WaitForLeader polls Leader until a majority agrees or ctx ends.
func (c *Cluster) WaitForLeader(ctx context.Context, exclude ...int) (int, error) {
	for {
		i, err := c.Leader(ctx, exclude...)
		if err == nil {
			return i, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("%w (%w)", err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitForNewLeader waits until a majority of the nodes other than old agree on a leader
// that is not old: after old was killed, paused or cut off.
func (c *Cluster) WaitForNewLeader(ctx context.Context, old int) (int, error) {
	return c.WaitForLeader(ctx, old)
}

// WaitForVoters polls until an agreed leader's status names n voters in the Raft
// configuration, or ctx ends: joined nodes become voters at the leader's voter review,
// and a fault injected before that could take the quorum for reasons no scenario is
// about.
func (c *Cluster) WaitForVoters(ctx context.Context, n int) error {
	for {
		err := c.votersAre(ctx, n)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("harness: %w (%w)", err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) votersAre(ctx context.Context, n int) error {
	leader, err := c.Leader(ctx)
	if err != nil {
		return err
	}
	st, err := c.Status(ctx, leader)
	if err != nil {
		return err
	}
	var voters []string
	for _, ns := range st.Nodes {
		if ns.Voter {
			voters = append(voters, ns.Name)
		}
	}
	if len(voters) != n {
		return fmt.Errorf("the leader names %d voters %v, want %d", len(voters), voters, n)
	}
	return nil
}

// Kill sends SIGKILL to node i and waits for it to die.
func (c *Cluster) Kill(i int) error { return c.Nodes[i].Kill() }

// Stop shuts node i down with SIGTERM, killing it after the grace period.
func (c *Cluster) Stop(i int) error { return c.Nodes[i].Stop(c.opts.StopGrace) }

// Pause freezes node i with SIGSTOP.
func (c *Cluster) Pause(i int) error { return c.Nodes[i].Pause() }

// Resume continues node i with SIGCONT.
func (c *Cluster) Resume(i int) error { return c.Nodes[i].Resume() }

// Restart starts node i again on the same data dir, flags and ports, stopping it first
// if it still runs, and waits until it has written its addresses.
func (c *Cluster) Restart(i int) error {
	if err := c.Stop(i); err != nil && !errors.Is(err, ErrExitTimeout) {
		return err
	}
	return c.Start(i)
}

// WaitReady polls node i's GET /v2/health/ready until it answers 200 or ctx ends.
func (c *Cluster) WaitReady(ctx context.Context, i int) error {
	return WaitHTTPReady(ctx, c.HTTPAddr(i), c.Nodes[i].Proc)
}

// WaitHTTPReady polls GET http://addr/v2/health/ready until it answers 200, ctx ends, or
// p (when not nil) exits.
func WaitHTTPReady(ctx context.Context, addr string, p *Proc) error {
	client := &http.Client{Timeout: 2 * time.Second}
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/health/ready", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("ready answered %s", resp.Status)
		}
		last = err
		if p != nil && !p.Running() {
			return fmt.Errorf("%w: %s exited while waiting for ready", ErrNodeStart, p.Name())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s not ready: %w (last: %v)", ErrNodeStart, addr, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
