package modelgen

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/layermesh/layermesh/partition/onnxpb"
	"google.golang.org/protobuf/proto"
)

// externalThreshold is the initializer byte total above which WriteFile uses
// external data on its own: protobuf messages are limited to 2 GiB, and the
// graph itself needs some room beside the weights.
const externalThreshold = 1800 << 20

// inlineLimit keeps small tensors (shape constants, axes, scalars) inside
// the .onnx file when writing external data: ONNX Runtime's shape inference
// reads such constants while loading and refuses external ones. ONNX's own
// converter uses the same 1 KiB threshold.
const inlineLimit = 1024

// WriteOptions controls how WriteFile lays a model out on disk.
type WriteOptions struct {
	// ExternalData writes the bytes of every initializer of 1 KiB or more
	// into path+".data" and leaves only their location in the .onnx file. Forced on when the
	// weights exceed about 1.8 GiB.
	ExternalData bool
	// ExternalAbove is the initializer byte total above which external data
	// is used even when ExternalData is false; 0 means about 1.8 GiB, which
	// keeps the .onnx protobuf under its 2 GiB limit.
	ExternalAbove int64
}

// WriteFile serializes m to path. Models whose weights exceed about 1.8 GiB
// are written with external data (see WriteOptions).
func WriteFile(m *onnxpb.ModelProto, path string) error {
	return WriteFileWith(m, path, WriteOptions{})
}

// WriteFileWith serializes m to path with explicit options. With external
// data, m is left unchanged: the written copy points at path+".data".
func WriteFileWith(m *onnxpb.ModelProto, path string, opts WriteOptions) error {
	limit := opts.ExternalAbove
	if limit <= 0 {
		limit = externalThreshold
	}
	if !opts.ExternalData && initializerBytes(m) <= limit {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			return fmt.Errorf("modelgen: marshal %s: %w", path, err)
		}
		return writeAtomic(path, func(w *bufio.Writer) error { _, err := w.Write(b); return err })
	}
	return writeExternal(m, path)
}

// initializerBytes sums the raw_data sizes of the graph's initializers.
func initializerBytes(m *onnxpb.ModelProto) int64 {
	var n int64
	for _, t := range m.GetGraph().GetInitializer() {
		n += int64(len(t.GetRawData()))
	}
	return n
}

// writeExternal writes the weights to path+".data" and a model whose
// initializers refer to it. The shallow copies share the weights' memory, so
// this costs no more than the .onnx protobuf without its weights.
func writeExternal(m *onnxpb.ModelProto, path string) error {
	dataName := filepath.Base(path) + ".data"
	inits := m.GetGraph().GetInitializer()
	stripped := make([]*onnxpb.TensorProto, len(inits))
	var offset int64
	err := writeAtomic(path+".data", func(w *bufio.Writer) error {
		for i, t := range inits {
			c := &onnxpb.TensorProto{
				Name: t.Name, Dims: t.Dims, DataType: t.DataType, DocString: t.DocString,
				FloatData: t.FloatData, Int32Data: t.Int32Data, Int64Data: t.Int64Data,
				StringData: t.StringData, DoubleData: t.DoubleData, Uint64Data: t.Uint64Data,
				RawData: t.RawData,
			}
			stripped[i] = c
			if len(t.RawData) < inlineLimit {
				continue
			}
			if _, err := w.Write(t.RawData); err != nil {
				return err
			}
			c.RawData = nil
			c.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
			c.ExternalData = []*onnxpb.StringStringEntryProto{
				{Key: proto.String("location"), Value: proto.String(dataName)},
				{Key: proto.String("offset"), Value: proto.String(strconv.FormatInt(offset, 10))},
				{Key: proto.String("length"), Value: proto.String(strconv.Itoa(len(t.RawData)))},
			}
			offset += int64(len(t.RawData))
			// ONNX Runtime maps external data; page-friendly offsets keep
			// every tensor aligned for any element type.
			if pad := (4096 - offset%4096) % 4096; pad > 0 {
				if _, err := w.Write(make([]byte, pad)); err != nil {
					return err
				}
				offset += pad
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	src := m.GetGraph()
	graph := &onnxpb.GraphProto{
		Name: src.Name, Node: src.Node, Input: src.Input, Output: src.Output, ValueInfo: src.ValueInfo,
		DocString: src.DocString, SparseInitializer: src.SparseInitializer,
		QuantizationAnnotation: src.QuantizationAnnotation, Initializer: stripped,
	}
	out := &onnxpb.ModelProto{
		IrVersion: m.IrVersion, OpsetImport: m.OpsetImport, ProducerName: m.ProducerName,
		ProducerVersion: m.ProducerVersion, Domain: m.Domain, ModelVersion: m.ModelVersion,
		DocString: m.DocString, Graph: graph, MetadataProps: m.MetadataProps, Functions: m.Functions,
		TrainingInfo: m.TrainingInfo,
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(out)
	if err != nil {
		return fmt.Errorf("modelgen: marshal %s: %w", path, err)
	}
	return writeAtomic(path, func(w *bufio.Writer) error { _, err := w.Write(b); return err })
}

// writeAtomic writes through a temporary file and renames it into place, so
// a reader never sees a half-written model.
func writeAtomic(path string, fill func(*bufio.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("modelgen: write %s: %w", path, err)
	}
	tmp := f.Name()
	w := bufio.NewWriterSize(f, 1<<20)
	// CreateTemp makes the file private; a model is ordinary readable data.
	err = f.Chmod(0o644)
	if err == nil {
		err = fill(w)
	}
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Close()
	} else {
		f.Close()
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("modelgen: write %s: %w", path, err)
	}
	return nil
}
