package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/tokenizer"
)

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func signature(ts []wire.TensorMetadata) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = fmt.Sprintf("%s %s %v", t.Name, t.Datatype, t.Shape)
	}
	return strings.Join(parts, "; ")
}

func callModels(ctx context.Context, in invocation) (output, error) {
	models, err := in.client.Models(ctx)
	if err != nil {
		return output{}, err
	}
	return output{value: wire.ModelList{Models: models}, human: func(w io.Writer) error {
		tw := newTable(w)
		fmt.Fprintln(tw, "NAME\tVERSION\tREADY\tSTAGES\tSIZE\tSHA256\tSOURCE\tNOTE")
		for _, m := range models {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", m.Name, m.Version, yesNo(m.Ready), len(m.Stages), humanBytes(m.Size), shortHash(m.SHA256), m.Source, m.Reason)
		}
		return tw.Flush()
	}}, nil
}

func callModel(ctx context.Context, in invocation) (output, error) {
	m, err := in.client.Model(ctx, in.pos[0])
	if err != nil {
		return output{}, err
	}
	return output{value: m, human: func(w io.Writer) error {
		tw := newTable(w)
		fmt.Fprintf(tw, "name\t%s\nversion\t%s\nready\t%s\nsize\t%s\nsha256\t%s\nsource\t%s\ninputs\t%s\noutputs\t%s\n",
			m.Name, m.Version, yesNo(m.Ready), humanBytes(m.Size), m.SHA256, m.Source, signature(m.Inputs), signature(m.Outputs))
		for _, s := range m.Stages {
			fmt.Fprintf(tw, "stage %d\t%s, %s (ready: %s)\n", s.Index, humanBytes(s.Size), strings.Join(s.Replicas, ", "), yesNo(s.Ready))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		writeCompression(w, m.Compression)
		return nil
	}}, nil
}

// statusReport is what `status --json` prints.
type statusReport struct {
	Address   string              `json:"address"`
	Server    wire.ServerMetadata `json:"server"`
	Readiness wire.Readiness      `json:"readiness"`
	Cluster   *wire.ClusterStatus `json:"cluster,omitempty"`
	Models    []wire.ModelStatus  `json:"models,omitempty"`
	// AdminError says why the admin parts are missing (no or wrong token).
	AdminError string `json:"admin_error,omitempty"`
}

func statusFlags(fs *flag.FlagSet) step {
	wait := fs.Duration("wait", 0, "wait up to this long for the node to answer and be ready; exit 1 if it does not")
	return step{check: exactArgs(0, "status takes no arguments"), call: func(ctx context.Context, in invocation) (output, error) {
		if *wait > 0 {
			if err := waitReady(ctx, in.client, *wait); err != nil {
				return output{}, err
			}
		}
		rep, err := fetchStatus(ctx, in.client)
		if err != nil {
			return output{}, err
		}
		return output{value: rep, human: rep.writeTable}, nil
	}}
}

func fetchStatus(ctx context.Context, cl *client.Client) (*statusReport, error) {
	var err error
	rep := &statusReport{Address: cl.BaseURL()}
	if rep.Server, err = cl.ServerMetadata(ctx); err != nil {
		return nil, err
	}
	if rep.Readiness, err = cl.Ready(ctx); err != nil {
		return nil, err
	}
	// The admin half needs a token; without one, status still reports health.
	if cs, err := cl.Cluster(ctx); err == nil {
		rep.Cluster = &cs
		if rep.Models, err = cl.Models(ctx); err != nil {
			return nil, err
		}
	} else if client.IsCode(err, "unauthorized") || client.IsCode(err, "forbidden") {
		rep.AdminError = err.Error()
	} else {
		return nil, err
	}
	return rep, nil
}

func (rep *statusReport) writeTable(w io.Writer) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "node\t%s (%s %s)\n", rep.Address, rep.Server.Name, rep.Server.Version)
	fmt.Fprintf(tw, "ready\t%s\n", yesNo(rep.Readiness.Ready))
	for _, ch := range rep.Readiness.Checks {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", ch.Layer, yesNo(ch.Ready), ch.Reason)
	}
	if rep.Cluster != nil {
		fmt.Fprintf(tw, "mode\t%s\n", rep.Cluster.Mode)
		if rep.Cluster.Leader != "" {
			fmt.Fprintf(tw, "leader\t%s (term %d)\n", rep.Cluster.Leader, rep.Cluster.Term)
		}
		fmt.Fprintln(tw)
		nodeTable(tw, rep.Cluster.Nodes)
		fmt.Fprintln(tw, "\nMODEL\tVERSION\tREADY\tSTAGES\tSIZE\tPLACEMENT")
		for _, m := range rep.Models {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", m.Name, m.Version, yesNo(m.Ready), len(m.Stages), humanBytes(m.Size), placement(m.Stages))
		}
	} else {
		fmt.Fprintf(tw, "admin\tunavailable: %s\n", rep.AdminError)
	}
	return tw.Flush()
}

