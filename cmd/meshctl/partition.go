package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/partition"
)

// unlimitedBudget stands for "no memory limit" when no --budgets are given.
const unlimitedBudget = math.MaxInt64 / 4

// runPartition cuts a model into pipeline stages offline, without a cluster:
//
//	meshctl partition MODEL --stages K|auto [--budgets 2GiB,1GiB,...] [--speeds 1,2,...]
//	    [--bandwidth 1GB] [--output-bandwidth 1GB] [--reorder] [--input-shape name=1x128] [--out DIR] [--measure] [--verify] [--json]
//
// Devices are the budgets (and speeds) given, in pipeline order: stage i runs on
// device i, unless --reorder lets the planner pick the order. Without budgets every device is unlimited and the stages are balanced on
// FLOPs alone.
func runPartition(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("partition", flag.ContinueOnError)
	stages := fs.String("stages", "auto", "number of stages, or auto for the count with the fastest bottleneck")
	budgets := fs.String("budgets", "", "memory budget of each device in pipeline order, e.g. 2GiB,1GiB,512MiB")
	speeds := fs.String("speeds", "", "relative speed (or FLOP/s) of each device, e.g. 1,2,1 (default 1 each)")
	bandwidth := fs.String("bandwidth", "1GB", "link bandwidth between consecutive devices, bytes per second")
	outBandwidth := fs.String("output-bandwidth", "0", "bytes per second at which the last device hands the model's outputs on; 0 leaves them out of its time")
	reorder := fs.Bool("reorder", false, "let the planner choose which device runs which stage (default: stage i on device i)")
	out := fs.String("out", "", "folder for the stage files and manifest.json (default MODEL without .onnx + .stages)")
	verify := fs.Bool("verify", false, "run the whole model and the stage chain in ONNX Runtime and compare every output")
	measure := fs.Bool("measure", false, "run the model once in ONNX Runtime for exact activation shapes (where shape inference has no rule)")
	ortLib := fs.String("ort-lib", "", "ONNX Runtime library for --verify and --measure (default $ORT_LIB or third_party/onnxruntime/current)")
	asJSON := fs.Bool("json", false, "print the manifest (and verify report) as JSON")
	var shapes shapeFlags
	fs.Var(&shapes, "input-shape", "bind an input's shape, e.g. input_ids=1x128 (repeatable)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one MODEL.onnx, got %q", pos)
	}
	modelPath := pos[0]

	k := 0
	if *stages != "auto" {
		if k, err = strconv.Atoi(*stages); err != nil || k < 1 {
			return usagef("--stages wants a positive number or auto, got %q", *stages)
		}
	}
	devices, err := partitionDevices(*budgets, *speeds, k)
	if err != nil {
		return err
	}
	bw, err := partition.ParseBytes(*bandwidth)
	if err != nil || bw <= 0 {
		return usagef("--bandwidth: %q is not a positive byte rate", *bandwidth)
	}
	outBW, err := partition.ParseBytes(*outBandwidth)
	if err != nil || outBW < 0 {
		return usagef("--output-bandwidth: %q is not a byte rate", *outBandwidth)
	}
	dir := *out
	if dir == "" {
		dir = strings.TrimSuffix(modelPath, filepath.Ext(modelPath)) + ".stages"
	}

	start := time.Now()
	m, err := partition.Load(modelPath)
	if err != nil {
		return err
	}
	g, err := partition.Analyze(m, shapes.m)
	if err != nil {
		return err
	}
	var backend accel.Backend
	if *verify || *measure {
		if backend, err = ort.New(ort.Config{LibraryPath: *ortLib, Provider: accel.ProviderCPU, Logger: slog.New(slog.DiscardHandler)}); err != nil {
			return err
		}
		defer backend.Close()
	}
	if *measure {
		inputs, err := partition.RandomInputs(&partition.Manifest{InputShapes: g.InputShapes, Inputs: g.InputSpecs()}, partition.VerifySeed)
		if err != nil {
			return err
		}
		measured, err := partition.MeasureValues(ctx, backend, g, inputs, "")
		if err != nil {
			return err
		}
		if g, err = partition.AnalyzeWith(m, partition.AnalyzeOptions{InputShapes: shapes.m, Measured: measured}); err != nil {
			return err
		}
	}
	plan, err := partition.Plan(g, devices, partition.PlanOptions{Stages: k, LinkBandwidth: func(int, int) float64 { return float64(bw) },
		OutputBandwidth: float64(outBW), ReorderDevices: *reorder})
	if err != nil {
		return err
	}
	man, err := partition.Extract(m, g, plan, dir)
	if err != nil {
		return err
	}
	elapsed := time.Since(start)

	var report *partition.VerifyReport
	if *verify {
		if report, err = partition.Verify(ctx, backend, modelPath, man, dir, nil); err != nil {
			return err
		}
	}
	if *asJSON {
		return printJSON(stdout, struct {
			Manifest *partition.Manifest     `json:"manifest"`
			Verify   *partition.VerifyReport `json:"verify,omitempty"`
			Dir      string                  `json:"dir"`
		}{man, report, dir})
	}
	printPlan(stdout, g, man, plan)
	fmt.Fprintf(stdout, "\n%d stages written to %s in %s\n", len(man.Stages), dir, elapsed.Round(time.Millisecond))
	if *speeds != "" {
		// With speeds in FLOP/s this is seconds; with relative scores, relative units.
		fmt.Fprintf(stdout, "slowest stage: %.4g per request (FLOPs/speed + bytes sent/bandwidth)\n", plan.Bottleneck)
	}
	if report != nil {
		for _, o := range report.Outputs {
			fmt.Fprintf(stdout, "verify %s: max abs diff %.3g, max rel diff %.3g (to output scale %.3g), bit-identical %v\n", o.Name, o.MaxAbs, o.MaxRel, o.MaxRelToScale, o.Exact)
		}
	}
	return nil
}

