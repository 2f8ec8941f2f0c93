// Package conformance reads ONNX's backend node test cases (the layout Debian's
// libonnx-testdata installs under /usr/share/libonnx-testdata/data/node: one folder per
// case with model.onnx and test_data_set_N/{input,output}_K.pb) and compares outputs
// the way ONNX's own backend tests do. The accel conformance test and the HTTP API's
// conformance test both iterate these cases, so the reading and the comparison live
// here, once.
package conformance

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel/onnxconv"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// DefaultDir is where Debian's libonnx-testdata puts the node test cases.
const DefaultDir = "/usr/share/libonnx-testdata/data/node"

// Tolerances of ONNX's backend test runner (onnx/backend/test/runner) for floats.
const (
	RTol = 1e-3
	ATol = 1e-7
)

// ErrNotTensor marks a value (input or expected output) that is a sequence, map or
// empty optional: it has no tensor.Tensor form.
var ErrNotTensor = errors.New("value is not a tensor")

// Value is one input or expected output of a data set. Kind is "tensor" when Tensor
// holds it; otherwise ("sequence", "map", "optional(none)", ...) the value cannot be
// expressed as a tensor.Tensor and Tensor is empty.
type Value struct {
	Name   string
	Kind   string
	Tensor tensor.Tensor
}

// DataSet is one test_data_set_N folder.
type DataSet struct {
	Name    string
	Inputs  []Value
	Outputs []Value
}

// Case is one node test.
type Case struct {
	Name  string // folder name, e.g. "test_add_bcast"
	Model string // path of model.onnx
	Sets  []DataSet
	// Err is set when the case could not be read; the other fields may be partial.
	Err error
}

// Cases reads every case folder under dir, sorted by name. A case that cannot be read
// is returned with Err set rather than dropped, so a caller never skips it silently.
func Cases(dir string) ([]Case, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var cases []Case
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		c := Case{Name: e.Name(), Model: filepath.Join(dir, e.Name(), "model.onnx")}
		c.Sets, c.Err = readCase(filepath.Join(dir, e.Name()))
		cases = append(cases, c)
	}
	sort.Slice(cases, func(i, j int) bool { return cases[i].Name < cases[j].Name })
	return cases, nil
}

func readCase(dir string) ([]DataSet, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "model.onnx"))
	if err != nil {
		return nil, err
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("model.onnx: %w", err)
	}
	inits := map[string]bool{}
	for _, t := range m.GetGraph().GetInitializer() {
		inits[t.GetName()] = true
	}
	var ins []*onnxpb.ValueInfoProto
	for _, in := range m.GetGraph().GetInput() {
		if !inits[in.GetName()] {
			ins = append(ins, in)
		}
	}
	outs := m.GetGraph().GetOutput()
	setDirs, err := filepath.Glob(filepath.Join(dir, "test_data_set_*"))
	if err != nil {
		return nil, err
	}
	sort.Strings(setDirs)
	var sets []DataSet
	for _, sd := range setDirs {
		ds := DataSet{Name: filepath.Base(sd)}
		for i, vi := range ins {
			v, err := readValue(filepath.Join(sd, fmt.Sprintf("input_%d.pb", i)), vi)
			if err != nil {
				return sets, fmt.Errorf("%s: %w", ds.Name, err)
			}
			ds.Inputs = append(ds.Inputs, v)
		}
		for i, vi := range outs {
			v, err := readValue(filepath.Join(sd, fmt.Sprintf("output_%d.pb", i)), vi)
			if err != nil {
				return sets, fmt.Errorf("%s: %w", ds.Name, err)
			}
			ds.Outputs = append(ds.Outputs, v)
		}
		sets = append(sets, ds)
	}
	return sets, nil
}

// readValue reads one .pb file as the proto its graph type implies: TensorProto for a
// tensor, SequenceProto, MapProto or OptionalProto otherwise.
func readValue(path string, vi *onnxpb.ValueInfoProto) (Value, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Value{}, err
	}
	v := Value{Name: vi.GetName()}
	switch typ := vi.GetType(); {
	case typ.GetTensorType() != nil:
		var p onnxpb.TensorProto
		if err := proto.Unmarshal(raw, &p); err != nil {
			return Value{}, fmt.Errorf("%s: %w", path, err)
		}
		t, err := onnxconv.TensorProtoToTensor(&p)
		if err != nil {
			return Value{}, fmt.Errorf("%s: %w", path, err)
		}
		t.Name = v.Name
		// The suite stores bfloat16 values as their uint16 bit patterns (numpy has no
		// bfloat16); the graph's declared type says what they are.
		if t.DType == tensor.Uint16 && typ.GetTensorType().GetElemType() == int32(onnxpb.TensorProto_BFLOAT16) {
			t.DType = tensor.BFloat16
		}
		v.Kind, v.Tensor = "tensor", t
	case typ.GetOptionalType() != nil:
		kind, tp, err := readOptional(raw)
		if err != nil {
			return Value{}, fmt.Errorf("%s: %w", path, err)
		}
		v.Kind = kind
		if tp != nil {
			t, err := onnxconv.TensorProtoToTensor(tp)
			if err != nil {
				return Value{}, fmt.Errorf("%s: %w", path, err)
			}
			t.Name = v.Name
			v.Tensor = t
		}
	case typ.GetSequenceType() != nil:
		v.Kind = "sequence"
	case typ.GetMapType() != nil:
		v.Kind = "map"
	default:
		v.Kind = "unknown"
	}
	return v, nil
}

