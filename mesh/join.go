package mesh

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/sec"
	"github.com/libp2p/go-libp2p/p2p/net/pnet"
	manet "github.com/multiformats/go-multiaddr/net"
	mss "github.com/multiformats/go-multistream"
)

// Protocol ids.
const (
	ProtocolJoin  protocol.ID = "/layermesh/join/1"
	ProtocolStage protocol.ID = "/layermesh/stage/1"
)

// Join handshake (all integers big-endian, one stream, 10 s deadline):
//
//	client: "LMJ1" u8 len, cluster id, nonce_c [32]
//	server: status 0, nonce_s [32], proof_s [32]        or a refusal
//	client: proof_c [32], u16 gossip port, u16 data port
//	server: status 0, u16 gossip port, u16 data port    or a refusal
//
// refusal: status 1, u16 len, reason (at most 256 bytes, always "refused: ...").
// proof_x = HMAC-SHA256(joinKey, "layermesh join" | role | cluster | server id |
// client id | nonce_c | nonce_s): bound to both authenticated peer ids, so it cannot be
// replayed on another connection. The secret itself never travels.
const (
	joinMagic     = "LMJ1"
	nonceLen      = 32
	proofLen      = sha256.Size
	maxReasonLen  = 256
	joinTimeout   = 10 * time.Second
	statusOK      = 0
	statusRefused = 1

	reasonSecret      = "refused: secret mismatch"
	reasonCluster     = "refused: different cluster id"
	reasonRateLimited = "refused: rate limited"
	reasonMalformed   = "refused: malformed handshake"
)

type joinHello struct {
	cluster string
	nonce   [nonceLen]byte
}

func writeHello(w io.Writer, h joinHello) error {
	if len(h.cluster) > 255 {
		return fmt.Errorf("%w: cluster id of %d bytes", ErrConfig, len(h.cluster))
	}
	buf := append([]byte(joinMagic), byte(len(h.cluster)))
	buf = append(buf, h.cluster...)
	buf = append(buf, h.nonce[:]...)
	_, err := w.Write(buf)
	return err
}

func readHello(r io.Reader) (joinHello, error) {
	var h joinHello
	var head [5]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return h, fmt.Errorf("%w: join hello: %w", ErrMalformedFrame, err)
	}
	if string(head[:4]) != joinMagic {
		return h, fmt.Errorf("%w: join hello magic %q", ErrMalformedFrame, head[:4])
	}
	cluster := make([]byte, head[4])
	if _, err := io.ReadFull(r, cluster); err != nil {
		return h, fmt.Errorf("%w: join hello: %w", ErrMalformedFrame, err)
	}
	if _, err := io.ReadFull(r, h.nonce[:]); err != nil {
		return h, fmt.Errorf("%w: join hello: %w", ErrMalformedFrame, err)
	}
	h.cluster = string(cluster)
	return h, nil
}

func writeRefusal(w io.Writer, reason string) error {
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	buf := []byte{statusRefused, 0, 0}
	binary.BigEndian.PutUint16(buf[1:], uint16(len(reason)))
	_, err := w.Write(append(buf, reason...))
	return err
}

// readStatus reads a status byte; on a refusal it returns the reason as an error that
// wraps ErrRefused and, where the reason names one, the specific sentinel.
func readStatus(r io.Reader) error {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("%w: status: %w", ErrMalformedFrame, err)
	}
	switch b[0] {
	case statusOK:
		return nil
	case statusRefused:
	default:
		return fmt.Errorf("%w: status byte %d", ErrMalformedFrame, b[0])
	}
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return fmt.Errorf("%w: refusal: %w", ErrMalformedFrame, err)
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n > maxReasonLen {
		return fmt.Errorf("%w: refusal reason of %d bytes", ErrMalformedFrame, n)
	}
	reason := make([]byte, n)
	if _, err := io.ReadFull(r, reason); err != nil {
		return fmt.Errorf("%w: refusal: %w", ErrMalformedFrame, err)
	}
	return refusalError(string(reason))
}

func refusalError(reason string) error {
	switch reason {
	case reasonSecret:
		return fmt.Errorf("%w: %w: %s", ErrRefused, ErrSecretMismatch, reason)
	case reasonCluster:
		return fmt.Errorf("%w: %w: %s", ErrRefused, ErrClusterMismatch, reason)
	case reasonRateLimited:
		return fmt.Errorf("%w: %w: %s", ErrRefused, ErrRateLimited, reason)
	}
	return fmt.Errorf("%w: %s", ErrRefused, reason)
}

func readPorts(r io.Reader) (gossip, data int, err error) {
	var b [4]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, 0, fmt.Errorf("%w: ports: %w", ErrMalformedFrame, err)
	}
	return int(binary.BigEndian.Uint16(b[:2])), int(binary.BigEndian.Uint16(b[2:])), nil
}

