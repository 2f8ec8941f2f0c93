package mesh

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"
)

// sealedPair returns the two ends of a loopback TCP connection under the record layer.
func sealedPair(t testing.TB) (*sealedConn, *sealedConn, net.Conn) {
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
	k1, k2 := bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 16)
	a, err := sealedFromKeys(cc, k1, k2)
	if err != nil {
		t.Fatal(err)
	}
	b, err := sealedFromKeys(sc, k2, k1)
	if err != nil {
		t.Fatal(err)
	}
	return a, b, cc
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
	k := bytes.Repeat([]byte{3}, 16)
	var wire bytes.Buffer
	w, _ := sealedFromKeys(&wire, k, k)
	_, _ = w.Write([]byte("tensor bytes"))
	_ = w.flush()
	_, _ = w.Write([]byte("second record"))
	_ = w.flush()
	good := bytes.Clone(wire.Bytes())

	read := func(stream []byte) error {
		r, _ := sealedFromKeys(struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(stream), io.Discard}, k, k)
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
	flipped[6] ^= 1
	if err := read(flipped); !errors.Is(err, errSealedRecord) {
		t.Fatalf("flipped bit: got %v, want an authentication failure", err)
	}
	// Records swapped: the counter nonce catches reordering.
	first := 4 + len("tensor bytes") + 16
	swapped := append(bytes.Clone(good[first:]), good[:first]...)
	if err := read(swapped); !errors.Is(err, errSealedRecord) {
		t.Fatalf("reordered records: got %v, want an authentication failure", err)
	}
	huge := append([]byte{0xff, 0xff, 0xff, 0xff}, good[4:]...)
	if err := read(huge); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized record: got %v, want ErrFrameTooLarge", err)
	}
}

func FuzzSealedRead(f *testing.F) {
	k := bytes.Repeat([]byte{3}, 16)
	var wire bytes.Buffer
	w, _ := sealedFromKeys(&wire, k, k)
	_, _ = w.Write([]byte("tensor bytes"))
	_ = w.flush()
	f.Add(wire.Bytes())
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, _ := sealedFromKeys(struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(data), io.Discard}, k, k)
		buf := make([]byte, 3*sealedRecordSize)
		for range 4 {
			if _, err := r.Read(buf); err != nil {
				return
			}
		}
	})
}
