package mesh

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
)

// fullRecordBlocks is what one full data record costs its key.
var fullRecordBlocks = recordBlocks(sealedRecordSize)

// rekeyMessage is the i-th message one end sends in the rekey tests: a length both ends
// know and bytes the reader can regenerate.
func rekeyMessage(seed uint64, i int) []byte {
	sizes := []int{3, 25731584, 5*sealedRecordSize + 17, 100, 2 * sealedRecordSize, sealedRecordSize - 1, 70000}
	rng := rand.New(rand.NewPCG(seed, uint64(i)))
	msg := make([]byte, sizes[i%len(sizes)])
	for j := range msg {
		msg[j] = byte(rng.Uint32())
	}
	return msg
}

const rekeyMessages = 14

// sendMessages writes rekeyMessages messages, each flushed.
func sendMessages(c *sealedConn, seed uint64) error {
	for i := range rekeyMessages {
		if _, err := c.Write(rekeyMessage(seed, i)); err != nil {
			return err
		}
		if err := c.flush(); err != nil {
			return err
		}
	}
	return nil
}

// receiveMessages reads the messages sendMessages wrote, with exact-length reads as the
// data connection's callers do, and checks every byte.
func receiveMessages(c *sealedConn, seed uint64) (int, error) {
	total := 0
	for i := range rekeyMessages {
		want := rekeyMessage(seed, i)
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil {
			return total, fmt.Errorf("message %d: %w", i, err)
		}
		if !bytes.Equal(got, want) {
			return total, fmt.Errorf("message %d (%d bytes) differs", i, len(want))
		}
		total += len(want)
	}
	return total, nil
}

// Both ends send and receive at once, in messages that take the parallel seal and open
// workers and the record-by-record paths, under limits that move the keys every few
// records, every record, and (below one record) before each record.
func TestSealedMovesKeysInBothDirections(t *testing.T) {
	for _, tc := range []struct {
		name        string
		rekeyBlocks uint64
	}{
		{"three records per key", 3 * fullRecordBlocks},
		{"one record per key", fullRecordBlocks},
		{"limit below one record", 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The receiver's limit is as tight as a following sender allows: the most
			// one key seals, plus its key-update record.
			limits := sealedLimits{rekeyBlocks: tc.rekeyBlocks, maxBlocks: max(tc.rekeyBlocks, fullRecordBlocks) + 1}
			a, b, _ := sealedPairWith(t, limits, limits)
			errs := make(chan error, 4)
			sizes := make(chan int, 2)
			go func() { errs <- sendMessages(a, 1) }()
			go func() { errs <- sendMessages(b, 2) }()
			for _, r := range []struct {
				c    *sealedConn
				seed uint64
			}{{b, 1}, {a, 2}} {
				go func() {
					n, err := receiveMessages(r.c, r.seed)
					sizes <- n
					errs <- err
				}()
			}
			for range 4 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			sent := <-sizes
			// Each key seals at most max(rekeyBlocks, one record)+1 blocks, so moving this
			// many bytes takes at least this many keys.
			minEpochs := uint32(uint64(sent)/16/limits.maxBlocks) - 1
			for _, dir := range []struct {
				name       string
				send, recv *trafficKey
			}{{"a to b", a.send, b.recv}, {"b to a", b.send, a.recv}} {
				if dir.send.epoch != dir.recv.epoch {
					t.Errorf("%s: sender at key epoch %d, receiver at %d", dir.name, dir.send.epoch, dir.recv.epoch)
				}
				if dir.send.epoch < minEpochs {
					t.Errorf("%s: %d key epochs for %d bytes, want at least %d", dir.name, dir.send.epoch, sent, minEpochs)
				}
			}
		})
	}
}

