package node

// The speed score every node reports in its membership metadata and member record: the
// rate of a float32 matmul run through this node's own accel backend, with the node's
// intra-op thread setting, measured once at start-up. The planner divides each stage's
// FLOPs by it and the placement balances compute by it, so a faster device gets more of
// a model. It measures what stages will actually run on (the same ONNX Runtime, the
// same provider, the same thread count), not the CPU's nominal peak.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// ErrSpeedBenchmark means the start-up speed benchmark could not run or gave no usable
// figure.
var ErrSpeedBenchmark = errors.New("speed benchmark failed")

// The benchmark multiplies [speedM x speedK] by [speedK x speedN]: 134 MFLOP a run, a
// few milliseconds on one core, large enough that the call overhead is noise and small
// enough (1.5 MiB of operands) that it costs start-up well under a second.
const (
	speedM, speedK, speedN = 256, 512, 512
	// speedBudget is how long the timed runs may take in all; speedMinRuns and
	// speedMaxRuns bound their count whatever the machine.
	speedBudget  = 300 * time.Millisecond
	speedMinRuns = 3
	speedMaxRuns = 200
)

// speedFLOPs is the work of one benchmark run: a multiply and an add per term.
const speedFLOPs = 2 * speedM * speedK * speedN

// MeasureSpeed runs the start-up matmul benchmark through b with opts (PoolSize is
// forced to 1) and returns the rate in GFLOP/s. The model is written to a temporary
// file in dir and removed before it returns. It takes about 0.3 s plus the session
// load.
func MeasureSpeed(ctx context.Context, b accel.Backend, opts accel.SessionOptions, dir string) (float64, error) {
	raw, err := speedModel()
	if err != nil {
		return 0, fmt.Errorf("%w: build model: %w", ErrSpeedBenchmark, err)
	}
	f, err := os.CreateTemp(dir, "speed-*.onnx")
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrSpeedBenchmark, err)
	}
	path := f.Name()
	defer os.Remove(path)
	if _, err := f.Write(raw); err != nil {
		_ = f.Close()
		return 0, fmt.Errorf("%w: write model: %w", ErrSpeedBenchmark, err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("%w: write model: %w", ErrSpeedBenchmark, err)
	}
	opts.PoolSize = 1
	sess, err := b.Open(ctx, path, opts)
	if err != nil {
		return 0, fmt.Errorf("%w: open: %w", ErrSpeedBenchmark, err)
	}
	defer sess.Close()

	a := make([]float32, speedM*speedK)
	for i := range a {
		a[i] = float32(i%7) * 0.25
	}
	in := []tensor.Tensor{tensor.FromFloat32("a", []int64{speedM, speedK}, a)}
	// The first run pays for allocations and kernel selection; it is not timed.
	if _, err := sess.Run(ctx, in, nil); err != nil {
		return 0, fmt.Errorf("%w: warm-up run: %w", ErrSpeedBenchmark, err)
	}
	// The rate is that of the fastest run: whatever else runs on the core during the
	// budget (this node's own start-up, another process) only slows runs down, so
	// the fastest one is the core's own speed, and nodes of equal speed that start at
	// the same moment measure alike.
	var times []time.Duration
	start := time.Now()
	for len(times) < speedMinRuns || (len(times) < speedMaxRuns && time.Since(start) < speedBudget) {
		t0 := time.Now()
		if _, err := sess.Run(ctx, in, nil); err != nil {
			return 0, fmt.Errorf("%w: run: %w", ErrSpeedBenchmark, err)
		}
		times = append(times, time.Since(t0))
	}
	best := slices.Min(times).Seconds()
	gflops := speedFLOPs / best / 1e9
	if !(gflops > 0) || math.IsInf(gflops, 0) {
		return 0, fmt.Errorf("%w: fastest of %d runs %.6fs gives %v GFLOP/s", ErrSpeedBenchmark, len(times), best, gflops)
	}
	return gflops, nil
}

// speedModel is y = MatMul(a, w) with a [speedM x speedK] float32 input and a constant
// [speedK x speedN] weight, as a serialized ONNX model.
func speedModel() ([]byte, error) {
	dims := func(d ...int64) *onnxpb.TensorShapeProto {
		s := &onnxpb.TensorShapeProto{}
		for _, v := range d {
			s.Dim = append(s.Dim, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: v}})
		}
		return s
	}
	valueInfo := func(name string, d ...int64) *onnxpb.ValueInfoProto {
		return &onnxpb.ValueInfoProto{
			Name: proto.String(name),
			Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{
				ElemType: proto.Int32(int32(onnxpb.TensorProto_FLOAT)),
				Shape:    dims(d...),
			}}},
		}
	}
	// Non-trivial weights, so no kernel can take a shortcut on zeros.
	w := make([]byte, 4*speedK*speedN)
	for i := range speedK * speedN {
		binary.LittleEndian.PutUint32(w[4*i:], math.Float32bits(float32(i%13)*0.125-0.75))
	}
	m := &onnxpb.ModelProto{
		IrVersion:   proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}},
		Graph: &onnxpb.GraphProto{
			Name: proto.String("speed"),
			Node: []*onnxpb.NodeProto{{OpType: proto.String("MatMul"), Input: []string{"a", "w"}, Output: []string{"y"}}},
			Initializer: []*onnxpb.TensorProto{{
				Name: proto.String("w"), Dims: []int64{speedK, speedN},
				DataType: proto.Int32(int32(onnxpb.TensorProto_FLOAT)), RawData: w,
			}},
			Input:  []*onnxpb.ValueInfoProto{valueInfo("a", speedM, speedK)},
			Output: []*onnxpb.ValueInfoProto{valueInfo("y", speedM, speedN)},
		},
	}
	return proto.Marshal(m)
}
