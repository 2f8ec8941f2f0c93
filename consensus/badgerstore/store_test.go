package badgerstore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, badgerFailedOpenLeaks()...)
}

// badgerFailedOpenLeaks lists the goroutines badger v4.9.6 leaves behind when
// Open fails after starting its cache monitor (db.go: the error paths after
// monitorCache never signal closers.cacheHealth). Only TestOpenCorrupt
// triggers them; a node refuses to start in that case, so the leak ends with
// the process.
func badgerFailedOpenLeaks() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/dgraph-io/badger/v4.(*DB).monitorCache"),
		goleak.IgnoreTopFunction("github.com/dgraph-io/ristretto/v2/z.(*AllocatorPool).freeupAllocators"),
	}
}

func openT(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return s
}

func mkLog(i uint64) *raft.Log {
	return &raft.Log{
		Index:      i,
		Term:       i/10 + 1,
		Type:       raft.LogCommand,
		Data:       []byte{byte(i), byte(i >> 8), 'x'},
		Extensions: []byte("ext"),
		AppendedAt: time.Unix(1700000000, int64(i)).UTC(),
	}
}

func wantIndexes(t *testing.T, s *Store, first, last uint64) {
	t.Helper()
	f, err := s.FirstIndex()
	if err != nil || f != first {
		t.Fatalf("FirstIndex = %d, %v; want %d", f, err, first)
	}
	l, err := s.LastIndex()
	if err != nil || l != last {
		t.Fatalf("LastIndex = %d, %v; want %d", l, err, last)
	}
}

func wantLog(t *testing.T, s *Store, i uint64) {
	t.Helper()
	var got raft.Log
	if err := s.GetLog(i, &got); err != nil {
		t.Fatalf("GetLog(%d): %v", i, err)
	}
	want := mkLog(i)
	if got.Index != want.Index || got.Term != want.Term || got.Type != want.Type ||
		!bytes.Equal(got.Data, want.Data) || !bytes.Equal(got.Extensions, want.Extensions) ||
		!got.AppendedAt.Equal(want.AppendedAt) {
		t.Fatalf("GetLog(%d) = %+v, want %+v", i, got, *want)
	}
}

func wantMissing(t *testing.T, s *Store, i uint64) {
	t.Helper()
	var got raft.Log
	if err := s.GetLog(i, &got); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("GetLog(%d) err = %v, want raft.ErrLogNotFound", i, err)
	}
}

// TestLogStoreContract walks every LogStore method through empty store, single
// and batch writes, gaps, partial and whole DeleteRange, and reopening.
func TestLogStoreContract(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir)

	wantIndexes(t, s, 0, 0)
	wantMissing(t, s, 1)

	if err := s.StoreLog(mkLog(1)); err != nil {
		t.Fatal(err)
	}
	wantIndexes(t, s, 1, 1)
	wantLog(t, s, 1)

	var batch []*raft.Log
	for i := uint64(2); i <= 300; i++ {
		batch = append(batch, mkLog(i))
	}
	if err := s.StoreLogs(batch); err != nil {
		t.Fatal(err)
	}
	wantIndexes(t, s, 1, 300)
	for _, i := range []uint64{1, 2, 150, 255, 256, 257, 300} {
		wantLog(t, s, i)
	}
	wantMissing(t, s, 301)

	// A log with nil data and zero time survives the round trip as such.
	bare := &raft.Log{Index: 301, Term: 31, Type: raft.LogNoop}
	if err := s.StoreLog(bare); err != nil {
		t.Fatal(err)
	}
	var got raft.Log
	if err := s.GetLog(301, &got); err != nil || got.Data != nil || !got.AppendedAt.IsZero() || got.Type != raft.LogNoop || got.Term != 31 {
		t.Fatalf("bare log round trip = %+v, %v", got, err)
	}

	// A gap: indexes 302..399 absent, 400 present.
	if err := s.StoreLog(mkLog(400)); err != nil {
		t.Fatal(err)
	}
	wantIndexes(t, s, 1, 400)
	wantMissing(t, s, 350)
	wantLog(t, s, 400)

	// Compaction from the front (what raft does after a snapshot).
	if err := s.DeleteRange(1, 100); err != nil {
		t.Fatal(err)
	}
	wantIndexes(t, s, 101, 400)
	wantMissing(t, s, 100)
	wantLog(t, s, 101)

	// Partial range in the middle, spanning the gap.
	if err := s.DeleteRange(290, 350); err != nil {
		t.Fatal(err)
	}
	wantMissing(t, s, 290)
	wantMissing(t, s, 301)
	wantLog(t, s, 289)
	wantIndexes(t, s, 101, 400)

	// Truncation from the back (conflicting suffix replaced by a new leader).
	if err := s.DeleteRange(380, 1000); err != nil {
		t.Fatal(err)
	}
	wantIndexes(t, s, 101, 289)

	// min > max deletes nothing; deleting an absent range is fine.
	if err := s.DeleteRange(200, 150); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(5000, 6000); err != nil {
		t.Fatal(err)
	}
	wantIndexes(t, s, 101, 289)

	// Overwrite an index with a new term.
	over := mkLog(289)
	over.Term = 99
	if err := s.StoreLog(over); err != nil {
		t.Fatal(err)
	}
	if err := s.GetLog(289, &got); err != nil || got.Term != 99 {
		t.Fatalf("overwritten log = %+v, %v", got, err)
	}

	// Reopen: everything is still there.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir)
	wantIndexes(t, s, 101, 289)
	wantLog(t, s, 101)
	wantLog(t, s, 200)
	wantMissing(t, s, 290)

	// Whole range.
	if err := s.DeleteRange(0, ^uint64(0)); err != nil {
		t.Fatal(err)
	}
	wantIndexes(t, s, 0, 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir)
	defer s.Close()
	wantIndexes(t, s, 0, 0)
}

