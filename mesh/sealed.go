package mesh

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
)

// sealedConn is the record layer of a data connection. TLS 1.3 authenticates the peer
// (its certificate is signed by the libp2p identity key) and agrees the keys; the bulk
// bytes then travel in large AES-GCM records of our own instead of TLS's 16 KiB ones:
//
//	record: u32 key epoch, u8 kind, u24 plaintext length, ciphertext, 16-byte tag
//
// A data record ('D') carries 1 to sealedRecordSize bytes; a key-update record ('K')
// carries none and says that the sender's next record is sealed under its next key.
// The 8-byte header is the additional data; the nonce is a per-key counter, so records
// cannot be reordered, replayed or spliced between directions, epochs or connections
// (see trafficKey for how the keys are derived and moved). A large record is read
// straight into the caller's buffer and decrypted in place, so a tensor crosses from
// the socket to its final memory without another copy (a read spanning several records
// opens them on parallel workers instead, at the price of one copy each); on the
// sending side sealing is the only copy. On a 2-core loopback this moves a 25.7 MB
// tensor at 1.5 to 2 times the rate of a libp2p TLS+yamux stream and at about half the
// CPU per byte (BENCHMARKS.md, BenchmarkThroughput).
type sealedConn struct {
	conn   io.ReadWriter // the TCP connection under the record layer
	limits sealedLimits

	send    *trafficKey
	pending []byte // plaintext not yet sealed (small writes are coalesced)
	out     []byte // one sealed record

	recv     *trafficKey
	leftover []byte // plaintext of the current record not yet returned
	inbuf    []byte // record body when the caller's buffer is too small for it
	rerr     error  // sticky: a failure mid-record leaves the stream unusable

	bulkOut [][]byte // sealed records of writeBulk, two batches
	bulkIn  [][]byte // record bodies of readBulk
}

const (
	sealedRecordSize = 1 << 20
	sealedHeaderLen  = 8
	sealedTagLen     = 16
	sealedKeyLen     = 16 // AES-128-GCM, as TLS would pick on CPUs with AES instructions
	sealedSecretLen  = 32 // a direction's traffic secret, the HKDF-SHA256 key of its epochs
	// directWriteMin is the write size from which data is sealed straight from the
	// caller's memory instead of being coalesced.
	directWriteMin = 64 << 10

	recordData      byte = 'D'
	recordKeyUpdate byte = 'K'

	dirClientToServer = "client to server"
	dirServerToClient = "server to client"
)

var (
	errSealedRecord = errors.New("mesh: data record failed authentication")
	// errKeyEpoch: a record under a key the receiver has moved past, or under one the
	// sender never announced.
	errKeyEpoch = errors.New("mesh: data record under the wrong key epoch")
	// errKeyExhausted: the peer went on sealing under one key past the usage limit
	// instead of moving to its next key.
	errKeyExhausted = errors.New("mesh: peer exceeded the data key usage limit without a key update")
)

// sealedLimits bound how much one AES-GCM key seals, counted in AES blocks: a record
// of n bytes costs ceil(n/16) blocks of keystream plus one for its tag. RFC 8446 §5.5
// allows 2^24.5 full-size TLS records per key (each 2^10+1 blocks), about 2^34.5 blocks.
type sealedLimits struct {
	// rekeyBlocks is where a sender moves to its next key: before a record would take
	// the current key past it.
	rekeyBlocks uint64
	// maxBlocks is where a receiver gives up on a peer that has not moved on: it must
	// exceed rekeyBlocks by at least one full record and a key-update record.
	maxBlocks uint64
}

// dataKeyLimits are the limits of every data connection: a sender moves on after 2^32
// blocks (64 GiB, a factor 2^2.5 under RFC 8446's bound) and a receiver closes the
// connection past 2^33 (still 2^1.5 under it). Tests lower them.
var dataKeyLimits = sealedLimits{rekeyBlocks: 1 << 32, maxBlocks: 1 << 33}

// recordBlocks is the AES blocks that sealing or opening n bytes uses.
func recordBlocks(n int) uint64 {
	return uint64(n+15)/16 + 1
}

