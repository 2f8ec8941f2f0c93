package harness

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// step runs one operation to completion with the given outcome.
func step(h *History, client int, op KVOp, outcome func(*PendingOp)) {
	p := h.Begin(client, op)
	outcome(p)
}

func ok(v string) func(*PendingOp) { return func(p *PendingOp) { p.Ok(v) } }

func unknown(p *PendingOp) { p.Unknown() }

func TestHistoryLinearizable(t *testing.T) {
	h := NewHistory()
	step(h, 0, KVOp{Kind: KVPut, Key: "a", Value: "1"}, ok(""))
	step(h, 1, KVOp{Kind: KVGet, Key: "a"}, ok("1"))
	step(h, 0, KVOp{Kind: KVDelete, Key: "a"}, ok(""))
	step(h, 1, KVOp{Kind: KVGet, Key: "a"}, ok(""))
	// A write whose outcome was never learned may show up in a later read, or not.
	step(h, 2, KVOp{Kind: KVPut, Key: "b", Value: "x"}, unknown)
	step(h, 1, KVOp{Kind: KVGet, Key: "b"}, ok(""))
	step(h, 1, KVOp{Kind: KVGet, Key: "b"}, ok("x"))
	// A refused write is not in the history at all.
	step(h, 2, KVOp{Kind: KVPut, Key: "c", Value: "never"}, func(p *PendingOp) { p.Failed() })
	step(h, 1, KVOp{Kind: KVGet, Key: "c"}, ok(""))
	// Concurrent operations: the read overlaps the write and may see either value.
	w := h.Begin(0, KVOp{Kind: KVPut, Key: "d", Value: "new"})
	r := h.Begin(1, KVOp{Kind: KVGet, Key: "d"})
	r.Ok("new")
	w.Ok("")
	if h.Len() != 10 {
		t.Fatalf("Len = %d, want 10 (the refused write is dropped)", h.Len())
	}
	if err := h.CheckLinearizable(10*time.Second, ""); err != nil {
		t.Fatal(err)
	}
	acked := h.AckedWrites()
	if len(acked) != 2 || acked["a"][0] != "1" || acked["d"][0] != "new" {
		t.Fatalf("acked writes = %v, want a=1 and d=new only", acked)
	}
}

func TestHistoryViolations(t *testing.T) {
	cases := map[string]func(h *History){
		"stale read after an acknowledged write": func(h *History) {
			step(h, 0, KVOp{Kind: KVPut, Key: "a", Value: "1"}, ok(""))
			step(h, 0, KVOp{Kind: KVPut, Key: "a", Value: "2"}, ok(""))
			step(h, 1, KVOp{Kind: KVGet, Key: "a"}, ok("1"))
		},
		"acknowledged write lost": func(h *History) {
			step(h, 0, KVOp{Kind: KVPut, Key: "a", Value: "1"}, ok(""))
			step(h, 1, KVOp{Kind: KVGet, Key: "a"}, ok(""))
		},
		"value nobody wrote": func(h *History) {
			step(h, 1, KVOp{Kind: KVGet, Key: "a"}, ok("ghost"))
		},
		"read flips back": func(h *History) {
			step(h, 2, KVOp{Kind: KVPut, Key: "a", Value: "x"}, unknown)
			step(h, 1, KVOp{Kind: KVGet, Key: "a"}, ok("x"))
			step(h, 1, KVOp{Kind: KVGet, Key: "a"}, ok(""))
		},
	}
	for name, build := range cases {
		t.Run(name, func(t *testing.T) {
			h := NewHistory()
			build(h)
			viz := filepath.Join(t.TempDir(), "history.html")
			err := h.CheckLinearizable(10*time.Second, viz)
			if !errors.Is(err, ErrNotLinearizable) {
				t.Fatalf("check = %v, want ErrNotLinearizable", err)
			}
			if st, err := os.Stat(viz); err != nil || st.Size() == 0 {
				t.Fatalf("no visualisation written: %v", err)
			}
		})
	}
}
