package harness

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// DialFunc opens a connection, as net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// ProxyConfig configures a TCP proxy between a listener and one target.
type ProxyConfig struct {
	// Target is the host:port every accepted connection is forwarded to.
	Target string
	// Delay is added to each direction separately (one-way delay), so a request and its
	// answer see 2*Delay more round-trip time. It delays bytes, not connections: data
	// keeps flowing at full rate behind the delay, as on a long link.
	Delay time.Duration
	// BytesPerSec caps each direction of each connection; 0 means no cap.
	BytesPerSec int64
	// Listener accepts the proxied connections; nil means a new one on 127.0.0.1:0.
	Listener net.Listener
	// Dial reaches the target; nil means a plain net.Dialer.
	Dial DialFunc
}

// Proxy is a user-space TCP proxy that adds one-way delay and an optional bandwidth cap.
// This kernel has no netem, so latency between nodes is inserted by pointing a node's
// seed or peer address at a Proxy instead of at the peer.
type Proxy struct {
	target string
	ln     net.Listener
	dial   DialFunc

	mu     sync.Mutex
	delay  time.Duration
	rate   int64
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// chunkSize is how much one read moves through the delay line; queueChunks bounds the
// bytes held in flight per direction (chunkSize*queueChunks) before the reader waits.
const (
	chunkSize   = 32 << 10
	queueChunks = 512
)

// StartProxy starts a proxy; t.Cleanup closes it and every connection through it.
func StartProxy(t testing.TB, cfg ProxyConfig) *Proxy {
	t.Helper()
	p, err := NewProxy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// NewProxy starts a proxy; the caller must Close it.
func NewProxy(cfg ProxyConfig) (*Proxy, error) {
	ln := cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("harness: proxy listen: %w", err)
		}
	}
	dial := cfg.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	p := &Proxy{target: cfg.Target, ln: ln, dial: dial, delay: cfg.Delay, rate: cfg.BytesPerSec, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the address clients connect to instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetDelay changes the one-way delay for bytes read from now on.
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// SetRate changes the per-direction bandwidth cap (0: none) for bytes read from now on.
func (p *Proxy) SetRate(bytesPerSec int64) {
	p.mu.Lock()
	p.rate = bytesPerSec
	p.mu.Unlock()
}

func (p *Proxy) settings() (time.Duration, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.delay, p.rate
}

// Close stops accepting, closes every proxied connection and waits for their goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	err := p.ln.Close()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// track registers c so that Close reaches it; it refuses (and closes c) after Close.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// dialTimeout bounds the dial of the target: a partitioned target must not hold a
// client's connection open forever.
const dialTimeout = 10 * time.Second

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client)
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	upstream, err := p.dial(ctx, "tcp", p.target)
	cancel()
	if err != nil {
		return
	}
	if !p.track(upstream) {
		return
	}
	defer p.untrack(upstream)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(upstream, client) }()
	go func() { defer wg.Done(); p.pipe(client, upstream) }()
	wg.Wait()
}

type delayedChunk struct {
	b   []byte
	due time.Time
}

// pipe moves src to dst through a delay line: a reader stamps each chunk with the time
// it may leave, a writer sends it then, paced to the rate cap. On a write error both
// connections are closed, which ends the reader; the writer drains what is queued so the
// reader never blocks on a full queue.
func (p *Proxy) pipe(dst, src net.Conn) {
	q := make(chan delayedChunk, queueChunks)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, chunkSize)
			n, err := src.Read(buf)
			if n > 0 {
				delay, _ := p.settings()
				q <- delayedChunk{b: buf[:n], due: time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	var next time.Time // earliest time the rate cap lets the next chunk leave
	failed := false
	for c := range q {
		if failed {
			continue
		}
		_, rate := p.settings()
		at := c.due
		if rate > 0 {
			if next.Before(time.Now()) {
				next = time.Now()
			}
			if next.After(at) {
				at = next
			}
			next = at.Add(time.Duration(float64(len(c.b)) / float64(rate) * float64(time.Second)))
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(c.b); err != nil {
			failed = true
			_ = dst.Close()
			_ = src.Close()
		}
	}
	if tc, ok := dst.(interface{ CloseWrite() error }); ok && !failed {
		_ = tc.CloseWrite()
	}
}
