package mesh

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"
)

// sealedPair returns the two ends of a loopback TCP connection under the record layer,
// with the production key usage limits.
func sealedPair(t testing.TB) (*sealedConn, *sealedConn, net.Conn) {
	return sealedPairWith(t, dataKeyLimits, dataKeyLimits)
}

// sealedPairWith is sealedPair with each end's own key usage limits.
func sealedPairWith(t testing.TB, limitsA, limitsB sealedLimits) (*sealedConn, *sealedConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc := <-accepted
	t.Cleanup(func() { cc.Close(); sc.Close() })
	a := newSealed(cc, testTrafficKey(t, 1, dirClientToServer), testTrafficKey(t, 2, dirServerToClient), limitsA)
	b := newSealed(sc, testTrafficKey(t, 2, dirServerToClient), testTrafficKey(t, 1, dirClientToServer), limitsB)
	return a, b, cc
}

// testTrafficKey is a direction's key schedule from a fixed secret.
func testTrafficKey(t testing.TB, fill byte, dir string) *trafficKey {
	t.Helper()
	k, err := newTrafficKey(bytes.Repeat([]byte{fill}, sealedSecretLen), dir)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// loopbackSealed is a record layer whose two directions share one key schedule, for
// writing a stream into a buffer and reading it back.
func loopbackSealed(t testing.TB, conn io.ReadWriter, limits sealedLimits) *sealedConn {
	return newSealed(conn, testTrafficKey(t, 3, dirClientToServer), testTrafficKey(t, 3, dirClientToServer), limits)
}

// readerOf is a connection that reads stream and discards what is written.
func readerOf(stream []byte) io.ReadWriter {
	return struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(stream), io.Discard}
}

func TestSealedRoundTrip(t *testing.T) {
	a, b, _ := sealedPair(t)
	rng := rand.New(rand.NewPCG(1, 2))
	// Sizes around the record boundaries, written as a small header then a body, as
	// the tensor codec does, and read back with exact-length reads.
	for _, n := range []int{1, 100, sealedRecordSize - 1, sealedRecordSize, sealedRecordSize + 1, 2 * sealedRecordSize, 5*sealedRecordSize + 17, 25731584} {
		msg := make([]byte, n)
		for i := range msg {
			msg[i] = byte(rng.Uint32())
		}
		errc := make(chan error, 1)
		go func() {
			if _, err := a.Write([]byte{7, 7, 7}); err != nil {
				errc <- err
				return
			}
			if _, err := a.Write(msg); err != nil {
				errc <- err
				return
			}
			errc <- a.flush()
		}()
		head := make([]byte, 3)
		got := make([]byte, n)
		if _, err := io.ReadFull(b, head); err != nil {
			t.Fatalf("size %d: head: %v", n, err)
		}
		if _, err := io.ReadFull(b, got); err != nil {
			t.Fatalf("size %d: body: %v", n, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("size %d: write: %v", n, err)
		}
		if !bytes.Equal(head, []byte{7, 7, 7}) || !bytes.Equal(got, msg) {
			t.Fatalf("size %d: data differs", n)
		}
	}
}

func TestSealedRejectsTampering(t *testing.T) {
	var wire bytes.Buffer
	w := loopbackSealed(t, &wire, dataKeyLimits)
	_, _ = w.Write([]byte("tensor bytes"))
	_ = w.flush()
	_, _ = w.Write([]byte("second record"))
	_ = w.flush()
	good := bytes.Clone(wire.Bytes())

	read := func(stream []byte) error {
		r := loopbackSealed(t, readerOf(stream), dataKeyLimits)
		buf := make([]byte, 64)
		for {
			if _, err := r.Read(buf); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}
	if err := read(good); err != nil {
		t.Fatalf("untouched stream: %v", err)
	}
	flipped := bytes.Clone(good)
	flipped[sealedHeaderLen+2] ^= 1
	if err := read(flipped); !errors.Is(err, errSealedRecord) {
		t.Fatalf("flipped bit: got %v, want an authentication failure", err)
	}
	// Records swapped: the counter nonce catches reordering.
	first := sealedHeaderLen + len("tensor bytes") + sealedTagLen
	swapped := append(bytes.Clone(good[first:]), good[:first]...)
	if err := read(swapped); !errors.Is(err, errSealedRecord) {
		t.Fatalf("reordered records: got %v, want an authentication failure", err)
	}
	huge := append(append(bytes.Clone(good[:4]), recordData, 0xff, 0xff, 0xff), good[8:]...)
	if err := read(huge); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized record: got %v, want ErrFrameTooLarge", err)
	}
}

// FuzzSealedRead feeds arbitrary bytes to both read paths (record by record, and a
// read spanning several records on parallel workers) of a receiver whose key usage
// limit is low enough to be reached, after seeds that hold key updates.
func FuzzSealedRead(f *testing.F) {
	limits := fuzzSealedLimits
	var wire bytes.Buffer
	w := loopbackSealed(f, &wire, limits)
	for _, msg := range []string{"tensor bytes", "more tensor bytes", "and a third record"} {
		_, _ = w.Write([]byte(msg))
		_ = w.flush()
	}
	f.Add(wire.Bytes())
	f.Add([]byte{0, 0, 0, 0, recordKeyUpdate, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, size := range []int{64, 3 * sealedRecordSize} {
			r := loopbackSealed(t, readerOf(data), limits)
			buf := make([]byte, size)
			for range 4 {
				if _, err := r.Read(buf); err != nil {
					break
				}
			}
		}
	})
}

// fuzzSealedLimits make a writer move to a new key every two small records and a
// reader give up after a few dozen blocks under one key.
var fuzzSealedLimits = sealedLimits{rekeyBlocks: 4, maxBlocks: 4 + recordBlocks(64) + 1}
