// Package badgerstore is a hashicorp/raft LogStore and StableStore on
// badger/v4. No maintained badger-v4 raft store exists, so this one is written
// here, kept small, and held to raft's contract by its tests.
//
// Every write is synced (badger's SyncWrites) before it returns: raft assumes
// that a log entry or a vote it stored survives a crash, and a node that forgets
// its vote can vote twice in one term.
package badgerstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
)

var (
	// ErrKeyNotFound is returned by Get and GetUint64 for a missing key. raft
	// compares the message with "not found" (raft api.go, raft.go), so the text
	// is part of the contract.
	ErrKeyNotFound = errors.New("not found")
	// ErrCorrupt means the directory could not be opened as a badger database.
	ErrCorrupt = errors.New("badgerstore: cannot open raft store (damaged or incompatible data)")
	// ErrBadEntry means a stored log entry could not be decoded.
	ErrBadEntry = errors.New("badgerstore: malformed log entry")
)

// Key prefixes keep the log and the stable keys apart in one keyspace; log keys
// are the prefix then the index big-endian, so badger's key order is log order.
const (
	prefixLog    byte = 'l'
	prefixStable byte = 's'
)

// logFormat versions the encoding of a raft.Log value.
const logFormat byte = 1

// Store implements raft.LogStore and raft.StableStore.
type Store struct {
	db     *badger.DB
	logger *slog.Logger
	stop   chan struct{}
	done   chan struct{}
}

var (
	_ raft.LogStore    = (*Store)(nil)
	_ raft.StableStore = (*Store)(nil)
)

// Options tunes Open.
type Options struct {
	// Logger receives badger's own log lines (at debug level for its info).
	Logger *slog.Logger
	// GCInterval is how often the value log is garbage-collected. Entries
	// over badger's 1 MiB value threshold live in the value log, and raft
	// deletes old entries after every snapshot, so without GC it only grows.
	// Default 5m.
	GCInterval time.Duration
}

// Open opens or creates the store in dir. A directory badger cannot open
// returns an error wrapping ErrCorrupt, never a panic.
func Open(dir string, o Options) (s *Store, err error) {
	logger := o.Logger
	if logger == nil {
		logger = slog.Default()
	}
	// The raft log is small and written often: small memtables and caches keep
	// several in-process nodes cheap; sync every write for durability.
	opts := badger.DefaultOptions(dir).
		WithSyncWrites(true).
		WithLogger(badgerLogger{logger.With("component", "badger")}).
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithNumCompactors(2).
		WithValueLogFileSize(64 << 20).
		WithMetricsEnabled(false)
	defer func() {
		// badger panics on some kinds of damage; a node must refuse to start with
		// a message, not crash-loop.
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, dir, r)
		}
	}()
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, dir, err)
	}
	interval := o.GCInterval
	if interval <= 0 {
		interval = 5 * time.Minute
	}
	s = &Store{db: db, logger: logger, stop: make(chan struct{}), done: make(chan struct{})}
	go s.gcLoop(interval)
	return s, nil
}

// Close stops the value-log GC, then flushes and closes the database.
func (s *Store) Close() error {
	close(s.stop)
	<-s.done
	return s.db.Close()
}

func (s *Store) gcLoop(interval time.Duration) {
	defer close(s.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		// Rewrite value-log files that are at least half garbage, until none is.
		for {
			err := s.db.RunValueLogGC(0.5)
			if err != nil {
				if !errors.Is(err, badger.ErrNoRewrite) {
					s.logger.Warn("raft store value log GC", "component", "badger", "err", err)
				}
				break
			}
			select {
			case <-s.stop:
				return
			default:
			}
		}
	}
}

func logKey(index uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefixLog
	binary.BigEndian.PutUint64(k[1:], index)
	return k
}

func stableKey(key []byte) []byte {
	return append([]byte{prefixStable}, key...)
}

// FirstIndex implements raft.LogStore; 0 when the log is empty.
func (s *Store) FirstIndex() (uint64, error) {
	return s.edgeIndex(false)
}

// LastIndex implements raft.LogStore; 0 when the log is empty.
func (s *Store) LastIndex() (uint64, error) {
	return s.edgeIndex(true)
}

func (s *Store) edgeIndex(last bool) (uint64, error) {
	var idx uint64
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.Reverse = last
		opts.Prefix = []byte{prefixLog}
		it := txn.NewIterator(opts)
		defer it.Close()
		seek := []byte{prefixLog}
		if last {
			seek = logKey(^uint64(0))
		}
		it.Seek(seek)
		if it.Valid() {
			k := it.Item().Key()
			if len(k) != 9 {
				return fmt.Errorf("%w: log key of %d bytes", ErrBadEntry, len(k))
			}
			idx = binary.BigEndian.Uint64(k[1:])
		}
		return nil
	})
	return idx, err
}

// GetLog implements raft.LogStore; raft.ErrLogNotFound when absent.
func (s *Store) GetLog(index uint64, out *raft.Log) error {
	return s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(logKey(index))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return raft.ErrLogNotFound
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			return decodeLog(v, index, out)
		})
	})
}

