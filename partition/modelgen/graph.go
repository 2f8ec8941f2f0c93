package modelgen

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"unsafe"

	"github.com/layermesh/layermesh/partition/onnxpb"
	"google.golang.org/protobuf/proto"
)

// ONNX element types used by the builders (TensorProto.DataType numbers).
const (
	elemFloat = int32(onnxpb.TensorProto_FLOAT)
	elemInt64 = int32(onnxpb.TensorProto_INT64)
)

// Versions every builder stamps on its models: opset 17 is the first with
// LayerNormalization, and IR 8 is what that opset ships with (ONNX 1.12).
const (
	opsetVersion = 17
	irVersion    = 8
	producerName = "layermesh-modelgen"
)

// graphBuilder accumulates nodes and initializers of one graph. Node names
// must be unique; tensor names are derived from them so the graph reads like
// the model's structure ("block3/attn/qkv").
type graphBuilder struct {
	seed  int64
	graph *onnxpb.GraphProto
	// given are trained weights that replace the drawn ones by name (GPTConfig.Weights);
	// used marks the ones taken, err is the first that did not fit.
	given *Trained
	used  map[string]bool
	err   error
}

func newGraphBuilder(name string, seed int64) *graphBuilder {
	return &graphBuilder{seed: seed, graph: &onnxpb.GraphProto{Name: proto.String(name)}}
}

// withWeights makes the builder take the weights t has (nil: draw them all).
func (g *graphBuilder) withWeights(t *Trained) *graphBuilder {
	g.given, g.used = t, map[string]bool{}
	return g
}

// finish is model for a builder that may have trained weights: their first misfit,
// if any, instead of the model.
func (g *graphBuilder) finish(doc string) (*onnxpb.ModelProto, error) {
	if err := g.givenErr(); err != nil {
		return nil, err
	}
	return g.model(doc), nil
}

// model wraps the finished graph into a ModelProto with the fixed opset.
func (g *graphBuilder) model(doc string) *onnxpb.ModelProto {
	return &onnxpb.ModelProto{
		IrVersion:       proto.Int64(irVersion),
		ProducerName:    proto.String(producerName),
		ProducerVersion: proto.String("1"),
		DocString:       proto.String(doc),
		OpsetImport:     []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(opsetVersion)}},
		Graph:           g.graph,
	}
}

// node appends a node whose outputs are named after the node: a single output
// takes the node's name, several take name+"/out<i>".
func (g *graphBuilder) node(op, name string, inputs []string, nOut int, attrs ...*onnxpb.AttributeProto) []string {
	outs := make([]string, nOut)
	if nOut == 1 {
		outs[0] = name
	} else {
		for i := range outs {
			outs[i] = name + "/out" + itoa(i)
		}
	}
	g.graph.Node = append(g.graph.Node, &onnxpb.NodeProto{
		OpType:    proto.String(op),
		Name:      proto.String(name),
		Input:     inputs,
		Output:    outs,
		Attribute: attrs,
	})
	return outs
}

// op1 is node for the common single-output case.
func (g *graphBuilder) op1(op, name string, inputs []string, attrs ...*onnxpb.AttributeProto) string {
	return g.node(op, name, inputs, 1, attrs...)[0]
}

// typed records the type and shape of an intermediate tensor in the graph's
// value_info, so a reader (the partitioner's cost model) knows the size of
// every activation without running shape inference. It returns name.
func (g *graphBuilder) typed(name string, elem int32, dims ...any) string {
	g.graph.ValueInfo = append(g.graph.ValueInfo, valueInfo(name, elem, dims...))
	return name
}

// addInit registers an initializer and returns its name.
func (g *graphBuilder) addInit(t *onnxpb.TensorProto) string {
	g.graph.Initializer = append(g.graph.Initializer, t)
	return t.GetName()
}

// uniformWeight adds a float32 initializer drawn uniformly from
// [-std*sqrt(3), std*sqrt(3)] (a distribution with standard deviation std),
// plus offset, or the trained values of that name when the builder has trained
// weights. Uniform rather than normal because it needs no transcendental per
// value, which matters at 125M values.
func (g *graphBuilder) uniformWeight(name string, dims []int64, std, offset float32) string {
	if vals, ok := g.trainedWeight(name, dims); ok {
		return g.addInit(floatTensor(name, dims, vals))
	}
	vals := make([]float32, product(dims))
	fillUniform(vals, streamSeed(g.seed, name), std*float32(math.Sqrt(3)), offset)
	return g.addInit(floatTensor(name, dims, vals))
}

