package mesh

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The data connection: direct TCP + crypto/tls 1.3, certificate signed by the libp2p
// identity key (libp2p's TLS scheme, so the peer id is verified the same way), and no
// multiplexer. Each exchange starts with one kind byte from the client; the server
// answers, and the connection returns to the client's pool.
const (
	kindStage     byte = 'S'
	kindBlob      byte = 'B'
	kindPing      byte = 'P'
	kindBandwidth byte = 'W'

	// dataALPN names the record format (sealed.go): a peer speaking another one fails
	// the TLS handshake instead of every record's authentication.
	dataALPN         = "layermesh-data/2"
	dataBufSize      = 256 << 10
	dataHandshakeTTL = 10 * time.Second
	dataIdleTimeout  = 5 * time.Minute
	maxIdlePerPeer   = 8
	// poolIdleTTL is well under dataIdleTimeout, so a pooled connection is never one
	// the server is closing at the same moment.
	poolIdleTTL = time.Minute
)

// dataConn is one established data connection.
type dataConn struct {
	peer     peer.ID
	raw      net.Conn
	sc       *sealedConn
	lastUsed time.Time // when it last went back to the pool
}

func (d *dataConn) Read(p []byte) (int, error)  { return d.sc.Read(p) }
func (d *dataConn) Write(p []byte) (int, error) { return d.sc.Write(p) }

// flush sends everything written so far.
func (d *dataConn) flush() error { return d.sc.flush() }

func (d *dataConn) SetDeadline(t time.Time) error     { return d.raw.SetDeadline(t) }
func (d *dataConn) SetReadDeadline(t time.Time) error { return d.raw.SetReadDeadline(t) }
func (d *dataConn) Close() error                      { return d.raw.Close() }

func (m *Mesh) tlsConfig(remote peer.ID) (*tls.Config, <-chan crypto.PubKey) {
	cfg, keyCh := m.ident.ConfigForPeer(remote)
	cfg.NextProtos = []string{dataALPN}
	cfg.MinVersion = tls.VersionTLS13
	cfg.SessionTicketsDisabled = true
	// Full-size records from the first byte: the data connection only moves bulk data.
	cfg.DynamicRecordSizingDisabled = true
	return cfg, keyCh
}

func peerFromKeyCh(keyCh <-chan crypto.PubKey) (peer.ID, error) {
	select {
	case k, ok := <-keyCh:
		if !ok || k == nil {
			return "", errors.New("mesh: data conn: no peer key")
		}
		return peer.IDFromPublicKey(k)
	default:
		return "", errors.New("mesh: data conn: peer key not verified")
	}
}

func (m *Mesh) startData() error {
	ln, err := net.Listen("tcp", net.JoinHostPort(m.dataHost(), strconv.Itoa(m.cfg.DataPort)))
	if err != nil {
		return fmt.Errorf("mesh: data listener: %w", err)
	}
	m.dataLn = ln
	m.dataPort = ln.Addr().(*net.TCPAddr).Port
	m.pool = &connPool{m: m, idle: make(map[peer.ID][]*dataConn), live: make(map[*dataConn]bool)}
	m.goRun(m.acceptData)
	return nil
}

func (m *Mesh) acceptData(ctx context.Context) {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := m.dataLn.Accept()
		if err != nil {
			if ctx.Err() == nil {
				m.log.Warn("data listener stopped", "err", err)
			}
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			m.serveData(ctx, c)
		}()
	}
}

