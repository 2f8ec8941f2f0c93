package compress

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// activationRule says which tensors around a node carry int8 activations:
// inputs (by index) and whether the first output does, and whether they must
// share one scale (ops that only move data, and Concat, whose QLinear form
// needs one scale on every side).
type activationRule struct {
	inputs    []int
	output    bool
	shared    bool
	needConst int // index of an input that must be a constant weight, -1 if none
}

// staticRules are the ops static int8 quantizes, with QDQ pairs ONNX Runtime
// fuses into QLinearConv, QGemm, QLinearMatMul, QLinearAdd, QLinearConcat and
// quantized pooling; other ops run in float32 between a DequantizeLinear and
// the next QuantizeLinear.
var staticRules = map[string]activationRule{
	"Conv":    {inputs: []int{0}, output: true, needConst: 1},
	"Gemm":    {inputs: []int{0}, output: true, needConst: 1},
	"MatMul":  {inputs: []int{0}, output: true, needConst: 1},
	"Add":     {inputs: []int{0, 1}, output: true, needConst: -1},
	"Concat":  {inputs: nil, output: true, shared: true, needConst: -1},
	"MaxPool": {inputs: []int{0}, output: true, shared: true, needConst: -1},
}

// qdqPlan is the set of activations static int8 quantizes.
type qdqPlan struct {
	tensors []string
	// group[t] is the representative of t's shared-scale group.
	group map[string]string
	// reluOf[t] is the Relu that reads t, and only t reads it, folded into t's
	// QuantizeLinear (zero point at the bottom of the range clamps like Relu).
	reluOf map[string]int
	// weighted are the nodes whose weights become per-channel int8.
	weighted []int
}

// planStatic picks the activations to quantize.
func planStatic(e *editor) *qdqPlan {
	p := &qdqPlan{group: map[string]string{}, reluOf: map[string]int{}}
	add := func(t string) {
		if _, ok := p.group[t]; ok || e.graphOutputs[t] || e.inits[t] != nil || t == "" {
			return
		}
		p.group[t] = t
		p.tensors = append(p.tensors, t)
	}
	for i, n := range e.graph.GetNode() {
		r, ok := staticRules[n.GetOpType()]
		if !ok || n.GetDomain() != "" {
			continue
		}
		in := n.GetInput()
		if r.needConst >= 0 {
			if _, ok := e.floatDims(at(in, r.needConst)); !ok {
				continue
			}
			p.weighted = append(p.weighted, i)
		} else if n.GetOpType() == "Add" && (e.inits[in[0]] != nil || e.inits[in[1]] != nil) {
			continue // a bias add, not a residual: it stays float
		}
		idx := r.inputs
		if r.inputs == nil {
			idx = make([]int, len(in))
			for j := range in {
				idx[j] = j
			}
		}
		for _, j := range idx {
			add(in[j])
		}
		if r.output {
			add(n.GetOutput()[0])
		}
		if r.shared {
			for _, j := range idx {
				p.union(in[j], n.GetOutput()[0])
			}
		}
	}
	p.foldRelus(e)
	return p
}

// foldRelus folds a Relu into the QuantizeLinear of its input when that input
// is produced by a node and read by the Relu alone: the Relu's output is then
// written by the DequantizeLinear, and is not quantized a second time.
func (p *qdqPlan) foldRelus(e *editor) {
	drop := map[string]bool{}
	for _, t := range p.tensors {
		rd := e.readers[t]
		_, produced := e.producer[t]
		if !produced || drop[t] || len(rd) != 1 || e.graph.GetNode()[rd[0]].GetOpType() != "Relu" || p.groupSize(t) != 1 {
			continue
		}
		y := e.graph.GetNode()[rd[0]].GetOutput()[0]
		if _, quantized := p.group[y]; e.graphOutputs[y] || (quantized && p.groupSize(y) != 1) {
			continue
		}
		p.reluOf[t] = rd[0]
		drop[y] = true
	}
	var keep []string
	for _, t := range p.tensors {
		if drop[t] {
			delete(p.group, t)
			continue
		}
		keep = append(keep, t)
	}
	p.tensors = keep
}

