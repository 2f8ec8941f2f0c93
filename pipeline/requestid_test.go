package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
)

// idRecorder is a StageCaller that notes the request id of every call it passes on.
type idRecorder struct {
	next StageCaller
	mu   sync.Mutex
	ids  []string
}

func (r *idRecorder) CallStage(ctx context.Context, peer string, call StageCall) ([]tensor.Tensor, error) {
	r.mu.Lock()
	r.ids = append(r.ids, call.ID)
	r.mu.Unlock()
	return r.next.CallStage(ctx, peer, call)
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRequestIDReachesStageCallsAndLogs: the id the HTTP layer put in the context is
// the id of every stage call (so the peers log it too) and of the router's log lines.
func TestRequestIDReachesStageCallsAndLogs(t *testing.T) {
	m := newFakeMesh(t, fastRetries, threeByTwo)
	// The entry node serves nothing: it hands the request to b, which holds the last
	// stage, and b drives it; a is dead, so b's router logs a retry of stage 0.
	m.node("a").setFault(0, faultDead)
	rec := &idRecorder{next: m}
	var logs syncBuffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r := NewRouter(fastRetries, staticPlans{testPlan}, meshView{m, "entry"}, rec, nil, log)
	b := m.node("b")
	b.router = NewRouter(fastRetries, staticPlans{testPlan}, meshView{m, "b"}, rec, b, log)

	ctx := api.WithRequestID(context.Background(), "trace-42")
	x := []float32{1, 2}
	out, err := r.Infer(ctx, Request{Model: "m", Inputs: []tensor.Tensor{tensor.FromFloat32("x", []int64{2}, x)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 {
		t.Fatalf("outputs %+v", out)
	}
	rec.mu.Lock()
	ids := append([]string(nil), rec.ids...)
	rec.mu.Unlock()
	if len(ids) == 0 {
		t.Fatal("no stage call went through the recorder")
	}
	for _, id := range ids {
		if id != "trace-42" {
			t.Fatalf("stage calls carried ids %v, want trace-42 on each", ids)
		}
	}
	retries := 0
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["msg"] == "stage attempt failed, retrying on another replica" {
			retries++
			if rec["request"] != "trace-42" || rec["component"] != "router" || rec["model"] != "m" || rec["peer"] == nil || rec["stage"] == nil {
				t.Errorf("retry log line lacks the request's attributes: %s", line)
			}
		}
	}
	if retries == 0 {
		t.Fatalf("no retry was logged with a dead replica:\n%s", logs.String())
	}

	// Without an id in the context the router makes one per request.
	rec.ids = nil
	if _, err := r.Infer(context.Background(), Request{Model: "m", Inputs: []tensor.Tensor{tensor.FromFloat32("x", []int64{2}, x)}}); err != nil {
		t.Fatal(err)
	}
	if len(rec.ids) == 0 || len(rec.ids[0]) != 16 || rec.ids[0] == "trace-42" {
		t.Fatalf("ids without a context id: %v", rec.ids)
	}
}