// constFloat adds a float32 initializer with given values.
func (g *graphBuilder) constFloat(name string, dims []int64, vals ...float32) string {
	return g.addInit(floatTensor(name, dims, vals))
}

// constInt64 adds an int64 initializer with given values.
func (g *graphBuilder) constInt64(name string, dims []int64, vals ...int64) string {
	b := make([]byte, 8*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(v))
	}
	return g.addInit(&onnxpb.TensorProto{Name: proto.String(name), Dims: dims, DataType: proto.Int32(elemInt64), RawData: b})
}

// hostLittleEndian says whether a float slice's memory already is ONNX raw_data,
// which the format defines as little-endian: true on amd64 and arm64, and every
// platform ONNX Runtime ships for.
var hostLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// floatTensor wraps vals as a TensorProto. On a little-endian host raw_data aliases
// the float slice's memory, so that the weights of a 500 MB model are not copied
// once more; elsewhere it is an explicit little-endian copy.
func floatTensor(name string, dims []int64, vals []float32) *onnxpb.TensorProto {
	raw := []byte{}
	switch {
	case len(vals) == 0:
	case hostLittleEndian:
		raw = unsafe.Slice((*byte)(unsafe.Pointer(&vals[0])), 4*len(vals))
	default:
		raw = make([]byte, 4*len(vals))
		for i, v := range vals {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
	}
	return &onnxpb.TensorProto{Name: proto.String(name), Dims: dims, DataType: proto.Int32(elemFloat), RawData: raw}
}

// valueInfo describes a graph input or output; a dim is either a fixed size
// (int64) or a symbolic name (string).
func valueInfo(name string, elem int32, dims ...any) *onnxpb.ValueInfoProto {
	shape := &onnxpb.TensorShapeProto{}
	for _, d := range dims {
		dim := &onnxpb.TensorShapeProto_Dimension{}
		switch v := d.(type) {
		case int64:
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: v}
		case int:
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: int64(v)}
		case string:
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: v}
		default:
			panic("modelgen: valueInfo dim must be int, int64 or string")
		}
		shape.Dim = append(shape.Dim, dim)
	}
	return &onnxpb.ValueInfoProto{
		Name: proto.String(name),
		Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{
			ElemType: proto.Int32(elem),
			Shape:    shape,
		}}},
	}
}

func attrInt(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INT.Enum(), I: proto.Int64(v)}
}

func attrFloat(name string, v float32) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_FLOAT.Enum(), F: proto.Float32(v)}
}

func attrInts(name string, v ...int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INTS.Enum(), Ints: v}
}

// checkBounds rejects any field above its bound. The bounds are far past any
// real model and keep Params from overflowing int64 before checkSize sees it.
func checkBounds(kind string, fields ...any) error {
	for i := 0; i+2 < len(fields); i += 3 {
		name, v, limit := fields[i].(string), fields[i+1].(int), fields[i+2].(int)
		if v > limit {
			return fmt.Errorf("%w: %s %s %d exceeds %d", ErrInvalidConfig, kind, name, v, limit)
		}
	}
	return nil
}

// checkSize rejects a parameter count whose weights exceed MaxWeightBytes
// (or whose computation overflowed).
func checkSize(params int64) error {
	if params <= 0 || params > MaxWeightBytes/4 {
		return fmt.Errorf("%w: %d parameters exceed the %d GiB limit on weights", ErrInvalidConfig, params, MaxWeightBytes>>30)
	}
	return nil
}

func product(dims []int64) int64 {
	n := int64(1)
	for _, d := range dims {
		n *= d
	}
	return n
}

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}

// streamSeed derives a per-tensor seed from the model seed and the tensor's
// name, so a weight's values do not depend on the order tensors are built in.
func streamSeed(seed int64, name string) uint64 {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(seed))
	h.Write(b[:])
	h.Write([]byte(name))
	return h.Sum64()
}

// fillUniform writes values uniform in [offset-scale, offset+scale) using
// splitmix64, which is fast, has no state beyond one word, and gives the same
// stream on every platform.
func fillUniform(vals []float32, state uint64, scale, offset float32) {
	for i := range vals {
		state += 0x9e3779b97f4a7c15
		z := state
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		// Top 24 bits give a float32-exact value in [0, 1).
		u := float32(z>>40) * (1.0 / (1 << 24))
		vals[i] = offset + scale*(2*u-1)
	}
}