func at(s []string, i int) string {
	if i < len(s) {
		return s[i]
	}
	return ""
}

func (p *qdqPlan) find(t string) string {
	for p.group[t] != t {
		t = p.group[t]
	}
	return t
}

func (p *qdqPlan) union(a, b string) {
	if _, ok := p.group[a]; !ok {
		return
	}
	if _, ok := p.group[b]; !ok {
		return
	}
	p.group[p.find(a)] = p.find(b)
}

func (p *qdqPlan) groupSize(t string) int {
	n, root := 0, p.find(t)
	for _, u := range p.tensors {
		if p.find(u) == root {
			n++
		}
	}
	return n
}

// staticQuantize calibrates activation ranges on opts.Calibration and inserts
// QuantizeLinear/DequantizeLinear pairs (uint8, per tensor) on them and
// per-channel int8 DequantizeLinear weights (int32 biases) for the weighted nodes.
func staticQuantize(ctx context.Context, e *editor, opts Options, rep *Report) (int, error) {
	if e.opset() < 13 {
		return 0, fmt.Errorf("%w: static int8 needs opset 13 or newer (per-channel DequantizeLinear), the model has %d", ErrInvalidOptions, e.opset())
	}
	p := planStatic(e)
	if len(p.tensors) == 0 {
		return 0, nil
	}
	ranges, err := calibrate(ctx, e, p.tensors, opts)
	if err != nil {
		return 0, err
	}
	rep.Calibration = &CalibReport{Method: opts.CalibrationMethod, Samples: len(opts.Calibration), Tensors: len(ranges)}
	// Shared groups take the union of their members' ranges.
	union := map[string]valueRange{}
	for _, t := range p.tensors {
		root := p.find(t)
		u, ok := union[root]
		if !ok {
			u = ranges[t]
		}
		union[root] = valueRange{math.Min(u.lo, ranges[t].lo), math.Max(u.hi, ranges[t].hi)}
	}
	params := map[string]qparams{}
	for _, t := range p.tensors {
		r := union[p.find(t)]
		if _, folded := p.reluOf[t]; folded {
			r.lo = 0
		}
		params[t] = uint8Params(r)
		if relu, folded := p.reluOf[t]; folded {
			// The folded Relu's output is the DequantizeLinear's: same parameters.
			params[e.graph.GetNode()[relu].GetOutput()[0]] = params[t]
		}
	}
	count := 0
	for _, i := range p.weighted {
		n := e.graph.GetNode()[i]
		if why := quantizeWeights(e, n, i, params); why != "" {
			rep.kept(n, why)
			continue
		}
		rep.rewrote(n, "QDQ int8 "+n.GetOpType())
		count++
	}
	for _, t := range p.tensors {
		insertQDQ(e, p, t, params[t])
	}
	return count, nil
}

// valueRange is an activation's calibrated [lo, hi].
type valueRange struct{ lo, hi float64 }

// qparams are a uint8 activation's scale and zero point.
type qparams struct {
	scale float32
	zero  uint8
}

// uint8Params maps r (widened to hold 0) onto 0..255.
func uint8Params(r valueRange) qparams {
	lo, hi := math.Min(r.lo, 0), math.Max(r.hi, 0)
	scale := (hi - lo) / 255
	if scale == 0 {
		return qparams{scale: 1}
	}
	return qparams{scale: float32(scale), zero: uint8(min(max(math.Round(-lo/scale), 0), 255))}
}

