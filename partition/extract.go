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
}

// ExtractOptions tune Extract.
type ExtractOptions struct {
	// ExternalAbove is the stage weight total above which the stage's weights go to
	// a .data file beside it; 0 means DefaultExternalAbove, negative means always.
	ExternalAbove int64
	// exposeAll makes every activation a stage output (MeasureValues uses it).
	exposeAll bool
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
	man := &Manifest{Model: name, InputShapes: g.InputShapes, Bottleneck: p.Bottleneck}
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

	usedWeight := map[int]bool{}
	var weightOrder []int
	addWeight := func(wi int) {
		if !usedWeight[wi] {
			usedWeight[wi] = true
			weightOrder = append(weightOrder, wi)
		}
	}
	produced := map[string]bool{}
	seenIn := map[string]bool{}
	var graphIns, crossIns []string
	for pos := s.Start; pos < s.End; pos++ {
		nd := &g.Nodes[pos]
		for _, wi := range nd.Weights {
			addWeight(wi)
		}
		for _, in := range nd.Inputs {
			v := g.Values[in]
			if v.Kind == KindWeight || produced[in] || seenIn[in] {
				continue
			}
			seenIn[in] = true
			if v.Kind == KindGraphInput {
				graphIns = append(graphIns, in)
			} else {
				crossIns = append(crossIns, in)
			}
		}
		for _, o := range nd.Outputs {
			produced[o] = true
		}
	}
	isGraphOut := map[string]bool{}
	for _, o := range g.Outputs {
		isGraphOut[o] = true
	}
	weightIdx := map[string]int{}
	for i, w := range g.Weights {
		weightIdx[w.Name] = i
	}
	var outs []string
	for pos := s.Start; pos < s.End; pos++ {
		for _, o := range g.Nodes[pos].Outputs {
			v := g.Values[o]
			if exposeAll || isGraphOut[o] || (len(v.Consumers) > 0 && v.Consumers[len(v.Consumers)-1] >= s.End) {
				outs = append(outs, o)
			}
		}
	}
	if last {
		// Graph outputs that are weights or inputs passed straight through come out
		// of the last stage.
		for _, o := range g.Outputs {
			v := g.Values[o]
			switch v.Kind {
			case KindWeight:
				addWeight(weightIdx[o])
				outs = append(outs, o)
			case KindGraphInput:
				if !seenIn[o] {
					seenIn[o] = true
					graphIns = append(graphIns, o)
				}
				outs = append(outs, o)
			}
		}
	}
	// Graph inputs in the model's order, crossing tensors in production order.
	inputRank := map[string]int{}
	for i, n := range g.Inputs {
		inputRank[n] = i
	}
	sort.SliceStable(graphIns, func(i, j int) bool { return inputRank[graphIns[i]] < inputRank[graphIns[j]] })
	sort.SliceStable(crossIns, func(i, j int) bool {
		return g.Values[crossIns[i]].Producer < g.Values[crossIns[j]].Producer
	})
	for _, in := range append(graphIns, crossIns...) {
		gp.Input = append(gp.Input, g.valueInfo(in))
		from := -1
		if v := g.Values[in]; v.Kind == KindActivation {
			from = stageOf[v.Producer]
		}
		sm.Inputs = append(sm.Inputs, g.spec(in, from))
	}
	for _, o := range outs {
		if exposeAll && !isGraphOut[o] {
			// Measuring: let ONNX Runtime infer the type rather than trust ours.
			gp.Output = append(gp.Output, &onnxpb.ValueInfoProto{Name: proto.String(o)})
		} else {
			gp.Output = append(gp.Output, g.valueInfo(o))
		}
		ts := g.spec(o, s.Index)
		ts.GraphOutput = isGraphOut[o]
		sm.Outputs = append(sm.Outputs, ts)
	}
	var inits []*onnxpb.TensorProto
	var constants []*onnxpb.NodeProto
	sort.Ints(weightOrder)
	for _, wi := range weightOrder {
		w := g.Weights[wi]
		switch {
		case w.Initializer != nil:
			inits = append(inits, w.Initializer)
		case w.Constant != nil:
			constants = append(constants, w.Constant)
		default:
			for _, sp := range src.GetSparseInitializer() {
				if sp.GetValues().GetName() == w.Name {
					gp.SparseInitializer = append(gp.SparseInitializer, sp)
				}
			}
		}
	}
	gp.Node = append(gp.Node, constants...)
	for pos := s.Start; pos < s.End; pos++ {
		gp.Node = append(gp.Node, g.Nodes[pos].Proto)
	}
	isOut := map[string]bool{}
	for _, o := range outs {
		isOut[o] = true
	}
	for _, vi := range src.GetValueInfo() {
		if produced[vi.GetName()] && !isOut[vi.GetName()] {
			gp.ValueInfo = append(gp.ValueInfo, vi)
		}
	}
	return gp, inits, sm
}

