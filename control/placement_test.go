package control

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

const mib = int64(1 << 20)

func members(budgets ...int64) []PlacementMember {
	ms := make([]PlacementMember, len(budgets))
	for i, b := range budgets {
		ms[i] = PlacementMember{ID: fmt.Sprintf("n%d", i), State: MemberAlive, MemBudget: b, Speed: 1}
	}
	return ms
}

func stages(sizes ...int64) []PlacementStage {
	ss := make([]PlacementStage, len(sizes))
	for i, s := range sizes {
		ss[i] = PlacementStage{MemBytes: s, Cost: float64(s), Blob: fmt.Sprintf("blob%d", i)}
	}
	return ss
}

// checkInvariants asserts what every placement must satisfy, whatever the input.
func checkInvariants(t *testing.T, req PlacementRequest, res PlacementResult) {
	t.Helper()
	if len(res.Replicas) != len(req.Stages) {
		t.Fatalf("placement has %d stages, want %d", len(res.Replicas), len(req.Stages))
	}
	used := map[string]int64{}
	byID := map[string]PlacementMember{}
	for _, m := range req.Members {
		used[m.ID] = m.Used
		byID[m.ID] = m
	}
	for k, reps := range res.Replicas {
		if len(reps) == 0 || len(reps) > req.Replicas {
			t.Fatalf("stage %d has %d replicas, want 1..%d", k, len(reps), req.Replicas)
		}
		seen := map[string]bool{}
		for _, id := range reps {
			if seen[id] {
				t.Fatalf("stage %d placed twice on %s", k, id)
			}
			seen[id] = true
			m, ok := byID[id]
			if !ok {
				t.Fatalf("stage %d on unknown node %s", k, id)
			}
			wasThere := k < len(req.Previous) && slices.Contains(req.Previous[k], id)
			switch m.State {
			case MemberAlive:
			case MemberSuspect:
				if !wasThere {
					t.Fatalf("stage %d newly placed on suspect node %s", k, id)
				}
			case MemberDraining:
				if !wasThere || len(reps) != 1 {
					t.Fatalf("stage %d on draining node %s though others could hold it: %v", k, id, reps)
				}
			default:
				t.Fatalf("stage %d on %s node %s", k, m.State, id)
			}
			used[id] += req.Stages[k].MemBytes
		}
	}
	for id, u := range used {
		if u > byID[id].MemBudget {
			t.Fatalf("node %s holds %d bytes over its budget %d", id, u, byID[id].MemBudget)
		}
	}
}

func TestPlaceFreshSpreadsEvenly(t *testing.T) {
	req := PlacementRequest{Stages: stages(100, 100, 100), Members: members(1000, 1000, 1000), Replicas: 2}
	res, err := Place(req)
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, req, res)
	count := map[string]int{}
	for _, reps := range res.Replicas {
		if len(reps) != 2 {
			t.Fatalf("want 2 replicas per stage, got %v", res.Replicas)
		}
		for _, id := range reps {
			count[id]++
		}
	}
	for id, c := range count {
		if c != 2 {
			t.Fatalf("node %s holds %d stages, want 2 each: %v", id, c, res.Replicas)
		}
	}
	if len(res.Warnings) != 0 || res.Moved != 6 {
		t.Fatalf("warnings %v moved %d", res.Warnings, res.Moved)
	}
}

func TestPlaceLargerThanAnyNode(t *testing.T) {
	// Model 300 MiB, every node holds 120 MiB: no single node could serve it.
	req := PlacementRequest{Stages: stages(100*mib, 100*mib, 100*mib), Members: members(120*mib, 120*mib, 120*mib), Replicas: 2}
	res, err := Place(req)
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, req, res)
	for k, reps := range res.Replicas {
		if len(reps) != 1 {
			t.Fatalf("stage %d: %v, want exactly one replica when each node holds one stage", k, reps)
		}
	}
	if len(res.Warnings) != 3 {
		t.Fatalf("want a warning per stage short of replicas, got %v", res.Warnings)
	}
}

