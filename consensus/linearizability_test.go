package consensus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// Linearizability run length: 60 s, enough for several leader kills; -short runs 10 s.
const (
	linearizabilityDuration      = 60 * time.Second
	linearizabilityShortDuration = 10 * time.Second
	linearizabilityClients       = 5
	linearizabilityKeys          = 5
)

type linOp string

const (
	linRegister linOp = "register"
	linUpdate   linOp = "update"
	linRead     linOp = "read"
)

type linInput struct {
	Op    linOp
	Key   string
	Value string
}

type linOutput struct {
	Value   string
	Present bool
	Err     string // "", "exists", "notfound" (FSM rejections; definitive)
	Unknown bool   // the write's outcome is unknown: it may or may not have happened
}

// linState is one catalogue key; comparable, so porcupine's default equality works.
type linState struct {
	Present bool
	Value   string
}

// catalogModel is the register/update/read catalogue as porcupine sees it,
// partitioned by key. A write with an unknown outcome may have happened or
// not, so the model is nondeterministic for it.
var catalogModel = porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(linInput).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		slices.Sort(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() []any { return []any{linState{}} },
	Step: func(state, input, output any) []any {
		st, in, out := state.(linState), input.(linInput), output.(linOutput)
		switch in.Op {
		case linRead:
			if out.Present == st.Present && (!st.Present || out.Value == st.Value) {
				return []any{st}
			}
			return nil
		case linRegister, linUpdate:
			next, errText := st, ""
			switch {
			case in.Op == linRegister && st.Present:
				errText = "exists"
			case in.Op == linUpdate && !st.Present:
				errText = "notfound"
			default:
				next = linState{Present: true, Value: in.Value}
			}
			if out.Unknown {
				if next == st {
					return []any{st}
				}
				return []any{st, next}
			}
			if out.Err != errText {
				return nil
			}
			return []any{next}
		}
		return nil
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(linInput), output.(linOutput)
		switch {
		case in.Op == linRead && out.Present:
			return fmt.Sprintf("read(%s) -> %s", in.Key, out.Value)
		case in.Op == linRead:
			return fmt.Sprintf("read(%s) -> absent", in.Key)
		case out.Unknown:
			return fmt.Sprintf("%s(%s, %s) -> unknown", in.Op, in.Key, in.Value)
		case out.Err != "":
			return fmt.Sprintf("%s(%s, %s) -> %s", in.Op, in.Key, in.Value, out.Err)
		}
		return fmt.Sprintf("%s(%s, %s) -> ok", in.Op, in.Key, in.Value)
	},
	DescribeState: func(state any) string {
		st := state.(linState)
		if !st.Present {
			return "absent"
		}
		return st.Value
	},
}

func (c *testCluster) liveStores() []*Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Store
	for _, n := range c.nodes {
		if n.up {
			out = append(out, n.store)
		}
	}
	return out
}

// resultsDir is where histories are kept: $LAYERMESH_TEST_RESULTS, or a folder
// in the system temp dir that outlives the test.
func resultsDir(t *testing.T) string {
	dir := os.Getenv("LAYERMESH_TEST_RESULTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "layermesh-test-results")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("results dir: %v", err)
	}
	return dir
}

// TestLinearizability: 5 clients register, update and read catalogue keys
// through random live nodes while the leader is killed and restarted over and
// over; porcupine checks the history. Reads are linearizable reads; writes
// whose outcome is unknown enter the history as "may have happened".
func TestLinearizability(t *testing.T) {
	duration := linearizabilityDuration
	if testing.Short() {
		duration = linearizabilityShortDuration
	}
	c := startCluster(t, 3, nil)
	c.waitVoters(10*time.Second, []int{0, 1, 2}, nil)

	base := time.Now()
	now := func() int64 { return time.Since(base).Nanoseconds() }
	ctx, stop := context.WithTimeout(context.Background(), duration)
	defer stop()

	var mu sync.Mutex
	var history []porcupine.Operation
	var unknowns, failed, kills int
	var wg sync.WaitGroup
	for client := 0; client < linearizabilityClients; client++ {
		wg.Add(1)
		go func(client int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(client), uint64(base.UnixNano())))
			for seq := 0; ctx.Err() == nil; seq++ {
				stores := c.liveStores()
				if len(stores) == 0 {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				s := stores[rng.IntN(len(stores))]
				in := linInput{Key: fmt.Sprintf("model-%d", rng.IntN(linearizabilityKeys)), Value: fmt.Sprintf("c%d-%d", client, seq)}
				switch r := rng.IntN(10); {
				case r < 3:
					in.Op = linRegister
				case r < 6:
					in.Op = linUpdate
				default:
					in.Op = linRead
				}
				opCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				call := now()
				out, keep := runLinOp(opCtx, s, in)
				ret := now()
				cancel()
				if !keep {
					mu.Lock()
					failed++
					mu.Unlock()
					continue
				}
				if out.Unknown {
					// It may take effect at any later time.
					ret = (duration + time.Hour).Nanoseconds()
				}
				mu.Lock()
				if out.Unknown {
					unknowns++
				}
				history = append(history, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret})
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}(client)
	}

	// Nemesis: kill the leader without warning, let the others elect a new
	// one and serve for a while, restart the old leader from its data dir.
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(2500 * time.Millisecond):
		}
		if ctx.Err() != nil {
			break
		}
		l := c.waitLeaderQuick()
		if l < 0 {
			continue
		}
		c.kill(l)
		kills++
		select {
		case <-ctx.Done():
		case <-time.After(1500 * time.Millisecond):
		}
		c.start(l, false)
	}
	wg.Wait()

	res, info := porcupine.CheckOperationsVerbose(catalogModel.ToModel(), history, 2*time.Minute)
	path := filepath.Join(resultsDir(t), fmt.Sprintf("linearizability-%s.html", base.Format("20060102-150405")))
	if err := porcupine.VisualizePath(catalogModel.ToModel(), info, path); err != nil {
		t.Errorf("write visualization: %v", err)
	}
	t.Logf("%d ops (%d with unknown outcome, %d failed and left out), %d leader kills in %v; history: %s",
		len(history), unknowns, failed, kills, duration, path)
	if len(history) < 100 || kills < 2 {
		t.Fatalf("too little happened to judge: %d ops, %d kills", len(history), kills)
	}
	switch res {
	case porcupine.Ok:
	case porcupine.Illegal:
		t.Fatalf("history is NOT linearizable; see %s", path)
	default:
		t.Fatalf("porcupine could not decide (%s) within its time limit; history at %s", res, path)
	}
}

