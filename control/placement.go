package control

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/layermesh/layermesh/api"
)

// Placement errors. A CapacityError wraps ErrInsufficientCapacity.
var (
	// ErrInsufficientCapacity means at least one stage fits on no live node: the model
	// cannot serve at all with the members there are. It is the API's sentinel, so the
	// HTTP answer is 507 insufficient_capacity with the shortfall in the message.
	ErrInsufficientCapacity = api.ErrInsufficientCapacity
	// ErrInvalidPlacementInput means the caller passed an inconsistent request (no
	// stages, replication factor below 1, duplicate member ids, negative sizes).
	ErrInvalidPlacementInput = errors.New("invalid placement input")
)

// MemberState is what placement needs to know about a member's health. It mirrors
// the consensus member states; placement treats them as follows:
//
//	alive     holds existing replicas and takes new ones
//	suspect   keeps the replicas it has (memberlist may still clear it) but takes none
//	draining  takes none and loses its replicas to other nodes
//	dead/left holds nothing
type MemberState string

// Member states, spelled as consensus spells them.
const (
	MemberAlive    MemberState = "alive"
	MemberSuspect  MemberState = "suspect"
	MemberDraining MemberState = "draining"
	MemberDead     MemberState = "dead"
	MemberLeft     MemberState = "left"
)

// PlacementMember is one cluster member as the placement sees it.
type PlacementMember struct {
	ID    string
	State MemberState
	// MemBudget is the bytes of stage weights the node may hold (its --mem-budget).
	MemBudget int64
	// Used is the bytes already committed to this node by other models' placements;
	// the model being placed is not counted here.
	Used int64
	// Speed is the node's relative compute speed (higher is faster); 0 counts as 1.
	Speed float64
	// Blobs are the content hashes this node already stores; placing a stage whose
	// blob a node holds moves no bytes.
	Blobs map[string]bool
}

// PlacementStage is one pipeline stage of the model being placed.
type PlacementStage struct {
	// MemBytes is what a loaded replica costs its node: parameters plus the planner's
	// estimate of working memory.
	MemBytes int64
	// Cost is the stage's compute per request in any unit shared by all stages
	// (FLOPs); it balances the work across nodes.
	Cost float64
	// Blob is the sha256 of the stage's ONNX file.
	Blob string
}

// PlacementRequest is everything Place needs; it is pure data so the leader can
// recompute a placement from the Raft state at any moment (the controller is
// level-triggered).
type PlacementRequest struct {
	Stages   []PlacementStage
	Members  []PlacementMember
	Replicas int
	// Previous is the committed placement of this model version (stage -> node ids),
	// or nil for a first placement. Its stage count must match Stages.
	Previous [][]string
}

// PlacementResult is the computed stage -> replica nodes assignment.
type PlacementResult struct {
	// Replicas[k] lists the nodes serving stage k, the kept ones first.
	Replicas [][]string
	// Warnings say where a stage got fewer than the requested replicas and why.
	Warnings []string
	// Moved counts replicas that are new relative to Previous.
	Moved int
}

// CapacityError says why a model cannot be placed and by how much it falls short.
type CapacityError struct {
	// Stage is the first stage (by placement order) that fits nowhere.
	Stage int
	// Need is that stage's size; LargestFree the biggest free budget left on a live
	// node once the stages placed before it took their share.
	Need, LargestFree int64
	// TotalNeed is the bytes of one replica of every stage; TotalFree the free budget
	// summed over eligible nodes.
	TotalNeed, TotalFree int64
}

// Shortfall is how many more bytes the cluster needs: the larger of the stage that
// does not fit on any single node and the whole model against the sum of free budgets.
func (e *CapacityError) Shortfall() int64 {
	return max(e.Need-e.LargestFree, e.TotalNeed-e.TotalFree, 0)
}

func (e *CapacityError) Error() string {
	return fmt.Sprintf("%v: stage %d needs %d bytes but the largest free budget left is %d; "+
		"one replica of every stage needs %d bytes, %d are free in total; short by %d bytes",
		ErrInsufficientCapacity, e.Stage, e.Need, e.LargestFree, e.TotalNeed, e.TotalFree, e.Shortfall())
}