// partitionDevices builds the device list from the --budgets and --speeds lists.
func partitionDevices(budgets, speeds string, k int) ([]partition.Device, error) {
	var bs []int64
	var ss []float64
	if budgets != "" {
		for _, f := range strings.Split(budgets, ",") {
			b, err := partition.ParseBytes(f)
			if err != nil {
				return nil, usagef("--budgets: %v", err)
			}
			bs = append(bs, b)
		}
	}
	if speeds != "" {
		for _, f := range strings.Split(speeds, ",") {
			s, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
			if err != nil || !(s > 0) || math.IsInf(s, 0) {
				return nil, usagef("--speeds: %q is not a positive number", f)
			}
			ss = append(ss, s)
		}
	}
	if bs != nil && ss != nil && len(bs) != len(ss) {
		return nil, usagef("%d budgets but %d speeds", len(bs), len(ss))
	}
	n := max(len(bs), len(ss))
	if n == 0 {
		if k == 0 {
			return nil, usagef("--stages auto needs the devices: give --budgets or --speeds")
		}
		n = k
	}
	devices := make([]partition.Device, n)
	for i := range devices {
		devices[i] = partition.Device{Name: fmt.Sprintf("dev%d", i), MemBudget: unlimitedBudget, Speed: 1}
		if bs != nil {
			devices[i].MemBudget = bs[i]
		}
		if ss != nil {
			devices[i].Speed = ss[i]
		}
	}
	return devices, nil
}

func printPlan(w io.Writer, g *partition.Graph, man *partition.Manifest, plan *partition.StagePlan) {
	fmt.Fprintf(w, "model %s: %d nodes, %s of weights, %.3g GFLOPs at %v\n\n", man.Model, len(g.Nodes), partition.FormatBytes(g.ParamBytes), float64(g.FLOPs)/1e9, man.InputShapes)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STAGE\tDEVICE\tNODES\tFIRST OP\tLAST OP\tPARAMS\tMEMORY\tBUDGET\tGFLOPS\tSENDS\tFILE")
	for i, s := range plan.Stages {
		budget := "-"
		if s.Device.MemBudget < unlimitedBudget {
			budget = partition.FormatBytes(s.Device.MemBudget)
		}
		fmt.Fprintf(tw, "%d\t%s\t%d-%d\t%s\t%s\t%s\t%s\t%s\t%.3g\t%s\t%s\n", s.Index, s.Device.Name, s.Start, s.End-1, s.FirstOp, s.LastOp,
			partition.FormatBytes(s.ParamBytes), partition.FormatBytes(s.MemoryBytes), budget, float64(s.FLOPs)/1e9, partition.FormatBytes(s.SendBytes), man.Stages[i].File)
	}
	tw.Flush()
}

// shapeFlags collects repeated --input-shape name=1x128 flags.
type shapeFlags struct{ m map[string][]int64 }

func (s *shapeFlags) String() string { return fmt.Sprint(s.m) }

func (s *shapeFlags) Set(v string) error {
	name, dims, ok := strings.Cut(v, "=")
	if !ok || name == "" || dims == "" {
		return fmt.Errorf("want name=DxDx..., got %q", v)
	}
	var shape []int64
	for _, d := range strings.Split(dims, "x") {
		n, err := strconv.ParseInt(d, 10, 64)
		if err != nil || n < 1 {
			return fmt.Errorf("bad dim %q in %q", d, v)
		}
		shape = append(shape, n)
	}
	if s.m == nil {
		s.m = map[string][]int64{}
	}
	s.m[name] = shape
	return nil
}
