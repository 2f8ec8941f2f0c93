package faults

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/test/harness"
	"google.golang.org/protobuf/proto"
)

// TestFaultHostilePeers is scenario 7's cluster part, under a stream of inferences
// through every node: a fourth node started with the wrong cluster secret must be
// refused (never a member, never ready) while the cluster goes on undisturbed; a peer
// sending junk frames to every node's libp2p port and memberlist port (TCP) must be
// cut off; and every bad request of the API catalogue sent to a cluster node must get
// its own refusal. No inference may fail and every node must stay up.
func TestFaultHostilePeers(t *testing.T) {
	requireFaults(t)
	const nodes = 3
	// Budgets of 4 MiB hold the test GPT and the add models many times over, and
	// make a 6 x 256 GPT (about 20 MB) a deploy no set of nodes can hold.
	const budget = 4 << 20
	c := startFaultCluster(t, nodes, nil, "--mem-budget", strconv.Itoa(budget))
	result := harness.Result{Scenario: "hostile-peers", Trial: 1, Started: time.Now()}
	deployAddEverywhere(t, c, nodes)

	lctx, stop := context.WithCancel(context.Background())
	waitLoad := runLoad(lctx, c.load(c.HTTPAddrs(), 2, time.Hour, 20*time.Second))
	checkWrongSecretRefused(t, c, nodes, &result)
	sendJunkToPeerPorts(t, c, nodes, &result)
	sendBadRequestCatalogue(t, c, budget, &result)
	time.Sleep(2 * time.Second)
	stop()
	st, err := waitLoad()
	if err != nil {
		t.Fatal(err)
	}
	countFailures(t, &result, st, "inference during the abuse")
	if st.Failures > 0 {
		t.Errorf("%d inferences failed during the abuse: %v", st.Failures, st.ByCode)
	}
	for i := range nodes {
		if !c.Node(i).Running() {
			t.Errorf("node %d exited", i)
		}
	}
	if err := c.waitAlive(nodes, 20*time.Second); err != nil {
		t.Errorf("membership disturbed: %v", err)
	}
	for i := range nodes {
		if l := c.Node(i).LogTail(1 << 22); strings.Contains(l, "panic") {
			t.Errorf("node %d log shows a panic", i)
		}
	}
	result.Finished = time.Now()
	result.Passed = !t.Failed()
	harness.RecordResult(t, result)
}

// deployAddEverywhere deploys the add model as "add", so that the single-node
// bad-request rows apply here too, and waits until every node answers it ready.
func deployAddEverywhere(t *testing.T, c *faultCluster, nodes int) {
	raw := addModel(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.client(0).UploadModel(ctx, "add", bytes.NewReader(raw), int64(len(raw)), client.UploadOptions{Stages: 1, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 60*time.Second, 200*time.Millisecond, func() error {
		for i := range nodes {
			ready, err := c.client(i).ModelReady(context.Background(), "add", "")
			if err != nil || !ready.Ready {
				return fmt.Errorf("add not ready via node %d: %v %v", i, ready, err)
			}
		}
		return nil
	})
}

// checkWrongSecretRefused starts a node with the wrong cluster secret, flags
// otherwise like the others': it must never be ready nor a member, and its log must
// say why it was refused.
func checkWrongSecretRefused(t *testing.T, c *faultCluster, nodes int, result *harness.Result) {
	wrongSecret := filepath.Join(t.TempDir(), "wrong.secret")
	if err := os.WriteFile(wrongSecret, []byte(strings.Repeat("f00d", 16)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.flagHook = wrongSecretFlags(nodes, wrongSecret)
	bad, err := c.Add()
	if err != nil {
		t.Logf("wrong-secret node did not start: %v", err)
	}
	time.Sleep(10 * time.Second)
	impostor := c.Node(bad)
	var impostorReady bool
	if err == nil && impostor.Running() {
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		impostorReady = c.WaitReady(rctx, bad) == nil
		rcancel()
	}
	if impostorReady {
		result.Violations++
		t.Error("a node with the wrong secret became ready")
	}
	members, err := c.client(0).Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if m.Name == impostor.Name {
			result.Violations++
			t.Errorf("the node with the wrong secret is listed as a member: %+v", m)
		}
	}
	// The cluster id is derived from the secret, so a wrong secret is refused as a
	// different cluster (or in the proof of the secret): either must be in its log.
	log := strings.ToLower(impostor.LogTail(1 << 16))
	refusedClearly := strings.Contains(log, "refused") && (strings.Contains(log, "secret") || strings.Contains(log, "different cluster id"))
	result.Notef("wrong-secret node: running=%v ready=%v, its log says why it was refused: %v", impostor.Running(), impostorReady, refusedClearly)
	if !refusedClearly {
		t.Errorf("the wrong-secret node's log does not say why it was refused; it ends with:\n%s", impostor.LogTail(2000))
	}
	if impostor.Running() {
		_ = c.Kill(bad)
	}
}

// sendJunkToPeerPorts sends junk to every node's libp2p and memberlist ports: each
// connection must be closed on it.
func sendJunkToPeerPorts(t *testing.T, c *faultCluster, nodes int, result *harness.Result) {
	for i := range nodes {
		p2p := c.P2PAddr(i)
		host, port := multiaddrHostPort(p2p)
		for j, addr := range []string{net.JoinHostPort(host, port), net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Node(i).GossipPort))} {
			for seed := uint64(1); seed <= 3; seed++ {
				result.Requests++
				verdict, _, err := harness.GarbageTCP(context.Background(), nil, addr, 4096*int(seed), seed+uint64(10*j), 15*time.Second)
				if err != nil {
					t.Errorf("junk to node %d at %s: %v", i, addr, err)
					continue
				}
				if verdict != harness.GarbageClosed {
					result.Violations++
					t.Errorf("junk to node %d at %s: %v", i, addr, verdict)
				}
			}
		}
	}
}

// sendBadRequestCatalogue sends every bad request of the API catalogue to a cluster
// node; each must get its own refusal. One token is made first, so that a second one
// under its name is a conflict.
func sendBadRequestCatalogue(t *testing.T, c *faultCluster, budget int64, result *harness.Result) {
	target := &singleNode{addr: c.HTTPAddr(1), token: c.token}
	hc := &http.Client{Timeout: 30 * time.Second}
	if err := createToken(hc, target, takenTokenName); err != nil {
		t.Fatal(err)
	}
	for _, r := range clusterBadRequests(t, 3*budget) {
		result.Requests++
		if err := target.send(context.Background(), hc, r); err != nil {
			result.Violations++
			t.Errorf("cluster node, %s: %v", r.name, err)
		}
	}
}

// takenTokenName names the token TestFaultHostilePeers creates before asking for it again.
const takenTokenName = "taken-token"

// createToken makes an infer token under name through n's API.
func createToken(hc *http.Client, n *singleNode, name string) error {
	req, err := http.NewRequest(http.MethodPost, "http://"+n.addr+"/v1/tokens", strings.NewReader(`{"scope":"infer","name":"`+name+`"}`))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+n.token)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("creating token %s: %s", name, resp.Status)
	}
	return nil
}