// Unwrap lets errors.Is match ErrInsufficientCapacity.
func (e *CapacityError) Unwrap() error { return ErrInsufficientCapacity }

// nodeLoad is the running tally for one member while Place assigns replicas.
type nodeLoad struct {
	m    PlacementMember
	used int64
	busy float64 // this model's compute assigned here, divided by the node's speed
}

func (n *nodeLoad) free() int64 { return n.m.MemBudget - n.used }

func (n *nodeLoad) speed() float64 {
	if n.m.Speed <= 0 {
		return 1
	}
	return n.m.Speed
}

// Place assigns each stage to up to Replicas distinct nodes without exceeding any
// node's memory budget. Healing moves as little as possible: every replica of the
// previous placement on a node that may keep it stays (as long as the node's budget
// still holds it), and only the missing slots are filled. New replicas go to the node
// that would be least busy afterwards (compute divided by speed, so stages spread and
// fast nodes take more), then to one already holding the stage's blob (a redeploy
// moves nothing), then to the one with the most free memory. Slots are filled round by
// round (every stage's first replica before any second one) so that scarce capacity
// serves the whole model once before adding redundancy.
//
// A greedy fill in one fixed stage order can paint itself into a corner (3 stages x 2
// replicas on 3 nodes leaving one node with a single stage). The first round always
// visits stages largest first, the hardest to fit; later rounds visit them in a
// rotation of that order, shifted by s per round, and Place tries every shift s and
// keeps the best outcome: most replicas, then the least busy bottleneck node, then the
// fewest moves.
func Place(req PlacementRequest) (PlacementResult, error) {
	if err := validatePlacement(req); err != nil {
		return PlacementResult{}, err
	}
	order := make([]int, len(req.Stages))
	for i := range order {
		order[i] = i
	}
	// Largest stages first: they are the hardest to fit.
	slices.SortStableFunc(order, func(a, b int) int {
		return cmp.Compare(req.Stages[b].MemBytes, req.Stages[a].MemBytes)
	})
	var (
		best      PlacementResult
		bestScore placementScore
		firstErr  error
		found     bool
	)
	for shift := range order {
		res, score, err := placeInOrder(req, order, shift)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if !found || score.better(bestScore) {
			best, bestScore, found = res, score, true
		}
	}
	if !found {
		return PlacementResult{}, firstErr
	}
	return best, nil
}

// placementScore ranks candidate placements of the same request.
type placementScore struct {
	replicas   int
	bottleneck float64
	moved      int
}

func (s placementScore) better(o placementScore) bool {
	if s.replicas != o.replicas {
		return s.replicas > o.replicas
	}
	if !nearlyEqual(s.bottleneck, o.bottleneck) {
		return s.bottleneck < o.bottleneck
	}
	return s.moved < o.moved
}

