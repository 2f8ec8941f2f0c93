package partition

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// DefaultExternalAbove is the weight total above which a stage file keeps its weights
// in a separate .data file: a protobuf message cannot exceed 2 GiB and the graph needs
// room beside the weights.
const DefaultExternalAbove = 1800 << 20

// inlineBelow keeps tiny initializers (shape constants, axes) inside a stage file that
// uses external data: ONNX Runtime reads those while loading and refuses external ones.
const inlineBelow = 1024

// ManifestFile is the name Extract gives the manifest in the output folder.
const ManifestFile = "manifest.json"

// TensorSpec describes one input or output of a stage or of the whole model.
type TensorSpec struct {
	Name string `json:"name"`
	// DType is the ONNX element type number (tensor.DType).
	DType tensor.DType `json:"dtype"`
	// Shape has -1 for dims that follow the model's symbolic input dims or are unknown.
	Shape []int64 `json:"shape"`
	// From is the stage that produces a stage input, or -1 for a graph input. Unused
	// for outputs.
	From int `json:"from"`
	// GraphOutput marks stage outputs that are outputs of the whole model.
	GraphOutput bool `json:"graph_output,omitempty"`
}

// StageManifest describes one stage file.
type StageManifest struct {
	Index    int    `json:"index"`
	Device   string `json:"device,omitempty"`
	File     string `json:"file"`
	SHA256   string `json:"sha256"`
	Size     int64  `json:"size"`
	DataFile string `json:"data_file,omitempty"`
	// DataSHA256 and DataSize describe DataFile when the stage uses external data.
	DataSHA256 string `json:"data_sha256,omitempty"`
	DataSize   int64  `json:"data_size,omitempty"`
	// Start and End are the node positions [Start, End) in the analysed order.
	Start       int          `json:"start"`
	End         int          `json:"end"`
	FirstOp     string       `json:"first_op"`
	LastOp      string       `json:"last_op"`
	Inputs      []TensorSpec `json:"inputs"`
	Outputs     []TensorSpec `json:"outputs"`
	ParamBytes  int64        `json:"param_bytes"`
	MemoryBytes int64        `json:"memory_bytes"`
	FLOPs       int64        `json:"flops"`
	SendBytes   int64        `json:"send_bytes"`
	// State are the state pairs the stage owns: it reads each In and writes its Out,
	// and its node keeps the value between a session's steps.
	State []StatePair `json:"state,omitempty"`
}

// Manifest describes a partitioned model: its signature and its stages in pipeline
// order. It is JSON-serializable and written next to the stage files.
type Manifest struct {
	Model string `json:"model"`
	// InputShapes are the shapes the plan's sizes and FLOPs were computed for.
	InputShapes map[string][]int64 `json:"input_shapes"`
	Inputs      []TensorSpec       `json:"inputs"`
	Outputs     []TensorSpec       `json:"outputs"`
	// Bottleneck is the plan's slowest stage time (seconds, or relative units when
	// device speeds are relative scores).
	Bottleneck float64         `json:"bottleneck"`
	Stages     []StageManifest `json:"stages"`
	// State are the model's state pairs; a model with any runs as a session.
	State []StatePair `json:"state,omitempty"`
}

// ExtractOptions tune Extract.
type ExtractOptions struct {
	// ExternalAbove is the stage weight total above which the stage's weights go to
	// a .data file beside it; 0 means DefaultExternalAbove, negative means always.
	ExternalAbove int64
	// exposeAll makes every activation a stage output (MeasureValues uses it).
	exposeAll bool
	// nameNodes names each node of the copy by its position (profileNodeName), so
	// that a profile's node names map back to the graph (MeasureNodeCosts).
	nameNodes bool
}

// Extract writes one standalone ONNX model per stage of p into outDir (stage-0.onnx,
// stage-1.onnx, ...) and the manifest (manifest.json), and returns the manifest.
func Extract(m *Model, g *Graph, p *StagePlan, outDir string) (*Manifest, error) {
	return ExtractWith(m, g, p, outDir, ExtractOptions{})
}

