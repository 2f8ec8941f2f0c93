package mesh

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// writeBlob generates size deterministic pseudo-random bytes into a file in dir and
// returns its path and sha256.
func writeBlob(t *testing.T, dir string, size int64, seed uint64) (string, string) {
	t.Helper()
	f, err := os.CreateTemp(dir, "blob-*")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	h := sha256.New()
	buf := make([]byte, 4<<20)
	for left := size; left > 0; {
		n := min(int64(len(buf)), left)
		_, _ = rng.Read(buf[:n])
		h.Write(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			t.Fatal(err)
		}
		left -= n
	}
	return f.Name(), hex.EncodeToString(h.Sum(nil))
}

func doneChunks(t *testing.T, s *BlobStore, hash string) int {
	t.Helper()
	rec, err := os.ReadFile(s.recordPath(hash))
	if err != nil {
		t.Fatalf("partial record: %v", err)
	}
	return bytes.Count(rec, []byte{1})
}

func TestBlob512MiBResumeAndTwoHolders(t *testing.T) {
	const size = 512 << 20
	a := startMesh(t, testConfig(t, t.TempDir()))
	b := startMesh(t, testConfig(t, t.TempDir()))
	c := startMesh(t, testConfig(t, t.TempDir()))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, h := range []*Mesh{a, b} {
		if err := c.Connect(ctx, addrInfo(t, h)); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	path, hash := writeBlob(t, t.TempDir(), size, 1)
	if err := os.Rename(path, a.Blobs().Path(hash)); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(a.Blobs().Path(hash), b.Blobs().Path(hash)); err != nil {
		t.Fatal(err)
	}
	t.Logf("generated %d MiB in %v", size>>20, time.Since(start))

	// Phase 1: one holder, interrupted once half has been served.
	start = time.Now()
	fctx, fcancel := context.WithCancel(ctx)
	go func() {
		for fctx.Err() == nil && a.BlobBytesServed() < size/2 {
			time.Sleep(time.Millisecond)
		}
		fcancel()
	}()
	err := c.FetchBlob(fctx, hash, size, []peer.ID{a.ID()}, c.Blobs())
	fcancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted fetch: got %v, want context.Canceled", err)
	}
	if c.Blobs().Has(hash) {
		t.Fatalf("interrupted fetch left a complete blob")
	}
	// The server may still be pushing the chunk that was cut off; let it notice.
	served1 := settled(a)
	done1 := doneChunks(t, c.Blobs(), hash)
	t.Logf("phase 1: %d chunks recorded, %d MiB served, %v", done1, served1>>20, time.Since(start))
	if done1 == 0 || int64(done1)*BlobChunkSize >= size {
		t.Fatalf("interruption at half left %d of %d chunks", done1, size/BlobChunkSize)
	}

	// Phase 2: resume from both holders.
	start = time.Now()
	if err := c.FetchBlob(ctx, hash, size, []peer.ID{a.ID(), b.ID()}, c.Blobs()); err != nil {
		t.Fatalf("resumed fetch: %v", err)
	}
	fromA, fromB := a.BlobBytesServed()-served1, b.BlobBytesServed()
	t.Logf("phase 2: %d MiB from a, %d MiB from b, %v", fromA>>20, fromB>>20, time.Since(start))
	if want := int64(size) - int64(done1)*BlobChunkSize; fromA+fromB != want {
		t.Fatalf("resume moved %d bytes, want exactly the %d missing (nothing re-sent)", fromA+fromB, want)
	}
	if fromA == 0 || fromB == 0 {
		t.Fatalf("two holders: a served %d, b served %d; want chunks from both", fromA, fromB)
	}
	if waste := served1 - int64(done1)*BlobChunkSize; waste > workersPerHolder*BlobChunkSize {
		t.Fatalf("interruption wasted %d bytes, more than the chunks in flight", waste)
	}

	// Independent check of the stored blob.
	f, err := c.Blobs().Open(hash)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != hash {
		t.Fatalf("stored blob: %d bytes, err %v, hash %x", n, err, h.Sum(nil))
	}
	if _, err := os.Stat(c.Blobs().recordPath(hash)); !os.IsNotExist(err) {
		t.Fatalf("partial record left behind: %v", err)
	}
	// A second fetch of a held blob moves nothing.
	before := a.BlobBytesServed() + b.BlobBytesServed()
	if err := c.FetchBlob(ctx, hash, size, []peer.ID{a.ID(), b.ID()}, c.Blobs()); err != nil || a.BlobBytesServed()+b.BlobBytesServed() != before {
		t.Fatalf("refetch of a held blob: %v", err)
	}
}