// writeStage writes stage s. The file is the model's shell (everything but the graph)
// followed by the graph field, streamed: initializer bytes go from the loaded model's
// buffer (or its external-data file) straight to disk, never copied into a marshalled
// message.
func (g *Graph) writeStage(m *Model, s Stage, stageOf []int, nstages int, outDir string, opts ExtractOptions) (*StageManifest, error) {
	gp, inits, sm := g.stageGraph(s, stageOf, s.Index == nstages-1, opts.exposeAll)
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
	type initPlan struct {
		meta    []byte // the TensorProto without raw_data
		src     *onnxpb.TensorProto
		rawLen  int64
		inline  bool // raw bytes go into the .onnx file
		hasData bool // the tensor has raw bytes to write (raw_data or external source)
	}
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
				{Key: proto.String("location"), Value: proto.String(sm.DataFile)},
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
			return nil, fmt.Errorf("partition: stage %d: %w", s.Index, err)
		}
		plans[i] = initPlan{meta: mb, src: t, rawLen: rawLen, inline: inline, hasData: hasData}
	}
	graphBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(gp)
	if err != nil {
		return nil, fmt.Errorf("partition: stage %d: %w", s.Index, err)
	}
	graphLen := int64(len(graphBytes))
	for _, pl := range plans {
		body := int64(len(pl.meta))
		if pl.inline && pl.hasData {
			body += int64(protowire.SizeTag(fieldTensorRawData)) + int64(protowire.SizeVarint(uint64(pl.rawLen))) + pl.rawLen
		}
		graphLen += int64(protowire.SizeTag(fieldGraphInitializer)) + int64(protowire.SizeVarint(uint64(body))) + body
	}
	if !external && graphLen+int64(len(m.shell)) >= 2<<30 {
		return nil, fmt.Errorf("partition: stage %d would be %s, over protobuf's 2 GiB limit; lower ExternalAbove", s.Index, FormatBytes(graphLen))
	}

	path := filepath.Join(outDir, sm.File)
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("partition: stage %d: %w", s.Index, err)
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
			return nil, fmt.Errorf("partition: stage %d: %w", s.Index, err)
		}
		defer df.Close()
		dsum = sha256.New()
		dw = &countWriter{w: bufio.NewWriterSize(io.MultiWriter(df, dsum), 1<<20)}
	}
	w.write(m.shell)
	w.write(protowire.AppendTag(nil, fieldModelGraph, protowire.BytesType))
	w.write(protowire.AppendVarint(nil, uint64(graphLen)))
	w.write(graphBytes)
	for _, pl := range plans {
		body := int64(len(pl.meta))
		if pl.inline && pl.hasData {
			body += int64(protowire.SizeTag(fieldTensorRawData)) + int64(protowire.SizeVarint(uint64(pl.rawLen))) + pl.rawLen
		}
		w.write(protowire.AppendTag(nil, fieldGraphInitializer, protowire.BytesType))
		w.write(protowire.AppendVarint(nil, uint64(body)))
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
			return nil, fmt.Errorf("partition: stage %d: %w", s.Index, err)
		}
		if !pl.inline {
			if pad := (pl.rawLen+4095)&^4095 - pl.rawLen; pad > 0 {
				dw.write(make([]byte, pad))
			}
		}
	}
	if err := w.flush(); err != nil {
		return nil, fmt.Errorf("partition: stage %d: write %s: %w", s.Index, path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("partition: stage %d: %w", s.Index, err)
	}
	sm.Size, sm.SHA256 = w.n, hex.EncodeToString(sum.Sum(nil))
	if external {
		if err := dw.flush(); err != nil {
			return nil, fmt.Errorf("partition: stage %d: write %s: %w", s.Index, sm.DataFile, err)
		}
		if err := df.Close(); err != nil {
			return nil, fmt.Errorf("partition: stage %d: %w", s.Index, err)
		}
		sm.DataSize, sm.DataSHA256 = dw.n, hex.EncodeToString(dsum.Sum(nil))
	}
	return sm, nil
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