// ExtractWith is Extract with options.
func ExtractWith(m *Model, g *Graph, p *StagePlan, outDir string, opts ExtractOptions) (*Manifest, error) {
	if g.Model != m {
		return nil, fmt.Errorf("%w: the graph was analysed from another model", ErrBadPlan)
	}
	if err := g.checkPlan(p); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("partition: extract: %w", err)
	}
	stageOf := make([]int, len(g.Nodes))
	for _, s := range p.Stages {
		for i := s.Start; i < s.End; i++ {
			stageOf[i] = s.Index
		}
	}
	name := m.Proto.GetGraph().GetName()
	if name == "" && m.Path != "" {
		name = filepath.Base(m.Path)
	}
	man := &Manifest{Model: name, InputShapes: g.InputShapes, Bottleneck: p.Bottleneck, State: g.State}
	for _, in := range g.Inputs {
		man.Inputs = append(man.Inputs, g.spec(in, -1))
	}
	for _, out := range g.Outputs {
		man.Outputs = append(man.Outputs, g.spec(out, -1))
	}
	// Stages are written in parallel: hashing and writing a file are each about
	// 1 GB/s on one core, so a large model's stages finish in about half the time on
	// two cores. Memory does not grow: every stage streams from the same loaded bytes.
	man.Stages = make([]StageManifest, len(p.Stages))
	errs := make([]error, len(p.Stages))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, s := range p.Stages {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			sm, err := g.writeStage(m, s, stageOf, len(p.Stages), outDir, opts)
			if err != nil {
				errs[i] = err
				return
			}
			sm.State = g.stageState(sm)
			man.Stages[i] = *sm
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("partition: manifest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(outDir, ManifestFile), append(b, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("partition: manifest: %w", err)
	}
	return man, nil
}

// ReadManifest reads a manifest written by Extract.
func ReadManifest(path string) (*Manifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("partition: %w", err)
	}
	var man Manifest
	if err := json.Unmarshal(b, &man); err != nil {
		return nil, fmt.Errorf("partition: manifest %s: %w", path, err)
	}
	return &man, nil
}

func (g *Graph) checkPlan(p *StagePlan) error {
	if p == nil || len(p.Stages) == 0 {
		return fmt.Errorf("%w: no stages", ErrBadPlan)
	}
	next := 0
	for i, s := range p.Stages {
		if s.Index != i || s.Start != next || s.End <= s.Start || s.End > len(g.Nodes) {
			return fmt.Errorf("%w: stage %d covers [%d,%d), expected to start at %d", ErrBadPlan, i, s.Start, s.End, next)
		}
		if s.Start > 0 && !g.Cuts[s.Start].Valid {
			return fmt.Errorf("%w: stage %d starts at invalid cut %d: %s", ErrBadPlan, i, s.Start, g.Cuts[s.Start].Reason)
		}
		next = s.End
	}
	if next != len(g.Nodes) {
		return fmt.Errorf("%w: stages end at %d of %d nodes", ErrBadPlan, next, len(g.Nodes))
	}
	return nil
}

// spec describes tensor name as stage files declare it; from is the producing stage
// (-1 for graph inputs).
func (g *Graph) spec(name string, from int) TensorSpec {
	vi := g.valueInfo(name)
	tt := vi.GetType().GetTensorType()
	ts := TensorSpec{Name: name, From: from, DType: tensor.DType(tt.GetElemType()), Shape: []int64{}}
	for _, d := range tt.GetShape().GetDim() {
		if d.GetDimValue() > 0 {
			ts.Shape = append(ts.Shape, d.GetDimValue())
		} else {
			ts.Shape = append(ts.Shape, -1)
		}
	}
	return ts
}

