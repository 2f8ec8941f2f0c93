package ort

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// newCPU is the backend the tests share; ORT itself is loaded once per process.
func newCPU(t testing.TB) accel.Backend {
	t.Helper()
	b, err := New(Config{Provider: accel.ProviderCPU, IntraOpThreads: 1, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b
}

func open(t testing.TB, b accel.Backend, path string, opts accel.SessionOptions) accel.Session {
	t.Helper()
	s, err := b.Open(context.Background(), path, opts)
	if err != nil {
		t.Fatalf("Open %s: %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestDefaultLibraryPath(t *testing.T) {
	t.Setenv("ORT_LIB", "")
	p, err := DefaultLibraryPath()
	if err != nil {
		t.Fatalf("walking up from the package folder must find the library of make setup: %v", err)
	}
	if !strings.HasSuffix(p, libraryRelPath) {
		t.Fatalf("found %s", p)
	}
	t.Setenv("ORT_LIB", "/elsewhere/libonnxruntime.so")
	if p, _ := DefaultLibraryPath(); p != "/elsewhere/libonnxruntime.so" {
		t.Fatalf("ORT_LIB must win, got %s", p)
	}
}

// TestLibraryBesideBinaryComesFirst: an unpacked release tarball (binary and library in
// one folder) loads its own library even when run from inside a checkout, whose
// current library is the host's architecture; without one beside it, the checkout's
// is found above the working directory, then above the binary.
func TestLibraryBesideBinaryComesFirst(t *testing.T) {
	touch := func(p string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	checkout := t.TempDir()
	touch(filepath.Join(checkout, libraryRelPath))
	release := t.TempDir()
	exe := filepath.Join(release, "meshnode")
	touch(exe)

	if p, err := findLibrary(exe, checkout); err != nil || p != filepath.Join(checkout, libraryRelPath) {
		t.Fatalf("no library beside the binary: want the checkout's, got %q, %v", p, err)
	}
	touch(filepath.Join(release, libraryName))
	if p, err := findLibrary(exe, filepath.Join(checkout, "sub")); err != nil || p != filepath.Join(release, libraryName) {
		t.Fatalf("library beside the binary: want it, got %q, %v", p, err)
	}
	inBin := filepath.Join(checkout, "bin", "meshnode")
	if p, err := findLibrary(inBin, t.TempDir()); err != nil || p != filepath.Join(checkout, libraryRelPath) {
		t.Fatalf("binary in bin/ of a checkout: want the checkout's library, got %q, %v", p, err)
	}
	if _, err := findLibrary(filepath.Join(t.TempDir(), "meshnode"), t.TempDir()); !errors.Is(err, accel.ErrLibraryNotFound) {
		t.Fatalf("nothing anywhere: want ErrLibraryNotFound, got %v", err)
	}
}

func TestNewORTLibraryErrors(t *testing.T) {
	newCPU(t) // make sure the real library is the one loaded
	_, err := New(Config{LibraryPath: "/nonexistent/libonnxruntime.so.1", Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), "already loaded") {
		t.Fatalf("a second, different library must be refused while one is loaded, got %v", err)
	}
	if _, err := New(Config{Provider: "vulkan", Logger: quietLogger()}); !errors.Is(err, accel.ErrProviderUnavailable) {
		t.Fatalf("unknown provider: got %v", err)
	}
}

// TestProviderSelection checks what this machine offers: the ORT library of make
// setup is a CPU build, so explicit GPU providers must fail with a message that says
// why, and auto must fall back to the CPU and log that choice.
func TestProviderSelection(t *testing.T) {
	var gpuErrs []error
	for _, p := range []accel.Provider{accel.ProviderCUDA, accel.ProviderTensorRT} {
		b, err := New(Config{Provider: p, Logger: quietLogger()})
		if err == nil {
			if b.Provider() != p {
				t.Fatalf("asked for %s, got %s", p, b.Provider())
			}
			t.Logf("%s is available on this machine", p)
			continue
		}
		gpuErrs = append(gpuErrs, err)
		if !errors.Is(err, accel.ErrProviderUnavailable) {
			t.Fatalf("%s: error does not wrap accel.ErrProviderUnavailable: %v", p, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, string(p)) || len(msg) < len(string(p))+40 {
			t.Fatalf("%s: the error must name the provider and say why: %q", p, msg)
		}
		for _, lib := range providerLibraries[p] {
			if !fileExists(filepath.Join(filepath.Dir(runtimeState.path), lib)) && !strings.Contains(msg, lib) {
				t.Fatalf("%s: %s is missing but the error does not say so: %q", p, lib, msg)
			}
		}
		t.Logf("%s unavailable: %s", p, msg)
	}
	var logs bytes.Buffer
	b, err := New(Config{Provider: accel.ProviderAuto, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("auto must always load: %v", err)
	}
	if len(gpuErrs) == 2 && b.Provider() != accel.ProviderCPU {
		t.Fatalf("no GPU provider loads, yet auto picked %s", b.Provider())
	}
	if want := "provider=" + string(b.Provider()); !strings.Contains(logs.String(), want) || !strings.Contains(logs.String(), "component=accel") {
		t.Fatalf("auto must log its choice (%s) with component=accel; logs:\n%s", want, logs.String())
	}
	// The pick must actually run a model.
	s := open(t, b, addModel(t), accel.SessionOptions{})
	if _, err := s.Run(context.Background(), addInputs(1), nil); err != nil {
		t.Fatalf("run on %s: %v", b.Provider(), err)
	}
}

func addInputs(k float32) []tensor.Tensor {
	x := []float32{1, 2, 3, 4, 5, 6}
	y := []float32{10 * k, 20 * k, 30 * k, 40 * k, 50 * k, 60 * k}
	return []tensor.Tensor{tensor.FromFloat32("x", []int64{2, 3}, x), tensor.FromFloat32("y", []int64{2, 3}, y)}
}

func TestRunAdd(t *testing.T) {
	s := open(t, newCPU(t), addModel(t), accel.SessionOptions{})
	out, err := s.Run(context.Background(), addInputs(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Name != "z" || out[0].DType != tensor.Float32 || fmt.Sprint(out[0].Shape) != "[2 3]" {
		t.Fatalf("got %+v", out)
	}
	got, _ := out[0].Float32s()
	want := []float32{11, 22, 33, 44, 55, 66}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("z = %v, want %v", got, want)
	}
}

func TestMetadataAndMatMul(t *testing.T) {
	s := open(t, newCPU(t), matMulModel(t), accel.SessionOptions{})
	if got := fmt.Sprint(s.Inputs()); got != "[{a float32 [-1 2]} {b float32 [2 2]}]" {
		t.Fatalf("Inputs() = %s", got)
	}
	if got := fmt.Sprint(s.Outputs()); got != "[{c float32 [-1 2]} {d float32 [-1 2]}]" {
		t.Fatalf("Outputs() = %s", got)
	}
	a := tensor.FromFloat32("a", []int64{3, 2}, []float32{1, 2, 3, 4, 5, 6})
	b := tensor.FromFloat32("b", []int64{2, 2}, []float32{1, 0.5, -1, 2})
	// Outputs come back in the order asked, not the model's.
	out, err := s.Run(context.Background(), []tensor.Tensor{b, a}, []string{"d", "c"})
	if err != nil {
		t.Fatal(err)
	}
	// Row r of a times b: [a0 - a1, 0.5 a0 + 2 a1].
	want := []float64{-1, 4.5, -1, 9.5, -1, 14.5}
	c, _ := out[1].Float64s()
	d, _ := out[0].Float64s()
	for i := range want {
		if c[i] != want[i] || d[i] != -want[i] {
			t.Fatalf("c = %v, d = %v, want c = %v and d = -c", c, d, want)
		}
	}
	if out[0].Name != "d" || out[1].Name != "c" || fmt.Sprint(out[1].Shape) != "[3 2]" {
		t.Fatalf("names/shapes: %s %v, %s %v", out[0].Name, out[0].Shape, out[1].Name, out[1].Shape)
	}
}

// TestEveryDType round-trips every tensor.DType through Identity, as a [2 3] tensor,
// a scalar and a zero-sized [0 3] tensor.
func TestEveryDType(t *testing.T) {
	b := newCPU(t)
	dtypes := []tensor.DType{tensor.Float32, tensor.Uint8, tensor.Int8, tensor.Uint16, tensor.Int16, tensor.Int32,
		tensor.Int64, tensor.String, tensor.Bool, tensor.Float16, tensor.Float64, tensor.Uint32, tensor.Uint64, tensor.BFloat16}
	shapes := []struct {
		name  string
		model []int64
		data  []int64
	}{
		{"matrix", []int64{2, 3}, []int64{2, 3}},
		{"scalar", nil, []int64{}},
		{"zero-sized", []int64{-1, 3}, []int64{0, 3}},
	}
	for _, d := range dtypes {
		for _, sh := range shapes {
			t.Run(d.String()+"/"+sh.name, func(t *testing.T) {
				s := open(t, b, identityModel(t, d, sh.model...), accel.SessionOptions{})
				n, _ := tensor.NumElements(sh.data)
				in := tensor.Tensor{Name: "x", DType: d, Shape: sh.data}
				if d == tensor.String {
					for i := range n {
						in.Strings = append(in.Strings, fmt.Sprintf("s%d-é", i))
					}
				} else {
					in.Data = make([]byte, n*int64(d.Size()))
					for i := range in.Data {
						in.Data[i] = byte(7*i + 1)
					}
					if d == tensor.Bool {
						for i := range in.Data {
							in.Data[i] = byte(i % 2)
						}
					}
				}
				out, err := s.Run(context.Background(), []tensor.Tensor{in}, nil)
				if err != nil {
					t.Fatal(err)
				}
				got := out[0]
				if got.DType != d || fmt.Sprint(got.Shape) != fmt.Sprint(sh.data) {
					t.Fatalf("got %s %v, want %s %v", got.DType, got.Shape, d, sh.data)
				}
				if !bytes.Equal(got.Data, in.Data) || fmt.Sprint(got.Strings) != fmt.Sprint(in.Strings) {
					t.Fatalf("data changed: got %v %q, want %v %q", got.Data, got.Strings, in.Data, in.Strings)
				}
			})
		}
	}
}

func TestSequenceOutputUnsupported(t *testing.T) {
	s := open(t, newCPU(t), sequenceModel(t), accel.SessionOptions{})
	x := tensor.FromFloat32("x", []int64{2}, []float32{1, 2})
	if _, err := s.Run(context.Background(), []tensor.Tensor{x}, nil); !errors.Is(err, accel.ErrUnsupportedOutput) {
		t.Fatalf("all outputs of a model with a sequence output: got %v, want accel.ErrUnsupportedOutput", err)
	}
	if _, err := s.Run(context.Background(), []tensor.Tensor{x}, []string{"s"}); !errors.Is(err, accel.ErrUnsupportedOutput) || !strings.Contains(err.Error(), "sequence") {
		t.Fatalf("sequence output: got %v", err)
	}
	out, err := s.Run(context.Background(), []tensor.Tensor{x}, []string{"y"})
	if err != nil {
		t.Fatalf("the tensor output must still run: %v", err)
	}
	if v, _ := out[0].Float32s(); fmt.Sprint(v) != "[1 2]" {
		t.Fatalf("y = %v", v)
	}
}

// TestExternalData opens a model whose weight lives in a separate file named relative
// to the model, from a different working directory: ORT must resolve it against the
// model's folder.
func TestExternalData(t *testing.T) {
	dir := t.TempDir()
	w := tensor.FromFloat32("w", []int64{2}, []float32{10, 20})
	if err := os.WriteFile(filepath.Join(dir, "weights.bin"), w.Data, 0o644); err != nil {
		t.Fatal(err)
	}
	entry := func(k, v string) *onnxpb.StringStringEntryProto {
		return &onnxpb.StringStringEntryProto{Key: proto.String(k), Value: proto.String(v)}
	}
	g := &onnxpb.GraphProto{
		Name: proto.String("ext"),
		Initializer: []*onnxpb.TensorProto{{
			Name: proto.String("w"), DataType: proto.Int32(int32(tensor.Float32)), Dims: []int64{2},
			DataLocation: onnxpb.TensorProto_EXTERNAL.Enum(),
			ExternalData: []*onnxpb.StringStringEntryProto{entry("location", "weights.bin"), entry("offset", "0"), entry("length", "8")},
		}},
		Node:   []*onnxpb.NodeProto{node("Add", []string{"x", "w"}, []string{"y"})},
		Input:  []*onnxpb.ValueInfoProto{valueInfo("x", tensor.Float32, 2)},
		Output: []*onnxpb.ValueInfoProto{valueInfo("y", tensor.Float32, 2)},
	}
	b, err := proto.Marshal(&onnxpb.ModelProto{
		IrVersion:   proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}},
		Graph:       g,
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "model.onnx")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	s := open(t, newCPU(t), path, accel.SessionOptions{})
	out, err := s.Run(context.Background(), []tensor.Tensor{tensor.FromFloat32("x", []int64{2}, []float32{1, 2})}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if y, _ := out[0].Float32s(); fmt.Sprint(y) != "[11 22]" {
		t.Fatalf("y = %v, want [11 22]", y)
	}
}

// TestHostByteOrderDetected: the order New checks is the one the machine really uses,
// read from the memory of a uint16 rather than through encoding/binary.
func TestHostByteOrderDetected(t *testing.T) {
	v := uint16(1)
	first := *(*byte)(unsafe.Pointer(&v))
	if hostLittleEndian != (first == 1) {
		t.Fatalf("hostLittleEndian = %v, but the low byte of 1 is stored %s", hostLittleEndian, map[bool]string{true: "first", false: "last"}[first == 1])
	}
}

// TestMisalignedInputsRun: float32 inputs that start one byte into a buffer, as a
// tensor cut from a KServe binary body after a bool tensor does, reach ONNX Runtime
// aligned and give the same sums as aligned ones; the caller's bytes are left as they
// were.
func TestMisalignedInputsRun(t *testing.T) {
	s := open(t, newCPU(t), addModel(t), accel.SessionOptions{})
	in := addInputs(1)
	for i := range in {
		buf := make([]byte, len(in[i].Data)+1)
		copy(buf[1:], in[i].Data)
		in[i].Data = buf[1:]
		if uintptr(unsafe.Pointer(&in[i].Data[0]))%4 == 0 {
			t.Fatal("the test input is aligned after all")
		}
		if aligned := elementAligned(in[i].Data, 4); uintptr(unsafe.Pointer(&aligned[0]))%4 != 0 || !bytes.Equal(aligned, in[i].Data) {
			t.Fatalf("elementAligned gave %p with bytes %v for %v", &aligned[0], aligned, in[i].Data)
		}
	}
	before := append([]byte(nil), in[0].Data...)
	out, err := s.Run(context.Background(), in, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := out[0].Float32s()
	if want := []float32{11, 22, 33, 44, 55, 66}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("z = %v, want %v", got, want)
	}
	if !bytes.Equal(before, in[0].Data) {
		t.Fatal("the caller's input bytes changed")
	}
}
