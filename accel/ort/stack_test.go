package ort

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// kvModel: y = Neg(x), float32 [batch, 2, len, 3], the layout of a KV cache.
func kvModel(t *testing.T) string {
	dims := func(name string) *onnxpb.ValueInfoProto {
		vi := valueInfo(name, tensor.Float32, -1, 2, -1, 3)
		shape := vi.GetType().GetTensorType().GetShape().GetDim()
		shape[0].Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: "batch"}
		shape[2].Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: "len"}
		return vi
	}
	return writeModel(t, &onnxpb.GraphProto{
		Node:   []*onnxpb.NodeProto{node("Neg", []string{"x"}, []string{"y"})},
		Input:  []*onnxpb.ValueInfoProto{dims("x")},
		Output: []*onnxpb.ValueInfoProto{dims("y")},
	})
}

// kvRow is a [1, 2, n, 3] row whose elements count up from base.
func kvRow(n int, base float32) tensor.Tensor {
	v := make([]float32, 2*n*3)
	for i := range v {
		v[i] = base + float32(i)
	}
	return tensor.FromFloat32("x", []int64{1, 2, int64(n), 3}, v)
}

// TestStackAndCutHeld: rows of different lengths held in ONNX Runtime stack into one
// value, each padded in front with zeros along its length axis, a run reads the stack
// in place, and each row cut back out of the run's held output, less its padding, is
// that row's own result; the values made are the caller's, and bad rows are refused.
func TestStackAndCutHeld(t *testing.T) {
	before := HeldBytes()
	s := open(t, newCPU(t), kvModel(t), accel.SessionOptions{})
	stk, ok := s.(accel.HeldStacker)
	if !ok {
		t.Fatal("the ORT session is not an accel.HeldStacker")
	}
	ctx := context.Background()
	lengths := []int{2, 4, 1}
	rows := heldRows(t, stk, lengths)
	stack, err := stk.StackHeld(rows, 2, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Release()
	if want := []int64{3, 2, 5, 3}; !slices.Equal(stack.Shape(), want) {
		t.Fatalf("stack shape %v, want %v", stack.Shape(), want)
	}
	got, err := stack.Tensor("stack")
	if err != nil {
		t.Fatal(err)
	}
	g := floats(t, got)
	for i, n := range lengths {
		for h := range 2 {
			for p := range 5 {
				for c := range 3 {
					want := float32(0)
					if q := p - (5 - n); q >= 0 {
						want = -(float32(100*i+1) + float32((h*n+q)*3+c))
					}
					if v := g[((i*2+h)*5+p)*3+c]; v != want {
						t.Fatalf("stack row %d, head %d, position %d, %d: %v, want %v", i, h, p, c, v, want)
					}
				}
			}
		}
	}

	// The stack feeds a run in place; its output, cut row by row less each row's
	// padding, is each row's own run.
	_, kept, err := stk.RunHeld(ctx, nil, []accel.HeldInput{{Name: "x", Value: stack}}, nil, []string{"y"})
	if err != nil {
		t.Fatal(err)
	}
	defer kept[0].Release()
	for i, n := range lengths {
		cut := taken(t)(stk.CutHeld(kept[0], i, 2, 5-n))
		if want := kvRow(n, float32(100*i+1)); !slices.Equal(cut.Shape, want.Shape) || !slices.Equal(floats(t, cut), floats(t, want)) {
			t.Fatalf("row %d cut back: %v %v, want %v %v", i, cut.Shape, floats(t, cut), want.Shape, floats(t, want))
		}
	}

	for name, bad := range map[string]func() error{
		"a row longer than the stack": func() error { _, err := stk.StackHeld(rows, 2, 3); return err },
		"rows along another axis":     func() error { _, err := stk.StackHeld(rows, 1, 2); return err },
		"a row past the batch":        func() error { _, err := stk.CutHeld(stack, 3, 2, 0); return err },
		"more padding than positions": func() error { _, err := stk.CutHeld(stack, 0, 2, 6); return err },
		"a stack that is not rows":    func() error { _, err := stk.StackHeld([]accel.Held{stack}, 2, 5); return err },
	} {
		if err := bad(); !errors.Is(err, accel.ErrInputMismatch) {
			t.Errorf("%s: %v, want accel.ErrInputMismatch", name, err)
		}
	}
	released := rows[2]
	released.Release()
	if _, err := stk.StackHeld(rows, 2, 5); !errors.Is(err, accel.ErrSessionClosed) {
		t.Errorf("stacking a released row: %v, want accel.ErrSessionClosed", err)
	}
	stack.Release()
	kept[0].Release()
	for _, r := range rows {
		r.Release()
	}
	if n := HeldBytes() - before; n != 0 {
		t.Errorf("%d bytes still held once every value is released", n)
	}
}

// heldRows runs kvModel on rows of these lengths (row i counting up from 100i+1) and
// returns its outputs held, released when the test ends.
func heldRows(t *testing.T, stk accel.HeldStacker, lengths []int) []accel.Held {
	t.Helper()
	var rows []accel.Held
	for i, n := range lengths {
		_, kept, err := stk.RunHeld(context.Background(), []tensor.Tensor{kvRow(n, float32(100*i+1))}, nil, nil, []string{"y"})
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, kept[0])
		t.Cleanup(kept[0].Release)
	}
	return rows
}

// TestStackHeldWithoutPadding: stacked to the longest row's own length, that row has
// no padding and cuts back whole; along axis 0 (no length axis) rows of one shape
// stack as they are.
func TestStackHeldWithoutPadding(t *testing.T) {
	s := open(t, newCPU(t), kvModel(t), accel.SessionOptions{})
	stk := s.(accel.HeldStacker)
	rows := heldRows(t, stk, []int{2, 4, 1})
	tight, err := stk.StackHeld(rows, 2, 4)
	if err != nil {
		t.Fatal(err)
	}
	cut := taken(t)(stk.CutHeld(tight, 1, 2, 0))
	tight.Release()
	if want := floats(t, kvRow(4, 101)); !slices.Equal(floats(t, cut), negated(want)) {
		t.Fatalf("the longest row stacked and cut with no padding: %v, want %v", floats(t, cut), negated(want))
	}
	pair := taken(t)(stk.StackHeld([]accel.Held{rows[0], rows[0]}, 0, 0))
	if one := negated(floats(t, kvRow(2, 1))); !slices.Equal(floats(t, pair), append(slices.Clone(one), one...)) || pair.Shape[0] != 2 {
		t.Fatalf("two rows along axis 0: %v %v", pair.Shape, floats(t, pair))
	}
}

// taken copies a value a call made into Go memory and releases it; the call's error
// fails the test.
func taken(t *testing.T) func(accel.Held, error) tensor.Tensor {
	return func(h accel.Held, err error) tensor.Tensor {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Release()
		v, err := h.Tensor("taken")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func negated(v []float32) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = -x
	}
	return out
}