// insertQDQ routes tensor t through QuantizeLinear and DequantizeLinear right
// where it is produced: the producer now writes t/f, and the DequantizeLinear
// writes t, so every reader sees the quantized value without rewiring. A folded
// Relu disappears: the DequantizeLinear writes the Relu's output instead.
func insertQDQ(e *editor, p *qdqPlan, t string, qp qparams) {
	scale := e.addInit(floatInit(t+"/scale", nil, []float32{qp.scale}))
	zero := e.addInit(bytesInit(t+"/zero_point", onnxpb.TensorProto_UINT8, nil, []byte{qp.zero}))
	pre, out := t, t
	prod, produced := e.producer[t]
	if produced {
		pre = e.fresh(t + "/f")
		outs := e.graph.GetNode()[prod].GetOutput()
		for j := range outs {
			if outs[j] == t {
				outs[j] = pre
			}
		}
	} else {
		// A graph input keeps its name: its readers are rewired to the DQ output.
		out = e.fresh(t + "/dq")
		for _, r := range e.readers[t] {
			ins := e.graph.GetNode()[r].GetInput()
			for j := range ins {
				if ins[j] == t {
					ins[j] = out
				}
			}
		}
	}
	if relu, ok := p.reluOf[t]; ok {
		e.dead[relu] = true
		out = e.graph.GetNode()[relu].GetOutput()[0]
	}
	q := e.fresh(t + "/q")
	nodes := []*onnxpb.NodeProto{
		node("QuantizeLinear", "", e.fresh(t+"/quantize"), []string{pre, scale, zero}, []string{q}),
		node("DequantizeLinear", "", e.fresh(t+"/dequantize"), []string{q, scale, zero}, []string{out}),
	}
	if produced {
		e.insertAfter(prod, nodes...)
	} else {
		e.insertBefore(-1, nodes...)
	}
}

// calibrate runs the model on every calibration sample with tensors exposed
// as outputs and returns each one's range by opts.CalibrationMethod.
func calibrate(ctx context.Context, e *editor, tensors []string, opts Options) (map[string]valueRange, error) {
	obs := make([]*observer, len(tensors))
	for i := range obs {
		obs[i] = newObserver(opts.CalibrationMethod, opts.Percentile)
	}
	err := runExposed(ctx, e, tensors, opts, func(outs []tensor.Tensor) error {
		for i, o := range outs {
			vals, err := o.Float32s()
			if err != nil {
				return fmt.Errorf("compress: calibrate %q: %w", tensors[i], err)
			}
			obs[i].observe(vals)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]valueRange, len(tensors))
	for i, t := range tensors {
		out[t] = obs[i].result()
	}
	return out, nil
}

// runExposed runs the model as e holds it on every calibration sample, with
// tensors exposed as extra outputs, and hands each run's values of them to visit.
func runExposed(ctx context.Context, e *editor, tensors []string, opts Options, visit func([]tensor.Tensor) error) error {
	m := proto.Clone(e.model).(*onnxpb.ModelProto)
	g := m.GetGraph()
	have := map[string]bool{}
	for _, o := range g.GetOutput() {
		have[o.GetName()] = true
	}
	for _, t := range tensors {
		if !have[t] {
			g.Output = append(g.Output, &onnxpb.ValueInfoProto{Name: proto.String(t), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{
				TensorType: &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(int32(onnxpb.TensorProto_FLOAT))}}}})
		}
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("compress: calibrate: %w", err)
	}
	dir, err := os.MkdirTemp("", "layermesh-calibrate-")
	if err != nil {
		return fmt.Errorf("compress: calibrate: %w", err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "model.onnx")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("compress: calibrate: %w", err)
	}
	s, err := opts.Backend.Open(ctx, path, accel.SessionOptions{})
	if err != nil {
		return fmt.Errorf("compress: calibrate: %w", err)
	}
	defer s.Close()
	for k, set := range opts.Calibration {
		outs, err := s.Run(ctx, set, tensors)
		if err != nil {
			return fmt.Errorf("%w: sample %d: %w", ErrCalibration, k, err)
		}
		if err := visit(outs); err != nil {
			return err
		}
	}
	return nil
}