// placeInOrder runs the keep-then-fill greedy, visiting stages in order in the first
// round and in order rotated by shift*(round-1) in the later ones.
func placeInOrder(req PlacementRequest, order []int, shift int) (PlacementResult, placementScore, error) {
	loads := make(map[string]*nodeLoad, len(req.Members))
	nodes := make([]*nodeLoad, 0, len(req.Members))
	for _, m := range req.Members {
		n := &nodeLoad{m: m, used: m.Used}
		loads[m.ID] = n
		nodes = append(nodes, n)
	}
	res := PlacementResult{Replicas: make([][]string, len(req.Stages))}
	assign := func(k int, n *nodeLoad) {
		n.used += req.Stages[k].MemBytes
		n.busy += req.Stages[k].Cost / n.speed()
		res.Replicas[k] = append(res.Replicas[k], n.m.ID)
	}

	// Keep what may stay, in stage index order so the outcome is deterministic.
	for k, prev := range req.Previous {
		for _, id := range prev {
			n, ok := loads[id]
			if !ok || !mayKeep(n.m.State) || slices.Contains(res.Replicas[k], id) ||
				len(res.Replicas[k]) >= req.Replicas || n.free() < req.Stages[k].MemBytes {
				continue
			}
			assign(k, n)
		}
	}

	for round := 1; round <= req.Replicas; round++ {
		for i := range order {
			k := order[(i+shift*(round-1))%len(order)]
			if len(res.Replicas[k]) >= round {
				continue
			}
			n := bestNode(nodes, req.Stages[k], res.Replicas[k])
			if n == nil && len(res.Replicas[k]) == 0 {
				// A draining node keeps its replica when nobody else can take the
				// stage: draining must not take a model down.
				n = drainingHolder(loads, req, k)
				if n == nil {
					return PlacementResult{}, placementScore{}, capacityError(k, req, nodes)
				}
				res.Warnings = append(res.Warnings, fmt.Sprintf(
					"stage %d: stays on draining node %s, no live node has %d bytes free",
					k, n.m.ID, req.Stages[k].MemBytes))
			}
			if n != nil {
				assign(k, n)
			}
		}
	}

	var score placementScore
	for k, reps := range res.Replicas {
		score.replicas += len(reps)
		if len(reps) < req.Replicas {
			res.Warnings = append(res.Warnings, fmt.Sprintf(
				"stage %d: %d of %d replicas (no other live node has %d bytes free)",
				k, len(reps), req.Replicas, req.Stages[k].MemBytes))
		}
		var prev []string
		if k < len(req.Previous) {
			prev = req.Previous[k]
		}
		for _, id := range reps {
			if !slices.Contains(prev, id) {
				res.Moved++
			}
		}
	}
	for _, n := range nodes {
		score.bottleneck = max(score.bottleneck, n.busy)
	}
	score.moved = res.Moved
	return res, score, nil
}

func validatePlacement(req PlacementRequest) error {
	if len(req.Stages) == 0 {
		return fmt.Errorf("%w: no stages", ErrInvalidPlacementInput)
	}
	if req.Replicas < 1 {
		return fmt.Errorf("%w: replication factor %d", ErrInvalidPlacementInput, req.Replicas)
	}
	if req.Previous != nil && len(req.Previous) != len(req.Stages) {
		return fmt.Errorf("%w: previous placement has %d stages, plan has %d",
			ErrInvalidPlacementInput, len(req.Previous), len(req.Stages))
	}
	seen := make(map[string]bool, len(req.Members))
	for _, m := range req.Members {
		if m.ID == "" || seen[m.ID] {
			return fmt.Errorf("%w: empty or duplicate member id %q", ErrInvalidPlacementInput, m.ID)
		}
		if m.MemBudget < 0 || m.Used < 0 {
			return fmt.Errorf("%w: member %s has negative memory figures", ErrInvalidPlacementInput, m.ID)
		}
		seen[m.ID] = true
	}
	for k, s := range req.Stages {
		if s.MemBytes < 0 || s.Cost < 0 {
			return fmt.Errorf("%w: stage %d has negative size or cost", ErrInvalidPlacementInput, k)
		}
	}
	return nil
}

// mayKeep says whether a node in this state keeps the replicas it already has.
func mayKeep(s MemberState) bool { return s == MemberAlive || s == MemberSuspect }

// bestNode picks the node for one new replica of st, or nil when none can take it.
func bestNode(nodes []*nodeLoad, st PlacementStage, taken []string) *nodeLoad {
	var best *nodeLoad
	for _, n := range nodes {
		if n.m.State != MemberAlive || n.free() < st.MemBytes || slices.Contains(taken, n.m.ID) {
			continue
		}
		if best == nil || betterNode(n, best, st) {
			best = n
		}
	}
	return best
}

// betterNode orders candidates: least busy after taking the stage (with a 1% band so
// that noise in measured speeds does not outvote a held blob), then holding the blob,
// then most free memory, then id for determinism.
func betterNode(a, b *nodeLoad, st PlacementStage) bool {
	ba, bb := a.busy+st.Cost/a.speed(), b.busy+st.Cost/b.speed()
	if !nearlyEqual(ba, bb) {
		return ba < bb
	}
	ha, hb := a.m.Blobs[st.Blob], b.m.Blobs[st.Blob]
	if ha != hb {
		return ha
	}
	if a.free() != b.free() {
		return a.free() > b.free()
	}
	return a.m.ID < b.m.ID
}

