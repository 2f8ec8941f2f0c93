package ort

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
)

// TestInputValidation: every malformed request is refused by accel, with the input
// named and what was expected and got, before ORT sees it.
func TestInputValidation(t *testing.T) {
	s := open(t, newCPU(t), matMulModel(t), accel.SessionOptions{})
	a := tensor.FromFloat32("a", []int64{3, 2}, []float32{1, 2, 3, 4, 5, 6})
	b := tensor.FromFloat32("b", []int64{2, 2}, []float32{1, 0, 0, 1})
	with := func(ts ...tensor.Tensor) []tensor.Tensor { return ts }
	mod := func(base tensor.Tensor, f func(*tensor.Tensor)) tensor.Tensor {
		base.Shape = append([]int64(nil), base.Shape...)
		f(&base)
		return base
	}
	rows := []struct {
		name   string
		inputs []tensor.Tensor
		names  []string
		is     error
		msg    []string // substrings the error must contain
	}{
		{"unknown input", with(a, b, tensor.FromFloat32("q", []int64{1}, []float32{1})), nil, accel.ErrInputMismatch, []string{`"q"`, "a, b"}},
		{"duplicate input", with(a, b, a), nil, accel.ErrInputMismatch, []string{`"a"`, "twice"}},
		{"missing input", with(a), nil, accel.ErrInputMismatch, []string{"missing", "b"}},
		{"no inputs", nil, nil, accel.ErrInputMismatch, []string{"a, b"}},
		{"wrong dtype", with(a, tensor.FromInt64("b", []int64{2, 2}, []int64{1, 0, 0, 1})), nil, accel.ErrDTypeMismatch, []string{`"b"`, "float32", "int64"}},
		{"wrong rank", with(a, mod(b, func(t *tensor.Tensor) { t.Shape = []int64{4} })), nil, accel.ErrShapeMismatch, []string{`"b"`, "rank 2", "rank 1"}},
		{"wrong fixed dim", with(mod(a, func(t *tensor.Tensor) { t.Shape = []int64{2, 3} }), b), nil, accel.ErrShapeMismatch, []string{`"a"`, "[? 2]", "[2 3]"}},
		{"negative dim", with(mod(a, func(t *tensor.Tensor) { t.Shape = []int64{-3, 2} }), b), nil, accel.ErrShapeMismatch, []string{`"a"`, "negative"}},
		{"data too short", with(mod(a, func(t *tensor.Tensor) { t.Data = t.Data[:20] }), b), nil, tensor.ErrDataLength, []string{`"a"`, "24 bytes", "got 20"}},
		{"data too long", with(mod(a, func(t *tensor.Tensor) { t.Data = append(t.Data, 0, 0, 0, 0) }), b), nil, tensor.ErrDataLength, []string{`"a"`, "got 28"}},
		{"huge shape, tiny data", with(mod(a, func(t *tensor.Tensor) { t.Shape = []int64{math.MaxInt64 / 2, 2} }), b), nil, accel.ErrInputMismatch, []string{`"a"`}},
		{"huge shape, zero data", with(mod(a, func(t *tensor.Tensor) { t.Shape = []int64{1 << 40, 2}; t.Data = nil }), b), nil, tensor.ErrDataLength, []string{`"a"`}},
		{"unknown dtype", with(a, mod(b, func(t *tensor.Tensor) { t.DType = 99 })), nil, accel.ErrDTypeMismatch, []string{`"b"`, "dtype(99)"}},
		{"unknown output", with(a, b), []string{"nope"}, accel.ErrInputMismatch, []string{`"nope"`, "c, d"}},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			_, err := s.Run(context.Background(), r.inputs, r.names)
			if !errors.Is(err, r.is) || !errors.Is(err, accel.ErrInputMismatch) {
				t.Fatalf("got %v, want an error wrapping %v and accel.ErrInputMismatch", err, r.is)
			}
			for _, m := range r.msg {
				if !strings.Contains(err.Error(), m) {
					t.Fatalf("error %q does not mention %q", err, m)
				}
			}
		})
	}
	// The session still serves after every refusal.
	if _, err := s.Run(context.Background(), with(a, b), nil); err != nil {
		t.Fatalf("valid run after refusals: %v", err)
	}
}

