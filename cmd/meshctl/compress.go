package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/compress"
)

// runCompress quantizes and/or prunes a model offline, without a cluster:
//
//	meshctl compress MODEL --out OUT.onnx [--quantize int8|int4|dynamic|static] [--prune RATIO]
//	    [--block-size 32] [--symmetric] [--calib DIR] [--calib-method minmax|percentile]
//	    [--verify N] [--max-error E] [--min-agreement A] [--input-shape name=1x128] [--json]
//
// It exits 1 with the report printed when verification exceeds a threshold, and
// writes nothing then. A model with nothing to compress is reported, not an error.
func runCompress(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("compress", flag.ContinueOnError)
	out := fs.String("out", "", "the compressed model to write (required)")
	var opts compress.Options
	fs.StringVar(&opts.Quantize, "quantize", "", "int8 or int4 (weight-only), dynamic (int8 activations at run time) or static (int8, calibrated)")
	fs.Float64Var(&opts.Prune, "prune", 0, "fraction of each prunable layer's channels to remove, in [0, 0.95]")
	fs.StringVar(&opts.PruneCriterion, "prune-criterion", "l1", "rank channels by l1 (filter norms) or output (error their removal adds on the calibration set; needs --calib)")
	fs.BoolVar(&opts.PruneGlobal, "prune-global", false, "apply --prune to the whole model: the least important channels anywhere go")
	fs.IntVar(&opts.PruneSteps, "prune-steps", 0, "global pruning with --calib in this many re-measured steps (default 8)")
	fs.IntVar(&opts.BlockSize, "block-size", 0, "weight-only quantization block length along K (16-256, power of two; default 32)")
	fs.BoolVar(&opts.Symmetric, "symmetric", false, "weight-only quantization without zero points")
	fs.IntVar(&opts.AccuracyLevel, "accuracy-level", 0, "MatMulNBits accuracy_level: 1 fp32, 4 int8 compute; 0 means 4 for int8 (ONNX Runtime's only fast 8-bit kernel), unset for int4")
	fs.StringVar(&opts.CalibrationDir, "calib", "", "calibration folder: one .npy per sample (or one folder of NAME.npy per sample)")
	fs.StringVar(&opts.CalibrationMethod, "calib-method", "minmax", "activation range method: minmax or percentile")
	fs.Float64Var(&opts.Percentile, "percentile", 99.99, "percentile of |x| the percentile method keeps")
	fs.IntVar(&opts.Verify, "verify", 0, "compare original and compressed on N inputs (calibration samples, then random ones)")
	fs.Float64Var(&opts.MaxError, "max-error", 0, "fail verification above this error relative to the output scale")
	fs.Float64Var(&opts.MinAgreement, "min-agreement", 0, "fail verification below this top-1 agreement")
	ortLib := fs.String("ort-lib", "", "ONNX Runtime library for calibration and --verify (default $ORT_LIB or third_party/onnxruntime/current)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	var shapes shapeFlags
	fs.Var(&shapes, "input-shape", "bind an input's shape for random verification inputs, e.g. input_ids=1x128 (repeatable)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one MODEL.onnx, got %q", pos)
	}
	if *out == "" {
		return usagef("--out OUT.onnx is required")
	}
	opts.InputShapes = shapes.m
	if opts.Quantize == compress.QuantStatic || opts.Verify > 0 {
		backend, err := ort.New(ort.Config{LibraryPath: *ortLib, Provider: accel.ProviderCPU, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return err
		}
		defer backend.Close()
		opts.Backend = backend
	}
	rep, err := compress.Compress(ctx, pos[0], *out, opts)
	if errors.Is(err, compress.ErrInvalidOptions) {
		return usagef("%v", err)
	}
	if rep == nil || (err != nil && !errors.Is(err, compress.ErrVerifyFailed)) {
		return err
	}
	if *asJSON {
		if perr := printJSON(stdout, rep); perr != nil {
			return perr
		}
		return err
	}
	printCompressReport(stdout, rep)
	return err
}

// printCompressReport prints the human form of a compression report.
func printCompressReport(w io.Writer, rep *compress.Report) {
	if rep.NothingToDo {
		fmt.Fprintf(w, "nothing to do: no node of %s can be compressed that way; nothing written\n", rep.Source)
	}
	for _, c := range rep.Rewritten {
		fmt.Fprintf(w, "rewrote %-10s %s -> %s\n", c.Op, c.Node, c.As)
	}
	for _, c := range rep.Kept {
		fmt.Fprintf(w, "kept    %-10s %s float32: %s\n", c.Op, c.Node, c.Reason)
	}
	for _, p := range rep.Pruned {
		fmt.Fprintf(w, "pruned  %d of %d channels of %v\n", p.Removed, p.Channels, p.Layers)
	}
	if c := rep.Calibration; c != nil {
		fmt.Fprintf(w, "calibrated %d tensors on %d samples (%s)\n", c.Tensors, c.Samples, c.Method)
	}
	if v := rep.Verify; v != nil {
		fmt.Fprintf(w, "verify on %d inputs: max abs error %.4g, relative to output scale %.4g, cosine %.6f", v.Samples, v.MaxAbs, v.MaxRel, v.MinCosine)
		if v.MinTop1 >= 0 {
			fmt.Fprintf(w, ", top-1 agreement %.4f", v.MinTop1)
		}
		fmt.Fprintln(w)
	}
	if rep.Output != "" {
		fmt.Fprintf(w, "%s: %s -> %s (%.3fx) in %s\n", rep.Output, humanBytes(rep.SizeBefore), humanBytes(rep.SizeAfter), rep.Ratio(), rep.Elapsed.Round(1e6))
	}
}