// TestLogStoreLargeBatch stores more than one badger transaction holds.
func TestLogStoreLargeBatch(t *testing.T) {
	s := openT(t, t.TempDir())
	defer s.Close()
	var batch []*raft.Log
	payload := bytes.Repeat([]byte("p"), 64<<10)
	for i := uint64(1); i <= 400; i++ { // 25 MiB, above the 8 MiB memtable's txn limit
		batch = append(batch, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: payload})
	}
	if err := s.StoreLogs(batch); err != nil {
		t.Fatal(err)
	}
	wantIndexes(t, s, 1, 400)
	var got raft.Log
	if err := s.GetLog(400, &got); err != nil || !bytes.Equal(got.Data, payload) {
		t.Fatalf("GetLog(400): %v, %d bytes", err, len(got.Data))
	}
	if err := s.DeleteRange(1, 400); err != nil {
		t.Fatal(err)
	}
	wantIndexes(t, s, 0, 0)
}

// TestLogStoreLargeEntry stores entries above badger's value threshold (they
// go to the value log) and runs the value-log GC over them.
func TestLogStoreLargeEntry(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{GCInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("B"), 3<<20)
	for i := uint64(1); i <= 4; i++ {
		if err := s.StoreLog(&raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: big}); err != nil {
			t.Fatalf("StoreLog(%d, 3 MiB): %v", i, err)
		}
	}
	if err := s.DeleteRange(1, 3); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // a few GC rounds
	var got raft.Log
	if err := s.GetLog(4, &got); err != nil || !bytes.Equal(got.Data, big) {
		t.Fatalf("GetLog(4): %v (%d bytes)", err, len(got.Data))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir)
	defer s.Close()
	wantIndexes(t, s, 4, 4)
	if err := s.GetLog(4, &got); err != nil || !bytes.Equal(got.Data, big) {
		t.Fatalf("GetLog(4) after reopen: %v (%d bytes)", err, len(got.Data))
	}
}

// TestStableStoreContract checks Set/Get/SetUint64/GetUint64 including the
// "not found" semantics raft relies on, and persistence across reopen.
func TestStableStoreContract(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir)

	if _, err := s.Get([]byte("missing")); err == nil || err.Error() != "not found" || !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("Get(missing) err = %v, want the \"not found\" error raft checks for", err)
	}
	if v, err := s.GetUint64([]byte("CurrentTerm")); err == nil || err.Error() != "not found" || v != 0 {
		t.Fatalf("GetUint64(missing) = %d, %v; want 0, not found", v, err)
	}

	if err := s.Set([]byte("LastVoteCand"), []byte("peer-a")); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("empty"), []byte{}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 42); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("big"), ^uint64(0)); err != nil {
		t.Fatal(err)
	}
	// Stable keys live beside log keys without colliding with them.
	if err := s.StoreLog(mkLog(7)); err != nil {
		t.Fatal(err)
	}

	check := func() {
		t.Helper()
		if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "peer-a" {
			t.Fatalf("Get = %q, %v", v, err)
		}
		if v, err := s.Get([]byte("empty")); err != nil || len(v) != 0 {
			t.Fatalf("Get(empty) = %q, %v", v, err)
		}
		if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 42 {
			t.Fatalf("GetUint64 = %d, %v", v, err)
		}
		if v, err := s.GetUint64([]byte("big")); err != nil || v != ^uint64(0) {
			t.Fatalf("GetUint64(big) = %d, %v", v, err)
		}
		wantIndexes(t, s, 7, 7)
	}
	check()

	if err := s.SetUint64([]byte("CurrentTerm"), 43); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 42); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir)
	defer s.Close()
	check()
}

// TestOpenCorrupt damages the database files and expects Open to refuse with
// ErrCorrupt, without panicking.
func TestOpenCorrupt(t *testing.T) {
	for _, file := range []string{"MANIFEST", "KEYREGISTRY"} {
		t.Run(file, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir)
			var batch []*raft.Log
			for i := uint64(1); i <= 50; i++ {
				batch = append(batch, mkLog(i))
			}
			if err := s.StoreLogs(batch); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, file)
			if err := os.WriteFile(path, bytes.Repeat([]byte{0xde, 0xad}, 64), 0o600); err != nil {
				t.Fatal(err)
			}
			s2, err := Open(dir, Options{})
			if err == nil {
				s2.Close()
				t.Fatalf("Open succeeded on a directory with a garbage %s", file)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open err = %v, want ErrCorrupt", err)
			}
			t.Logf("Open refused: %v", err)
		})
	}
	t.Run("not-a-directory", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(path, Options{}); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open(file) err = %v, want ErrCorrupt", err)
		}
	})
}