// TestPoolConcurrency runs many goroutines against a pool of 3 sessions, each with
// its own inputs, and checks every result.
func TestPoolConcurrency(t *testing.T) {
	s := open(t, newCPU(t), addModel(t), accel.SessionOptions{PoolSize: 3, IntraOpThreads: 1})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				k := float32(g*100 + i)
				out, err := s.Run(context.Background(), addInputs(k), nil)
				if err != nil {
					errs <- err
					return
				}
				z, _ := out[0].Float32s()
				for j, v := range z {
					if want := float32(j+1) + 10*float32(j+1)*k; v != want {
						errs <- fmt.Errorf("goroutine %d run %d: z[%d] = %v, want %v", g, i, j, v, want)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestRunWaitsForSlotUntilContextEnds holds the only pooled session and checks that a
// Run gives up when its context ends.
func TestRunWaitsForSlotUntilContextEnds(t *testing.T) {
	s := open(t, newCPU(t), addModel(t), accel.SessionOptions{PoolSize: 1})
	p := s.(*ortPool)
	held := <-p.idle
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Run(ctx, addInputs(1), nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("gave up after %v", d)
	}
	p.idle <- held
	if _, err := s.Run(context.Background(), addInputs(1), nil); err != nil {
		t.Fatalf("after the slot is back: %v", err)
	}
}

// TestRunCancelledMidway cancels a run of a slow model and expects ORT to stop early.
func TestRunCancelledMidway(t *testing.T) {
	s := open(t, newCPU(t), slowModel(t, 256, 400), accel.SessionOptions{IntraOpThreads: 1})
	x := tensor.Tensor{Name: "x", DType: tensor.Float32, Shape: []int64{256, 256}, Data: make([]byte, 256*256*4)}
	// The faster of two runs: a first run a busy machine slowed would put the cancel
	// after the end of the run it is meant to stop.
	full := time.Hour
	for range 2 {
		start := time.Now()
		if _, err := s.Run(context.Background(), []tensor.Tensor{x}, nil); err != nil {
			t.Fatal(err)
		}
		full = min(full, time.Since(start))
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(full/10, cancel)
	start := time.Now()
	_, err := s.Run(ctx, []tensor.Tensor{x}, nil)
	took := time.Since(start)
	// A run ORT finished would return outputs and no error; the terminate flag's
	// message shows that ORT itself stopped, not just the wait around it.
	if !errors.Is(err, context.Canceled) || !strings.Contains(strings.ToLower(err.Error()), "terminate") {
		t.Fatalf("got %v, want an error wrapping context.Canceled from ORT's terminate flag", err)
	}
	t.Logf("full run %v, cancelled after %v returned in %v", full, full/10, took)
	if _, err := s.Run(context.Background(), []tensor.Tensor{x}, nil); err != nil {
		t.Fatalf("a run after a cancelled one: %v", err)
	}
}

func TestClose(t *testing.T) {
	b := newCPU(t)
	s, err := b.Open(context.Background(), addModel(t), accel.SessionOptions{PoolSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if _, err := s.Run(context.Background(), addInputs(1), nil); err != nil && !errors.Is(err, accel.ErrSessionClosed) {
					t.Errorf("run during close: %v", err)
					return
				}
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if _, err := s.Run(context.Background(), addInputs(1), nil); !errors.Is(err, accel.ErrSessionClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestInvalidModels: files that are not models, or not whole ones, are refused with
// ErrInvalidModel and never crash the process.
func TestInvalidModels(t *testing.T) {
	b := newCPU(t)
	good, err := os.ReadFile(matMulModel(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rows := map[string][]byte{
		"empty":                 {},
		"garbage":               []byte("this is not an onnx model, just text\x00\xff\xfe"),
		"truncated":             good[:len(good)/2],
		"truncated by one byte": good[:len(good)-1],
	}
	for name, data := range rows {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".onnx")
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			s, err := b.Open(context.Background(), path, accel.SessionOptions{})
			if err == nil {
				s.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, accel.ErrInvalidModel) {
				t.Fatalf("got %v, want accel.ErrInvalidModel", err)
			}
			// A nil Session, not a nil pool inside one: the stage runtime tests the
			// Session against nil (a stage unassigned while it failed to load).
			if s != nil {
				t.Fatalf("a failed open returned the Session %#v", s)
			}
		})
	}
	if _, err := b.Open(context.Background(), filepath.Join(dir, "missing.onnx"), accel.SessionOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: got %v", err)
	}
}

// BenchmarkORTRun measures one Run of a small MatMul model (a [64 2] x [2 2]), i.e. the
// fixed cost accel adds around ORT: validation, tensor wrapping, output copy.
func BenchmarkORTRun(b *testing.B) {
	s := open(b, newCPU(b), matMulModel(b), accel.SessionOptions{IntraOpThreads: 1})
	vals := make([]float32, 128)
	for i := range vals {
		vals[i] = float32(i)
	}
	in := []tensor.Tensor{
		tensor.FromFloat32("a", []int64{64, 2}, vals),
		tensor.FromFloat32("b", []int64{2, 2}, []float32{1, 2, 3, 4}),
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Run(ctx, in, []string{"c"}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestStringWithNULRefused(t *testing.T) {
	s := open(t, newCPU(t), identityModel(t, tensor.String, 1), accel.SessionOptions{})
	in := tensor.Tensor{Name: "x", DType: tensor.String, Shape: []int64{1}, Strings: []string{"a\x00b"}}
	if _, err := s.Run(context.Background(), []tensor.Tensor{in}, nil); !errors.Is(err, accel.ErrInputMismatch) || !strings.Contains(err.Error(), "NUL") {
		t.Fatalf("got %v", err)
	}
}

// TestRunTimeLeavesOutTheWaitForASession: a run's context can carry an
// accel.RunTime, which the run fills with its compute time only: the wait for a free
// session of the pool is not in it.
func TestRunTimeLeavesOutTheWaitForASession(t *testing.T) {
	s := open(t, newCPU(t), addModel(t), accel.SessionOptions{PoolSize: 1})
	p := s.(*ortPool)
	held := <-p.idle
	const hold = 100 * time.Millisecond
	started := make(chan struct{})
	type result struct {
		wall, run time.Duration
		ok        bool
		err       error
	}
	done := make(chan result, 1)
	go func() {
		var rt accel.RunTime
		start := time.Now()
		close(started)
		_, err := s.Run(accel.WithRunTime(context.Background(), &rt), addInputs(1), nil)
		d, ok := rt.Get()
		done <- result{time.Since(start), d, ok, err}
	}()
	<-started
	time.Sleep(hold)
	p.idle <- held
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.ok || r.run <= 0 {
		t.Fatalf("run time not reported: %v, %v", r.run, r.ok)
	}
	if r.wall-r.run < hold/2 {
		t.Fatalf("run time %v of a run that waited %v for its session (wall %v): the wait is counted", r.run, hold, r.wall)
	}
	var none accel.RunTime
	if _, ok := none.Get(); ok {
		t.Fatal("an unfilled RunTime reports a time")
	}
}