// wrongSecretFlags gives every node added after the first n the wrong secret file.
func wrongSecretFlags(n int, path string) func(*harness.Node, []string) []string {
	return func(node *harness.Node, flags []string) []string {
		if node.Index < n {
			return flags
		}
		for i := range flags {
			if flags[i] == "--cluster-secret-file" && i+1 < len(flags) {
				flags[i+1] = path
			}
		}
		return flags
	}
}

// multiaddrHostPort returns the ip4 and tcp port of an /ip4/A/tcp/P/... multiaddr.
func multiaddrHostPort(ma string) (string, string) {
	var host, port string
	parts := strings.Split(ma, "/")
	for i := 0; i+1 < len(parts); i++ {
		switch parts[i] {
		case "ip4":
			host = parts[i+1]
		case "tcp":
			port = parts[i+1]
		}
	}
	return host, port
}

// clusterBadRequests is the single-node catalogue of bad requests, with the rows that
// mean something else on a cluster replaced (a drain is a cluster call, so the node
// answers a drain of an unknown node with node_not_found), and the cluster calls' own
// refusals: tokens and a deploy beyond the cluster's capacity (capacity
// bytes in all).
func clusterBadRequests(t *testing.T, capacity int64) []badRequest {
	huge, err := modelgen.GPT(modelgen.GPTConfig{Layers: 6, Dim: 256, Heads: 4, Vocab: 1024, Context: 64, Seed: 9, Name: "huge"})
	if err != nil {
		t.Fatal(err)
	}
	hugeRaw, err := proto.Marshal(huge)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(hugeRaw)) <= capacity {
		t.Fatalf("the model meant not to fit is %d bytes, the cluster holds %d", len(hugeRaw), capacity)
	}
	var out []badRequest
	for _, r := range badRequests(t) {
		if r.code == api.CodeContextExceeded {
			// Its model, gen, is served only by the single node; a cluster refuses a
			// prompt over the context the same way (test/gen, api tests).
			continue
		}
		if r.code == api.CodeNotClusterMode {
			r = badRequest{name: "drain of an unknown node", method: "POST", path: "/v1/nodes/no-such-node/drain", admin: true,
				status: http.StatusNotFound, code: api.CodeNodeNotFound}
		}
		out = append(out, r)
	}
	return append(out,
		badRequest{name: "revoke of an unknown token", method: "DELETE", path: "/v1/tokens/no-such-token", admin: true,
			status: http.StatusNotFound, code: api.CodeTokenNotFound},
		badRequest{name: "a token under a name taken", method: "POST", path: "/v1/tokens", admin: true,
			body: []byte(`{"scope":"infer","name":"` + takenTokenName + `"}`), status: http.StatusConflict, code: api.CodeConflict},
		badRequest{name: "deploy beyond every budget", method: "PUT", path: "/v1/models/huge", admin: true,
			body: hugeRaw, status: http.StatusInsufficientStorage, code: api.CodeInsufficientCapacity},
		badRequest{name: "token of an unknown scope", method: "POST", path: "/v1/tokens", admin: true,
			body: []byte(`{"scope":"root"}`), status: http.StatusBadRequest, code: api.CodeBadRequest},
	)
}
