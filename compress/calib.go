package compress

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/partition"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// partitionInput is a graph input as the calibration check sees it: -1 dims
// are symbolic.
type partitionInput struct {
	name  string
	dtype int32
	dims  []int64
}

func inputOf(vi *onnxpb.ValueInfoProto) *partitionInput {
	tt := vi.GetType().GetTensorType()
	in := &partitionInput{name: vi.GetName(), dtype: tt.GetElemType()}
	for _, d := range tt.GetShape().GetDim() {
		v := int64(-1)
		if _, fixed := d.GetValue().(*onnxpb.TensorShapeProto_Dimension_DimValue); fixed {
			v = d.GetDimValue()
		}
		in.dims = append(in.dims, v)
	}
	return in
}

// onnxElem maps tensor dtypes to ONNX element types for the check.
var onnxElem = map[tensor.DType]onnxpb.TensorProto_DataType{
	tensor.Float32: onnxpb.TensorProto_FLOAT, tensor.Float64: onnxpb.TensorProto_DOUBLE,
	tensor.Int64: onnxpb.TensorProto_INT64, tensor.Int32: onnxpb.TensorProto_INT32,
	tensor.Uint8: onnxpb.TensorProto_UINT8, tensor.Int8: onnxpb.TensorProto_INT8,
	tensor.Bool: onnxpb.TensorProto_BOOL, tensor.Float16: onnxpb.TensorProto_FLOAT16,
}

// accepts says why t cannot be fed to this input, if it cannot.
func (p *partitionInput) accepts(t tensor.Tensor) error {
	if t.Name != "" && t.Name != p.name {
		return fmt.Errorf("tensor %q where the model takes input %q", t.Name, p.name)
	}
	if e, ok := onnxElem[t.DType]; !ok || int32(e) != p.dtype {
		return fmt.Errorf("input %q: %s data for a %s input", p.name, t.DType, onnxpb.TensorProto_DataType(p.dtype))
	}
	if p.dims == nil {
		return nil
	}
	if len(t.Shape) != len(p.dims) {
		return fmt.Errorf("input %q: shape %v has rank %d, the model wants %d (%v)", p.name, t.Shape, len(t.Shape), len(p.dims), p.dims)
	}
	for i, d := range p.dims {
		if d >= 0 && t.Shape[i] != d {
			return fmt.Errorf("input %q: shape %v, the model wants %v (-1 is any size)", p.name, t.Shape, p.dims)
		}
	}
	return nil
}

// graphInputs are the names of m's inputs that are not initializers.
func graphInputs(m *partition.Model) []string {
	inits := map[string]bool{}
	for _, t := range m.Proto.GetGraph().GetInitializer() {
		inits[t.GetName()] = true
	}
	var out []string
	for _, vi := range m.Proto.GetGraph().GetInput() {
		if !inits[vi.GetName()] {
			out = append(out, vi.GetName())
		}
	}
	return out
}

// LoadCalibration reads a calibration set from dir. Every KServe v2 inference
// request body (.json) in dir is one sample. For a model with one input
// (inputs names it), every .npy file in dir is one sample too; for several
// inputs, every subfolder is one sample holding NAME.npy for each input.
// Samples come in file name order.
func LoadCalibration(dir string, inputs []string) ([][]tensor.Tensor, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCalibration, err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	var out [][]tensor.Tensor
	for _, ent := range entries {
		path := filepath.Join(dir, ent.Name())
		switch {
		case !ent.IsDir() && strings.HasSuffix(ent.Name(), ".json"):
			set, err := readKServeSample(path, inputs)
			if err != nil {
				return nil, err
			}
			out = append(out, set)
		case len(inputs) == 1 && !ent.IsDir() && strings.HasSuffix(ent.Name(), ".npy"):
			t, err := tensor.ReadNPYFile(path)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrCalibration, err)
			}
			t.Name = inputs[0]
			out = append(out, []tensor.Tensor{t})
		case len(inputs) > 1 && ent.IsDir():
			var set []tensor.Tensor
			for _, name := range inputs {
				t, err := tensor.ReadNPYFile(filepath.Join(path, name+".npy"))
				if err != nil {
					return nil, fmt.Errorf("%w: sample %s: %w", ErrCalibration, ent.Name(), err)
				}
				t.Name = name
				set = append(set, t)
			}
			out = append(out, set)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no samples in %s (want KServe .json requests, .npy files, or one folder of NAME.npy per sample for several inputs)", ErrCalibration, dir)
	}
	return out, nil
}

// readKServeSample reads one KServe v2 JSON inference request as a sample, its
// tensors in the model's input order.
func readKServeSample(path string, inputs []string) ([]tensor.Tensor, error) {
	body, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCalibration, err)
	}
	req, err := wire.DecodeRequest(body, -1)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCalibration, path, err)
	}
	byName := map[string]tensor.Tensor{}
	for _, t := range req.Inputs {
		byName[t.Name] = t
	}
	set := make([]tensor.Tensor, 0, len(inputs))
	for _, name := range inputs {
		t, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("%w: %s has no input %q", ErrCalibration, path, name)
		}
		set = append(set, t)
	}
	if len(req.Inputs) != len(inputs) {
		return nil, fmt.Errorf("%w: %s has %d inputs, the model takes %d", ErrCalibration, path, len(req.Inputs), len(inputs))
	}
	return set, nil
}
