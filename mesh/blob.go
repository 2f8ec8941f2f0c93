package mesh

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// BlobStore keeps complete, verified blobs on disk, one file per sha256 (lowercase hex),
// and the partial state of fetches in progress under partial/.
type BlobStore struct {
	dir string

	// fetching holds the fetches into this store in progress, by hash: they share one
	// partial file, so a second fetch of the same blob waits for the first.
	mu       sync.Mutex
	fetching map[string]*blobFetch
}

// OpenBlobStore opens (creating if needed) a blob store rooted at dir.
func OpenBlobStore(dir string) (*BlobStore, error) {
	if err := os.MkdirAll(filepath.Join(dir, "partial"), 0o700); err != nil {
		return nil, fmt.Errorf("mesh: blob store: %w", err)
	}
	return &BlobStore{dir: dir, fetching: map[string]*blobFetch{}}, nil
}

// ValidHash reports whether h is a lowercase hex sha256.
func ValidHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	for _, c := range h {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Path is where the complete blob with this hash lives (whether or not it exists).
func (s *BlobStore) Path(hash string) string { return filepath.Join(s.dir, hash) }

func (s *BlobStore) partialPath(hash string) string {
	return filepath.Join(s.dir, "partial", hash+".part")
}

func (s *BlobStore) recordPath(hash string) string {
	return filepath.Join(s.dir, "partial", hash+".chunks")
}

// Has reports whether the complete blob is stored.
func (s *BlobStore) Has(hash string) bool {
	if !ValidHash(hash) {
		return false
	}
	_, err := os.Stat(s.Path(hash))
	return err == nil
}

// Size is the stored blob's length.
func (s *BlobStore) Size(hash string) (int64, error) {
	if !ValidHash(hash) {
		return 0, fmt.Errorf("%w: %q is not a sha256", ErrBlobNotFound, hash)
	}
	fi, err := os.Stat(s.Path(hash))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%w: %s", ErrBlobNotFound, hash)
	}
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Open opens a stored blob for reading.
func (s *BlobStore) Open(hash string) (*os.File, error) {
	if !ValidHash(hash) {
		return nil, fmt.Errorf("%w: %q is not a sha256", ErrBlobNotFound, hash)
	}
	f, err := os.Open(s.Path(hash))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrBlobNotFound, hash)
	}
	return f, err
}

// Put stores the content of r under hash, verifying it hashes to hash; nothing is
// stored if it does not. It returns the number of bytes stored.
func (s *BlobStore) Put(hash string, r io.Reader) (int64, error) {
	if !ValidHash(hash) {
		return 0, fmt.Errorf("%w: %q is not a sha256", ErrBadRequest, hash)
	}
	tmp, err := os.CreateTemp(filepath.Join(s.dir, "partial"), "put-*")
	if err != nil {
		return 0, fmt.Errorf("mesh: blob put: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(tmp, h), r, make([]byte, 1<<20))
	if err != nil {
		return n, fmt.Errorf("mesh: blob put: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != hash {
		return n, fmt.Errorf("%w: content hashes to %s, expected %s", ErrHashMismatch, got, hash)
	}
	if err := tmp.Sync(); err != nil {
		return n, fmt.Errorf("mesh: blob put: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.Path(hash)); err != nil {
		return n, fmt.Errorf("mesh: blob put: %w", err)
	}
	return n, nil
}

// BlobInfo describes a blob in the store, complete or partly fetched.
type BlobInfo struct {
	Hash string
	// Size is the complete blob's size, or what a partial fetch holds so far.
	Size int64
	// Complete is false for a fetch in progress.
	Complete bool
	// Touched is the latest modification time of its files: when it was stored,
	// re-stored (Touch) or last received a chunk.
	Touched time.Time
}

// List describes every blob in the store, complete or partial, in no set order.
func (s *BlobStore) List() ([]BlobInfo, error) {
	byHash := map[string]*BlobInfo{}
	add := func(dir string, name func(string) (string, bool), complete bool) error {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("mesh: blob list: %w", err)
		}
		for _, e := range entries {
			hash, ok := name(e.Name())
			if !ok || !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				continue // removed meanwhile
			}
			b := byHash[hash]
			if b == nil {
				b = &BlobInfo{Hash: hash}
				byHash[hash] = b
			}
			if complete {
				b.Complete, b.Size = true, fi.Size()
			} else if !b.Complete && strings.HasSuffix(e.Name(), ".part") {
				b.Size = fi.Size()
			}
			if fi.ModTime().After(b.Touched) {
				b.Touched = fi.ModTime()
			}
		}
		return nil
	}
	if err := add(s.dir, func(n string) (string, bool) { return n, ValidHash(n) }, true); err != nil {
		return nil, err
	}
	partial := func(n string) (string, bool) {
		for _, suffix := range []string{".part", ".chunks"} {
			if h, ok := strings.CutSuffix(n, suffix); ok && ValidHash(h) {
				return h, true
			}
		}
		return "", false
	}
	if err := add(filepath.Join(s.dir, "partial"), partial, false); err != nil {
		return nil, err
	}
	out := make([]BlobInfo, 0, len(byHash))
	for _, b := range byHash {
		out = append(out, *b)
	}
	return out, nil
}

// Touch marks a stored blob as just stored, as Put would: a blob that a new deploy
// reuses must not look as old as its first store to a collector going by age.
func (s *BlobStore) Touch(hash string) error {
	if !ValidHash(hash) {
		return fmt.Errorf("%w: %q is not a sha256", ErrBadRequest, hash)
	}
	now := time.Now()
	if err := os.Chtimes(s.Path(hash), now, now); err != nil {
		return fmt.Errorf("mesh: blob touch: %w", err)
	}
	return nil
}

// Remove deletes a stored blob and any partial fetch of it.
func (s *BlobStore) Remove(hash string) error {
	if !ValidHash(hash) {
		return fmt.Errorf("%w: %q is not a sha256", ErrBadRequest, hash)
	}
	var errs []error
	for _, p := range []string{s.Path(hash), s.partialPath(hash), s.recordPath(hash)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