// A peer that goes on sealing under one key past the receiver's limit is cut off: the
// receiver opens nothing past the limit, and its read side stays failed.
func TestSealedDisconnectsPeerThatDoesNotMoveKeys(t *testing.T) {
	for _, tc := range []struct {
		name string
		read func(c *sealedConn) (int, error)
	}{
		{"parallel workers", func(c *sealedConn) (int, error) { return io.ReadFull(c, make([]byte, 10*sealedRecordSize)) }},
		{"record by record", func(c *sealedConn) (int, error) {
			total := 0
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				total += n
				if err != nil {
					return total, err
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stubborn := sealedLimits{rekeyBlocks: math.MaxUint64, maxBlocks: math.MaxUint64}
			strict := sealedLimits{rekeyBlocks: fullRecordBlocks, maxBlocks: 2*fullRecordBlocks + 1}
			a, b, conn := sealedPairWith(t, stubborn, strict)
			// Without the limit the record-by-record reader would wait for more forever.
			_ = b.conn.(net.Conn).SetReadDeadline(time.Now().Add(20 * time.Second))
			written := make(chan error, 1)
			go func() {
				_, err := a.Write(make([]byte, 10*sealedRecordSize))
				written <- err
			}()
			n, err := tc.read(b)
			if !errors.Is(err, errKeyExhausted) {
				t.Fatalf("read %d bytes, then %v; want the key usage error", n, err)
			}
			if n > 2*sealedRecordSize {
				t.Fatalf("%d bytes opened under one key, limit %d blocks", n, strict.maxBlocks)
			}
			if _, again := b.Read(make([]byte, 64)); !errors.Is(again, errKeyExhausted) {
				t.Fatalf("read after the failure: %v; want the same failure", again)
			}
			conn.Close()
			<-written
		})
	}
}

// wireRecords splits a sealed stream into its records.
func wireRecords(t *testing.T, stream []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(stream) > 0 {
		h := parseHeader(stream)
		n := sealedHeaderLen + h.size + sealedTagLen
		out = append(out, stream[:n])
		stream = stream[n:]
	}
	return out
}

// readStream reads a whole stream record by record and returns the plaintext it
// yielded and the error that stopped it (nil at a clean end).
func readStream(t *testing.T, stream [][]byte) (string, error) {
	t.Helper()
	r := loopbackSealed(t, readerOf(bytes.Join(stream, nil)), dataKeyLimits)
	var got []byte
	buf := make([]byte, 64)
	for {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if errors.Is(err, io.EOF) {
			return string(got), nil
		}
		if err != nil {
			return string(got), err
		}
	}
}

// Once a key is retired, nothing sealed under it is accepted again: not a replayed
// record, not a replayed key update, not a record relabelled with the current epoch;
// and a record under a key its sender never announced is refused too.
func TestSealedRejectsRecordsOfARetiredKey(t *testing.T) {
	var wire bytes.Buffer
	// Two blocks per key: every small record after the first goes under a new key.
	w := loopbackSealed(t, &wire, sealedLimits{rekeyBlocks: 2, maxBlocks: 3})
	for _, msg := range []string{"r0", "r1", "r2"} {
		if _, err := w.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if err := w.flush(); err != nil {
			t.Fatal(err)
		}
	}
	recs := wireRecords(t, wire.Bytes())
	if len(recs) != 5 {
		t.Fatalf("%d records on the wire, want r0 K r1 K r2", len(recs))
	}
	r0, k0, r1, k1, r2 := recs[0], recs[1], recs[2], recs[3], recs[4]
	for i, want := range []struct {
		kind  byte
		epoch uint32
	}{{recordData, 0}, {recordKeyUpdate, 0}, {recordData, 1}, {recordKeyUpdate, 1}, {recordData, 2}} {
		if h := parseHeader(recs[i]); h.kind != want.kind || h.epoch != want.epoch {
			t.Fatalf("record %d: kind %q epoch %d, want %q epoch %d", i, h.kind, h.epoch, want.kind, want.epoch)
		}
	}
	relabelled := bytes.Clone(r0)
	binary.BigEndian.PutUint32(relabelled, 1)
	forgedUpdate := bytes.Clone(k0)
	forgedUpdate[sealedHeaderLen] ^= 1

	if got, err := readStream(t, recs); err != nil || got != "r0r1r2" {
		t.Fatalf("untouched stream: %q, %v", got, err)
	}
	for _, tc := range []struct {
		name    string
		stream  [][]byte
		wantErr error
		wantGot string
	}{
		{"record of the previous key replayed", [][]byte{r0, k0, r0}, errKeyEpoch, "r0"},
		{"record of an old key replayed later", [][]byte{r0, k0, r1, k1, r2, r0}, errKeyEpoch, "r0r1r2"},
		{"key update replayed", [][]byte{r0, k0, r1, k0}, errKeyEpoch, "r0r1"},
		{"old record relabelled with the current epoch", [][]byte{r0, k0, relabelled}, errSealedRecord, "r0"},
		{"key update dropped", [][]byte{r0, r1}, errKeyEpoch, "r0"},
		{"key update forged", [][]byte{r0, forgedUpdate, r1}, errSealedRecord, "r0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readStream(t, tc.stream)
			if !errors.Is(err, tc.wantErr) || got != tc.wantGot {
				t.Fatalf("read %q, then %v; want %q, then %v", got, err, tc.wantGot, tc.wantErr)
			}
		})
	}
}

