package mesh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// BlobChunkSize is the unit of blob transfer, resumption and parallelism.
const BlobChunkSize = 4 << 20

const (
	workersPerHolder = 2
	// chunkTimeout bounds one chunk; 4 MiB in 2 minutes is 35 kB/s, slower than any
	// link worth pulling a model over.
	chunkTimeout = 2 * time.Minute
)

// partialBlob is a fetch in progress: the data file, preallocated to the full size,
// and the record of completed chunks (one byte per chunk, 1 = written and synced).
type partialBlob struct {
	data   *os.File
	record *os.File
	done   []bool
}

func (s *BlobStore) openPartial(hash string, size int64) (*partialBlob, error) {
	n := int((size + BlobChunkSize - 1) / BlobChunkSize)
	data, err := os.OpenFile(s.partialPath(hash), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("mesh: partial blob: %w", err)
	}
	record, err := os.OpenFile(s.recordPath(hash), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		data.Close()
		return nil, fmt.Errorf("mesh: partial blob record: %w", err)
	}
	pb := &partialBlob{data: data, record: record, done: make([]bool, n)}
	rec, err := io.ReadAll(record)
	if err == nil && len(rec) == n {
		for i, b := range rec {
			pb.done[i] = b == 1
		}
	} else {
		// No record or one for a different size: start over.
		if err := record.Truncate(0); err != nil {
			pb.close()
			return nil, err
		}
		if _, err := record.WriteAt(make([]byte, n), 0); err != nil {
			pb.close()
			return nil, err
		}
	}
	if err := data.Truncate(size); err != nil {
		pb.close()
		return nil, fmt.Errorf("mesh: partial blob: %w", err)
	}
	return pb, nil
}

func (pb *partialBlob) close() {
	pb.data.Close()
	pb.record.Close()
}

// markDone makes chunk i durable before recording it, so a record never claims data
// that a crash lost.
func (pb *partialBlob) markDone(i int) error {
	if err := pb.data.Sync(); err != nil {
		return err
	}
	_, err := pb.record.WriteAt([]byte{1}, int64(i))
	return err
}

// chunkQueue hands out missing chunks to workers; a chunk whose fetch failed goes back
// for another holder. Workers wait while others are in flight, since a failure may
// requeue work.
type chunkQueue struct {
	mu       sync.Mutex
	cond     *sync.Cond
	pending  []int
	inflight int
	stopped  bool
}

func (q *chunkQueue) take() (int, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.pending) == 0 && q.inflight > 0 && !q.stopped {
		q.cond.Wait()
	}
	if len(q.pending) == 0 || q.stopped {
		return 0, false
	}
	i := q.pending[0]
	q.pending = q.pending[1:]
	q.inflight++
	return i, true
}

func (q *chunkQueue) finish(i int, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.inflight--
	if !ok {
		q.pending = append(q.pending, i)
	}
	q.cond.Broadcast()
}