func TestPlaceInsufficientCapacity(t *testing.T) {
	cases := []struct {
		name      string
		stages    []PlacementStage
		members   []PlacementMember
		shortfall int64
	}{
		{"stage larger than any node", stages(50, 200), members(150, 150), 50},
		{"sum too small", stages(100, 100, 100), members(150, 100), 50},
		{"no members", stages(10), nil, 10},
		{"only dead members", stages(10), []PlacementMember{{ID: "d", State: MemberDead, MemBudget: 100}}, 10},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Place(PlacementRequest{Stages: c.stages, Members: c.members, Replicas: 1})
			if !errors.Is(err, ErrInsufficientCapacity) {
				t.Fatalf("got %v, want ErrInsufficientCapacity", err)
			}
			var ce *CapacityError
			if !errors.As(err, &ce) || ce.Shortfall() != c.shortfall {
				t.Fatalf("shortfall: got %+v (%v), want %d", ce, err, c.shortfall)
			}
		})
	}
}

func TestPlaceInvalidInput(t *testing.T) {
	cases := []PlacementRequest{
		{Members: members(10), Replicas: 1},
		{Stages: stages(1), Members: members(10), Replicas: 0},
		{Stages: stages(1), Members: append(members(10), members(10)...), Replicas: 1},
		{Stages: stages(1, 1), Members: members(10), Replicas: 1, Previous: [][]string{{"n0"}}},
		{Stages: stages(-1), Members: members(10), Replicas: 1},
	}
	for i, req := range cases {
		if _, err := Place(req); !errors.Is(err, ErrInvalidPlacementInput) {
			t.Fatalf("case %d: got %v, want ErrInvalidPlacementInput", i, err)
		}
	}
}

func TestPlaceHealMovesOnlyDeadReplicas(t *testing.T) {
	ms := members(1000, 1000, 1000, 1000)
	req := PlacementRequest{Stages: stages(100, 100, 100), Members: ms, Replicas: 2}
	first, err := Place(req)
	if err != nil {
		t.Fatal(err)
	}
	dead := first.Replicas[1][0]
	lost := 0
	for _, reps := range first.Replicas {
		if slices.Contains(reps, dead) {
			lost++
		}
	}
	for i := range ms {
		if ms[i].ID == dead {
			ms[i].State = MemberDead
		}
	}
	healed, err := Place(PlacementRequest{Stages: req.Stages, Members: ms, Replicas: 2, Previous: first.Replicas})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, PlacementRequest{Stages: req.Stages, Members: ms, Replicas: 2, Previous: first.Replicas}, healed)
	if healed.Moved != lost {
		t.Fatalf("moved %d replicas, the dead node held %d", healed.Moved, lost)
	}
	for k, reps := range first.Replicas {
		for _, id := range reps {
			if id != dead && !slices.Contains(healed.Replicas[k], id) {
				t.Fatalf("stage %d lost surviving replica %s: %v -> %v", k, id, reps, healed.Replicas[k])
			}
		}
		if len(healed.Replicas[k]) != 2 {
			t.Fatalf("stage %d not back to 2 replicas: %v", k, healed.Replicas[k])
		}
	}
	// Placing again with nothing changed moves nothing.
	again, err := Place(PlacementRequest{Stages: req.Stages, Members: ms, Replicas: 2, Previous: healed.Replicas})
	if err != nil || again.Moved != 0 || !slices.EqualFunc(again.Replicas, healed.Replicas, slices.Equal) {
		t.Fatalf("stable input changed the placement: %v %v -> %v", err, healed.Replicas, again.Replicas)
	}
}

func TestPlaceDraining(t *testing.T) {
	ms := members(1000, 1000, 1000)
	prev := [][]string{{"n0", "n1"}, {"n1", "n2"}}
	ms[1].State = MemberDraining
	req := PlacementRequest{Stages: stages(100, 100), Members: ms, Replicas: 2, Previous: prev}
	res, err := Place(req)
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, req, res)
	want := [][]string{{"n0", "n2"}, {"n2", "n0"}}
	if !slices.EqualFunc(res.Replicas, want, slices.Equal) || res.Moved != 2 {
		t.Fatalf("got %v moved %d, want %v moved 2", res.Replicas, res.Moved, want)
	}

	// With nowhere else to go, a draining node keeps the stage and says so.
	ms = members(150, 150)
	ms[0].State = MemberDraining
	req = PlacementRequest{Stages: stages(100, 100), Members: ms, Replicas: 1, Previous: [][]string{{"n0"}, {"n1"}}}
	res, err = Place(req)
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, req, res)
	if res.Replicas[0][0] != "n0" || len(res.Warnings) != 1 {
		t.Fatalf("got %v %v, want stage 0 kept on draining n0 with a warning", res.Replicas, res.Warnings)
	}
}

