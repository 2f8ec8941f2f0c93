package partition

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/partition/onnxpb"
)

// Model is a loaded ONNX model. Initializer raw_data slices alias the file's bytes, so
// a model costs about its file size in memory, not twice that; nothing may modify them.
type Model struct {
	// Proto is the decoded model. Fields this version of onnx.proto does not know are
	// kept and written back out.
	Proto *onnxpb.ModelProto
	// Path is the file the model came from; empty when it was parsed from bytes.
	Path string
	// Dir is the folder external-data locations resolve against.
	Dir string
	// FileSize is the size of the .onnx file itself (external data not included).
	FileSize int64
	// shell is the encoded ModelProto without its graph (ir_version, opsets,
	// producer, metadata, functions, unknown fields): every stage file starts with it.
	shell []byte
}

// Field numbers of onnx.proto this loader walks by hand, so that the bulk of the
// weights (initializer raw_data) is never copied.
const (
	fieldModelGraph        = 7
	fieldModelOpset        = 8
	fieldGraphInitializer  = 5
	fieldTensorRawData     = 9
	externalLocationPrefix = "location"
)

// modelFieldTypes are ModelProto's fields and their wire types.
var modelFieldTypes = map[protowire.Number]protowire.Type{
	1: protowire.VarintType, 2: protowire.BytesType, 3: protowire.BytesType,
	4: protowire.BytesType, 5: protowire.VarintType, 6: protowire.BytesType,
	7: protowire.BytesType, 8: protowire.BytesType, 14: protowire.BytesType,
	20: protowire.BytesType, 25: protowire.BytesType,
}

// Load reads and decodes the ONNX model at path. External-data files are resolved
// against the model's folder and checked, but not read: extraction streams them.
func Load(path string) (*Model, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("partition: load %s: %w", path, err)
	}
	m, err := Parse(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("partition: load %s: %w", path, err)
	}
	m.Path = path
	return m, nil
}

// Parse decodes an ONNX model from data; dir is the folder external data resolves
// against ("" disables external data). The model aliases data: the caller must not
// modify it afterwards.
func Parse(data []byte, dir string) (*Model, error) {
	mp := &onnxpb.ModelProto{}
	var rest []byte
	var graph *onnxpb.GraphProto
	sawOpset := false
	for b := data; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, wireError(n, "model")
		}
		if want, known := modelFieldTypes[num]; (len(b) == len(data) && (!known || want != typ)) || typ == protowire.StartGroupType {
			// Any file parses as a few protobuf fields by accident; an ONNX model
			// starts with one of ModelProto's own fields and never uses groups.
			return nil, fmt.Errorf("%w: does not start like an ONNX ModelProto (field %d, wire type %d)", ErrNotONNX, num, typ)
		}
		if num == fieldModelGraph && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b[n:])
			if m < 0 {
				return nil, wireError(m, "model graph")
			}
			g, err := parseGraph(v)
			if err != nil {
				return nil, err
			}
			if graph == nil {
				graph = g
			} else {
				// Protobuf merges repeated occurrences of a message field.
				proto.Merge(graph, g)
			}
			b = b[n+m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return nil, wireError(m, "model")
		}
		if num == fieldModelOpset {
			sawOpset = true
		}
		rest = append(rest, b[:n+m]...)
		b = b[n+m:]
	}
	if err := proto.Unmarshal(rest, mp); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotONNX, err)
	}
	if graph == nil {
		return nil, fmt.Errorf("%w: no graph", ErrNotONNX)
	}
	if !sawOpset {
		return nil, fmt.Errorf("%w: no opset_import after the graph (file cut short, or not a complete ONNX model)", ErrTruncated)
	}
	if mp.GetIrVersion() <= 0 {
		return nil, fmt.Errorf("%w: ir_version missing", ErrNotONNX)
	}
	mp.Graph = graph
	m := &Model{Proto: mp, Dir: dir, FileSize: int64(len(data)), shell: rest}
	if err := m.checkExternal(); err != nil {
		return nil, err
	}
	return m, nil
}

// wireError turns a protowire failure into ErrTruncated or ErrNotONNX.
func wireError(n int, where string) error {
	err := protowire.ParseError(n)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s ends mid-field", ErrTruncated, where)
	}
	return fmt.Errorf("%w: %s: %w", ErrNotONNX, where, err)
}