// serveData authenticates one inbound data connection, refuses it explicitly if the
// peer is not admitted, and then serves exchanges until the peer hangs up, goes idle,
// or the mesh closes.
//
// Ordering matters at the switch from TLS to the sealed record layer: the client sends
// nothing after its Finished message until it has read our first record (the welcome),
// so TLS can never have read sealed bytes into its own buffer.
func (m *Mesh) serveData(ctx context.Context, c net.Conn) {
	raw := c
	defer raw.Close()
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	defer stop()
	cfg, keyCh := m.tlsConfig("")
	t := tls.Server(raw, cfg)
	_ = raw.SetDeadline(time.Now().Add(dataHandshakeTTL))
	if err := t.HandshakeContext(ctx); err != nil {
		m.log.Debug("data conn handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	p, err := peerFromKeyCh(keyCh)
	if err != nil {
		m.log.Warn("data conn refused", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	sc, err := newSealedConn(raw, t.ConnectionState(), false)
	if err != nil {
		m.log.Warn("data conn key export failed", "err", err)
		return
	}
	d := &dataConn{peer: p, raw: raw, sc: sc}
	log := m.log.With("peer", p.String())
	if !m.isAdmitted(p) {
		log.Warn("data conn refused: peer not admitted")
		_ = writeErrorFrame(d, CodeNotAdmitted, "refused: not a member of this cluster")
		_ = d.flush()
		return
	}
	if _, err := d.Write([]byte{statusOK}); err != nil || d.flush() != nil {
		return
	}
	for {
		_ = raw.SetDeadline(time.Now().Add(dataIdleTimeout))
		var kind [1]byte
		if _, err := io.ReadFull(d, kind[:]); err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				log.Debug("data conn closed", "err", err)
			}
			return
		}
		_ = raw.SetDeadline(time.Time{})
		var err error
		switch kind[0] {
		case kindStage:
			err = m.serveStage(ctx, d, p)
		case kindBlob:
			err = m.serveBlobChunk(ctx, d)
		case kindPing:
			err = servePing(d)
		case kindBandwidth:
			err = serveBandwidth(d)
		default:
			err = fmt.Errorf("%w: unknown exchange kind %d", ErrMalformedFrame, kind[0])
		}
		// Flush even after a failure: the error frame explaining it is in the buffer.
		if err != nil {
			_ = d.SetDeadline(time.Now().Add(time.Second))
		}
		if ferr := d.flush(); err == nil {
			err = ferr
		}
		if err != nil {
			log.Warn("data conn cut off", "err", err)
			return
		}
	}
}

// connPool keeps idle data connections per peer. A connection is taken for one
// exchange and given back only if the exchange completed cleanly.
type connPool struct {
	m      *Mesh
	mu     sync.Mutex
	idle   map[peer.ID][]*dataConn
	live   map[*dataConn]bool
	closed bool
}

// get returns an idle connection to p, or a new one when there is none or fresh is
// set. reused tells the caller the connection has served an exchange before.
func (cp *connPool) get(ctx context.Context, p peer.ID, fresh bool) (d *dataConn, reused bool, err error) {
	cp.mu.Lock()
	if cp.closed {
		cp.mu.Unlock()
		return nil, false, ErrClosed
	}
	for !fresh && len(cp.idle[p]) > 0 {
		list := cp.idle[p]
		d = list[len(list)-1]
		cp.idle[p] = list[:len(list)-1]
		if time.Since(d.lastUsed) < poolIdleTTL {
			cp.mu.Unlock()
			return d, true, nil
		}
		// Idle too long: the server may be about to drop it; never gamble a call on it.
		delete(cp.live, d)
		_ = d.Close()
	}
	cp.mu.Unlock()
	d, err = cp.m.dialData(ctx, p)
	if err != nil {
		return nil, false, err
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.closed {
		_ = d.Close()
		return nil, false, ErrClosed
	}
	cp.live[d] = true
	return d, false, nil
}

func (cp *connPool) put(d *dataConn) {
	d.lastUsed = time.Now()
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.closed || len(cp.idle[d.peer]) >= maxIdlePerPeer {
		delete(cp.live, d)
		_ = d.Close()
		return
	}
	cp.idle[d.peer] = append(cp.idle[d.peer], d)
}

func (cp *connPool) discard(d *dataConn) {
	cp.mu.Lock()
	delete(cp.live, d)
	cp.mu.Unlock()
	_ = d.Close()
}

func (cp *connPool) closeAll() {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.closed = true
	for d := range cp.live {
		_ = d.Close()
	}
	cp.live = nil
	cp.idle = nil
}

// dataAddr finds where p's data listener is: from its memberlist metadata at the
// address gossip reaches it on, else from the join handshake. Metadata comes first: it
// is renewed whenever p restarts, while a handshake record stays as it was at the last
// handshake, so a peer that came back on a new data port would be dialled at its old
// one (connection refused) until the next handshake.
func (m *Mesh) dataAddr(p peer.ID) (string, error) {
	if mem, ok := m.Member(p); ok && mem.Meta.DataPort != 0 {
		host, _, err := net.SplitHostPort(mem.GossipAddr)
		if err == nil {
			return net.JoinHostPort(host, strconv.Itoa(mem.Meta.DataPort)), nil
		}
	}
	if r, ok := m.peerRecord(p); ok && r.dataPort != 0 && r.ip != "" {
		return net.JoinHostPort(r.ip, strconv.Itoa(r.dataPort)), nil
	}
	return "", fmt.Errorf("%w: %s", ErrNoDataAddr, p)
}

func (m *Mesh) dialData(ctx context.Context, p peer.ID) (*dataConn, error) {
	addr, err := m.dataAddr(p)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, dataHandshakeTTL)
	defer cancel()
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: data conn to %s at %s: %w", ErrUnreachable, p, addr, err)
	}
	raw := c
	cfg, _ := m.tlsConfig(p)
	t := tls.Client(raw, cfg)
	if d, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(d)
	}
	if err := t.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("mesh: data conn to %s: tls: %w", p, err)
	}
	sc, err := newSealedConn(raw, t.ConnectionState(), true)
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("mesh: data conn to %s: %w", p, err)
	}
	d := &dataConn{peer: p, raw: raw, sc: sc}
	if err := readResponseStatus(d, p); err != nil {
		_ = c.Close()
		return nil, err
	}
	_ = raw.SetDeadline(time.Time{})
	return d, nil
}

