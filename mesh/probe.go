package mesh

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

const (
	probePings     = 3
	probeBulkBytes = 1 << 20
	maxProbeBulk   = 64 << 20
	probeTimeout   = 10 * time.Second
)

func servePing(d *dataConn) error {
	_ = d.SetDeadline(time.Now().Add(headerReadTimeout))
	var nonce [8]byte
	if _, err := io.ReadFull(d, nonce[:]); err != nil {
		return err
	}
	_, err := d.Write(append([]byte{statusOK}, nonce[:]...))
	return err
}

func serveBandwidth(d *dataConn) error {
	_ = d.SetDeadline(time.Now().Add(probeTimeout))
	var l [4]byte
	if _, err := io.ReadFull(d, l[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(l[:])
	if n > maxProbeBulk {
		_ = writeErrorFrame(d, CodeMalformed, "probe too large")
		return fmt.Errorf("%w: bandwidth probe of %d bytes", ErrFrameTooLarge, n)
	}
	if _, err := io.CopyN(io.Discard, d, int64(n)); err != nil {
		return err
	}
	_, err := d.Write([]byte{statusOK})
	return err
}

// ProbeLink measures RTT (best of three pings) and bandwidth (a 1 MiB transfer) to p
// over the data connection, stores the result for Link, and returns it.
func (m *Mesh) ProbeLink(ctx context.Context, p peer.ID) (LinkStats, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var best time.Duration
	for range probePings {
		var nonce [8]byte
		_, _ = rand.Read(nonce[:])
		start := time.Now()
		err := m.exchange(ctx, p, func(d *dataConn) error {
			if _, err := d.Write(append([]byte{kindPing}, nonce[:]...)); err != nil {
				return err
			}
			if err := d.flush(); err != nil {
				return err
			}
			if err := readResponseStatus(d, p); err != nil {
				return err
			}
			var echo [8]byte
			if _, err := io.ReadFull(d, echo[:]); err != nil {
				return err
			}
			if echo != nonce {
				return fmt.Errorf("%w: ping echo mismatch", ErrMalformedFrame)
			}
			return nil
		})
		if err != nil {
			return LinkStats{}, fmt.Errorf("mesh: ping %s: %w", shortID(p), err)
		}
		if rtt := time.Since(start); best == 0 || rtt < best {
			best = rtt
		}
	}
	payload := make([]byte, probeBulkBytes)
	start := time.Now()
	err := m.exchange(ctx, p, func(d *dataConn) error {
		head := []byte{kindBandwidth, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(head[1:], probeBulkBytes)
		if _, err := d.Write(head); err != nil {
			return err
		}
		if _, err := d.Write(payload); err != nil {
			return err
		}
		if err := d.flush(); err != nil {
			return err
		}
		return readResponseStatus(d, p)
	})
	if err != nil {
		return LinkStats{}, fmt.Errorf("mesh: bandwidth probe %s: %w", shortID(p), err)
	}
	stats := LinkStats{RTT: best, Bandwidth: float64(probeBulkBytes) / time.Since(start).Seconds(), Updated: time.Now()}
	m.linksMu.Lock()
	m.links[p] = stats
	m.linksMu.Unlock()
	return stats, nil
}

// Link returns the last measured stats toward p, if any.
func (m *Mesh) Link(p peer.ID) (LinkStats, bool) {
	m.linksMu.Lock()
	defer m.linksMu.Unlock()
	s, ok := m.links[p]
	return s, ok
}

// probeLoop keeps link stats fresh for every alive member.
func (m *Mesh) probeLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, mem := range m.Members() {
			if mem.PeerID == m.id || mem.State != StateAlive || !m.isAdmitted(mem.PeerID) {
				continue
			}
			if _, err := m.ProbeLink(ctx, mem.PeerID); err != nil && ctx.Err() == nil {
				m.log.Debug("link probe failed", "peer", mem.PeerID.String(), "err", err)
			}
		}
	}
}