// trafficKey is one direction's key schedule. Epoch e's key and epoch e+1's secret
// are HKDF-Expand (SHA-256) outputs of epoch e's secret, with labels naming the
// direction, the epoch and what is derived; epoch 0's secret is exported from the TLS
// session under a label naming the direction. The secret is erased as soon as the next
// one is derived, so a key moved past cannot be derived again from this process's
// memory. The nonce counter restarts at zero with each key.
type trafficKey struct {
	dir    string
	epoch  uint32
	secret []byte
	aead   cipher.AEAD
	ctr    uint64 // nonce of the next record under aead
	blocks uint64 // AES blocks used under aead so far
}

func newTrafficKey(secret []byte, dir string) (*trafficKey, error) {
	k := &trafficKey{dir: dir, secret: bytes.Clone(secret)}
	if err := k.deriveKey(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *trafficKey) deriveKey() error {
	key, err := hkdf.Expand(sha256.New, k.secret, fmt.Sprintf("layermesh data key %s epoch %d", k.dir, k.epoch), sealedKeyLen)
	if err != nil {
		return err
	}
	defer clear(key)
	aead, err := newGCM(key)
	if err != nil {
		return err
	}
	k.aead, k.ctr, k.blocks = aead, 0, 0
	return nil
}

// advance moves to the next epoch's key and erases this epoch's secret.
func (k *trafficKey) advance() error {
	if k.epoch == math.MaxUint32 {
		return fmt.Errorf("%w: no key epochs left", errKeyExhausted)
	}
	next, err := hkdf.Expand(sha256.New, k.secret, fmt.Sprintf("layermesh data secret %s epoch %d", k.dir, k.epoch+1), sealedSecretLen)
	if err != nil {
		return err
	}
	clear(k.secret)
	k.secret = next
	k.epoch++
	return k.deriveKey()
}

// reserve takes the nonce of the next record of n plaintext bytes under the current
// key and counts its blocks. The AEAD is returned with it so a worker can seal or open
// the record while the key moves on.
func (k *trafficKey) reserve(n int) (cipher.AEAD, []byte) {
	nonce := counterNonce(k.ctr)
	k.ctr++
	k.blocks += recordBlocks(n)
	return k.aead, nonce
}

// newSealedConn derives both directions' traffic secrets from the completed TLS session.
func newSealedConn(conn io.ReadWriter, state tls.ConnectionState, isClient bool) (*sealedConn, error) {
	c2s, err := state.ExportKeyingMaterial("EXPORTER-layermesh-data "+dirClientToServer, nil, sealedSecretLen)
	if err != nil {
		return nil, err
	}
	defer clear(c2s)
	s2c, err := state.ExportKeyingMaterial("EXPORTER-layermesh-data "+dirServerToClient, nil, sealedSecretLen)
	if err != nil {
		return nil, err
	}
	defer clear(s2c)
	c2sKey, err := newTrafficKey(c2s, dirClientToServer)
	if err != nil {
		return nil, err
	}
	s2cKey, err := newTrafficKey(s2c, dirServerToClient)
	if err != nil {
		return nil, err
	}
	if !isClient {
		return newSealed(conn, s2cKey, c2sKey, dataKeyLimits), nil
	}
	return newSealed(conn, c2sKey, s2cKey, dataKeyLimits), nil
}

func newSealed(conn io.ReadWriter, send, recv *trafficKey, limits sealedLimits) *sealedConn {
	return &sealedConn{
		conn:    conn,
		limits:  limits,
		send:    send,
		recv:    recv,
		pending: make([]byte, 0, sealedRecordSize),
		out:     make([]byte, sealedHeaderLen+sealedRecordSize+sealedTagLen),
	}
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func counterNonce(ctr uint64) []byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[4:], ctr)
	return n[:]
}

// recordHeader is a parsed record header.
type recordHeader struct {
	epoch uint32
	kind  byte
	size  int
}

func putHeader(b []byte, epoch uint32, kind byte, size int) {
	binary.BigEndian.PutUint32(b, epoch)
	binary.BigEndian.PutUint32(b[4:], uint32(kind)<<24|uint32(size))
}

func parseHeader(b []byte) recordHeader {
	word := binary.BigEndian.Uint32(b[4:])
	return recordHeader{epoch: binary.BigEndian.Uint32(b), kind: byte(word >> 24), size: int(word & 0xffffff)}
}