// exchange runs fn on a pooled data connection to p. The connection is closed when ctx
// ends first (that is how a caller's giving up reaches the server) and returns to the
// pool only after a clean exchange. If a reused connection fails, the exchange is tried
// once more on a new one: the peer may have dropped an idle connection or restarted,
// and every exchange (a stage run, a chunk read, a probe) is safe to repeat.
func (m *Mesh) exchange(ctx context.Context, p peer.ID, fn func(d *dataConn) error) error {
	for attempt := 0; ; attempt++ {
		d, reused, err := m.pool.get(ctx, p, attempt > 0)
		if err != nil {
			return err
		}
		err = m.exchangeOnce(ctx, d, fn)
		var remote *RemoteError
		if err != nil && reused && attempt == 0 && ctx.Err() == nil && !errors.As(err, &remote) {
			m.log.Debug("pooled data conn failed; retrying on a new one", "peer", shortID(p), "err", err)
			continue
		}
		return err
	}
}

func (m *Mesh) exchangeOnce(ctx context.Context, d *dataConn, fn func(d *dataConn) error) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = d.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = d.Close() })
	err := deadlineError(ctx, fn(d))
	if !stop() {
		m.pool.discard(d)
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return err
	}
	var remote *RemoteError
	// A malformed-frame answer means the server is closing the connection.
	if err != nil && (!errors.As(err, &remote) || remote.Code == CodeMalformed) {
		m.pool.discard(d)
		return err
	}
	_ = d.SetDeadline(time.Time{})
	m.pool.put(d)
	return err
}

// deadlineError reports a socket timeout as the context's deadline: the socket deadline
// is the context's, and its timer may fire a moment before the context's own.
func deadlineError(ctx context.Context, err error) error {
	if err == nil || !isTimeout(err) {
		return err
	}
	if _, ok := ctx.Deadline(); ok {
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	}
	return err
}