func (q *chunkQueue) stop() {
	q.mu.Lock()
	q.stopped = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

// FetchBlob pulls the blob with this sha256 and size from the holders into dst,
// different chunks from different holders in parallel. An interrupted fetch resumes
// where it stopped: chunks already written are never requested again. The whole blob
// is verified against hash before it appears in dst.
//
// Concurrent fetches of one blob into one store are one fetch: the others wait for
// it (they would write the same partial file), and one whose fetch failed (its
// context ended, say) leaves the next waiter to try with its own.
func (m *Mesh) FetchBlob(ctx context.Context, hash string, size int64, holders []peer.ID, dst *BlobStore) error {
	if !ValidHash(hash) || size < 0 {
		return fmt.Errorf("%w: blob %q of %d bytes", ErrBadRequest, hash, size)
	}
	for {
		if dst.Has(hash) {
			return nil
		}
		f, first := dst.joinFetch(hash)
		if first {
			f.err = m.fetchBlob(ctx, hash, size, holders, dst)
			dst.endFetch(hash, f)
			return f.err
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if f.err == nil {
			return nil
		}
	}
}

// blobFetch is one fetch in progress; err is set before done is closed.
type blobFetch struct {
	done chan struct{}
	err  error
}

// joinFetch returns the fetch of hash in progress, or registers a new one that the
// caller (first) must run and end.
func (s *BlobStore) joinFetch(hash string) (f *blobFetch, first bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.fetching[hash]; ok {
		return f, false
	}
	f = &blobFetch{done: make(chan struct{})}
	s.fetching[hash] = f
	return f, true
}

func (s *BlobStore) endFetch(hash string, f *blobFetch) {
	s.mu.Lock()
	delete(s.fetching, hash)
	s.mu.Unlock()
	close(f.done)
}

// fetchBlob is FetchBlob's one fetch.
func (m *Mesh) fetchBlob(ctx context.Context, hash string, size int64, holders []peer.ID, dst *BlobStore) error {
	pb, err := dst.openPartial(hash, size)
	if err != nil {
		return err
	}
	defer pb.close()
	q := &chunkQueue{}
	q.cond = sync.NewCond(&q.mu)
	for i, d := range pb.done {
		if !d {
			q.pending = append(q.pending, i)
		}
	}
	stop := context.AfterFunc(ctx, q.stop)
	defer stop()
	var raw [32]byte
	if _, err := hex.Decode(raw[:], []byte(hash)); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var lastErr error
	for _, h := range holders {
		if h == m.id {
			continue
		}
		for range workersPerHolder {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, BlobChunkSize)
				for {
					i, ok := q.take()
					if !ok {
						return
					}
					err := m.fetchChunk(ctx, h, raw, size, i, buf, pb)
					q.finish(i, err == nil)
					if err != nil {
						errMu.Lock()
						lastErr = err
						errMu.Unlock()
						m.log.Info("blob chunk failed; leaving it to other holders", "blob", hash[:12], "chunk", i, "holder", shortID(h), "err", err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	q.mu.Lock()
	missing := len(q.pending)
	q.mu.Unlock()
	if missing > 0 {
		if lastErr == nil {
			lastErr = errors.New("no holder other than this node")
		}
		return fmt.Errorf("%w: %d of %d chunks missing: %w", ErrNoHolders, missing, len(pb.done), lastErr)
	}
	return dst.commitPartial(hash, pb)
}

func (m *Mesh) fetchChunk(ctx context.Context, h peer.ID, hash [32]byte, size int64, i int, buf []byte, pb *partialBlob) error {
	off := int64(i) * BlobChunkSize
	n := min(int64(BlobChunkSize), size-off)
	ctx, cancel := context.WithTimeout(ctx, chunkTimeout)
	defer cancel()
	err := m.exchange(ctx, h, func(d *dataConn) error {
		req := encodeBlobRequest(blobRequest{hash: hash, offset: uint64(off), length: uint32(n)})
		if _, err := d.Write(append([]byte{kindBlob}, req...)); err != nil {
			return err
		}
		if err := d.flush(); err != nil {
			return err
		}
		if err := readResponseStatus(d, h); err != nil {
			return err
		}
		_, err := io.ReadFull(d, buf[:n])
		return err
	})
	if err != nil {
		return err
	}
	if _, err := pb.data.WriteAt(buf[:n], off); err != nil {
		return fmt.Errorf("mesh: write chunk %d: %w", i, err)
	}
	return pb.markDone(i)
}

// commitPartial verifies the assembled blob and moves it into place. On a mismatch
// the partial state is thrown away: which chunk was bad cannot be known.
func (s *BlobStore) commitPartial(hash string, pb *partialBlob) error {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(pb.data, 0, 1<<62)); err != nil {
		return fmt.Errorf("mesh: verify blob: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != hash {
		_ = os.Remove(s.partialPath(hash))
		_ = os.Remove(s.recordPath(hash))
		return fmt.Errorf("%w: fetched blob hashes to %s, expected %s", ErrHashMismatch, got, hash)
	}
	if err := pb.data.Sync(); err != nil {
		return err
	}
	if err := os.Rename(s.partialPath(hash), s.Path(hash)); err != nil {
		return fmt.Errorf("mesh: commit blob: %w", err)
	}
	return os.Remove(s.recordPath(hash))
}

// serveBlobChunk answers one chunk request from a complete blob we hold.
func (m *Mesh) serveBlobChunk(ctx context.Context, d *dataConn) error {
	m.blobServing.Add(1)
	defer m.blobServing.Add(-1)
	_ = d.SetDeadline(time.Now().Add(headerReadTimeout))
	req, err := readBlobRequest(d)
	if err != nil {
		cutOff(d, err)
		return err
	}
	hash := hex.EncodeToString(req.hash[:])
	f, err := m.blobs.Open(hash)
	if err != nil {
		return writeErrorFrame(d, codeOf(err), err.Error())
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return writeErrorFrame(d, CodeInternal, err.Error())
	}
	if req.offset+uint64(req.length) > uint64(fi.Size()) {
		return writeErrorFrame(d, CodeBadRequest, fmt.Sprintf("range %d+%d beyond blob of %d bytes", req.offset, req.length, fi.Size()))
	}
	_ = d.SetDeadline(time.Now().Add(chunkTimeout))
	if _, err := d.Write([]byte{statusOK}); err != nil {
		return err
	}
	n, err := io.CopyBuffer(d, io.NewSectionReader(f, int64(req.offset), int64(req.length)), make([]byte, dataBufSize))
	m.blobServed.Add(n)
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}
