package partition

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel/onnxconv"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// nodeTestDir holds ONNX's backend node tests (Debian package libonnx-testdata).
const nodeTestDir = "/usr/share/libonnx-testdata/data/node"

// TestShapeInferenceConformance loads every ONNX backend node test, analyses it with
// the shapes of its recorded inputs, and checks every output shape and dtype the
// analysis claims to know against the recorded outputs. Unknown is allowed (Analyze
// then falls back); a wrong known shape is not, because it would end up declared in a
// stage model's signature.
func TestShapeInferenceConformance(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join(nodeTestDir, "*"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("ONNX node tests missing at %s (apt-get install libonnx-testdata): %v", nodeTestDir, err)
	}
	var loaded, known, knownDType, unknown, wrong int
	var wrongOps []string
	unknownOps := map[string]int{}
	for _, dir := range dirs {
		m, err := Load(filepath.Join(dir, "model.onnx"))
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(dir), err)
			continue
		}
		loaded++
		readPB := func(name string) *onnxpb.TensorProto {
			b, err := os.ReadFile(filepath.Join(dir, "test_data_set_0", name))
			if err != nil {
				return nil
			}
			tp := &onnxpb.TensorProto{}
			if proto.Unmarshal(b, tp) != nil {
				return nil
			}
			return tp
		}
		shapes := map[string][]int64{}
		inputs := m.Proto.GetGraph().GetInput()
		ok := true
		for i, in := range inputs {
			tp := readPB("input_" + itoa(i) + ".pb")
			if tp == nil || in.GetType().GetTensorType() == nil {
				// Optional, sequence or map inputs: shapes of these are out of scope.
				ok = false
				break
			}
			shapes[in.GetName()] = append([]int64{}, tp.GetDims()...)
		}
		if !ok {
			continue
		}
		g, err := AnalyzeWith(m, AnalyzeOptions{InputShapes: shapes})
		if err != nil {
			// A scalar input given a rank the model does not declare, and similar
			// mismatches in the test data, are not analysis bugs.
			continue
		}
		for i, out := range g.Outputs {
			tp := readPB("output_" + itoa(i) + ".pb")
			if tp == nil {
				continue
			}
			v := g.Values[out]
			if v.Kind != KindActivation || g.Model.Proto.GetGraph().GetOutput()[i].GetType().GetTensorType() == nil {
				continue
			}
			op := g.Nodes[v.Producer].OpType
			// Only what inference itself produced counts: a type copied from the
			// test's declared output proves nothing.
			dt, shape := inferredByRule(g, out)
			recorded := tensor.DType(tp.GetDataType())
			if recorded == tensor.Uint16 && dt == tensor.BFloat16 {
				// ONNX's tests record bfloat16 outputs as their uint16 bits.
				recorded = tensor.BFloat16
			}
			if dt != 0 {
				knownDType++
				if dt != recorded {
					wrong++
					wrongOps = append(wrongOps, op)
					t.Errorf("%s: output %q of %s: inferred dtype %s, recorded %s", filepath.Base(dir), out, op, dt, recorded)
				}
			}
			if shape == nil {
				unknown++
				unknownOps[op]++
				continue
			}
			known++
			if !slices.Equal(shape, tp.GetDims()) && !(len(shape) == 0 && len(tp.GetDims()) == 0) {
				wrong++
				wrongOps = append(wrongOps, op)
				t.Errorf("%s: output %q of %s: inferred shape %v, recorded %v", filepath.Base(dir), out, op, shape, tp.GetDims())
			}
		}
	}
	if testing.Verbose() {
		t.Logf("ops whose outputs were left to fallbacks: %v", unknownOps)
	}
	sort.Strings(wrongOps)
	t.Logf("%d models loaded; outputs with an inferred dtype: %d, with an inferred shape: %d, left to fallbacks: %d; wrong: %d %v", loaded, knownDType, known, unknown, wrong, slices.Compact(wrongOps))
	if known < 300 {
		t.Errorf("only %d outputs inferred; the rules cover far more", known)
	}
}

