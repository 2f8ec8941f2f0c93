package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// errBadLine marks a result line whose numbers do not parse; the caller reports it
// rather than drop a figure without a word.
var errBadLine = errors.New("benchreport: malformed benchmark line")

// Run is one result line of `go test -bench`: a benchmark run once with b.N
// iterations (a -count of 3 gives three Runs of the same benchmark).
type Run struct {
	Iterations int64
	// Metrics maps a unit ("ns/op", "B/op", "allocs/op", "MB/s", or any unit given to
	// b.ReportMetric such as "ratio" or "added-%") to its value.
	Metrics map[string]float64
}

// Output is what one `go test -bench` invocation printed, grouped by benchmark.
type Output struct {
	// Results maps the full benchmark name, sub-benchmarks included and the
	// GOMAXPROCS suffix removed ("BenchmarkInfer/HTTPBinary"), to its runs in order.
	Results map[string][]Run
	// Logs holds the b.Log lines printed under "--- BENCH: name".
	Logs map[string][]string
	// Failures holds the "--- FAIL: name" lines and the log lines under them, and any
	// line that says why the test binary failed outside a benchmark.
	Failures []string
	// Tail is the last lines of the output, for a failure that no line explains.
	Tail []string
	// Package is the import path from the "pkg:" line.
	Package string
}

var (
	// benchName is the start of a result line: the name, then padding and a tab.
	benchName = regexp.MustCompile(`^(Benchmark\S+)\s`)
	// benchNumbers is the measured part: the iteration count, a tab, then value-unit
	// pairs separated by tabs. It may sit on a later line than the name when the
	// benchmark (or a process it started) wrote to stdout/stderr while running.
	benchNumbers = regexp.MustCompile(`(?:^|\s)(\d+)\t\s*([-+0-9.eE]+ \S+(?:\t\s*[-+0-9.eE]+ \S+)*)\s*$`)
	logHeader    = regexp.MustCompile(`^--- (BENCH|FAIL|SKIP): (\S+)`)
	// failureLine picks out why a run failed outside a benchmark: a compile error, a
	// panic, a leak check in TestMain, a package that did not build.
	failureLine = regexp.MustCompile(`^(goleak: |panic: |fatal error: |\S+\.go:\d+:\d+: )|\[build failed\]|^FAIL\s+\S+\s+\d`)
)

// tailLines is how much of the end of a failed run's output the report quotes.
const tailLines = 8

// Parse reads `go test -bench` output. procs is the GOMAXPROCS the run used: go test
// appends "-procs" to every name when it is above 1, and only that suffix is cut, so
// a sub-benchmark that itself ends in "-2" keeps its name.
func Parse(r io.Reader, procs int) (*Output, error) {
	out := &Output{Results: map[string][]Run{}, Logs: map[string][]string{}}
	suffix := ""
	if procs > 1 {
		suffix = "-" + strconv.Itoa(procs)
	}
	pending := "" // a name whose numbers have not been printed yet
	logTo := ""   // "BENCH:name" or "FAIL:name" while reading indented log lines
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) != "" {
			out.Tail = append(out.Tail, line)
			if len(out.Tail) > tailLines {
				out.Tail = out.Tail[1:]
			}
		}
		if failureLine.MatchString(line) {
			out.Failures = append(out.Failures, strings.TrimSpace(line))
		}
		if m := logHeader.FindStringSubmatch(line); m != nil {
			name := strings.TrimSuffix(m[2], suffix)
			logTo = m[1] + ":" + name
			if m[1] == "FAIL" {
				out.Failures = append(out.Failures, strings.TrimSpace(line))
			}
			continue
		}
		if logTo != "" && strings.HasPrefix(line, "    ") {
			kind, name, _ := strings.Cut(logTo, ":")
			text := strings.TrimSpace(line)
			if kind == "FAIL" {
				out.Failures = append(out.Failures, name+": "+text)
			} else {
				out.Logs[name] = append(out.Logs[name], text)
			}
			continue
		}
		logTo = ""
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			out.Package = strings.TrimSpace(p)
			continue
		}
		rest := line
		if m := benchName.FindStringSubmatch(line); m != nil {
			pending = strings.TrimSuffix(m[1], suffix)
			rest = line[len(m[1]):]
		}
		if pending == "" {
			continue
		}
		m := benchNumbers.FindStringSubmatch(rest)
		if m == nil {
			continue
		}
		run, err := parseNumbers(m[1], m[2])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", pending, err)
		}
		out.Results[pending] = append(out.Results[pending], run)
		pending = ""
	}
	return out, sc.Err()
}

func parseNumbers(iterations, pairs string) (Run, error) {
	n, err := strconv.ParseInt(iterations, 10, 64)
	if err != nil {
		return Run{}, fmt.Errorf("%w: iterations %q", errBadLine, iterations)
	}
	run := Run{Iterations: n, Metrics: map[string]float64{}}
	for _, pair := range strings.Split(pairs, "\t") {
		f := strings.Fields(pair)
		if len(f) != 2 {
			return Run{}, fmt.Errorf("%w: %q", errBadLine, pair)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return Run{}, fmt.Errorf("%w: %q", errBadLine, pair)
		}
		run.Metrics[f[1]] = v
	}
	return run, nil
}

// LogFigure reads figures from a line a test logs: each capture group of Pattern is
// the value of the metric named at the same position in Metrics, recorded as one run
// of the benchmark-like name Name.
type LogFigure struct {
	Job, Name string
	Pattern   *regexp.Regexp
	Metrics   []string
	// Skip, when set, drops a match whose values are not figures.
	Skip func(map[string]float64) bool
}

// extractLogFigures adds to out a run for every line of text that f matches.
func extractLogFigures(text string, f LogFigure, out *Output) error {
	for _, line := range strings.Split(text, "\n") {
		m := f.Pattern.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if len(m)-1 != len(f.Metrics) {
			return fmt.Errorf("%w: %s: %d groups for %d metrics", errBadLine, f.Name, len(m)-1, len(f.Metrics))
		}
		run := Run{Iterations: 1, Metrics: map[string]float64{}}
		for i, name := range f.Metrics {
			v, err := strconv.ParseFloat(m[i+1], 64)
			if err != nil {
				return fmt.Errorf("%w: %s %s %q", errBadLine, f.Name, name, m[i+1])
			}
			run.Metrics[name] = v
		}
		if f.Skip != nil && f.Skip(run.Metrics) {
			continue
		}
		out.Results[f.Name] = append(out.Results[f.Name], run)
	}
	return nil
}