func appendPorts(buf []byte, gossip, data int) []byte {
	buf = binary.BigEndian.AppendUint16(buf, uint16(gossip))
	return binary.BigEndian.AppendUint16(buf, uint16(data))
}

func (m *Mesh) proof(role string, server, client peer.ID, nc, ns [nonceLen]byte) []byte {
	mac := hmac.New(sha256.New, m.joinKey)
	for _, part := range []string{"layermesh join", role, m.cfg.ClusterID, string(server), string(client)} {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(part)))
		mac.Write(l[:])
		mac.Write([]byte(part))
	}
	mac.Write(nc[:])
	mac.Write(ns[:])
	return mac.Sum(nil)
}

func (m *Mesh) gossipPort() int {
	_, port, err := net.SplitHostPort(m.GossipAddr())
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(port)
	return n
}

// handleJoin is the server side of the handshake: the one protocol open to anyone.
func (m *Mesh) handleJoin(s network.Stream) {
	defer s.Close()
	p := s.Conn().RemotePeer()
	ip := remoteIP(s.Conn())
	log := m.log.With("peer", p.String(), "remote_ip", ip)
	_ = s.SetDeadline(time.Now().Add(joinTimeout))
	refuse := func(reason string, err error) {
		log.Warn("join refused", "reason", reason, "err", err)
		_ = writeRefusal(s, reason)
	}
	if !m.allowJoin(ip) {
		refuse(reasonRateLimited, nil)
		return
	}
	hello, err := readHello(s)
	if err != nil {
		refuse(reasonMalformed, err)
		m.recordFailure(p)
		return
	}
	if hello.cluster != m.cfg.ClusterID {
		refuse(reasonCluster, fmt.Errorf("peer cluster %q", hello.cluster))
		m.recordFailure(p)
		return
	}
	var ns [nonceLen]byte
	if _, err := rand.Read(ns[:]); err != nil {
		refuse("refused: internal error", err)
		return
	}
	out := append([]byte{statusOK}, ns[:]...)
	out = append(out, m.proof("server", m.id, p, hello.nonce, ns)...)
	if _, err := s.Write(out); err != nil {
		log.Debug("join: write challenge", "err", err)
		return
	}
	var answer [proofLen]byte
	if _, err := io.ReadFull(s, answer[:]); err != nil {
		refuse(reasonMalformed, err)
		m.recordFailure(p)
		return
	}
	gossip, data, err := readPorts(s)
	if err != nil {
		refuse(reasonMalformed, err)
		m.recordFailure(p)
		return
	}
	if !hmac.Equal(answer[:], m.proof("client", m.id, p, hello.nonce, ns)) {
		refuse(reasonSecret, nil)
		m.recordFailure(p)
		return
	}
	m.admit(p)
	m.notePeer(p, ip, gossip, data, "inbound join")
	if _, err := s.Write(appendPorts([]byte{statusOK}, m.gossipPort(), m.dataPort)); err != nil {
		log.Debug("join: write result", "err", err)
		return
	}
	log.Info("peer admitted", "gossip_port", gossip, "data_port", data)
}

// joinResult is what the server told us after a successful handshake.
type joinResult struct {
	ip         string
	gossipPort int
	dataPort   int
}

// joinPeer runs the client side of the handshake over an existing libp2p connection.
func (m *Mesh) joinPeer(ctx context.Context, p peer.ID) (joinResult, error) {
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	s, err := m.host.NewStream(ctx, p, ProtocolJoin)
	if err != nil {
		return joinResult{}, fmt.Errorf("%w: join stream to %s: %w", ErrUnreachable, p, err)
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	if d, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(d)
	}
	hello := joinHello{cluster: m.cfg.ClusterID}
	if _, err := rand.Read(hello.nonce[:]); err != nil {
		return joinResult{}, err
	}
	if err := writeHello(s, hello); err != nil {
		return joinResult{}, fmt.Errorf("mesh: join %s: %w", p, err)
	}
	if err := readStatus(s); err != nil {
		return joinResult{}, fmt.Errorf("mesh: join %s: %w", p, err)
	}
	var ns [nonceLen]byte
	var serverProof [proofLen]byte
	if _, err := io.ReadFull(s, ns[:]); err != nil {
		return joinResult{}, fmt.Errorf("%w: join challenge: %w", ErrMalformedFrame, err)
	}
	if _, err := io.ReadFull(s, serverProof[:]); err != nil {
		return joinResult{}, fmt.Errorf("%w: join challenge: %w", ErrMalformedFrame, err)
	}
	// Answer even when the server's proof is wrong, so the server states its refusal
	// explicitly and both sides log the same cause.
	answer := appendPorts(m.proof("client", p, m.id, hello.nonce, ns), m.gossipPort(), m.dataPort)
	if _, err := s.Write(answer); err != nil {
		return joinResult{}, fmt.Errorf("mesh: join %s: %w", p, err)
	}
	if err := readStatus(s); err != nil {
		return joinResult{}, fmt.Errorf("mesh: join %s: %w", p, err)
	}
	if !hmac.Equal(serverProof[:], m.proof("server", p, m.id, hello.nonce, ns)) {
		return joinResult{}, fmt.Errorf("%w: peer %s accepted us without proving the secret", ErrSecretMismatch, p)
	}
	gossip, data, err := readPorts(s)
	if err != nil {
		return joinResult{}, err
	}
	res := joinResult{ip: remoteIP(s.Conn()), gossipPort: gossip, dataPort: data}
	m.admit(p)
	return res, nil
}

