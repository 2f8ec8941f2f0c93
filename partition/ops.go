package partition

import (
	"fmt"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// Shape-inference rules for the operators that real models are made of. Where a rule
// is missing or an input is unknown the output stays unknown; Analyze then falls back
// to value_info annotations and, for sizes, to the producer's largest input.

// shapeRule infers the outputs of one node from what is known of its inputs (nil
// entries: absent optional inputs). Outputs it leaves out, or returns as nil, stay
// unknown.
type shapeRule func(n *onnxpb.NodeProto, ins []*vinfo, opset int64) []*vinfo

// opGroup gives one shape rule to the op types that share it.
type opGroup struct {
	ops  []string
	rule shapeRule
}

// shapeRules is the dispatch table from op type to shape rule, assembled from the
// per-family tables of the ops_*.go files. An op type listed in two families
// panics at start-up, so which rule an op gets never depends on table order.
var shapeRules = buildShapeRules(
	elementwiseRules,
	matrixRules,
	convRules,
	layoutRules,
	indexingRules,
	reductionRules,
	generatorRules,
	controlFlowRules,
	dtypeOnlyRules,
	quantRules,
)

func buildShapeRules(families ...[]opGroup) map[string]shapeRule {
	rules := map[string]shapeRule{}
	for _, family := range families {
		for _, g := range family {
			for _, op := range g.ops {
				if _, dup := rules[op]; dup {
					panic(fmt.Sprintf("partition: op %s has two shape rules", op))
				}
				rules[op] = g.rule
			}
		}
	}
	return rules
}

// inferNode returns the outputs of n given its inputs; nil for an op without a rule.
func inferNode(n *onnxpb.NodeProto, ins []*vinfo, opset int64) []*vinfo {
	rule, ok := shapeRules[n.GetOpType()]
	if !ok {
		return nil
	}
	return rule(n, ins, opset)
}

// controlFlowRules: If's outputs are typed by its branches.
var controlFlowRules = []opGroup{
	{[]string{"If"}, inferIf},
}

// inferIf types the outputs from the then-branch's declared outputs: both branches
// must produce the same types.
func inferIf(n *onnxpb.NodeProto, _ []*vinfo, _ int64) []*vinfo {
	for _, a := range n.GetAttribute() {
		if a.GetName() != "then_branch" {
			continue
		}
		var outs []*vinfo
		for _, o := range a.GetG().GetOutput() {
			v := fromValueInfo(o, nil)
			if v == nil {
				v = &vinfo{}
			}
			outs = append(outs, v)
		}
		return outs
	}
	return nil
}

// dtypeOnlyRules: shape rules are not written for these ops, but their first output
// keeps the data input's dtype, so at least a cut after them has a type.
var dtypeOnlyRules = []opGroup{
	{[]string{
		"Resize", "Upsample", "GatherND", "Compress", "Einsum", "RoiAlign", "MaxRoiPool",
		"MaxUnpool", "GridSample", "AffineGrid", "Col2Im", "CenterCropPad", "QuickGelu",
		"BiasAdd", "BiasSplitGelu",
	}, inferDTypeOnly},
}

func inferDTypeOnly(_ *onnxpb.NodeProto, ins []*vinfo, _ int64) []*vinfo {
	return []*vinfo{{dtype: in(ins, 0).dtype}}
}

// int32Output is rule with a first output of int32, whatever the inputs: the
// integer variants of MatMul and Conv accumulate in int32.
func int32Output(rule shapeRule) shapeRule {
	return func(n *onnxpb.NodeProto, ins []*vinfo, opset int64) []*vinfo {
		outs := rule(n, ins, opset)
		outs[0].dtype = tensor.Int32
		return outs
	}
}

func isIntTensor(v *vinfo) bool { return v.dtype == tensor.Int64 || v.dtype == tensor.Int32 }

func attrInt(n *onnxpb.NodeProto, name string, def int64) int64 {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return a.GetI()
		}
	}
	return def
}

func attrInts(n *onnxpb.NodeProto, name string) ([]int64, bool) {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return a.GetInts(), true
		}
	}
	return nil, false
}

func attrIntsOr(n *onnxpb.NodeProto, name string, def []int64) []int64 {
	if v, ok := attrInts(n, name); ok {
		return v
	}
	return def
}

func attrString(n *onnxpb.NodeProto, name, def string) string {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return string(a.GetS())
		}
	}
	return def
}

func tensorIntsAttr(n *onnxpb.NodeProto) ([]int64, bool) {
	for _, a := range n.GetAttribute() {
		if a.GetName() == "value" {
			return tensorInts(a.GetT())
		}
	}
	return nil, false
}

func in(ins []*vinfo, i int) *vinfo {
	if i < len(ins) && ins[i] != nil {
		return ins[i]
	}
	return &vinfo{}
}

func normAxis(a int64, rank int) int64 {
	if a < 0 {
		a += int64(rank)
	}
	return a
}

func clampIdx(i, r int64) int64 {
	if i < 0 {
		i += r
	}
	return min(max(i, 0), r)
}

func ones(v []int64, n int) []int64 {
	if len(v) == n {
		return v
	}
	out := make([]int64, n)
	for i := range out {
		out[i] = 1
	}
	return out
}

// broadcast applies numpy broadcasting; unknown dims stay unknown.
func broadcast(shapes ...[]int64) []int64 {
	rank := 0
	for _, s := range shapes {
		if s == nil {
			return nil
		}
		rank = max(rank, len(s))
	}
	out := make([]int64, rank)
	for i := range out {
		out[i] = 1
	}
	for _, s := range shapes {
		off := rank - len(s)
		for i, d := range s {
			switch {
			case d == 1:
			case d < 0:
				if out[off+i] == 1 {
					out[off+i] = -1
				}
			case out[off+i] == 1 || out[off+i] < 0:
				out[off+i] = d
			}
		}
	}
	return out
}