// Write sends p. Small writes (frame headers) are coalesced and go out on flush or
// when a record fills. A large write (a tensor's data) goes out straight from the
// caller's memory: several records sealed in parallel, then records of at most
// sealedRecordSize, the last one cut 16 bytes short and followed by a 16-byte record.
// That tail is for the reader: it reads a tensor into a buffer of exactly the tensor's
// size, and a record whose body (ciphertext plus tag) fits there is opened in place.
func (c *sealedConn) Write(p []byte) (int, error) {
	n := len(p)
	if n < directWriteMin {
		for len(p) > 0 {
			k := min(len(p), sealedRecordSize-len(c.pending))
			c.pending = append(c.pending, p[:k]...)
			p = p[k:]
			if len(c.pending) == sealedRecordSize {
				if err := c.flush(); err != nil {
					return n - len(p) - k, err
				}
			}
		}
		return n, nil
	}
	if err := c.flush(); err != nil {
		return 0, err
	}
	if len(p) >= 2*sealedRecordSize {
		full := len(p) / sealedRecordSize * sealedRecordSize
		if err := c.writeBulk(p[:full]); err != nil {
			return 0, err
		}
		p = p[full:]
	}
	for len(p) > 0 {
		k := min(len(p), sealedRecordSize)
		if k == len(p) && k > sealedTagLen {
			k -= sealedTagLen
		}
		if err := c.emit(p[:k]); err != nil {
			return n - len(p), err
		}
		p = p[k:]
	}
	return n, nil
}

// flush seals and sends whatever is queued.
func (c *sealedConn) flush() error {
	if len(c.pending) == 0 {
		return nil
	}
	err := c.emit(c.pending)
	c.pending = c.pending[:0]
	return err
}

func (c *sealedConn) emit(plain []byte) error {
	update, err := c.rekeyIfDue(len(plain))
	if err != nil {
		return err
	}
	if update != nil {
		if _, err := c.conn.Write(update); err != nil {
			return err
		}
	}
	putHeader(c.out, c.send.epoch, recordData, len(plain))
	aead, nonce := c.send.reserve(len(plain))
	sealed := aead.Seal(c.out[sealedHeaderLen:sealedHeaderLen], nonce, plain, c.out[:sealedHeaderLen])
	_, err = c.conn.Write(c.out[:sealedHeaderLen+len(sealed)])
	return err
}

// rekeyIfDue moves the sending direction to its next key when a record of n bytes
// would take the current key past limits.rekeyBlocks. It returns the key-update record
// that must go on the wire before that record (sealed under the old key, so the peer
// knows it is genuine and where the old key ends), or nil when the key stays.
func (c *sealedConn) rekeyIfDue(n int) ([]byte, error) {
	k := c.send
	// A key that has sealed nothing moves on for no record: a limit lower than one
	// record (tests only) must not loop.
	if k.blocks == 0 || k.blocks+recordBlocks(n) <= c.limits.rekeyBlocks {
		return nil, nil
	}
	update := make([]byte, sealedHeaderLen+sealedTagLen)
	putHeader(update, k.epoch, recordKeyUpdate, 0)
	aead, nonce := k.reserve(0)
	aead.Seal(update[sealedHeaderLen:sealedHeaderLen], nonce, nil, update[:sealedHeaderLen])
	if err := k.advance(); err != nil {
		return nil, err
	}
	return update, nil
}

// Read returns decrypted bytes. When p can hold a whole record (a tensor's data), the
// record is read into p and opened in place.
func (c *sealedConn) Read(p []byte) (int, error) {
	if len(c.leftover) > 0 {
		n := copy(p, c.leftover)
		c.leftover = c.leftover[n:]
		return n, nil
	}
	if c.rerr != nil {
		return 0, c.rerr
	}
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) >= 2*sealedRecordSize {
		return c.readBulk(p)
	}
	for {
		var hdr [sealedHeaderLen]byte
		if n, err := io.ReadFull(c.conn, hdr[:]); err != nil {
			if n > 0 {
				c.rerr = fmt.Errorf("%w: record header: %w", ErrMalformedFrame, err)
				return 0, c.rerr
			}
			// Nothing consumed (idle timeout, peer closed): the stream is still in step.
			return 0, err
		}
		h := parseHeader(hdr[:])
		if err := c.admit(h); err != nil {
			c.rerr = err
			return 0, err
		}
		if h.kind == recordKeyUpdate {
			if err := c.readKeyUpdate(hdr[:]); err != nil {
				c.rerr = err
				return 0, err
			}
			continue
		}
		return c.readData(p, h, hdr[:])
	}
}