func TestBlobVerification(t *testing.T) {
	a, c := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	path, hash := writeBlob(t, dir, 9<<20+123, 2) // not a whole number of chunks

	// Put verifies the content against the hash.
	f, _ := os.Open(path)
	if _, err := a.Blobs().Put(strings.Repeat("0", 64), f); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("Put with the wrong hash: %v", err)
	}
	f.Close()
	f, _ = os.Open(path)
	if n, err := a.Blobs().Put(hash, f); err != nil || n != 9<<20+123 {
		t.Fatalf("Put: %d, %v", n, err)
	}
	f.Close()
	if err := c.FetchBlob(ctx, hash, 9<<20+123, []peer.ID{a.ID()}, c.Blobs()); err != nil {
		t.Fatalf("fetch: %v", err)
	}
	// A holder whose file is corrupt: the fetch fails verification and stores nothing.
	path2, hash2 := writeBlob(t, dir, 5<<20, 3)
	if err := os.Rename(path2, a.Blobs().Path(hash2)); err != nil {
		t.Fatal(err)
	}
	fd, _ := os.OpenFile(a.Blobs().Path(hash2), os.O_WRONLY, 0)
	_, _ = fd.WriteAt([]byte("corrupt"), 4<<20+10)
	fd.Close()
	err := c.FetchBlob(ctx, hash2, 5<<20, []peer.ID{a.ID()}, c.Blobs())
	if !errors.Is(err, ErrHashMismatch) || c.Blobs().Has(hash2) {
		t.Fatalf("corrupt holder: got %v, want ErrHashMismatch and nothing stored", err)
	}
	// A holder without the blob says so.
	missing := strings.Repeat("ab", 32)
	err = c.FetchBlob(ctx, missing, 100, []peer.ID{a.ID()}, c.Blobs())
	if !errors.Is(err, ErrNoHolders) || !errors.Is(err, ErrBlobNotFound) {
		t.Fatalf("missing blob: got %v, want ErrNoHolders wrapping ErrBlobNotFound", err)
	}
}

// TestConcurrentFetchesOfOneBlobAllSucceed: fetches of the same blob into one store
// at the same time (two first requests needing a model's tokenizer) share one
// partial file; each of them ends with the blob in place and no error.
func TestConcurrentFetchesOfOneBlobAllSucceed(t *testing.T) {
	a, c := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const size = 9<<20 + 77
	path, hash := writeBlob(t, t.TempDir(), size, 4)
	f, _ := os.Open(path)
	if _, err := a.Blobs().Put(hash, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	errs := make(chan error, 6)
	for range cap(errs) {
		go func() { errs <- c.FetchBlob(ctx, hash, size, []peer.ID{a.ID()}, c.Blobs()) }()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Errorf("fetch: %v", err)
		}
	}
	got, err := os.ReadFile(c.Blobs().Path(hash))
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != hash {
		t.Fatalf("the fetched blob hashes to %x, want %s", sum, hash)
	}
}

// settled waits until m serves no chunk and its count of bytes served has stopped
// moving, and returns that count: a handler still pushing the chunk a fetch cut off
// counts its bytes when it returns, however long a busy machine makes that.
func settled(m *Mesh) int64 {
	last := m.BlobBytesServed()
	for {
		time.Sleep(100 * time.Millisecond)
		// A handler adds its bytes before it stops counting as serving.
		idle := m.blobServing.Load() == 0
		now := m.BlobBytesServed()
		if idle && now == last {
			return now
		}
		last = now
	}
}

// TestBlobListTouch: List reports complete and partial blobs with their sizes and
// times; Touch makes an old blob recent; Remove takes both forms away.
func TestBlobListTouch(t *testing.T) {
	s, err := OpenBlobStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	path, hash := writeBlob(t, t.TempDir(), 1000, 4)
	f, _ := os.Open(path)
	if _, err := s.Put(hash, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	partial := strings.Repeat("ab", 32)
	if err := os.WriteFile(s.partialPath(partial), make([]byte, 300), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.recordPath(partial), []byte{1, 0}, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Path("")+"/not-a-blob", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(s.Path(hash), old, old); err != nil {
		t.Fatal(err)
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]BlobInfo{}
	for _, b := range list {
		got[b.Hash] = b
	}
	if len(got) != 2 || !got[hash].Complete || got[hash].Size != 1000 || !got[hash].Touched.Before(time.Now().Add(-50*time.Minute)) ||
		got[partial].Complete || got[partial].Size != 300 {
		t.Fatalf("List = %+v", list)
	}
	if err := s.Touch(hash); err != nil {
		t.Fatal(err)
	}
	list, _ = s.List()
	for _, b := range list {
		if b.Hash == hash && time.Since(b.Touched) > time.Minute {
			t.Fatalf("Touch left %v", b.Touched)
		}
	}
	for _, h := range []string{hash, partial} {
		if err := s.Remove(h); err != nil {
			t.Fatal(err)
		}
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Fatalf("after Remove: %+v", list)
	}
}