// connectAndJoin makes p a full peer: libp2p connection, handshake, memberlist join.
func (m *Mesh) connectAndJoin(ctx context.Context, ai peer.AddrInfo, source string) error {
	if ai.ID == m.id {
		return nil
	}
	m.noteSource(ai.ID, source)
	err := m.connectAndJoinOnce(ctx, ai)
	m.noteErr(ai.ID, err)
	if err != nil {
		m.log.Debug("join failed", "peer", ai.ID.String(), "source", source, "err", err)
	}
	return err
}

func (m *Mesh) connectAndJoinOnce(ctx context.Context, ai peer.AddrInfo) error {
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	if err := m.host.Connect(ctx, ai); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, ai.ID, err)
	}
	res, err := m.joinPeer(ctx, ai.ID)
	if err != nil {
		return err
	}
	m.notePeer(ai.ID, res.ip, res.gossipPort, res.dataPort, "")
	if m.memberAlive(ai.ID) {
		return nil
	}
	addr := net.JoinHostPort(res.ip, fmt.Sprint(res.gossipPort))
	if _, err := m.list.Join([]string{addr}); err != nil {
		return fmt.Errorf("mesh: memberlist join %s at %s: %w", ai.ID, addr, err)
	}
	return nil
}

// learnPeerID opens a bare TCP connection to a libp2p listener and runs only the
// security handshake, to learn the peer id behind a host:port seed.
func (m *Mesh) learnPeerID(ctx context.Context, hostport string) (peer.ID, error) {
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrUnreachable, hostport, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	if m.psk != nil {
		if conn, err = pnet.NewProtectedConn(m.psk, conn); err != nil {
			return "", err
		}
	}
	if err := mss.SelectProtoOrFail(m.sec.ID(), conn); err != nil {
		return "", fmt.Errorf("mesh: %s: security negotiation: %w", hostport, err)
	}
	sc, err := m.sec.SecureOutbound(ctx, conn, "")
	var mismatch sec.ErrPeerIDMismatch
	if errors.As(err, &mismatch) && mismatch.Expected == "" && mismatch.Actual != "" {
		// Noise insists on an expected id but names the one the remote key proved.
		return mismatch.Actual, nil
	}
	if err != nil {
		return "", fmt.Errorf("mesh: %s: security handshake: %w", hostport, err)
	}
	defer sc.Close()
	return sc.RemotePeer(), nil
}

func remoteIP(c network.Conn) string {
	a, err := manet.ToNetAddr(c.RemoteMultiaddr())
	if err != nil {
		return ""
	}
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	host, _, _ := strings.Cut(a.String(), ":")
	return host
}

func (m *Mesh) notePeer(p peer.ID, ip string, gossip, data int, source string) {
	m.peersMu.Lock()
	defer m.peersMu.Unlock()
	r := m.peerRecordLocked(p)
	r.ip, r.gossipPort, r.dataPort, r.joined = ip, gossip, data, time.Now()
	if source != "" {
		r.sources[source] = true
	}
}

func (m *Mesh) noteSource(p peer.ID, source string) {
	m.peersMu.Lock()
	defer m.peersMu.Unlock()
	m.peerRecordLocked(p).sources[source] = true
}

func (m *Mesh) noteErr(p peer.ID, err error) {
	m.peersMu.Lock()
	defer m.peersMu.Unlock()
	m.peerRecordLocked(p).lastErr = err
}

func (m *Mesh) peerRecordLocked(p peer.ID) *peerRecord {
	r, ok := m.peers[p]
	if !ok {
		r = &peerRecord{sources: make(map[string]bool)}
		m.peers[p] = r
	}
	return r
}

func (m *Mesh) peerRecord(p peer.ID) (peerRecord, bool) {
	m.peersMu.Lock()
	defer m.peersMu.Unlock()
	r, ok := m.peers[p]
	if !ok {
		return peerRecord{}, false
	}
	cp := *r
	cp.sources = make(map[string]bool, len(r.sources))
	for k, v := range r.sources {
		cp.sources[k] = v
	}
	return cp, true
}
