package mesh

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/layermesh/layermesh/internal/testports"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestDiagnose(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := pair(t)

	wrong := testConfig(t, t.TempDir())
	wrong.Secret = []byte("a-different-secret-for-this-one!")
	wrongSecret := startMesh(t, wrong)
	other := testConfig(t, t.TempDir())
	other.ClusterID = "cluster-two"
	otherCluster := startMesh(t, other)

	// A port nothing listens on: reserved below the ephemeral range, so that no
	// listener elsewhere on the machine takes it meanwhile.
	closed := net.JoinHostPort("127.0.0.1", strconv.Itoa(testports.Loopback(t, false)))

	_, pub, _ := crypto.GenerateEd25519Key(nil)
	unknown, _ := peer.IDFromPublicKey(pub)

	targets := []string{b.ID().String(), wrongSecret.Addrs()[0], otherCluster.Addrs()[0], closed, unknown.String()}
	got := a.Diagnose(ctx, targets)
	if len(got) != len(targets) {
		t.Fatalf("%d diagnoses for %d targets", len(got), len(targets))
	}
	for _, d := range got {
		t.Logf("%s: discovered=%v reachable=%v admitted=%v rtt=%v bw=%.0fMB/s cause=%q detail=%q",
			d.Target, d.Discovered, d.Reachable, d.Admitted, d.RTT, d.Bandwidth/1e6, d.Cause, d.Detail)
	}
	if d := got[0]; !d.Discovered || !d.Reachable || !d.Admitted || d.RTT <= 0 || d.Bandwidth <= 0 || d.Cause != "" {
		t.Errorf("healthy peer: %+v", d)
	}
	if d := got[1]; !d.Reachable || d.Admitted || d.Cause != CauseSecretMismatch {
		t.Errorf("wrong secret: %+v", d)
	}
	if d := got[2]; !d.Reachable || d.Admitted || d.Cause != CauseClusterMismatch {
		t.Errorf("other cluster: %+v", d)
	}
	if d := got[3]; d.Reachable || d.Cause != CausePortClosed {
		t.Errorf("closed port: %+v", d)
	}
	if d := got[4]; d.Discovered || d.Cause != CauseNotDiscovered {
		t.Errorf("unknown peer: %+v", d)
	}

	// With no targets, every known peer is diagnosed.
	all := a.Diagnose(ctx, nil)
	found := false
	for _, d := range all {
		if d.PeerID == b.ID() && d.Admitted {
			found = true
		}
	}
	if !found {
		t.Errorf("Diagnose(nil) did not cover the known peer: %+v", all)
	}
}