// drainingHolder returns a draining node of the previous placement that can still hold
// stage k, or nil.
func drainingHolder(loads map[string]*nodeLoad, req PlacementRequest, k int) *nodeLoad {
	if k >= len(req.Previous) {
		return nil
	}
	for _, id := range req.Previous[k] {
		if n, ok := loads[id]; ok && n.m.State == MemberDraining && n.free() >= req.Stages[k].MemBytes {
			return n
		}
	}
	return nil
}

func nearlyEqual(a, b float64) bool {
	hi := max(a, b)
	return hi == 0 || (hi-min(a, b)) <= 0.01*hi
}

func capacityError(stage int, req PlacementRequest, nodes []*nodeLoad) *CapacityError {
	e := &CapacityError{Stage: stage, Need: req.Stages[stage].MemBytes}
	for _, s := range req.Stages {
		e.TotalNeed += s.MemBytes
	}
	for _, n := range nodes {
		if n.m.State != MemberAlive {
			continue
		}
		// The total is against the budgets before this model, which is what an operator
		// can act on; the largest free is what was left when this stage found no room.
		e.TotalFree += n.m.MemBudget - n.m.Used
		e.LargestFree = max(e.LargestFree, n.free())
	}
	return e
}

// rebalanceGain is the largest fraction of the busiest node's load a rebalancing move
// may leave as the new peak of the two nodes involved.
const rebalanceGain = 0.9

// Rebalance moves at most one replica of a complete placement (every stage at its
// replication factor) from the busiest node to the least busy one that can hold it,
// when that lowers the busier node's load by more than it raises the other's, so a
// node that joins or returns gets work again without a big bang: the controller calls
// it once per reconcile, and the runtime keeps the moved replica serving on its old
// node until the new one is ready. It returns the placement unchanged (and false) when
// nothing is worth moving or any slot is still missing.
func Rebalance(req PlacementRequest, current [][]string) ([][]string, bool) {
	if validatePlacement(req) != nil || len(current) != len(req.Stages) {
		return current, false
	}
	loads := make(map[string]*nodeLoad, len(req.Members))
	for _, m := range req.Members {
		loads[m.ID] = &nodeLoad{m: m, used: m.Used}
	}
	for k, reps := range current {
		if len(reps) != req.Replicas {
			return current, false
		}
		for _, id := range reps {
			n, ok := loads[id]
			if !ok || !mayKeep(n.m.State) {
				return current, false
			}
			n.used += req.Stages[k].MemBytes
			n.busy += req.Stages[k].Cost / n.speed()
		}
	}
	type move struct {
		stage    int
		from, to *nodeLoad
		peak     float64
	}
	// Prefer relieving the busiest node, then the lowest resulting peak, then the
	// lowest stage and node id, so the choice is deterministic.
	better := func(a, b *move) bool {
		if a.from.busy != b.from.busy {
			return a.from.busy > b.from.busy
		}
		if a.peak != b.peak {
			return a.peak < b.peak
		}
		if a.stage != b.stage {
			return a.stage < b.stage
		}
		return a.to.m.ID < b.to.m.ID
	}
	var best *move
	for k, reps := range current {
		st := req.Stages[k]
		for _, fromID := range reps {
			from := loads[fromID]
			for _, to := range loads {
				if to.m.State != MemberAlive || to.free() < st.MemBytes || slices.Contains(reps, to.m.ID) {
					continue
				}
				// Worth a blob transfer and a session load only for a clear gain.
				after := max(from.busy-st.Cost/from.speed(), to.busy+st.Cost/to.speed())
				if after > rebalanceGain*from.busy {
					continue
				}
				m := &move{stage: k, from: from, to: to, peak: after}
				if best == nil || better(m, best) {
					best = m
				}
			}
		}
	}
	if best == nil {
		return current, false
	}
	out := make([][]string, len(current))
	for k, reps := range current {
		out[k] = slices.Clone(reps)
	}
	i := slices.Index(out[best.stage], best.from.m.ID)
	out[best.stage][i] = best.to.m.ID
	return out, true
}
