package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
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

func runModels(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("models", flag.ContinueOnError)
	c := addCommon(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("models takes no arguments")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	models, err := cl.Models(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, wire.ModelList{Models: models})
	}
	tw := newTable(stdout)
	fmt.Fprintln(tw, "NAME\tVERSION\tREADY\tSTAGES\tSIZE\tSHA256\tSOURCE\tNOTE")
	for _, m := range models {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", m.Name, m.Version, yesNo(m.Ready), len(m.Stages), humanBytes(m.Size), shortHash(m.SHA256), m.Source, m.Reason)
	}
	return tw.Flush()
}

func runModel(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("model", flag.ContinueOnError)
	c := addCommon(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one model NAME")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	m, err := cl.Model(ctx, pos[0])
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, m)
	}
	tw := newTable(stdout)
	fmt.Fprintf(tw, "name\t%s\nversion\t%s\nready\t%s\nsize\t%s\nsha256\t%s\nsource\t%s\ninputs\t%s\noutputs\t%s\n",
		m.Name, m.Version, yesNo(m.Ready), humanBytes(m.Size), m.SHA256, m.Source, signature(m.Inputs), signature(m.Outputs))
	for _, s := range m.Stages {
		fmt.Fprintf(tw, "stage %d\t%s (ready: %s)\n", s.Index, strings.Join(s.Replicas, ", "), yesNo(s.Ready))
	}
	return tw.Flush()
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

func runStatus(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	c := addCommon(fs)
	wait := fs.Duration("wait", 0, "wait up to this long for the node to answer and be ready; exit 1 if it does not")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("status takes no arguments")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	if *wait > 0 {
		if err := waitReady(ctx, cl, *wait); err != nil {
			return err
		}
	}
	rep := statusReport{Address: cl.BaseURL()}
	if rep.Server, err = cl.ServerMetadata(ctx); err != nil {
		return err
	}
	if rep.Readiness, err = cl.Ready(ctx); err != nil {
		return err
	}
	// The admin half needs a token; without one, status still reports health.
	if cs, err := cl.Cluster(ctx); err == nil {
		rep.Cluster = &cs
		if rep.Models, err = cl.Models(ctx); err != nil {
			return err
		}
	} else if client.IsCode(err, "unauthorized") || client.IsCode(err, "forbidden") {
		rep.AdminError = err.Error()
	} else {
		return err
	}
	if c.json {
		return printJSON(stdout, rep)
	}
	tw := newTable(stdout)
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

func runNodes(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("nodes", flag.ContinueOnError)
	c := addCommon(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("nodes takes no arguments")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, wire.NodeList{Nodes: nodes})
	}
	tw := newTable(stdout)
	nodeTable(tw, nodes)
	return tw.Flush()
}

// nodeTable writes one row per node: state, health, Raft role, capacity, load, stages.
func nodeTable(w io.Writer, nodes []wire.NodeStatus) {
	fmt.Fprintln(w, "NODE\tSTATE\tHEALTH\tRAFT\tHTTP\tACCEL\tCORES\tMEM FREE/BUDGET\tLOAD\tSTAGES")
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
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", n.Name, n.State, health, role, n.HTTPAddr, n.Accel, n.Cores, mem, n.Load, strings.Join(n.Models, ","))
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

func runDeploy(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("deploy", flag.ContinueOnError)
	c := addCommon(fs)
	name := fs.String("name", "", "model name (default: the file name without .onnx)")
	stages := fs.Int("stages", 0, "pipeline stages (0: let the planner choose)")
	replicas := fs.Int("replicas", 0, "replicas per stage (0: the cluster default)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	wait := fs.Duration("wait", 0, "wait up to this long until every stage has a ready replica (0: return after the upload)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one model FILE")
	}
	if *name == "" {
		*name = strings.TrimSuffix(filepath.Base(pos[0]), ".onnx")
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	opts := client.UploadOptions{Stages: *stages, Replicas: *replicas}
	var bar *progressBar
	if !*quiet && !c.json {
		bar = &progressBar{w: os.Stderr, label: "upload " + *name, start: time.Now()}
		opts.Progress = bar.update
	}
	st, err := cl.UploadModel(ctx, *name, f, fi.Size(), opts)
	if bar != nil {
		bar.done()
	}
	if err != nil {
		return err
	}
	if *wait > 0 {
		var w io.Writer
		if !*quiet && !c.json {
			w = progressOut
		}
		if st, err = waitModelReady(ctx, cl, st.Name, *wait, w); err != nil {
			return err
		}
	}
	if c.json {
		return printJSON(stdout, st)
	}
	fmt.Fprintf(stdout, "deployed %s version %s (%s, sha256 %s), ready: %s\n", st.Name, st.Version, humanBytes(st.Size), shortHash(st.SHA256), yesNo(st.Ready))
	return nil
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

func runUndeploy(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("undeploy", flag.ContinueOnError)
	c := addCommon(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one model NAME")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	if err := cl.DeleteModel(ctx, pos[0]); err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, map[string]string{"undeployed": pos[0]})
	}
	fmt.Fprintf(stdout, "undeployed %s\n", pos[0])
	return nil
}

func runVersion(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	c := addCommon(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	out := struct {
		Client string `json:"client"`
		Server string `json:"server,omitempty"`
		Error  string `json:"server_error,omitempty"`
	}{Client: version}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if md, err := cl.ServerMetadata(ctx); err == nil {
		out.Server = md.Version
	} else {
		out.Error = err.Error()
	}
	if c.json {
		return printJSON(stdout, out)
	}
	fmt.Fprintf(stdout, "meshctl %s\n", out.Client)
	if out.Server != "" {
		fmt.Fprintf(stdout, "meshnode %s at %s\n", out.Server, cl.BaseURL())
	} else {
		fmt.Fprintf(stdout, "meshnode at %s: %s\n", cl.BaseURL(), out.Error)
	}
	return nil
}