// declared returns the model's own ValueInfo for name (graph input, output or
// value_info), when it declares a tensor type.
func (g *Graph) declared(name string) (vi *onnxpb.ValueInfoProto, io bool) {
	gp := g.Model.Proto.GetGraph()
	for i, list := range [][]*onnxpb.ValueInfoProto{gp.GetInput(), gp.GetOutput(), gp.GetValueInfo()} {
		for _, vi := range list {
			if vi.GetName() == name && vi.GetType().GetTensorType() != nil && vi.GetType().GetTensorType().GetElemType() != 0 {
				return vi, i < 2
			}
		}
	}
	return nil, false
}

// valueInfo returns a ValueInfoProto for a stage boundary. Graph inputs and outputs
// keep the model's own declaration: that is the model's contract. For activations the
// model's value_info is used where it has one, but a dim the analysis found to follow
// the input shape is made symbolic even if an exporter wrote down the size it traced
// with, since ONNX Runtime enforces a stage input's declared dims.
func (g *Graph) valueInfo(name string) *onnxpb.ValueInfoProto {
	v := g.Values[name]
	decl, io := g.declared(name)
	if decl != nil && io {
		return decl
	}
	if decl != nil {
		tt := decl.GetType().GetTensorType()
		dims := tt.GetShape().GetDim()
		if tt.GetShape() == nil || len(dims) != len(v.Dynamic) {
			return decl
		}
		relaxed := proto.Clone(decl).(*onnxpb.ValueInfoProto)
		for i, d := range relaxed.GetType().GetTensorType().GetShape().GetDim() {
			if v.Dynamic[i] && d.GetDimValue() > 0 {
				d.Value = nil
			}
		}
		return relaxed
	}
	if v.DType == 0 {
		return &onnxpb.ValueInfoProto{Name: proto.String(name)}
	}
	tt := &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(int32(v.DType))}
	if v.Shape != nil {
		tt.Shape = &onnxpb.TensorShapeProto{}
		for i, d := range v.Shape {
			dim := &onnxpb.TensorShapeProto_Dimension{}
			if d >= 0 && !v.Dynamic[i] {
				dim.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d}
			}
			tt.Shape.Dim = append(tt.Shape.Dim, dim)
		}
	}
	return &onnxpb.ValueInfoProto{Name: proto.String(name), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: tt}}}
}

// stageGraph assembles the GraphProto of stage s without its initializers, and
// returns those separately so the writer can stream their bytes.
func (g *Graph) stageGraph(s Stage, stageOf []int, last, exposeAll bool) (*onnxpb.GraphProto, []*onnxpb.TensorProto, *StageManifest) {
	src := g.Model.Proto.GetGraph()
	gp := &onnxpb.GraphProto{Name: proto.String(fmt.Sprintf("%s_stage_%d", src.GetName(), s.Index)), DocString: src.DocString}
	gp.ProtoReflect().SetUnknown(src.ProtoReflect().GetUnknown())
	sm := &StageManifest{Index: s.Index, Device: s.Device.Name, Start: s.Start, End: s.End, FirstOp: s.FirstOp, LastOp: s.LastOp,
		ParamBytes: s.ParamBytes, MemoryBytes: s.MemoryBytes, FLOPs: s.FLOPs, SendBytes: s.SendBytes}

	isGraphOut := map[string]bool{}
	for _, o := range g.Outputs {
		isGraphOut[o] = true
	}
	p := &stageParts{usedWeight: map[int]bool{}, produced: map[string]bool{}, seenIn: map[string]bool{}}
	g.collectStageInputs(p, s)
	g.collectStageOutputs(p, s, exposeAll, isGraphOut)
	if last {
		g.collectPassThroughOutputs(p)
	}
	g.addStageIO(gp, sm, p, stageOf, exposeAll, isGraphOut)
	inits, constants := g.stageWeights(gp, p)
	gp.Node = append(gp.Node, constants...)
	for pos := s.Start; pos < s.End; pos++ {
		gp.Node = append(gp.Node, g.Nodes[pos].Proto)
	}
	isOut := map[string]bool{}
	for _, o := range p.outs {
		isOut[o] = true
	}
	for _, vi := range src.GetValueInfo() {
		if p.produced[vi.GetName()] && !isOut[vi.GetName()] {
			gp.ValueInfo = append(gp.ValueInfo, vi)
		}
	}
	return gp, inits, sm
}

