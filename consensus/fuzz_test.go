package consensus

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// FuzzDecodeCommand feeds arbitrary bytes to the envelope decoder, which reads
// what followers forward over the network and what the log holds. It must
// never panic, and whatever it accepts in the current format must re-encode to
// an envelope that decodes to the same command. Format-1 entries (seeded from
// testdata/v1) decode too; the format-1 payloads among them are never written
// again, so EncodeCommand must refuse them.
func FuzzDecodeCommand(f *testing.F) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []Command{
		{RequestID: "r1", Payload: CatalogPut{Key: "k", Value: "v", Mode: CatalogRegister}},
		{RequestID: "r2", Payload: UpsertMember{Member{ID: "p", Addrs: []string{"/ip4/127.0.0.1/tcp/1"}, Capacity: Capacity{MemBudget: 1, Cores: 2, Speed: 3}}}},
		{RequestID: "r3", Payload: SetPlacement{Placement: Placement{Model: "m", Version: "1", Stages: [][]string{{"a"}}}, ExpectedEpoch: 4}},
		{RequestID: "r4", Payload: SetMemberState{ID: "p", State: MemberDead, At: at}},
		{RequestID: "r5", Payload: PutModel{Model{Name: "m", Stages: []StageManifest{{SHA256: "aa"}}, Deploy: DeployInfo{Replicas: 2, StageMem: []int64{1}, StageFLOPs: []int64{2}, Cutter: "p"}}}},
		{RequestID: "r6", Payload: RevokeToken{ID: "t", At: at}},
		{RequestID: "r7", Payload: ReportServing{Node: "p", Serving: Serving{Boot: "b", Stages: []ServedRef{{Model: "m", Version: "1", Stage: 2, Ready: true}}}}},
	} {
		b, err := EncodeCommand(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	old, err := filepath.Glob("testdata/v1/log/*.bin")
	if err != nil || len(old) == 0 {
		f.Fatalf("format-1 seeds: %v", err)
	}
	for _, name := range old {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{CommandVersion, byte(CmdCatalogPut), 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			return
		}
		if _, formatOne := c.Payload.(formatOnePayload); formatOne {
			if _, err := EncodeCommand(c); !errors.Is(err, ErrInvalidCommand) {
				t.Fatalf("EncodeCommand wrote a format-1 %T: %v", c.Payload, err)
			}
			return
		}
		again, err := EncodeCommand(c)
		if err != nil {
			t.Fatalf("accepted command does not re-encode: %v", err)
		}
		c2, err := DecodeCommand(again)
		if err != nil {
			t.Fatalf("re-encoded command does not decode: %v", err)
		}
		if c2.RequestID != c.RequestID || !reflect.DeepEqual(c2.Payload, c.Payload) {
			if !bytes.Equal(again, mustEncode(t, c2)) {
				t.Fatalf("round trip changed the command: %#v vs %#v", c, c2)
			}
		}
	})
}

func mustEncode(t *testing.T, c Command) []byte {
	b, err := EncodeCommand(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzForwardFrame feeds arbitrary bytes to the forwarding protocol's frame
// reader, which the leader runs on whatever a peer sends: it must not panic,
// and a frame it accepts must survive a write/read round trip.
func FuzzForwardFrame(f *testing.F) {
	var buf bytes.Buffer
	cmd, err := EncodeCommand(Command{RequestID: "r", Payload: CatalogPut{Key: "k", Value: "v"}})
	if err != nil {
		f.Fatal(err)
	}
	for _, req := range []forwardRequest{
		{Op: opApply, Command: cmd, DeadlineMS: 1000},
		{Op: opBarrier},
		{Op: opAdd, Node: "12D3KooW"},
	} {
		buf.Reset()
		if err := writeFrame(&buf, req); err != nil {
			f.Fatal(err)
		}
		f.Add(append([]byte(nil), buf.Bytes()...))
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		var req forwardRequest
		if err := readFrame(bytes.NewReader(b), &req); err != nil {
			return
		}
		var out bytes.Buffer
		if err := writeFrame(&out, req); err != nil {
			t.Fatalf("accepted frame does not re-encode: %v", err)
		}
		var again forwardRequest
		if err := readFrame(&out, &again); err != nil {
			t.Fatalf("re-encoded frame does not decode: %v", err)
		}
		if !reflect.DeepEqual(normalizeReq(req), normalizeReq(again)) {
			t.Fatalf("round trip changed the request: %#v vs %#v", req, again)
		}
	})
}

// normalizeReq maps an empty command to nil: JSON writes both as absent.
func normalizeReq(r forwardRequest) forwardRequest {
	if len(r.Command) == 0 {
		r.Command = nil
	}
	return r
}