// StoreLog implements raft.LogStore.
func (s *Store) StoreLog(l *raft.Log) error {
	return s.StoreLogs([]*raft.Log{l})
}

// StoreLogs implements raft.LogStore. The entries go in one transaction unless
// they exceed badger's transaction size, in which case they are committed in
// order in several; a crash in between leaves a prefix, which raft repairs.
func (s *Store) StoreLogs(logs []*raft.Log) error {
	txn := s.db.NewTransaction(true)
	defer func() { txn.Discard() }()
	for _, l := range logs {
		k, v := logKey(l.Index), encodeLog(l)
		err := txn.Set(k, v)
		if errors.Is(err, badger.ErrTxnTooBig) {
			if err := txn.Commit(); err != nil {
				return err
			}
			txn = s.db.NewTransaction(true)
			err = txn.Set(k, v)
		}
		if err != nil {
			return err
		}
	}
	return txn.Commit()
}

// DeleteRange implements raft.LogStore: deletes indexes min..max inclusive.
func (s *Store) DeleteRange(min, max uint64) error {
	if min > max {
		return nil
	}
	var keys [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.Prefix = []byte{prefixLog}
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek(logKey(min)); it.Valid(); it.Next() {
			k := it.Item().KeyCopy(nil)
			if binary.BigEndian.Uint64(k[1:]) > max {
				break
			}
			keys = append(keys, k)
		}
		return nil
	})
	if err != nil {
		return err
	}
	txn := s.db.NewTransaction(true)
	defer func() { txn.Discard() }()
	for _, k := range keys {
		err := txn.Delete(k)
		if errors.Is(err, badger.ErrTxnTooBig) {
			if err := txn.Commit(); err != nil {
				return err
			}
			txn = s.db.NewTransaction(true)
			err = txn.Delete(k)
		}
		if err != nil {
			return err
		}
	}
	return txn.Commit()
}

// Set implements raft.StableStore.
func (s *Store) Set(key, val []byte) error {
	return s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(stableKey(key), append([]byte(nil), val...))
	})
}

// Get implements raft.StableStore; ErrKeyNotFound when absent.
func (s *Store) Get(key []byte) ([]byte, error) {
	var out []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(stableKey(key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return ErrKeyNotFound
		}
		if err != nil {
			return err
		}
		out, err = item.ValueCopy(nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = []byte{}
	}
	return out, nil
}

// SetUint64 implements raft.StableStore.
func (s *Store) SetUint64(key []byte, val uint64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], val)
	return s.Set(key, b[:])
}

// GetUint64 implements raft.StableStore; 0 and ErrKeyNotFound when absent, as
// raft-boltdb does.
func (s *Store) GetUint64(key []byte) (uint64, error) {
	b, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("badgerstore: value of %q is %d bytes, want 8", key, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// encodeLog lays out a raft.Log: format byte, uvarint term, type byte,
// uvarint-length data, uvarint-length extensions, varint AppendedAt in unix
// nanoseconds (0 = zero time). The index is the key and is not repeated.
func encodeLog(l *raft.Log) []byte {
	b := make([]byte, 0, 32+len(l.Data)+len(l.Extensions))
	b = append(b, logFormat)
	b = binary.AppendUvarint(b, l.Term)
	b = append(b, byte(l.Type))
	b = binary.AppendUvarint(b, uint64(len(l.Data)))
	b = append(b, l.Data...)
	b = binary.AppendUvarint(b, uint64(len(l.Extensions)))
	b = append(b, l.Extensions...)
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	return binary.AppendVarint(b, at)
}

func decodeLog(b []byte, index uint64, out *raft.Log) error {
	bad := func(what string) error {
		return fmt.Errorf("%w: index %d: %s", ErrBadEntry, index, what)
	}
	if len(b) < 1 || b[0] != logFormat {
		return bad("unknown format")
	}
	b = b[1:]
	term, n := binary.Uvarint(b)
	if n <= 0 || len(b) < n+1 {
		return bad("term")
	}
	b = b[n:]
	typ := raft.LogType(b[0])
	b = b[1:]
	readBytes := func() ([]byte, bool) {
		l, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < l {
			return nil, false
		}
		v := b[n : n+int(l)]
		b = b[n+int(l):]
		if l == 0 {
			return nil, true
		}
		return append([]byte(nil), v...), true
	}
	data, ok := readBytes()
	if !ok {
		return bad("data")
	}
	ext, ok := readBytes()
	if !ok {
		return bad("extensions")
	}
	at, n := binary.Varint(b)
	if n <= 0 || n != len(b) {
		return bad("appended-at")
	}
	*out = raft.Log{Index: index, Term: term, Type: typ, Data: data, Extensions: ext}
	if at != 0 {
		out.AppendedAt = time.Unix(0, at)
	}
	return nil
}

// badgerLogger sends badger's printf-style lines to slog; badger's info lines
// are routine (compactions, replays) and go to debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(line(f, a)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(line(f, a)) }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug(line(f, a)) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.l.Debug(line(f, a)) }

func line(f string, a []any) string {
	return strings.TrimRight(fmt.Sprintf(f, a...), "\n")
}
