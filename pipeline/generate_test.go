package pipeline

import (
	"context"
	"sync"
	"testing"
)

// TestSessionsSpreadOverReplicas: 4 generation sessions that start at once on an
// entry node pin their stages on 3 stages x 2 replicas with no call in flight to tell
// the replicas apart; each stage's sessions split 2 and 2 over its replicas, and the
// pins are forgotten when the sessions end.
// A session moved off a failed replica moves its pin with it.
func TestSessionsSpreadOverReplicas(t *testing.T) {
	m := newFakeMesh(t, fastRetries, threeByTwo)
	r := m.node("entry").router
	sessions := make([]*genSession, 4)
	var wg sync.WaitGroup
	for i := range sessions {
		sessions[i] = &genSession{plan: testPlan, failed: map[string]bool{}}
		wg.Go(func() {
			if err := r.pinSession(context.Background(), sessions[i], -1); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for k := range testPlan.Stages {
		perReplica := map[string]int{}
		for _, gs := range sessions {
			perReplica[gs.pinned[k].Node]++
		}
		if len(perReplica) != 2 {
			t.Fatalf("stage %d: sessions pinned to %v, want 2 on each of its 2 replicas", k, perReplica)
		}
		for node, n := range perReplica {
			if n != 2 {
				t.Fatalf("stage %d: sessions pinned to %v (%s has %d), want 2 on each", k, perReplica, node, n)
			}
		}
	}

	// Stage 0 of the first session moves off its failed replica, and its pin with it.
	gs := sessions[0]
	from := gs.pinned[0].Node
	if err := r.repinFailed(context.Background(), gs, from); err != nil {
		t.Fatal(err)
	}
	to := gs.pinned[0].Node
	r.mu.Lock()
	onFrom, onTo := r.pins[pinKey{model: "m", version: "1", stage: 0, node: from}], r.pins[pinKey{model: "m", version: "1", stage: 0, node: to}]
	r.mu.Unlock()
	if to == from || onFrom != 1 || onTo != 3 {
		t.Fatalf("after moving stage 0 from %s to %s: %d and %d sessions pinned there, want 1 and 3", from, to, onFrom, onTo)
	}

	for _, gs := range sessions {
		r.unpinAll(gs)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pins) != 0 {
		t.Fatalf("pins left after every session ended: %v", r.pins)
	}
}
