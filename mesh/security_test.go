package mesh

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

func addrInfo(t testing.TB, m *Mesh) peer.AddrInfo {
	t.Helper()
	a, err := ma.NewMultiaddr(m.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	ai, err := peer.AddrInfoFromP2pAddr(a)
	if err != nil {
		t.Fatal(err)
	}
	return *ai
}

const testProtocol = "/layermesh/test-gated/1"

func TestWrongSecretIsRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	good := startMesh(t, testConfig(t, t.TempDir()))
	good.HandleStage(func(ctx context.Context, req *StageRequest) ([]tensor.Tensor, error) {
		t.Errorf("stage handler ran for a request from a refused peer")
		return nil, nil
	})
	// A protocol registered by another package through Host() is gated too.
	good.Host().SetStreamHandler(testProtocol, func(s network.Stream) {
		t.Errorf("gated handler ran for a refused peer")
		_ = s.Close()
	})

	bad := testConfig(t, t.TempDir())
	bad.Secret = []byte("not-the-cluster-secret-at-all!!!")
	intruder := startMesh(t, bad)

	// 1. The join handshake answers with an explicit refusal.
	err := intruder.Connect(ctx, addrInfo(t, good))
	if !errors.Is(err, ErrRefused) || !errors.Is(err, ErrSecretMismatch) {
		t.Fatalf("join with wrong secret: got %v, want a refusal for secret mismatch", err)
	}
	if good.isAdmitted(intruder.ID()) {
		t.Fatalf("intruder admitted")
	}

	// 2. Memberlist: joining the good node's gossip port directly fails, since the
	// gossip key derives from the secret.
	if _, err := intruder.list.Join([]string{good.GossipAddr()}); err == nil {
		t.Fatalf("memberlist join with the wrong key succeeded")
	}
	if aliveSet(good)[intruder.ID()] || len(aliveSet(intruder)) != 1 {
		t.Fatalf("intruder got into memberlist")
	}

	// 3. Stage RPC over a libp2p stream: refused explicitly, handler never runs.
	req := &StageRequest{RequestID: "r1", Model: "m", Version: "1", Stage: 0, Tensors: []tensor.Tensor{tensor.FromFloat32("x", []int64{1}, []float32{1})}}
	_, err = intruder.callStageStream(ctx, good.ID(), req)
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != CodeNotAdmitted || !errors.Is(err, ErrNotAdmitted) {
		t.Fatalf("stage stream from intruder: got %v, want RemoteError CodeNotAdmitted", err)
	}

	// 4. The data connection: refused right after TLS, with the same code.
	intruder.notePeer(good.ID(), "127.0.0.1", 0, good.dataPort, "test")
	_, err = intruder.callStageData(ctx, good.ID(), req)
	if !errors.As(err, &re) || re.Code != CodeNotAdmitted {
		t.Fatalf("data conn from intruder: got %v, want RemoteError CodeNotAdmitted", err)
	}
	if err := intruder.FetchBlob(ctx, strings.Repeat("ab", 32), 10, []peer.ID{good.ID()}, intruder.Blobs()); !errors.Is(err, ErrNotAdmitted) {
		t.Fatalf("blob fetch from intruder: got %v, want ErrNotAdmitted", err)
	}

	// 5. A protocol registered through Host(): the stream is reset, not served.
	s, err := intruder.host.NewStream(ctx, good.ID(), testProtocol)
	if err == nil {
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		var b [1]byte
		_, err = s.Read(b[:])
	}
	if err == nil || (!errors.Is(err, network.ErrReset) && !isStreamReset(err)) {
		t.Fatalf("gated protocol from intruder: got %v, want a stream reset", err)
	}

	// Once the cluster state lists the intruder as a member (Raft would, after an
	// operator added it), it is admitted without the handshake.
	good.SetIsMember(func(p peer.ID) bool { return p == intruder.ID() })
	if !good.isAdmitted(intruder.ID()) {
		t.Fatalf("member listed by the cluster state not admitted")
	}
	good.SetIsMember(nil)

	// A node with the right secret but another cluster id is refused for that reason.
	other := testConfig(t, t.TempDir())
	other.ClusterID = "another-cluster"
	stranger := startMesh(t, other)
	if err := stranger.Connect(ctx, addrInfo(t, good)); !errors.Is(err, ErrClusterMismatch) {
		t.Fatalf("join from another cluster: got %v, want ErrClusterMismatch", err)
	}

	// And the right secret is admitted both ways.
	friend := startMesh(t, testConfig(t, t.TempDir()))
	if err := friend.Connect(ctx, addrInfo(t, good)); err != nil {
		t.Fatalf("join with the right secret: %v", err)
	}
	if !good.isAdmitted(friend.ID()) || !friend.isAdmitted(good.ID()) {
		t.Fatalf("handshake did not admit both sides")
	}
}

func isStreamReset(err error) bool {
	return strings.Contains(err.Error(), "reset")
}

func TestJoinRateLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := testConfig(t, t.TempDir())
	cfg.JoinRate = 2
	server := startMesh(t, cfg)
	client := startMesh(t, testConfig(t, t.TempDir()))
	if err := client.host.Connect(ctx, addrInfo(t, server)); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := client.joinPeer(ctx, server.ID()); err != nil {
			t.Fatalf("handshake %d within the rate: %v", i, err)
		}
	}
	_, err := client.joinPeer(ctx, server.ID())
	if !errors.Is(err, ErrRateLimited) || !errors.Is(err, ErrRefused) {
		t.Fatalf("handshake over the rate: got %v, want a rate-limit refusal", err)
	}
}