// Keys are separate per direction and per epoch: a record sealed under one opens under
// no other, and moving on erases the secret the old key came from.
func TestTrafficKeysAreSeparate(t *testing.T) {
	type keyID struct {
		dir   string
		epoch uint32
	}
	keyAt := func(id keyID) *trafficKey {
		k := testTrafficKey(t, 9, id.dir)
		for k.epoch < id.epoch {
			old := k.secret
			if err := k.advance(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(old, make([]byte, sealedSecretLen)) {
				t.Fatalf("epoch %d's secret still in memory after the move", k.epoch-1)
			}
		}
		return k
	}
	ids := []keyID{{dirClientToServer, 0}, {dirClientToServer, 1}, {dirClientToServer, 2}, {dirServerToClient, 0}, {dirServerToClient, 1}}
	for _, sealer := range ids {
		aead, nonce := keyAt(sealer).reserve(5)
		sealed := aead.Seal(nil, nonce, []byte("hello"), nil)
		for _, opener := range ids {
			aead, nonce := keyAt(opener).reserve(5)
			_, err := aead.Open(nil, nonce, sealed, nil)
			if (err == nil) != (sealer == opener) {
				t.Errorf("sealed under %v, opened under %v: err %v", sealer, opener, err)
			}
		}
	}
}

// Through the mesh's own data connections, a stage call moving a 25.7 MB tensor each
// way crosses dozens of key moves in both directions and returns the bytes intact.
func TestStageCallAcrossKeyMoves(t *testing.T) {
	saved := dataKeyLimits
	dataKeyLimits = sealedLimits{rekeyBlocks: fullRecordBlocks, maxBlocks: fullRecordBlocks + 1}
	t.Cleanup(func() { dataKeyLimits = saved })
	a, b := pair(t)
	b.HandleStage(func(ctx context.Context, req *StageRequest) ([]tensor.Tensor, error) {
		x := req.Tensors[0]
		out := tensor.Tensor{Name: "echo", DType: x.DType, Shape: x.Shape, Data: bytes.Clone(x.Data)}
		for i := range out.Data {
			out.Data[i] ^= 0x5a
		}
		return []tensor.Tensor{out}, nil
	})
	logits := tensor.Tensor{Name: "logits", DType: tensor.Float32, Shape: []int64{1, 128, 50257}, Data: make([]byte, 4*128*50257)}
	for i := range logits.Data {
		logits.Data[i] = byte(i * 7)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for call := range 3 {
		out, err := a.CallStage(ctx, b.ID(), &StageRequest{RequestID: fmt.Sprint("rekey-", call), Model: "m", Version: "1", Stage: 1, Tensors: []tensor.Tensor{logits}})
		if err != nil {
			t.Fatalf("call %d: %v", call, err)
		}
		if len(out) != 1 || len(out[0].Data) != len(logits.Data) {
			t.Fatalf("call %d: got %d tensors", call, len(out))
		}
		for i, v := range out[0].Data {
			if v != logits.Data[i]^0x5a {
				t.Fatalf("call %d: byte %d is %#x, want %#x", call, i, v, logits.Data[i]^0x5a)
			}
		}
	}
	// The calls ran one after another on one pooled connection; each moved 25 records
	// each way, one key per record.
	a.pool.mu.Lock()
	defer a.pool.mu.Unlock()
	idle := a.pool.idle[b.ID()]
	if len(idle) != 1 {
		t.Fatalf("%d idle data connections to the peer, want 1", len(idle))
	}
	if send, recv := idle[0].sc.send.epoch, idle[0].sc.recv.epoch; send < 3*24 || recv < 3*24 {
		t.Fatalf("client at send key epoch %d and receive key epoch %d, want at least %d each", send, recv, 3*24)
	}
}

// A data connection whose peer seals past the receiver's limit without moving keys is
// closed by the receiver before the request reaches the handler; the caller gets an
// error and the connection is not pooled. Both ends here refuse to move keys and allow
// two records per key.
func TestDataConnClosedOnPeerPastKeyLimit(t *testing.T) {
	saved := dataKeyLimits
	dataKeyLimits = sealedLimits{rekeyBlocks: math.MaxUint64, maxBlocks: 2*fullRecordBlocks + 1}
	t.Cleanup(func() { dataKeyLimits = saved })
	a, b := pair(t)
	var handled atomic.Int32
	b.HandleStage(func(ctx context.Context, req *StageRequest) ([]tensor.Tensor, error) {
		handled.Add(1)
		return req.Tensors, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	big := tensor.Tensor{Name: "x", DType: tensor.Float32, Shape: []int64{4, sealedRecordSize / 4}, Data: make([]byte, 4*sealedRecordSize)}
	_, err := a.CallStage(ctx, b.ID(), &StageRequest{RequestID: "past-limit", Model: "m", Version: "1", Stage: 1, Tensors: []tensor.Tensor{big}})
	// The receiver cuts the connection, after an error frame saying why that the caller
	// reads if its own writes got out before the cut.
	var remote *RemoteError
	if err == nil || ctx.Err() != nil || (errors.As(err, &remote) && remote.Code != CodeMalformed) {
		t.Fatalf("call past the key limit: %v; want the connection cut", err)
	}
	if n := handled.Load(); n != 0 {
		t.Fatalf("handler ran %d times for a request sealed past the key limit", n)
	}
	a.pool.mu.Lock()
	idle := len(a.pool.idle[b.ID()])
	a.pool.mu.Unlock()
	if idle != 0 {
		t.Fatalf("%d cut connections pooled", idle)
	}
}