func TestPlaceSuspectKeepsButTakesNothing(t *testing.T) {
	ms := members(1000, 1000, 1000)
	ms[0].State = MemberSuspect
	req := PlacementRequest{Stages: stages(100, 100), Members: ms, Replicas: 2, Previous: [][]string{{"n0", "n1"}, {"n1"}}}
	res, err := Place(req)
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, req, res)
	if !slices.Equal(res.Replicas[0], []string{"n0", "n1"}) || !slices.Equal(res.Replicas[1], []string{"n1", "n2"}) {
		t.Fatalf("got %v", res.Replicas)
	}
}

func TestPlaceCountsOtherModels(t *testing.T) {
	ms := members(300, 300)
	ms[0].Used = 250 // another model already sits here
	req := PlacementRequest{Stages: stages(100, 100), Members: ms, Replicas: 1}
	res, err := Place(req)
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, req, res)
	for _, reps := range res.Replicas {
		if reps[0] != "n1" {
			t.Fatalf("stage placed on the full node: %v", res.Replicas)
		}
	}
}

func TestPlacePreferences(t *testing.T) {
	// Equal load: the node holding the blob wins (a redeploy moves nothing).
	ms := members(1000, 1000, 1000)
	ms[2].Blobs = map[string]bool{"blob0": true}
	res, err := Place(PlacementRequest{Stages: stages(100), Members: ms, Replicas: 1})
	if err != nil || res.Replicas[0][0] != "n2" {
		t.Fatalf("want blob holder n2, got %v %v", res.Replicas, err)
	}
	// A node three times as fast takes more of the work.
	ms = members(1000, 1000)
	ms[1].Speed = 3
	res, err = Place(PlacementRequest{Stages: stages(100, 100, 100, 100), Members: ms, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	fast := 0
	for _, reps := range res.Replicas {
		if reps[0] == "n1" {
			fast++
		}
	}
	if fast != 3 {
		t.Fatalf("fast node got %d of 4 stages, want 3: %v", fast, res.Replicas)
	}
	// Replication factor lowered: extra replicas go, the first ones stay.
	res, err = Place(PlacementRequest{Stages: stages(100), Members: members(1000, 1000, 1000), Replicas: 1,
		Previous: [][]string{{"n2", "n0"}}})
	if err != nil || !slices.Equal(res.Replicas[0], []string{"n2"}) || res.Moved != 0 {
		t.Fatalf("got %v moved %d err %v", res.Replicas, res.Moved, err)
	}
}

// TestPlaceRandomInvariants throws random clusters, models and histories at Place and
// checks that capacity is never exceeded, replicas are distinct and on eligible
// nodes, surviving replicas stay, and a single death moves only the dead node's share.
func TestPlaceRandomInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	states := []MemberState{MemberAlive, MemberAlive, MemberAlive, MemberSuspect, MemberDraining, MemberDead, MemberLeft}
	for iter := range 3000 {
		nm := 1 + rng.IntN(7)
		ms := make([]PlacementMember, nm)
		for i := range ms {
			ms[i] = PlacementMember{ID: fmt.Sprintf("n%d", i), State: MemberAlive,
				MemBudget: int64(100 + rng.IntN(900)), Speed: 0.5 + rng.Float64()*2}
			ms[i].Used = int64(rng.IntN(int(ms[i].MemBudget / 2)))
		}
		ns := 1 + rng.IntN(5)
		ss := make([]PlacementStage, ns)
		for i := range ss {
			ss[i] = PlacementStage{MemBytes: int64(10 + rng.IntN(300)), Cost: rng.Float64() * 10, Blob: fmt.Sprint(i)}
		}
		r := 1 + rng.IntN(3)
		req := PlacementRequest{Stages: ss, Members: ms, Replicas: r}
		first, err := Place(req)
		if err != nil {
			var ce *CapacityError
			if !errors.As(err, &ce) || ce.Shortfall() <= 0 && ce.Need <= ce.LargestFree {
				t.Fatalf("iter %d: bad capacity error %v", iter, err)
			}
			continue
		}
		checkInvariants(t, req, first)

		// One node dies: only its replicas move.
		dead := rng.IntN(nm)
		ms2 := slices.Clone(ms)
		ms2[dead].State = MemberDead
		heal := PlacementRequest{Stages: ss, Members: ms2, Replicas: r, Previous: first.Replicas}
		healed, err := Place(heal)
		if err != nil {
			if !errors.Is(err, ErrInsufficientCapacity) {
				t.Fatalf("iter %d: %v", iter, err)
			}
			continue
		}
		checkInvariants(t, heal, healed)
		lost := 0
		for k, reps := range first.Replicas {
			for _, id := range reps {
				if id == ms[dead].ID {
					lost++
					continue
				}
				if !slices.Contains(healed.Replicas[k], id) {
					t.Fatalf("iter %d: surviving replica %s of stage %d moved: %v -> %v", iter, id, k, first.Replicas, healed.Replicas)
				}
			}
		}
		if healed.Moved > lost {
			t.Fatalf("iter %d: moved %d replicas, dead node held %d", iter, healed.Moved, lost)
		}

		// Random states on top of the healed placement: invariants still hold.
		ms3 := slices.Clone(ms2)
		for i := range ms3 {
			ms3[i].State = states[rng.IntN(len(states))]
		}
		chaos := PlacementRequest{Stages: ss, Members: ms3, Replicas: r, Previous: healed.Replicas}
		if res, err := Place(chaos); err == nil {
			checkInvariants(t, chaos, res)
		} else if !errors.Is(err, ErrInsufficientCapacity) {
			t.Fatalf("iter %d: %v", iter, err)
		}
	}
}

func TestRebalanceGivesReturningNodeWork(t *testing.T) {
	ms := members(1000, 1000, 1000)
	// After a heal n0 and n1 hold everything; n2 is back and empty.
	cur := [][]string{{"n0", "n1"}, {"n0", "n1"}, {"n0", "n1"}}
	req := PlacementRequest{Stages: stages(100, 100, 100), Members: ms, Replicas: 2, Previous: cur}
	moves := 0
	for {
		next, moved := Rebalance(req, cur)
		if !moved {
			break
		}
		moves++
		req.Previous = next
		res, err := Place(req)
		if err != nil || res.Moved != 0 || !slices.EqualFunc(res.Replicas, next, slices.Equal) {
			t.Fatalf("rebalanced placement is not stable under Place: %v moved %d", err, res.Moved)
		}
		checkInvariants(t, req, res)
		cur = next
		if moves > 10 {
			t.Fatalf("rebalance does not converge: %v", cur)
		}
	}
	count := map[string]int{}
	for _, reps := range cur {
		for _, id := range reps {
			count[id]++
		}
	}
	if moves != 2 || count["n0"] != 2 || count["n1"] != 2 || count["n2"] != 2 {
		t.Fatalf("after %d moves: %v", moves, cur)
	}
	// A balanced placement, or one with a missing slot, is left alone.
	if _, moved := Rebalance(req, cur); moved {
		t.Fatal("balanced placement moved")
	}
	if _, moved := Rebalance(req, [][]string{{"n0"}, {"n0", "n1"}, {"n0", "n1"}}); moved {
		t.Fatal("incomplete placement rebalanced")
	}
}

func TestRebalanceRandomInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for iter := range 1000 {
		ms := make([]PlacementMember, 2+rng.IntN(5))
		for i := range ms {
			ms[i] = PlacementMember{ID: fmt.Sprintf("n%d", i), State: MemberAlive, MemBudget: int64(200 + rng.IntN(800)), Speed: 0.5 + rng.Float64()}
		}
		ss := make([]PlacementStage, 1+rng.IntN(5))
		for i := range ss {
			ss[i] = PlacementStage{MemBytes: int64(10 + rng.IntN(150)), Cost: 1 + rng.Float64()*5}
		}
		req := PlacementRequest{Stages: ss, Members: ms, Replicas: 1 + rng.IntN(2)}
		res, err := Place(req)
		if err != nil || len(res.Warnings) > 0 {
			continue
		}
		cur := res.Replicas
		for step := 0; ; step++ {
			next, moved := Rebalance(req, cur)
			if !moved {
				break
			}
			if step > 50 {
				t.Fatalf("iter %d: no convergence", iter)
			}
			req.Previous = next
			checkInvariants(t, req, PlacementResult{Replicas: next})
			cur = next
		}
	}
}
