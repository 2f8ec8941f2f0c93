package mesh

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Every decoder of bytes from the network is fuzzed: it must not panic, must not
// allocate past its fixed bounds, and what it accepts must re-encode to an equivalent
// frame. Seed corpora live in testdata/fuzz.

func FuzzStageHeader(f *testing.F) {
	for _, req := range []*StageRequest{
		{RequestID: "r1", Model: "gpt2", Version: "3", Stage: 1, Deadline: time.Unix(1700000000, 5), Outputs: []string{"logits"}},
		{RequestID: "r2", Model: "gpt2", Version: "3", Drive: true, Outputs: []string{"logits"}},
		{RequestID: "r3", Model: "gpt2", Version: "3", Stage: 2, Session: "s1", Step: StepDecode, Pos: 17, Len: 1},
		{},
	} {
		hdr, _ := encodeStageHeader(req)
		f.Add(hdr)
	}
	f.Add([]byte("LMS1\xff\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := readStageHeader(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrMalformedFrame) && !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		again, err := encodeStageHeader(req)
		if err != nil {
			t.Fatalf("accepted header does not re-encode: %v", err)
		}
		req2, err := readStageHeader(bytes.NewReader(again))
		if err != nil || !reflect.DeepEqual(req, req2) {
			t.Fatalf("round trip changed the header: %+v vs %+v (%v)", req, req2, err)
		}
	})
}

func FuzzBlobRequest(f *testing.F) {
	f.Add(encodeBlobRequest(blobRequest{offset: 4 << 20, length: 4 << 20}))
	f.Add(encodeBlobRequest(blobRequest{offset: 1 << 63, length: 1 << 31}))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := readBlobRequest(bytes.NewReader(data))
		if err != nil {
			return
		}
		if req.length > maxBlobRequest {
			t.Fatalf("accepted a %d-byte request", req.length)
		}
		if !bytes.Equal(encodeBlobRequest(req), data[:len(encodeBlobRequest(req))]) {
			t.Fatalf("round trip changed the request")
		}
	})
}

func FuzzJoinHello(f *testing.F) {
	var buf bytes.Buffer
	_ = writeHello(&buf, joinHello{cluster: "test-cluster"})
	f.Add(buf.Bytes())
	f.Add([]byte("LMJ1\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readHello(bytes.NewReader(data))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := writeHello(&out, h); err != nil {
			t.Fatalf("accepted hello does not re-encode: %v", err)
		}
		if !bytes.HasPrefix(data, out.Bytes()) {
			t.Fatalf("round trip changed the hello")
		}
	})
}

func FuzzJoinStatus(f *testing.F) {
	var buf bytes.Buffer
	_ = writeRefusal(&buf, reasonSecret)
	f.Add(buf.Bytes())
	f.Add([]byte{statusOK})
	f.Add([]byte{statusRefused, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		err := readStatus(bytes.NewReader(data))
		if err != nil && !errors.Is(err, ErrRefused) && !errors.Is(err, ErrMalformedFrame) {
			t.Fatalf("unclassified error %v", err)
		}
	})
}

func FuzzResponseStatus(f *testing.F) {
	var buf bytes.Buffer
	_ = writeErrorFrame(&buf, CodeStageNotLoaded, "stage not loaded")
	f.Add(buf.Bytes())
	f.Add([]byte{statusOK})
	f.Add([]byte{statusError, 0, 1, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		err := readResponseStatus(bytes.NewReader(data), peer.ID("p"))
		var re *RemoteError
		if errors.As(err, &re) && len(re.Message) > maxMessageLen {
			t.Fatalf("accepted a %d-byte message", len(re.Message))
		}
	})
}

func FuzzNodeMeta(f *testing.F) {
	raw, _ := encodeMeta(&NodeMeta{Name: "n1", PeerID: "12D3KooW", Addrs: []string{"/ip4/127.0.0.1/tcp/4001"},
		Boot: "5f1c0a9e"})
	f.Add(raw)
	f.Add([]byte(`{"b":"x","st":["1|x|y|z"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		meta, err := decodeMeta(data)
		if err != nil {
			return
		}
		if _, err := encodeMeta(&meta); err != nil && !errors.Is(err, ErrMetaTooLarge) && !errors.Is(err, ErrConfig) {
			t.Fatalf("accepted metadata does not re-encode: %v", err)
		}
	})
}
