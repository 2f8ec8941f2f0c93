// Command benchreport turns the raw output of scripts/bench.sh (one `go test -bench`
// output and one JSON side file per job, plus run.json for the whole run) into
// BENCHMARKS.md: the machine, then one section per measured behaviour with what is
// measured, the figures, the target and whether it is met, and the command that
// reproduces them.
//
// Figures are never typed in by hand: every number in the report is read from a
// benchmark line of this run, and a figure whose benchmark did not run or failed is
// printed as missing, not carried over from an earlier run.
//
//	go run ./scripts/benchreport -dir test/results/bench -out BENCHMARKS.md -ort-lib $ORT_LIB
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// errNoResults means the results folder holds no run: bench.sh has not been run.
var errNoResults = errors.New("benchreport: no benchmark results")

// RunInfo is run.json, written by bench.sh once all jobs are done.
type RunInfo struct {
	Quick     bool    `json:"quick"`
	Only      string  `json:"only"`
	Commit    string  `json:"commit"` // HEAD when the run started`
	Seconds   float64 `json:"seconds"`
	LoadStart string  `json:"load_start"`
	LoadEnd   string  `json:"load_end"`
	Procs     int     `json:"procs"`
	Finished  string  `json:"finished"`
}

// Job is one bench.sh job: its side file <id>.json and its parsed output <id>.txt.
type Job struct {
	ID         string  `json:"id"`
	Command    string  `json:"command"`
	Exit       int     `json:"exit"`
	Seconds    float64 `json:"seconds"`
	LoadBefore string  `json:"load_before"`
	LoadAfter  string  `json:"load_after"`
	Finished   string  `json:"finished"`
	Output     *Output `json:"-"`
}

func main() {
	dir := flag.String("dir", "test/results/bench", "folder with the raw results of scripts/bench.sh")
	out := flag.String("out", "BENCHMARKS.md", "report to write")
	ortLib := flag.String("ort-lib", os.Getenv("ORT_LIB"), "ONNX Runtime library the benchmarks used (its version goes in the header)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "benchreport")
	if err := run(*dir, *out, *ortLib); err != nil {
		log.Error("report not written", "err", err)
		os.Exit(1)
	}
	log.Info("report written", "out", *out)
}

func run(dir, out, ortLib string) error {
	info, jobs, err := load(dir)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	render(&buf, probeMachine(ortLib), info, jobs, reportSections, readPrevious(out))
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

// load reads run.json and every job's side file and output.
func load(dir string) (RunInfo, map[string]*Job, error) {
	var info RunInfo
	data, err := os.ReadFile(filepath.Join(dir, "run.json"))
	if err != nil {
		return info, nil, fmt.Errorf("%w in %s (run scripts/bench.sh): %w", errNoResults, dir, err)
	}
	if err := json.Unmarshal(data, &info); err != nil {
		return info, nil, fmt.Errorf("run.json: %w", err)
	}
	metas, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return info, nil, err
	}
	sort.Strings(metas)
	jobs := map[string]*Job{}
	for _, path := range metas {
		if filepath.Base(path) == "run.json" {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return info, nil, err
		}
		j := &Job{}
		if err := json.Unmarshal(data, j); err != nil {
			return info, nil, fmt.Errorf("%s: %w", path, err)
		}
		text, err := os.ReadFile(strings.TrimSuffix(path, ".json") + ".txt")
		if err != nil {
			return info, nil, err
		}
		if j.Output, err = Parse(bytes.NewReader(text), info.Procs); err != nil {
			return info, nil, fmt.Errorf("%s: %w", j.ID, err)
		}
		for _, lf := range logFigures {
			if lf.Job != j.ID {
				continue
			}
			if err := extractLogFigures(string(text), lf, j.Output); err != nil {
				return info, nil, fmt.Errorf("%s: %w", j.ID, err)
			}
		}
		jobs[j.ID] = j
	}
	if len(jobs) == 0 {
		return info, nil, fmt.Errorf("%w in %s", errNoResults, dir)
	}
	return info, jobs, nil
}