// runLinOp performs one operation; keep is false when it definitely did not
// happen (and so has no place in the history).
func runLinOp(ctx context.Context, s *Store, in linInput) (linOutput, bool) {
	if in.Op == linRead {
		st, err := s.Read(ctx, true)
		if err != nil {
			return linOutput{}, false
		}
		v, ok := st.Catalog[in.Key]
		return linOutput{Value: v, Present: ok}, true
	}
	mode := CatalogRegister
	if in.Op == linUpdate {
		mode = CatalogUpdate
	}
	_, err := s.Apply(ctx, NewCommand(CatalogPut{Key: in.Key, Value: in.Value, Mode: mode}))
	switch {
	case err == nil:
		return linOutput{}, true
	case errors.Is(err, ErrExists):
		return linOutput{Err: "exists"}, true
	case errors.Is(err, ErrNotFound):
		return linOutput{Err: "notfound"}, true
	case errors.Is(err, ErrUnknownOutcome):
		return linOutput{Unknown: true}, true
	default:
		return linOutput{}, false
	}
}

// TestCatalogModelDetectsViolations proves the checker can fail: hand-built
// histories that no order explains are rejected, and unknown writes are
// treated as "may have happened" in either direction.
func TestCatalogModelDetectsViolations(t *testing.T) {
	inf := int64(1 << 62)
	reg := func(v string, call, ret int64, out linOutput) porcupine.Operation {
		return porcupine.Operation{Input: linInput{Op: linRegister, Key: "k", Value: v}, Output: out, Call: call, Return: ret}
	}
	read := func(call, ret int64, present bool, v string) porcupine.Operation {
		return porcupine.Operation{ClientId: 1, Input: linInput{Op: linRead, Key: "k"}, Output: linOutput{Present: present, Value: v}, Call: call, Return: ret}
	}
	model := catalogModel.ToModel()
	for _, tc := range []struct {
		name string
		ops  []porcupine.Operation
		want bool
	}{
		{"stale read after acked write", []porcupine.Operation{reg("a", 0, 10, linOutput{}), read(20, 30, false, "")}, false},
		{"read of a value never written", []porcupine.Operation{reg("a", 0, 10, linOutput{}), read(20, 30, true, "b")}, false},
		{"second register must fail", []porcupine.Operation{reg("a", 0, 10, linOutput{}), reg("b", 20, 30, linOutput{})}, false},
		{"second register fails", []porcupine.Operation{reg("a", 0, 10, linOutput{}), reg("b", 20, 30, linOutput{Err: "exists"})}, true},
		{"unknown write seen later", []porcupine.Operation{reg("a", 0, inf, linOutput{Unknown: true}), read(20, 30, false, ""), read(40, 50, true, "a")}, true},
		{"unknown write never seen", []porcupine.Operation{reg("a", 0, inf, linOutput{Unknown: true}), read(20, 30, false, "")}, true},
		{"unknown write undone", []porcupine.Operation{reg("a", 0, inf, linOutput{Unknown: true}), read(20, 30, true, "a"), read(40, 50, false, "")}, false},
	} {
		if got := porcupine.CheckOperations(model, tc.ops); got != tc.want {
			t.Errorf("%s: linearizable = %v, want %v", tc.name, got, tc.want)
		}
	}
}