// admit checks a record header before its body is read: the record must be under the
// receiving key's epoch, of a known kind and length, and within the key's usage limit.
// Every failure is fatal to the connection.
func (c *sealedConn) admit(h recordHeader) error {
	k := c.recv
	switch {
	case h.epoch < k.epoch:
		return fmt.Errorf("%w: record sealed under retired key epoch %d, current epoch %d", errKeyEpoch, h.epoch, k.epoch)
	case h.epoch > k.epoch:
		return fmt.Errorf("%w: record claims key epoch %d without a key update, current epoch %d", errKeyEpoch, h.epoch, k.epoch)
	case h.kind == recordData && h.size > sealedRecordSize:
		return fmt.Errorf("%w: data record of %d bytes", ErrFrameTooLarge, h.size)
	case h.kind == recordData && h.size == 0:
		return fmt.Errorf("%w: empty data record", ErrMalformedFrame)
	case h.kind == recordKeyUpdate && h.size != 0:
		return fmt.Errorf("%w: key-update record of %d bytes", ErrMalformedFrame, h.size)
	case h.kind != recordData && h.kind != recordKeyUpdate:
		return fmt.Errorf("%w: unknown record kind %d", ErrMalformedFrame, h.kind)
	case k.blocks+recordBlocks(h.size) > c.limits.maxBlocks:
		return fmt.Errorf("%w: %d AES blocks under key epoch %d, limit %d", errKeyExhausted, k.blocks+recordBlocks(h.size), k.epoch, c.limits.maxBlocks)
	}
	return nil
}

// readKeyUpdate reads the tag of a key-update record, authenticates it under the
// receiving key, and moves that key to its next epoch.
func (c *sealedConn) readKeyUpdate(hdr []byte) error {
	var tag [sealedTagLen]byte
	if _, err := io.ReadFull(c.conn, tag[:]); err != nil {
		return fmt.Errorf("%w: key-update record: %w", ErrMalformedFrame, err)
	}
	aead, nonce := c.recv.reserve(0)
	if _, err := aead.Open(tag[:0], nonce, tag[:], hdr); err != nil {
		return errSealedRecord
	}
	return c.recv.advance()
}

// readData reads and opens the body of the data record with header h.
func (c *sealedConn) readData(p []byte, h recordHeader, hdr []byte) (int, error) {
	var body []byte
	inPlace := len(p) >= h.size+sealedTagLen
	if inPlace {
		body = p[:h.size+sealedTagLen]
	} else {
		if c.inbuf == nil {
			c.inbuf = make([]byte, sealedRecordSize+sealedTagLen)
		}
		body = c.inbuf[:h.size+sealedTagLen]
	}
	if _, err := io.ReadFull(c.conn, body); err != nil {
		c.rerr = fmt.Errorf("%w: record body: %w", ErrMalformedFrame, err)
		return 0, err
	}
	aead, nonce := c.recv.reserve(h.size)
	plain, err := aead.Open(body[:0], nonce, body, hdr)
	if err != nil {
		c.rerr = errSealedRecord
		return 0, c.rerr
	}
	if inPlace {
		return len(plain), nil
	}
	n := copy(p, plain)
	c.leftover = plain[n:]
	return n, nil
}

// bulkWorkers is how many records are sealed or opened at once: AES-GCM is most of
// the data path's CPU, and a device with more cores should not leave them idle.
func bulkWorkers() int {
	return min(max(runtime.GOMAXPROCS(0), 2), 8)
}

// sealBatch is one batch of writeBulk: the records go out in one writev once every
// worker sealing one of them is done.
type sealBatch struct {
	wg   sync.WaitGroup
	bufs net.Buffers
}