// parseGraph decodes a GraphProto, decoding initializers itself so their raw_data
// aliases b instead of being copied.
func parseGraph(b []byte) (*onnxpb.GraphProto, error) {
	var rest []byte
	var inits []*onnxpb.TensorProto
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, wireError(n, "graph")
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return nil, wireError(m, "graph")
		}
		if num == fieldGraphInitializer && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b[n:])
			t, err := parseTensor(v)
			if err != nil {
				return nil, err
			}
			inits = append(inits, t)
		} else {
			rest = append(rest, b[:n+m]...)
		}
		b = b[n+m:]
	}
	g := &onnxpb.GraphProto{}
	if err := proto.Unmarshal(rest, g); err != nil {
		return nil, fmt.Errorf("%w: graph: %w", ErrNotONNX, err)
	}
	g.Initializer = append(inits, g.Initializer...)
	return g, nil
}

func parseTensor(b []byte) (*onnxpb.TensorProto, error) {
	var rest, raw []byte
	sawRaw := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, wireError(n, "initializer")
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return nil, wireError(m, "initializer")
		}
		if num == fieldTensorRawData && typ == protowire.BytesType {
			raw, _ = protowire.ConsumeBytes(b[n:])
			sawRaw = true
		} else {
			rest = append(rest, b[:n+m]...)
		}
		b = b[n+m:]
	}
	t := &onnxpb.TensorProto{}
	if err := proto.Unmarshal(rest, t); err != nil {
		return nil, fmt.Errorf("%w: initializer: %w", ErrNotONNX, err)
	}
	if sawRaw {
		// Full slice expression: an append by anyone must not scribble over the file.
		t.RawData = raw[:len(raw):len(raw)]
		if t.RawData == nil {
			t.RawData = []byte{}
		}
	}
	return t, nil
}

// externalRef is a checked external-data reference of one tensor.
type externalRef struct {
	path   string
	offset int64
	length int64
}

func isExternal(t *onnxpb.TensorProto) bool {
	return t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL
}

// external resolves t's external-data entry against the model's folder. Locations
// may not be absolute or leave the folder: a model file must not make us read
// arbitrary files.
func (m *Model) external(t *onnxpb.TensorProto) (externalRef, error) {
	var ref externalRef
	var loc string
	ref.length = -1
	for _, kv := range t.GetExternalData() {
		switch kv.GetKey() {
		case externalLocationPrefix:
			loc = kv.GetValue()
		case "offset", "length":
			v, err := strconv.ParseInt(kv.GetValue(), 10, 64)
			if err != nil || v < 0 {
				return ref, fmt.Errorf("%w: tensor %q: bad %s %q", ErrExternalData, t.GetName(), kv.GetKey(), kv.GetValue())
			}
			if kv.GetKey() == "offset" {
				ref.offset = v
			} else {
				ref.length = v
			}
		}
	}
	if loc == "" {
		return ref, fmt.Errorf("%w: tensor %q has no location", ErrExternalData, t.GetName())
	}
	if m.Dir == "" {
		return ref, fmt.Errorf("%w: tensor %q: model was not loaded from a file", ErrExternalData, t.GetName())
	}
	clean := filepath.Clean(filepath.FromSlash(loc))
	if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, ".."+string(filepath.Separator)) {
		return ref, fmt.Errorf("%w: tensor %q: location %q leaves the model's folder", ErrExternalData, t.GetName(), loc)
	}
	ref.path = filepath.Join(m.Dir, clean)
	st, err := os.Stat(ref.path)
	if err != nil {
		return ref, fmt.Errorf("%w: tensor %q: %w", ErrExternalData, t.GetName(), err)
	}
	want, known := tensorDataBytes(t)
	if ref.length < 0 {
		if !known {
			ref.length = st.Size() - ref.offset
		} else {
			ref.length = want
		}
	}
	if known && ref.length != want {
		return ref, fmt.Errorf("%w: tensor %q: length %d, its shape needs %d bytes", ErrExternalData, t.GetName(), ref.length, want)
	}
	if ref.offset > st.Size() || ref.length > st.Size()-ref.offset {
		return ref, fmt.Errorf("%w: tensor %q: bytes %d..%d beyond the end of %s (%d bytes)", ErrExternalData, t.GetName(), ref.offset, ref.offset+ref.length, loc, st.Size())
	}
	return ref, nil
}

// checkExternal validates every external-data reference of the main graph up front,
// so a broken model fails at Load rather than halfway through writing stages.
func (m *Model) checkExternal() error {
	for _, t := range m.Proto.GetGraph().GetInitializer() {
		if isExternal(t) {
			if _, err := m.external(t); err != nil {
				return err
			}
		}
	}
	return nil
}
