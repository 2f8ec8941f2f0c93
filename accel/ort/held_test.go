package ort

import (
	"context"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// accumulatorModel: acc_out = acc_in + x, and y = Neg(acc_out), float32 [2 3]: a
// model with one state pair.
func accumulatorModel(t testing.TB) string {
	return writeModel(t, &onnxpb.GraphProto{
		Node: []*onnxpb.NodeProto{
			node("Add", []string{"acc_in", "x"}, []string{"acc_out"}),
			node("Neg", []string{"acc_out"}, []string{"y"}),
		},
		Input:  []*onnxpb.ValueInfoProto{valueInfo("acc_in", tensor.Float32, 2, 3), valueInfo("x", tensor.Float32, 2, 3)},
		Output: []*onnxpb.ValueInfoProto{valueInfo("acc_out", tensor.Float32, 2, 3), valueInfo("y", tensor.Float32, 2, 3)},
	})
}

func floats(t *testing.T, v tensor.Tensor) []float32 {
	t.Helper()
	f, err := v.Float32s()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestRunHeldKeepsStateInORT: a state output kept by RunHeld feeds the next run in
// place, step after step, and gives what the same steps give through Run with the
// state copied into Go memory and back.
func TestRunHeldKeepsStateInORT(t *testing.T) {
	s := open(t, newCPU(t), accumulatorModel(t), accel.SessionOptions{})
	hr, ok := s.(accel.HeldRunner)
	if !ok {
		t.Fatal("the ORT session is not an accel.HeldRunner")
	}
	ctx := context.Background()
	x := func(step int) tensor.Tensor {
		v := make([]float32, 6)
		for i := range v {
			v[i] = float32(step*10 + i)
		}
		return tensor.FromFloat32("x", []int64{2, 3}, v)
	}
	copied := tensor.FromFloat32("acc_in", []int64{2, 3}, make([]float32, 6))
	var held []accel.HeldInput
	for step := range 5 {
		in := []tensor.Tensor{x(step)}
		if held == nil {
			in = append(in, tensor.FromFloat32("acc_in", []int64{2, 3}, make([]float32, 6)))
		}
		out, kept, err := hr.RunHeld(ctx, in, held, nil, []string{"acc_out"})
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if len(out) != 1 || out[0].Name != "y" || len(kept) != 1 {
			t.Fatalf("step %d: outputs %d (%v), kept %d; want y copied and acc_out kept", step, len(out), out, len(kept))
		}
		for _, h := range held {
			h.Value.Release()
		}
		held = []accel.HeldInput{{Name: "acc_in", Value: kept[0]}}

		ref, err := s.Run(ctx, []tensor.Tensor{copied, x(step)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		copied = ref[0]
		copied.Name = "acc_in"
		got, err := kept[0].Tensor("acc_out")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(floats(t, got), floats(t, ref[0])) || !slices.Equal(floats(t, out[0]), floats(t, ref[1])) {
			t.Fatalf("step %d: held %v / %v, copied %v / %v", step, floats(t, got), floats(t, out[0]), floats(t, ref[0]), floats(t, ref[1]))
		}
		if kept[0].DType() != tensor.Float32 || !slices.Equal(kept[0].Shape(), []int64{2, 3}) || kept[0].Bytes() != 24 {
			t.Fatalf("held value describes itself as %s %v, %d bytes", kept[0].DType(), kept[0].Shape(), kept[0].Bytes())
		}
	}
	// The sum of x over steps 0..4 at element i is 100 + 5i.
	want := []float32{100, 105, 110, 115, 120, 125}
	got, err := held[0].Value.Tensor("acc")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(floats(t, got), want) {
		t.Fatalf("after 5 steps: %v, want %v", floats(t, got), want)
	}

	// A held value outlives its session: its memory belongs to it.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err = held[0].Value.Tensor("acc"); err != nil || !slices.Equal(floats(t, got), want) {
		t.Fatalf("after the session closed: %v, %v", got, err)
	}

	// ReadAt copies a part: the second row, 3 float32s from byte 12.
	row := make([]byte, 12)
	if n, err := held[0].Value.ReadAt(row, 12); n != 12 || err != nil {
		t.Fatalf("ReadAt of the second row: %d bytes, %v", n, err)
	}
	if part := (tensor.Tensor{DType: tensor.Float32, Data: row}); !slices.Equal(floats(t, part), want[3:]) {
		t.Fatalf("ReadAt of the second row: %v, want %v", floats(t, part), want[3:])
	}
	if n, err := held[0].Value.ReadAt(row, 20); n != 4 || !errors.Is(err, io.EOF) {
		t.Fatalf("ReadAt across the end: %d bytes, %v; want 4, io.EOF", n, err)
	}
	if n, err := held[0].Value.ReadAt(row, 24); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("ReadAt at the end: %d bytes, %v; want 0, io.EOF", n, err)
	}
	if _, err := held[0].Value.ReadAt(row, -1); !errors.Is(err, accel.ErrInputMismatch) {
		t.Fatalf("ReadAt at a negative offset: %v, want ErrInputMismatch", err)
	}

	held[0].Value.Release()
	held[0].Value.Release() // idempotent
	if _, err := held[0].Value.Tensor("acc"); !errors.Is(err, accel.ErrSessionClosed) {
		t.Fatalf("a released value read: %v, want ErrSessionClosed", err)
	}
	if _, err := held[0].Value.ReadAt(row, 0); !errors.Is(err, accel.ErrSessionClosed) {
		t.Fatalf("a released value read with ReadAt: %v, want ErrSessionClosed", err)
	}
}

// TestRunHeldRefusesBadValues: a released value, a value of the wrong shape, one
// given twice or for an unknown input are refused before ORT runs, with the input
// named.
func TestRunHeldRefusesBadValues(t *testing.T) {
	s := open(t, newCPU(t), accumulatorModel(t), accel.SessionOptions{})
	wide := open(t, newCPU(t), identityModel(t, tensor.Float32, 2, 4), accel.SessionOptions{})
	hr, wr := s.(accel.HeldRunner), wide.(accel.HeldRunner)
	ctx := context.Background()
	x := tensor.FromFloat32("x", []int64{2, 3}, make([]float32, 6))
	_, kept, err := hr.RunHeld(ctx, []tensor.Tensor{x, tensor.FromFloat32("acc_in", []int64{2, 3}, make([]float32, 6))}, nil, nil, []string{"acc_out"})
	if err != nil {
		t.Fatal(err)
	}
	good := kept[0]
	defer good.Release()
	_, other, err := wr.RunHeld(ctx, []tensor.Tensor{tensor.FromFloat32("x", []int64{2, 4}, make([]float32, 8))}, nil, nil, []string{"y"})
	if err != nil {
		t.Fatal(err)
	}
	wrongShape := other[0]
	defer wrongShape.Release()
	_, gone, err := hr.RunHeld(ctx, []tensor.Tensor{x, tensor.FromFloat32("acc_in", []int64{2, 3}, make([]float32, 6))}, nil, nil, []string{"acc_out"})
	if err != nil {
		t.Fatal(err)
	}
	gone[0].Release()
	for _, c := range []struct {
		name   string
		inputs []tensor.Tensor
		held   []accel.HeldInput
		is     error
	}{
		{"released", []tensor.Tensor{x}, []accel.HeldInput{{Name: "acc_in", Value: gone[0]}}, accel.ErrInputMismatch},
		{"wrong shape", []tensor.Tensor{x}, []accel.HeldInput{{Name: "acc_in", Value: wrongShape}}, accel.ErrShapeMismatch},
		{"given twice", []tensor.Tensor{x, tensor.FromFloat32("acc_in", []int64{2, 3}, make([]float32, 6))}, []accel.HeldInput{{Name: "acc_in", Value: good}}, accel.ErrInputMismatch},
		{"unknown input", []tensor.Tensor{x}, []accel.HeldInput{{Name: "acc_in", Value: good}, {Name: "q", Value: good}}, accel.ErrInputMismatch},
	} {
		if _, _, err := hr.RunHeld(ctx, c.inputs, c.held, nil, []string{"acc_out"}); !errors.Is(err, c.is) {
			t.Errorf("%s: %v, want %v", c.name, err, c.is)
		}
	}
	if _, _, err := hr.RunHeld(ctx, []tensor.Tensor{x}, []accel.HeldInput{{Name: "acc_in", Value: good}}, nil, []string{"nope"}); !errors.Is(err, accel.ErrInputMismatch) {
		t.Errorf("an unknown output kept: %v", err)
	}
	// The good value is untouched by the refusals and still runs.
	if _, more, err := hr.RunHeld(ctx, []tensor.Tensor{x}, []accel.HeldInput{{Name: "acc_in", Value: good}}, nil, []string{"acc_out"}); err != nil {
		t.Fatalf("a good value after the refusals: %v", err)
	} else {
		more[0].Release()
	}
}

// TestRunHeldCopiesAnOutputThatIsAnInput: an output ORT hands back in the memory of a
// Go input (a graph that passes an input straight on) is copied into ORT's memory
// before it is kept: the Go buffer is unpinned, and may change, once the run ends.
func TestRunHeldCopiesAnOutputThatIsAnInput(t *testing.T) {
	s := open(t, newCPU(t), identityModel(t, tensor.Float32, 2, 3), accel.SessionOptions{})
	in := tensor.FromFloat32("x", []int64{2, 3}, []float32{1, 2, 3, 4, 5, 6})
	_, kept, err := s.(accel.HeldRunner).RunHeld(context.Background(), []tensor.Tensor{in}, nil, nil, []string{"y"})
	if err != nil {
		t.Fatal(err)
	}
	defer kept[0].Release()
	clear(in.Data)
	got, err := kept[0].Tensor("y")
	if err != nil {
		t.Fatal(err)
	}
	if want := []float32{1, 2, 3, 4, 5, 6}; !slices.Equal(floats(t, got), want) {
		t.Fatalf("kept %v after the input changed, want %v", floats(t, got), want)
	}
}

// TestRunWithNoNamesGivesEveryOutput: Run with names nil or empty answers with every
// output, in the model's order; RunHeld with none copies every output it does not keep.
func TestRunWithNoNamesGivesEveryOutput(t *testing.T) {
	s := open(t, newCPU(t), accumulatorModel(t), accel.SessionOptions{})
	in := []tensor.Tensor{tensor.FromFloat32("acc_in", []int64{2, 3}, make([]float32, 6)), tensor.FromFloat32("x", []int64{2, 3}, make([]float32, 6))}
	for _, names := range [][]string{nil, {}} {
		out, err := s.Run(context.Background(), in, names)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 2 || out[0].Name != "acc_out" || out[1].Name != "y" {
			t.Fatalf("Run with names %#v: %d outputs %v", names, len(out), out)
		}
	}
	out, kept, err := s.(accel.HeldRunner).RunHeld(context.Background(), in, nil, []string{}, []string{"acc_out"})
	if err != nil {
		t.Fatal(err)
	}
	defer kept[0].Release()
	if len(out) != 1 || out[0].Name != "y" {
		t.Fatalf("RunHeld keeping acc_out copied %v", out)
	}
}