// inferredByRule returns the dtype (0: unknown) and full shape (nil: unknown) the
// analysis finds for out without the model's own annotations.
func inferredByRule(g *Graph, out string) (tensor.DType, []int64) {
	stripped := proto.Clone(g.Model.Proto).(*onnxpb.ModelProto)
	stripped.Graph.Output = nil
	stripped.Graph.ValueInfo = nil
	for _, o := range g.Model.Proto.GetGraph().GetOutput() {
		stripped.Graph.Output = append(stripped.Graph.Output, &onnxpb.ValueInfoProto{Name: proto.String(o.GetName())})
	}
	g2, err := AnalyzeWith(&Model{Proto: stripped}, AnalyzeOptions{InputShapes: g.InputShapes})
	if err != nil {
		return 0, nil
	}
	v := g2.Values[out]
	if v.Shape == nil || slices.Contains(v.Shape, -1) {
		return v.DType, nil
	}
	return v.DType, v.Shape
}

func itoa(i int) string { return string(rune('0' + i)) }

// TestSplitExpandedNodeTests splits every multi-node model among ONNX's backend node
// tests (the *_expanded ones: functions written out as Constant nodes, shape
// arithmetic, reductions, casts) into 2 and 3 stages and checks, in ONNX Runtime,
// that each chain reproduces the whole model. Models this ONNX Runtime cannot run
// whole are counted and left out; a chain that fails where the whole model runs is a
// failure.
func TestSplitExpandedNodeTests(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join(nodeTestDir, "*_expanded*"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("ONNX node tests missing at %s (apt-get install libonnx-testdata): %v", nodeTestDir, err)
	}
	be := ortBackend(t)
	var split, chains, notRunnable, uncuttable int
	for _, dir := range dirs {
		name := filepath.Base(dir)
		m, err := Load(filepath.Join(dir, "model.onnx"))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		var inputs []tensor.Tensor
		shapes := map[string][]int64{}
		for i, in := range m.Proto.GetGraph().GetInput() {
			b, err := os.ReadFile(filepath.Join(dir, "test_data_set_0", "input_"+itoa(i)+".pb"))
			if err != nil {
				break
			}
			tp := &onnxpb.TensorProto{}
			if proto.Unmarshal(b, tp) != nil {
				break
			}
			tn, err := onnxconv.TensorProtoToTensor(tp)
			if err != nil {
				break
			}
			tn.Name = in.GetName()
			inputs = append(inputs, tn)
			shapes[in.GetName()] = tn.Shape
		}
		if len(inputs) != len(m.Proto.GetGraph().GetInput()) {
			notRunnable++
			continue
		}
		g, err := AnalyzeWith(m, AnalyzeOptions{InputShapes: shapes})
		if errors.Is(err, ErrInputShape) {
			// The recorded inputs contradict the model's declared shapes (a few
			// tests do); nothing to split.
			notRunnable++
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		whole, err := runModel(t.Context(), be, filepath.Join(dir, "model.onnx"), inputs, nil)
		if err != nil {
			notRunnable++
			continue
		}
		cuts := len(g.ValidCuts())
		if cuts == 0 {
			uncuttable++
			if testing.Verbose() && len(g.Cuts) > 2 {
				t.Logf("%s: no valid cut among %d nodes (%s)", name, len(g.Nodes), g.Cuts[1].Reason)
			}
			continue
		}
		split++
		for _, k := range []int{2, 3} {
			if k > cuts+1 {
				continue
			}
			p, err := Plan(g, UniformDevices(k, 1<<40, 1), PlanOptions{Stages: k})
			if err != nil {
				t.Errorf("%s: %d stages: %v", name, k, err)
				continue
			}
			out := t.TempDir()
			man, err := Extract(m, g, p, out)
			if err != nil {
				t.Errorf("%s: %d stages: %v", name, k, err)
				continue
			}
			chain, err := RunChain(t.Context(), be, man, out, inputs)
			if err != nil {
				t.Errorf("%s: %d stages (cuts %v): %v", name, k, p.Cuts(), err)
				continue
			}
			chains++
			for _, o := range g.Outputs {
				d, err := compareTensors(whole[o], chain[o])
				if err != nil || !(d.MaxRelToScale <= chainTolerance) {
					t.Errorf("%s: %d stages: output %q: %v %+v", name, k, o, err, d)
				}
			}
		}
	}
	t.Logf("%d expanded models: %d split into %d chains, all equal to the whole model; %d not runnable whole by this ONNX Runtime or with unreadable or contradicting inputs, %d without a valid cut", len(dirs), split, chains, notRunnable, uncuttable)
	if chains < 100 {
		t.Errorf("only %d chains checked", chains)
	}
}
