package harness

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// ErrNotLinearizable is returned when a history has no linearization.
var ErrNotLinearizable = errors.New("harness: history is not linearizable")

// ErrCheckTimeout is returned when the checker ran out of time before deciding.
var ErrCheckTimeout = errors.New("harness: linearizability check timed out")

// KVKind is the kind of a key-value operation.
type KVKind int

// Key-value operations: a write sets a key, a delete removes it, a read observes it.
const (
	KVPut KVKind = iota
	KVDelete
	KVGet
)

// KVOp is one operation on the cluster state seen as a map from key to value (a model
// name to its version or hash, for instance).
type KVOp struct {
	Kind  KVKind
	Key   string
	Value string // for KVPut
}

// kvOutput is what an operation returned; unknown marks a write whose outcome the client
// never learned (a timeout, a lost leader) and a read that got no answer.
type kvOutput struct {
	value   string // for KVGet: "" when absent
	unknown bool
}

// History records the operations clients ran against the cluster, with their real-time
// intervals, for a linearizability check with porcupine. It is safe for concurrent use.
type History struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

// NewHistory starts an empty history; its clock starts now.
func NewHistory() *History { return &History{start: time.Now()} }

// PendingOp is an operation that has been called and not yet returned.
type PendingOp struct {
	h      *History
	client int
	in     KVOp
	call   int64
	once   sync.Once
}

func (h *History) now() int64 { return int64(time.Since(h.start)) }

// Begin records that client called op; finish it with exactly one of Ok, Unknown or
// Failed once the answer (or its absence) is known.
func (h *History) Begin(client int, op KVOp) *PendingOp {
	return &PendingOp{h: h, client: client, in: op, call: h.now()}
}

func (p *PendingOp) record(out kvOutput, ret int64) {
	p.once.Do(func() {
		p.h.mu.Lock()
		defer p.h.mu.Unlock()
		p.h.ops = append(p.h.ops, porcupine.Operation{ClientId: p.client, Input: p.in, Call: p.call, Output: out, Return: ret})
	})
}

// Ok records that the operation took effect; value is what a read returned ("" for
// absent) and is ignored for writes.
func (p *PendingOp) Ok(value string) { p.record(kvOutput{value: value}, p.h.now()) }

// Unknown records an operation whose outcome the client did not learn: it may have
// taken effect at any moment after its call, or never. Its return is put at the end of
// time, so the checker may place it anywhere after the call (Jepsen's :info).
func (p *PendingOp) Unknown() { p.record(kvOutput{unknown: true}, math.MaxInt64) }

// Failed records nothing: the operation definitely did not take effect (a clean
// refusal such as a 503 before the write was proposed), so it is not part of the
// history. A read that failed is also dropped: it observed nothing.
func (p *PendingOp) Failed() { p.once.Do(func() {}) }

// Len returns the number of operations recorded.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops)
}

// kvModel is the sequential specification: a map from key to value, checked one key at
// a time (operations on different keys commute, which keeps the search small).
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(KVOp).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	// The state of one key's partition is its value ("" when absent).
	Step: func(state, input, output any) (bool, any) {
		in, out, v := input.(KVOp), output.(kvOutput), state.(string)
		switch in.Kind {
		case KVPut:
			return true, in.Value
		case KVDelete:
			return true, ""
		default:
			return out.unknown || out.value == v, v
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(KVOp), output.(kvOutput)
		res := out.value
		if out.unknown {
			res = "?"
		}
		switch in.Kind {
		case KVPut:
			return fmt.Sprintf("put(%s, %s) %s", in.Key, in.Value, res)
		case KVDelete:
			return fmt.Sprintf("delete(%s) %s", in.Key, res)
		default:
			return fmt.Sprintf("get(%s) -> %q", in.Key, res)
		}
	},
}

// CheckLinearizable checks the history against the key-value model within timeout. On
// a violation it writes porcupine's visualisation to vizPath (when not empty) and
// returns ErrNotLinearizable; a check that could not finish returns ErrCheckTimeout.
func (h *History) CheckLinearizable(timeout time.Duration, vizPath string) error {
	h.mu.Lock()
	ops := make([]porcupine.Operation, len(h.ops))
	copy(ops, h.ops)
	h.mu.Unlock()
	res, info := porcupine.CheckOperationsVerbose(kvModel, ops, timeout)
	switch res {
	case porcupine.Ok:
		return nil
	case porcupine.Illegal:
		if vizPath != "" {
			if err := porcupine.VisualizePath(kvModel, info, vizPath); err != nil {
				return fmt.Errorf("%w (%d operations; visualisation failed: %w)", ErrNotLinearizable, len(ops), err)
			}
			return fmt.Errorf("%w (%d operations; see %s)", ErrNotLinearizable, len(ops), vizPath)
		}
		return fmt.Errorf("%w (%d operations)", ErrNotLinearizable, len(ops))
	default:
		return fmt.Errorf("%w after %v (%d operations)", ErrCheckTimeout, timeout, len(ops))
	}
}

// AckedWrites returns, per key, the values of the writes acknowledged to a client, in
// the order they were recorded: a scenario that writes each key once counts as lost
// every key it cannot find afterwards.
func (h *History) AckedWrites() map[string][]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string][]string{}
	for _, op := range h.ops {
		in, o := op.Input.(KVOp), op.Output.(kvOutput)
		if in.Kind == KVPut && !o.unknown {
			out[in.Key] = append(out[in.Key], in.Value)
		}
	}
	return out
}