// waitReady polls the node's readiness until it is ready or d has passed.
func waitReady(ctx context.Context, cl *client.Client, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		r, err := cl.Ready(ctx)
		if err == nil && r.Ready {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("readiness %+v", r.Checks)
			}
			return fmt.Errorf("node not ready after %s: %w", d, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func callNodes(ctx context.Context, in invocation) (output, error) {
	nodes, err := in.client.Nodes(ctx)
	if err != nil {
		return output{}, err
	}
	return output{value: wire.NodeList{Nodes: nodes}, human: func(w io.Writer) error {
		tw := newTable(w)
		nodeTable(tw, nodes)
		return tw.Flush()
	}}, nil
}

// nodeTable writes one row per node: state, health, Raft role, capacity, load, stages.
func nodeTable(w io.Writer, nodes []wire.NodeStatus) {
	fmt.Fprintln(w, "NODE\tSTATE\tHEALTH\tRAFT\tHTTP\tPLATFORM\tACCEL\tGPU MEM FREE/TOTAL\tCORES\tMEM FREE/BUDGET\tLOAD\tSTAGES")
	for _, n := range nodes {
		role := "-"
		switch {
		case n.Leader:
			role = "leader"
		case n.Voter:
			role = "voter"
		case n.PeerID != "":
			role = "nonvoter"
		}
		mem := "-"
		if n.Capacity != nil {
			mem = humanBytes(n.Capacity.MemFree) + "/" + humanBytes(n.Capacity.MemBudget)
		}
		health := n.Health
		if health == "" {
			health = "-"
		}
		platform := n.Platform
		if platform == "" {
			platform = "-"
		}
		// A node without a GPU provider, or without NVML, has no GPU memory to show.
		gpuMem := "—"
		if n.GPUMemTotal > 0 {
			gpuMem = humanBytes(int64(n.GPUMemFree)) + "/" + humanBytes(int64(n.GPUMemTotal))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", n.Name, n.State, health, role, n.HTTPAddr, platform, n.Accel, gpuMem, n.Cores, mem, n.Load, strings.Join(n.Models, ","))
	}
}

// compressDeployFlags declares deploy's compression flags (the calibration-free
// subset of meshctl compress's: a deploy carries no calibration set).
func compressDeployFlags(fs *flag.FlagSet) *client.CompressOptions {
	o := &client.CompressOptions{}
	fs.StringVar(&o.Quantize, "compress", "", "compress on the receiving node before planning: int8 or int4 (weight-only) or dynamic; static needs --calib, so run meshctl compress and deploy its output")
	fs.IntVar(&o.BlockSize, "block-size", 0, "weight-only quantization block length along K (16-256, power of two; default 32)")
	fs.BoolVar(&o.Symmetric, "symmetric", false, "weight-only quantization without zero points")
	fs.Float64Var(&o.Prune, "prune", 0, "fraction of each prunable layer's channels to remove (ranked by filter L1 norm), in [0, 0.95]")
	fs.BoolVar(&o.PruneGlobal, "prune-global", false, "apply --prune to the whole model: the least important channels anywhere go")
	fs.IntVar(&o.Verify, "verify", 0, "compare original and compressed on N made-up inputs before deploying")
	fs.Float64Var(&o.MaxError, "max-error", 0, "refuse the deploy (422) above this error relative to the output scale")
	fs.Float64Var(&o.MinAgreement, "min-agreement", 0, "refuse the deploy (422) below this top-1 agreement")
	return o
}

// writeCompression writes what a deploy's compression did; nothing when it did not.
func writeCompression(w io.Writer, c *wire.Compression) {
	if c == nil {
		return
	}
	mode := c.Quantize
	if c.Prune > 0 {
		mode = strings.TrimPrefix(fmt.Sprintf("%s prune %.2g", mode, c.Prune), " ")
	}
	if c.NothingToDo {
		fmt.Fprintf(w, "compression %s: nothing to compress, deployed as uploaded (%s)\n", mode, humanBytes(c.SizeBefore))
		return
	}
	fmt.Fprintf(w, "compression %s: %s -> %s (%.2fx)\n", mode, humanBytes(c.SizeBefore), humanBytes(c.SizeAfter),
		float64(c.SizeBefore)/float64(max(c.SizeAfter, 1)))
	if c.VerifySamples > 0 {
		fmt.Fprintf(w, "verified on %d inputs: max abs %.4g, max rel %.4g, min cosine %.6f", c.VerifySamples, c.MaxAbs, c.MaxRel, c.MinCosine)
		if c.MinTop1 >= 0 {
			fmt.Fprintf(w, ", top-1 agreement %.4f", c.MinTop1)
		}
		fmt.Fprintln(w)
	}
}

// placement writes a model's plan on one line: stage -> replicas, * for ready.
func placement(stages []wire.StageStatus) string {
	parts := make([]string, len(stages))
	for i, s := range stages {
		mark := ""
		if s.Ready {
			mark = "*"
		}
		parts[i] = fmt.Sprintf("%d%s:%s", s.Index, mark, strings.Join(s.Replicas, "+"))
	}
	return strings.Join(parts, " ")
}

func deployFlags(fs *flag.FlagSet) step {
	name := fs.String("name", "", "model name (default: the file name without .onnx)")
	stages := fs.Int("stages", 0, "pipeline stages (0: let the planner choose)")
	replicas := fs.Int("replicas", 0, "replicas per stage (0: the cluster default)")
	var state stringsFlag
	fs.Var(&state, "state", "declare a state pair IN=OUT (repeatable; default: detected by name, e.g. past_key_values.*/present.*)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	wait := fs.Duration("wait", 0, "wait up to this long until every stage has a ready replica (0: return after the upload)")
	tokenizerPath := fs.String("tokenizer", "", "tokenizer of a text-generating model: a tokenizer.json, or a folder with tokenizer.json, vocab.json + merges.txt or encoder.json + vocab.bpe")
	chatTemplate := fs.String("chat-template", "", "Go template file chat messages are rendered with (default: a plain role: content transcript)")
	comp := compressDeployFlags(fs)
	plan := fs.String("plan", "", "what the stages balance: flops (the default), or measured: node times this deploy's node measures in its runtime")
	planPast := fs.Int("plan-past", 0, "with --plan measured, the past (in tokens) of the decode step timed for a generating model (default 1): the contexts it serves")
	return step{check: exactArgs(1, "want exactly one model FILE"), call: func(ctx context.Context, in invocation) (output, error) {
		if *plan != "" && *plan != client.PlanFLOPs && *plan != client.PlanMeasured {
			return output{}, usagef("--plan %q: want %s or %s", *plan, client.PlanFLOPs, client.PlanMeasured)
		}
		if *planPast < 0 || (*planPast > 0 && *plan != client.PlanMeasured) {
			return output{}, usagef("--plan-past needs --plan %s and a positive count", client.PlanMeasured)
		}
		if *name == "" {
			*name = strings.TrimSuffix(filepath.Base(in.pos[0]), ".onnx")
		}
		text, err := readModelText(*tokenizerPath, *chatTemplate)
		if err != nil {
			return output{}, err
		}
		f, err := os.Open(in.pos[0])
		if err != nil {
			return output{}, err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return output{}, err
		}
		opts := client.UploadOptions{Stages: *stages, Replicas: *replicas, State: state, Tokenizer: text.tokenizer, ChatTemplate: text.chatTemplate, Compress: *comp,
			Plan: client.PlanOptions{Basis: *plan, Past: *planPast}}
		// Progress goes to stderr, and not at all when stdout is JSON for a script.
		var progress io.Writer
		if !*quiet && !in.json {
			progress = progressOut
		}
		var bar *progressBar
		if progress != nil {
			bar = &progressBar{w: progress, label: "upload " + *name, start: time.Now()}
			opts.Progress = bar.update
		}
		st, err := in.client.UploadModel(ctx, *name, f, fi.Size(), opts)
		if bar != nil {
			bar.done()
		}
		if err != nil {
			return output{}, err
		}
		if *wait > 0 {
			if st, err = waitModelReady(ctx, in.client, st.Name, *wait, progress); err != nil {
				return output{}, err
			}
		}
		return output{value: st, human: func(w io.Writer) error {
			fmt.Fprintf(w, "deployed %s version %s (%s, sha256 %s), ready: %s\n", st.Name, st.Version, humanBytes(st.Size), shortHash(st.SHA256), yesNo(st.Ready))
			writeCompression(w, st.Compression)
			return nil
		}}, nil
	}}
}

// modelText is what a text-generating model is deployed with besides its graph.
type modelText struct {
	tokenizer    []byte
	chatTemplate string
}

// readModelText loads and checks the tokenizer and chat template here, so a wrong
// file is reported before a large model is uploaded. The tokenizer travels as the
// tokenizer.json this build writes, whichever files it was read from.
func readModelText(tokenizerPath, templatePath string) (modelText, error) {
	var out modelText
	if tokenizerPath != "" {
		tok, err := tokenizer.Load(tokenizerPath)
		if err != nil {
			return out, fmt.Errorf("--tokenizer: %w", err)
		}
		if out.tokenizer, err = json.Marshal(tok); err != nil {
			return out, err
		}
	}
	if templatePath != "" {
		b, err := os.ReadFile(templatePath)
		if err != nil {
			return out, fmt.Errorf("--chat-template: %w", err)
		}
		if _, err := tokenizer.ParseChatTemplate(string(b)); err != nil {
			return out, fmt.Errorf("--chat-template %s: %w", templatePath, err)
		}
		out.chatTemplate = string(b)
	}
	return out, nil
}

// progressBar draws an upload's progress on one terminal line, at most once per
// percent so a fast upload does not spend its time printing.
type progressBar struct {
	w     io.Writer
	label string
	start time.Time
	last  int
	drawn bool
	// unit, when set, counts things (stages) instead of bytes.
	unit string
}

func (p *progressBar) update(sent, total int64) {
	if total <= 0 {
		return
	}
	pct := int(sent * 100 / total)
	if p.drawn && pct == p.last {
		return
	}
	p.last, p.drawn = pct, true
	const width = 30
	fill := width * pct / 100
	rate := float64(sent) / time.Since(p.start).Seconds()
	if p.unit != "" {
		fmt.Fprintf(p.w, "\r%s [%s%s] %3d%% %d / %d %s ", p.label, strings.Repeat("=", fill), strings.Repeat(" ", width-fill), pct, sent, total, p.unit)
		return
	}
	fmt.Fprintf(p.w, "\r%s [%s%s] %3d%% %s / %s  %s/s ", p.label, strings.Repeat("=", fill), strings.Repeat(" ", width-fill), pct, humanBytes(sent), humanBytes(total), humanBytes(int64(rate)))
}

func (p *progressBar) done() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}

func callUndeploy(ctx context.Context, in invocation) (output, error) {
	name := in.pos[0]
	if err := in.client.DeleteModel(ctx, name); err != nil {
		return output{}, err
	}
	return output{value: map[string]string{"undeployed": name}, human: func(w io.Writer) error {
		fmt.Fprintf(w, "undeployed %s\n", name)
		return nil
	}}, nil
}

// versionReport is what `version --json` prints.
type versionReport struct {
	Client string `json:"client"`
	Server string `json:"server,omitempty"`
	Error  string `json:"server_error,omitempty"`
}

// callVersion reports a node that does not answer in the output, not as a failure.
func callVersion(ctx context.Context, in invocation) (output, error) {
	rep := versionReport{Client: version}
	if md, err := in.client.ServerMetadata(ctx); err == nil {
		rep.Server = md.Version
	} else {
		rep.Error = err.Error()
	}
	return output{value: rep, human: func(w io.Writer) error {
		fmt.Fprintf(w, "meshctl %s\n", rep.Client)
		if rep.Server != "" {
			fmt.Fprintf(w, "meshnode %s at %s\n", rep.Server, in.client.BaseURL())
		} else {
			fmt.Fprintf(w, "meshnode at %s: %s\n", in.client.BaseURL(), rep.Error)
		}
		return nil
	}}, nil
}