// stageParts is what one stage reads and produces, gathered by stageGraph.
type stageParts struct {
	usedWeight map[int]bool
	weights    []int           // indices into Graph.Weights the stage needs
	produced   map[string]bool // tensors the stage's nodes produce
	seenIn     map[string]bool // tensors already among graphIns or crossIns
	graphIns   []string        // graph inputs the stage reads
	crossIns   []string        // activations earlier stages send
	outs       []string        // tensors the stage sends on or returns
}

func (p *stageParts) addWeight(wi int) {
	if !p.usedWeight[wi] {
		p.usedWeight[wi] = true
		p.weights = append(p.weights, wi)
	}
}

// collectStageInputs gathers the weights the stage's nodes read and the tensors they
// read from outside the stage.
func (g *Graph) collectStageInputs(p *stageParts, s Stage) {
	for pos := s.Start; pos < s.End; pos++ {
		nd := &g.Nodes[pos]
		for _, wi := range nd.Weights {
			p.addWeight(wi)
		}
		for _, in := range nd.Inputs {
			v := g.Values[in]
			if v.Kind == KindWeight || p.produced[in] || p.seenIn[in] {
				continue
			}
			p.seenIn[in] = true
			if v.Kind == KindGraphInput {
				p.graphIns = append(p.graphIns, in)
			} else {
				p.crossIns = append(p.crossIns, in)
			}
		}
		for _, o := range nd.Outputs {
			p.produced[o] = true
		}
	}
}

// collectStageOutputs gathers the stage's graph outputs and the tensors a later stage
// reads; with exposeAll, every tensor the stage produces.
func (g *Graph) collectStageOutputs(p *stageParts, s Stage, exposeAll bool, isGraphOut map[string]bool) {
	for pos := s.Start; pos < s.End; pos++ {
		for _, o := range g.Nodes[pos].Outputs {
			v := g.Values[o]
			if exposeAll || isGraphOut[o] || (len(v.Consumers) > 0 && v.Consumers[len(v.Consumers)-1] >= s.End) {
				p.outs = append(p.outs, o)
			}
		}
	}
}

// collectPassThroughOutputs makes the last stage return the graph outputs that are
// weights or inputs passed straight through.
func (g *Graph) collectPassThroughOutputs(p *stageParts) {
	weightIdx := map[string]int{}
	for i, w := range g.Weights {
		weightIdx[w.Name] = i
	}
	for _, o := range g.Outputs {
		v := g.Values[o]
		switch v.Kind {
		case KindWeight:
			p.addWeight(weightIdx[o])
			p.outs = append(p.outs, o)
		case KindGraphInput:
			if !p.seenIn[o] {
				p.seenIn[o] = true
				p.graphIns = append(p.graphIns, o)
			}
			p.outs = append(p.outs, o)
		}
	}
}