// writeBulk sends whole records sealed by parallel workers, in batches: while one
// batch is written (one writev), the next is being sealed.
func (c *sealedConn) writeBulk(p []byte) error {
	k := bulkWorkers()
	if len(c.bulkOut) < 2*k {
		c.bulkOut = make([][]byte, 2*k)
		for i := range c.bulkOut {
			c.bulkOut[i] = make([]byte, sealedHeaderLen+sealedRecordSize+sealedTagLen)
		}
	}
	records := len(p) / sealedRecordSize
	var prev *sealBatch
	for j, first := 0, 0; first < records; j, first = j+1, first+k {
		cur, err := c.launchBatch(p[first*sealedRecordSize:min(first+k, records)*sealedRecordSize], c.bulkOut[(j%2)*k:])
		if err == nil && prev != nil {
			prev.wg.Wait()
			_, err = prev.bufs.WriteTo(c.conn)
		}
		if err != nil {
			cur.wg.Wait()
			if prev != nil {
				prev.wg.Wait()
			}
			return err
		}
		prev = cur
	}
	prev.wg.Wait()
	_, err := prev.bufs.WriteTo(c.conn)
	return err
}

// launchBatch starts sealing the whole records of p into outs, one worker each. Nonces
// and key moves are decided here, in record order; a key-update record, when one is
// due, takes its place in the batch between the records of the two keys.
func (c *sealedConn) launchBatch(p []byte, outs [][]byte) (*sealBatch, error) {
	b := &sealBatch{}
	for i := range len(p) / sealedRecordSize {
		plain := p[i*sealedRecordSize : (i+1)*sealedRecordSize]
		update, err := c.rekeyIfDue(len(plain))
		if err != nil {
			return b, err
		}
		if update != nil {
			b.bufs = append(b.bufs, update)
		}
		out := outs[i]
		putHeader(out, c.send.epoch, recordData, len(plain))
		aead, nonce := c.send.reserve(len(plain))
		b.bufs = append(b.bufs, out)
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			aead.Seal(out[sealedHeaderLen:sealedHeaderLen], nonce, plain, out[:sealedHeaderLen])
		}()
	}
	return b, nil
}

// readBulk fills p, which spans at least two records, reading records in order and
// opening them on parallel workers. Callers of a data connection always read exact
// lengths they were told, so waiting for more than one record here never waits for
// data the peer is not sending.
func (c *sealedConn) readBulk(p []byte) (int, error) {
	k := bulkWorkers()
	if len(c.bulkIn) < k {
		c.bulkIn = make([][]byte, k)
		for i := range c.bulkIn {
			c.bulkIn[i] = make([]byte, sealedRecordSize+sealedTagLen)
		}
	}
	free := make(chan []byte, k)
	for _, b := range c.bulkIn[:k] {
		free <- b
	}
	var wg sync.WaitGroup
	var failed atomic.Bool
	off := 0
	var err error
	for len(p)-off >= sealedRecordSize {
		var hdr [sealedHeaderLen]byte
		if _, err = io.ReadFull(c.conn, hdr[:]); err != nil {
			err = fmt.Errorf("%w: record header: %w", ErrMalformedFrame, err)
			break
		}
		h := parseHeader(hdr[:])
		if err = c.admit(h); err != nil {
			break
		}
		if h.kind == recordKeyUpdate {
			// Workers still opening records of the old key hold its AEAD; only the
			// records after this one use the next key.
			if err = c.readKeyUpdate(hdr[:]); err != nil {
				break
			}
			continue
		}
		if h.size > len(p)-off {
			// A record that does not fit cannot come from our writer in the middle
			// of a message.
			err = fmt.Errorf("%w: data record of %d bytes where %d were expected", ErrMalformedFrame, h.size, len(p)-off)
			break
		}
		buf := <-free
		body := buf[:h.size+sealedTagLen]
		if _, err = io.ReadFull(c.conn, body); err != nil {
			err = fmt.Errorf("%w: record body: %w", ErrMalformedFrame, err)
			break
		}
		dst := p[off : off+h.size]
		aead, nonce := c.recv.reserve(h.size)
		off += h.size
		wg.Add(1)
		go func() {
			defer wg.Done()
			plain, oerr := aead.Open(body[:0], nonce, body, hdr[:])
			if oerr != nil {
				failed.Store(true)
			} else {
				copy(dst, plain)
			}
			free <- buf
		}()
	}
	wg.Wait()
	if err == nil && failed.Load() {
		err = errSealedRecord
	}
	if err != nil {
		c.rerr = err
		return 0, c.rerr
	}
	return off, nil
}
