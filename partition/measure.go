package partition

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
)

// MeasureValues runs the model once in ONNX Runtime with every activation exposed as
// an output and returns each one's dtype and shape: exact crossing sizes and stage
// signatures where shape inference falls short (operators it has no rule for,
// data-dependent shapes). Feed the result to AnalyzeWith as AnalyzeOptions.Measured.
// tmpDir receives a temporary copy of the model (removed afterwards); sequence and
// optional values are skipped, they are not tensors.
func MeasureValues(ctx context.Context, backend accel.Backend, g *Graph, inputs []tensor.Tensor, tmpDir string) (map[string]MeasuredValue, error) {
	dir, err := os.MkdirTemp(tmpDir, "measure-")
	if err != nil {
		return nil, fmt.Errorf("partition: measure: %w", err)
	}
	defer os.RemoveAll(dir)
	whole := Stage{Index: 0, Start: 0, End: len(g.Nodes)}
	stageOf := make([]int, len(g.Nodes))
	// The copy keeps the source's external-data choice: large models stay large.
	sm, err := g.writeStage(g.Model, whole, stageOf, 1, dir, ExtractOptions{exposeAll: true})
	if err != nil {
		return nil, fmt.Errorf("partition: measure: %w", err)
	}
	var names []string
	for _, o := range sm.Outputs {
		if p := g.Values[o.Name].Producer; p >= 0 && !producesNonTensor(g.Nodes[p].OpType) {
			names = append(names, o.Name)
		}
	}
	res, err := runModel(ctx, backend, filepath.Join(dir, sm.File), inputs, names)
	if err != nil {
		return nil, fmt.Errorf("partition: measure: %w", err)
	}
	out := make(map[string]MeasuredValue, len(res))
	for name, t := range res {
		out[name] = MeasuredValue{DType: t.DType, Shape: append([]int64(nil), t.Shape...)}
	}
	return out, nil
}

func producesNonTensor(op string) bool {
	return strings.HasPrefix(op, "Sequence") || op == "SplitToSequence" || strings.HasPrefix(op, "Optional") || op == "Loop" || op == "Scan"
}
