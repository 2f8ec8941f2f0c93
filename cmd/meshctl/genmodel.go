package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/layermesh/layermesh/partition/modelgen"
)

// runGenModel writes one of modelgen's deterministic models. The options of a kind
// become its flags (gpt: --layers --dim --heads --vocab --context --seed, and the
// switch --with-past). A GPT takes trained weights with --weights FILE.safetensors:
// its shape then comes from the file.
func runGenModel(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("want a KIND first (one of %s), then its flags", strings.Join(modelgen.Kinds(), ", "))
	}
	kind := args[0]
	keys, err := modelgen.OptionKeys(kind)
	if err != nil {
		return usagef("%v", err)
	}
	fs := flag.NewFlagSet("gen-model "+kind, flag.ContinueOnError)
	vals := make(map[string]*int, len(keys))
	withPast := false
	for _, k := range keys {
		if k == "with-past" {
			// A switch, not a number: the GPT in the with-past layout.
			fs.BoolVar(&withPast, k, false, "build the with-past layout (past_key_values -> present), which runs as a generation session")
			continue
		}
		vals[k] = fs.Int(k, 0, k+" (default: the preset's)")
	}
	out := fs.String("o", "", "output file (.onnx)")
	external := fs.Bool("external-data", false, "store the weights in FILE.onnx.data (forced above about 1.8 GiB)")
	asJSON := fs.Bool("json", false, "print JSON instead of text")
	weights := fs.String("weights", "", "gpt: trained weights (safetensors, modelgen's or Hugging Face GPT-2's tensor names); the shape comes from the file, --heads from the flag or the file's metadata")
	pos, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("unexpected arguments %q", pos)
	}
	if *out == "" {
		return usagef("give the output file with -o FILE.onnx")
	}
	opts := map[string]int{}
	fs.Visit(func(f *flag.Flag) {
		if v, ok := vals[f.Name]; ok {
			opts[f.Name] = *v
		}
	})
	if withPast {
		opts["with-past"] = 1
	}
	start := time.Now()
	cfg, err := modelgen.Lookup(kind, opts)
	if err != nil {
		return err
	}
	if *weights != "" {
		if cfg, err = withWeights(cfg, *weights, opts); err != nil {
			return err
		}
	}
	m, err := cfg.Build()
	if err != nil {
		return err
	}
	if err := modelgen.WriteFileWith(m, *out, modelgen.WriteOptions{ExternalData: *external}); err != nil {
		return err
	}
	fi, err := os.Stat(*out)
	if err != nil {
		return err
	}
	took := time.Since(start)
	if *asJSON {
		return printJSON(stdout, map[string]any{
			"file": *out, "kind": kind, "options": opts, "params": cfg.Params(), "bytes": fi.Size(),
			"outputs": cfg.OutputNames(), "seconds": took.Seconds(), "weights": *weights,
		})
	}
	fmt.Fprintf(stdout, "wrote %s: %s, %d parameters, %s, in %s\n", *out, kind, cfg.Params(), humanBytes(fi.Size()), took.Round(time.Millisecond))
	return nil
}

// withWeights gives the GPT configuration cfg the trained weights in path, taking its
// shape from them; a shape flag given as well must agree with the file.
func withWeights(cfg modelgen.Config, path string, opts map[string]int) (modelgen.Config, error) {
	base, ok := cfg.(modelgen.GPTConfig)
	if !ok {
		return nil, usagef("--weights applies to the gpt kinds only")
	}
	tr, err := modelgen.ReadSafetensors(path)
	if err != nil {
		return nil, err
	}
	if _, ok := opts["seed"]; ok {
		return nil, usagef("--seed draws weights; --weights gives them all")
	}
	if h, ok := opts["heads"]; ok && tr.Meta["heads"] != "" && tr.Meta["heads"] != strconv.Itoa(h) {
		return nil, usagef("--heads %d, but %s says its model has %s", h, path, tr.Meta["heads"])
	}
	c, err := tr.Config(base, opts["heads"])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, f := range []struct {
		key  string
		have int
	}{{"layers", c.Layers}, {"dim", c.Dim}, {"vocab", c.Vocab}, {"context", c.Context}} {
		if v, ok := opts[f.key]; ok && v != f.have {
			return nil, usagef("--%s %d, but the weights in %s have %d", f.key, v, path, f.have)
		}
	}
	return c, nil
}