// addStageIO declares the stage's inputs (graph inputs in the model's order, crossing
// tensors in production order) and outputs in gp and in its manifest.
func (g *Graph) addStageIO(gp *onnxpb.GraphProto, sm *StageManifest, p *stageParts, stageOf []int, exposeAll bool, isGraphOut map[string]bool) {
	inputRank := map[string]int{}
	for i, n := range g.Inputs {
		inputRank[n] = i
	}
	sort.SliceStable(p.graphIns, func(i, j int) bool { return inputRank[p.graphIns[i]] < inputRank[p.graphIns[j]] })
	sort.SliceStable(p.crossIns, func(i, j int) bool {
		return g.Values[p.crossIns[i]].Producer < g.Values[p.crossIns[j]].Producer
	})
	for _, in := range append(p.graphIns, p.crossIns...) {
		gp.Input = append(gp.Input, g.valueInfo(in))
		from := -1
		if v := g.Values[in]; v.Kind == KindActivation {
			from = stageOf[v.Producer]
		}
		sm.Inputs = append(sm.Inputs, g.spec(in, from))
	}
	for _, o := range p.outs {
		if exposeAll && !isGraphOut[o] {
			// Measuring: let ONNX Runtime infer the type rather than trust ours.
			gp.Output = append(gp.Output, &onnxpb.ValueInfoProto{Name: proto.String(o)})
		} else {
			gp.Output = append(gp.Output, g.valueInfo(o))
		}
		ts := g.spec(o, sm.Index)
		ts.GraphOutput = isGraphOut[o]
		sm.Outputs = append(sm.Outputs, ts)
	}
}

// stageWeights sorts the stage's weights into initializers (returned for streaming),
// Constant nodes, and sparse initializers (added to gp), in the model's order.
func (g *Graph) stageWeights(gp *onnxpb.GraphProto, p *stageParts) ([]*onnxpb.TensorProto, []*onnxpb.NodeProto) {
	var inits []*onnxpb.TensorProto
	var constants []*onnxpb.NodeProto
	sort.Ints(p.weights)
	for _, wi := range p.weights {
		w := g.Weights[wi]
		switch {
		case w.Initializer != nil:
			inits = append(inits, w.Initializer)
		case w.Constant != nil:
			constants = append(constants, w.Constant)
		default:
			for _, sp := range g.Model.Proto.GetGraph().GetSparseInitializer() {
				if sp.GetValues().GetName() == w.Name {
					gp.SparseInitializer = append(gp.SparseInitializer, sp)
				}
			}
		}
	}
	return inits, constants
}

// writeStage writes stage s. The file is the model's shell (everything but the graph)
// followed by the graph field, streamed: initializer bytes go from the loaded model's
// buffer (or its external-data file) straight to disk, never copied into a marshalled
// message.
func (g *Graph) writeStage(m *Model, s Stage, stageOf []int, nstages int, outDir string, opts ExtractOptions) (*StageManifest, error) {
	gp, inits, sm := g.stageGraph(s, stageOf, s.Index == nstages-1, opts.exposeAll)
	if opts.nameNodes {
		// The stage's own nodes come last, after the Constant nodes of its weights.
		nodes := gp.Node[len(gp.Node)-(s.End-s.Start):]
		for i, nd := range nodes {
			named := proto.Clone(nd).(*onnxpb.NodeProto)
			named.Name = proto.String(profileNodeName(s.Start + i))
			nodes[i] = named
		}
	}
	sm.File = fmt.Sprintf("stage-%d.onnx", s.Index)
	limit := opts.ExternalAbove
	if limit == 0 {
		limit = DefaultExternalAbove
	}
	var total int64
	for _, t := range inits {
		b, _ := tensorDataBytes(t)
		total += b
	}
	external := total > limit
	if external {
		sm.DataFile = sm.File + ".data"
	}
	// Plan every initializer's encoding first: the graph's length prefix comes first.
	plans, err := m.planInitializers(inits, s.Index, external, sm.DataFile)
	if err != nil {
		return nil, err
	}
	graphBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(gp)
	if err != nil {
		return nil, fmt.Errorf("partition: stage %d: %w", s.Index, err)
	}
	graphLen := int64(len(graphBytes))
	for _, pl := range plans {
		body := pl.bodyLen()
		graphLen += int64(protowire.SizeTag(fieldGraphInitializer)) + int64(protowire.SizeVarint(uint64(body))) + body
	}
	if !external && graphLen+int64(len(m.shell)) >= 2<<30 {
		return nil, fmt.Errorf("partition: stage %d would be %s, over protobuf's 2 GiB limit; lower ExternalAbove", s.Index, FormatBytes(graphLen))
	}
	if err := m.streamStage(sm, s.Index, outDir, graphBytes, graphLen, plans); err != nil {
		return nil, err
	}
	return sm, nil
}