// readOptional decodes an OptionalProto (onnx-data.proto, which the generated onnxpb
// types do not include): field 3 is a tensor value, 5 a sequence, 6 a map, 7 an
// optional; none of them means None.
func readOptional(raw []byte) (string, *onnxpb.TensorProto, error) {
	kind := "optional(none)"
	var tp *onnxpb.TensorProto
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return "", nil, protowire.ParseError(n)
		}
		raw = raw[n:]
		if typ == protowire.BytesType {
			val, m := protowire.ConsumeBytes(raw)
			if m < 0 {
				return "", nil, protowire.ParseError(m)
			}
			switch num {
			case 3:
				tp = &onnxpb.TensorProto{}
				if err := proto.Unmarshal(val, tp); err != nil {
					return "", nil, err
				}
				kind = "optional(tensor)"
			case 4:
				kind = "optional(sparse tensor)"
			case 5:
				kind = "optional(sequence)"
			case 6:
				kind = "optional(map)"
			case 7:
				kind = "optional(optional)"
			}
			raw = raw[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, raw)
		if m < 0 {
			return "", nil, protowire.ParseError(m)
		}
		raw = raw[m:]
	}
	return kind, tp, nil
}

// IsTensor reports whether v has a tensor form (a tensor, or an optional holding one).
func (v Value) IsTensor() bool { return v.Kind == "tensor" || v.Kind == "optional(tensor)" }

// Compare checks got against want as ONNX's backend tests do: same dtype and shape;
// floating-point elements within ATol + RTol*|want| with NaN equal to NaN and infinities
// equal to themselves; every other type exactly.
func Compare(got, want tensor.Tensor) error {
	if got.DType != want.DType {
		return fmt.Errorf("%s: dtype %s, want %s", want.Name, got.DType, want.DType)
	}
	if !equalShape(got.Shape, want.Shape) {
		return fmt.Errorf("%s: shape %v, want %v", want.Name, got.Shape, want.Shape)
	}
	switch want.DType {
	case tensor.String:
		if len(got.Strings) != len(want.Strings) {
			return fmt.Errorf("%s: %d strings, want %d", want.Name, len(got.Strings), len(want.Strings))
		}
		for i := range want.Strings {
			if got.Strings[i] != want.Strings[i] {
				return fmt.Errorf("%s: element %d is %q, want %q", want.Name, i, got.Strings[i], want.Strings[i])
			}
		}
		return nil
	case tensor.Float32, tensor.Float64, tensor.Float16, tensor.BFloat16:
		g, err := got.Float64s()
		if err != nil {
			return err
		}
		w, err := want.Float64s()
		if err != nil {
			return err
		}
		if len(g) != len(w) {
			return fmt.Errorf("%s: %d elements, want %d", want.Name, len(g), len(w))
		}
		bad, first := 0, -1
		for i := range w {
			if !closeEnough(g[i], w[i]) {
				bad++
				if first < 0 {
					first = i
				}
			}
		}
		if bad > 0 {
			return fmt.Errorf("%s: %d of %d elements differ beyond rtol %g atol %g; first at %d: got %g, want %g", want.Name, bad, len(w), RTol, ATol, first, g[first], w[first])
		}
		return nil
	case tensor.Bool:
		for i := range want.Data {
			if (got.Data[i] != 0) != (want.Data[i] != 0) {
				return fmt.Errorf("%s: element %d is %v, want %v", want.Name, i, got.Data[i] != 0, want.Data[i] != 0)
			}
		}
		return nil
	default:
		if len(got.Data) != len(want.Data) {
			return fmt.Errorf("%s: %d bytes, want %d", want.Name, len(got.Data), len(want.Data))
		}
		size := want.DType.Size()
		for i := 0; i < len(want.Data); i += size {
			if string(got.Data[i:i+size]) != string(want.Data[i:i+size]) {
				g, _ := got.Float64s()
				w, _ := want.Float64s()
				return fmt.Errorf("%s: element %d is %v, want %v", want.Name, i/size, g[i/size], w[i/size])
			}
		}
		return nil
	}
}

func closeEnough(g, w float64) bool {
	switch {
	case math.IsNaN(w) || math.IsNaN(g):
		return math.IsNaN(w) && math.IsNaN(g)
	case math.IsInf(w, 0) || math.IsInf(g, 0):
		return g == w
	}
	return math.Abs(g-w) <= ATol+RTol*math.Abs(w)
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Describe is a one-line summary of a case's value kinds, for failure reports.
func (c Case) Describe() string {
	if len(c.Sets) == 0 {
		return "no data sets"
	}
	var ins, outs []string
	for _, v := range c.Sets[0].Inputs {
		ins = append(ins, v.Kind)
	}
	for _, v := range c.Sets[0].Outputs {
		outs = append(outs, v.Kind)
	}
	return fmt.Sprintf("in(%s) out(%s)", strings.Join(ins, ","), strings.Join(outs, ","))
}