// initPlan is how one initializer of a stage is encoded.
type initPlan struct {
	meta    []byte // the TensorProto without raw_data
	src     *onnxpb.TensorProto
	rawLen  int64
	inline  bool // raw bytes go into the .onnx file
	hasData bool // the tensor has raw bytes to write (raw_data or external source)
}

// bodyLen is the length of the initializer's TensorProto in the .onnx file.
func (pl initPlan) bodyLen() int64 {
	body := int64(len(pl.meta))
	if pl.inline && pl.hasData {
		body += int64(protowire.SizeTag(fieldTensorRawData)) + int64(protowire.SizeVarint(uint64(pl.rawLen))) + pl.rawLen
	}
	return body
}

// planInitializers decides where each initializer's bytes go and marshals its
// metadata. With external set, tensors of inlineBelow bytes or more go to dataFile at
// 4 KiB-aligned offsets.
func (m *Model) planInitializers(inits []*onnxpb.TensorProto, stage int, external bool, dataFile string) ([]initPlan, error) {
	plans := make([]initPlan, len(inits))
	var dataOff int64
	for i, t := range inits {
		rawLen := int64(len(t.GetRawData()))
		hasData := t.RawData != nil
		if isExternal(t) {
			ref, err := m.external(t)
			if err != nil {
				return nil, err
			}
			rawLen, hasData = ref.length, true
		}
		meta := tensorMeta(t)
		inline := !external || !hasData || rawLen < inlineBelow
		if !inline {
			meta.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
			meta.ExternalData = []*onnxpb.StringStringEntryProto{
				{Key: proto.String("location"), Value: proto.String(dataFile)},
				{Key: proto.String("offset"), Value: proto.String(fmt.Sprint(dataOff))},
				{Key: proto.String("length"), Value: proto.String(fmt.Sprint(rawLen))},
			}
			// Aligned offsets let ONNX Runtime map the weights without copying.
			dataOff += (rawLen + 4095) &^ 4095
		} else if isExternal(t) {
			meta.DataLocation = nil
			meta.ExternalData = nil
		}
		mb, err := proto.MarshalOptions{Deterministic: true}.Marshal(meta)
		if err != nil {
			return nil, fmt.Errorf("partition: stage %d: %w", stage, err)
		}
		plans[i] = initPlan{meta: mb, src: t, rawLen: rawLen, inline: inline, hasData: hasData}
	}
	return plans, nil
}

// streamStage writes the stage file (and its data file, when sm names one) into
// outDir and records their sizes and SHA-256 sums in sm.
func (m *Model) streamStage(sm *StageManifest, stage int, outDir string, graphBytes []byte, graphLen int64, plans []initPlan) error {
	external := sm.DataFile != ""
	path := filepath.Join(outDir, sm.File)
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("partition: stage %d: %w", stage, err)
	}
	defer f.Close()
	sum := sha256.New()
	w := &countWriter{w: bufio.NewWriterSize(io.MultiWriter(f, sum), 1<<20)}
	var df *os.File
	var dsum hash.Hash
	var dw *countWriter
	if external {
		df, err = os.Create(filepath.Join(outDir, sm.DataFile))
		if err != nil {
			return fmt.Errorf("partition: stage %d: %w", stage, err)
		}
		defer df.Close()
		dsum = sha256.New()
		dw = &countWriter{w: bufio.NewWriterSize(io.MultiWriter(df, dsum), 1<<20)}
	}
	w.write(m.shell)
	w.write(protowire.AppendTag(nil, fieldModelGraph, protowire.BytesType))
	w.write(protowire.AppendVarint(nil, uint64(graphLen)))
	w.write(graphBytes)
	if err := m.writeInitializers(w, dw, plans); err != nil {
		return fmt.Errorf("partition: stage %d: %w", stage, err)
	}
	if err := w.flush(); err != nil {
		return fmt.Errorf("partition: stage %d: write %s: %w", stage, path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("partition: stage %d: %w", stage, err)
	}
	sm.Size, sm.SHA256 = w.n, hex.EncodeToString(sum.Sum(nil))
	if external {
		if err := dw.flush(); err != nil {
			return fmt.Errorf("partition: stage %d: write %s: %w", stage, sm.DataFile, err)
		}
		if err := df.Close(); err != nil {
			return fmt.Errorf("partition: stage %d: %w", stage, err)
		}
		sm.DataSize, sm.DataSHA256 = dw.n, hex.EncodeToString(dsum.Sum(nil))
	}
	return nil
}

// writeInitializers appends the graph's initializer fields to w, the raw bytes of
// those not inline to dw, each padded to the next 4 KiB.
func (m *Model) writeInitializers(w, dw *countWriter, plans []initPlan) error {
	for _, pl := range plans {
		w.write(protowire.AppendTag(nil, fieldGraphInitializer, protowire.BytesType))
		w.write(protowire.AppendVarint(nil, uint64(pl.bodyLen())))
		w.write(pl.meta)
		if !pl.hasData {
			continue
		}
		dst := w
		if !pl.inline {
			dst = dw
		} else {
			w.write(protowire.AppendTag(nil, fieldTensorRawData, protowire.BytesType))
			w.write(protowire.AppendVarint(nil, uint64(pl.rawLen)))
		}
		if err := m.copyTensorData(dst, pl.src); err != nil {
			return err
		}
		if !pl.inline {
			if pad := (pl.rawLen+4095)&^4095 - pl.rawLen; pad > 0 {
				dw.write(make([]byte, pad))
			}
		}
	}
	return nil
}

// copyTensorData writes t's bytes: its raw_data, or the range of its external file.
func (m *Model) copyTensorData(w *countWriter, t *onnxpb.TensorProto) error {
	if !isExternal(t) {
		w.write(t.GetRawData())
		return w.err
	}
	ref, err := m.external(t)
	if err != nil {
		return err
	}
	f, err := os.Open(ref.path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrExternalData, err)
	}
	defer f.Close()
	n, err := io.Copy(w, io.NewSectionReader(f, ref.offset, ref.length))
	if err == nil && n != ref.length {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return fmt.Errorf("%w: tensor %q: %w", ErrExternalData, t.GetName(), err)
	}
	return nil
}

// tensorMeta copies everything of t but its raw_data (external-data fields included,
// unknown fields kept).
func tensorMeta(t *onnxpb.TensorProto) *onnxpb.TensorProto {
	meta := &onnxpb.TensorProto{
		Dims: t.Dims, DataType: t.DataType, Segment: t.Segment, FloatData: t.FloatData,
		Int32Data: t.Int32Data, StringData: t.StringData, Int64Data: t.Int64Data,
		Name: t.Name, DocString: t.DocString, ExternalData: t.ExternalData,
		DataLocation: t.DataLocation, DoubleData: t.DoubleData, Uint64Data: t.Uint64Data,
	}
	meta.ProtoReflect().SetUnknown(t.ProtoReflect().GetUnknown())
	return meta
}

// countWriter counts bytes and keeps the first error, so the writer above reads as a
// sequence of writes with one check at the end.
type countWriter struct {
	w   *bufio.Writer
	n   int64
	err error
}

func (c *countWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
}

// Write lets io.Copy stream external data through the same counting and hashing.
func (c *countWriter) Write(b []byte) (int, error) {
	c.write(b)
	if c.err != nil {
		return 0, c.err
	}
	return len(b), nil
}

func (c *countWriter) flush() error {
	if c.err != nil {
		return c.err
	}
	return c.w.Flush()
}
