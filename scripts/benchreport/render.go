package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Section is one measured behaviour of the report.
type Section struct {
	Title    string // what is measured: "HTTP inference path against a direct accel call"
	Measures string // what is measured and how, markdown
	Jobs     []string
	Figures  []Figure
	Details  []Matrix
	Logs     []string // benchmarks whose b.Log lines are quoted
	Notes    string
	// Pending is printed, instead of figures, when none of Jobs ran.
	Pending string
}

// Figure is one headline number: a metric of one benchmark, the median over its runs.
type Figure struct {
	Job, Bench, Metric string
	Label              string
	Unit               string  // display unit
	Scale              float64 // display value = metric * Scale (0 means 1)
	Target             *Target
	// Summary puts a figure without a target into the summary table too.
	Summary bool
}

// Target is the bound a figure must meet.
type Target struct {
	Op    string // "<", "<=", ">", ">="
	Value float64
	Note  string // where the target comes from, when not obvious
}

func (t Target) met(v float64) bool {
	switch t.Op {
	case "<":
		return v < t.Value
	case "<=":
		return v <= t.Value
	case ">":
		return v > t.Value
	case ">=":
		return v >= t.Value
	}
	panic("benchreport: unknown target op " + t.Op)
}

// Matrix is a detail table: one row per benchmark, one column per metric.
type Matrix struct {
	Job     string
	Caption string
	Rows    []Row
	Cols    []Col
}

// Row names one benchmark of a Matrix.
type Row struct{ Bench, Label string }

// Col is one metric column of a Matrix.
type Col struct {
	Metric, Header string
	Scale          float64
}

// value is the median of a metric over the runs of a benchmark, with the spread.
type value struct {
	median, min, max float64
	n                int
	missing          string // why there is no value
}

func lookup(jobs map[string]*Job, job, bench, metric string, scale float64) value {
	j, ok := jobs[job]
	if !ok {
		return value{missing: "not run"}
	}
	runs := j.Output.Results[bench]
	var vs []float64
	for _, r := range runs {
		if v, ok := r.Metrics[metric]; ok {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		if j.Exit != 0 {
			return value{missing: "job failed"}
		}
		return value{missing: "no " + metric + " in output"}
	}
	if scale == 0 {
		scale = 1
	}
	for i := range vs {
		vs[i] *= scale
	}
	sort.Float64s(vs)
	med := vs[len(vs)/2]
	if len(vs)%2 == 0 {
		med = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
	}
	return value{median: med, min: vs[0], max: vs[len(vs)-1], n: len(vs)}
}

// num prints a measured value with as many digits as a noisy measurement deserves.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 100, v == math.Trunc(v) && a < 1e15:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// withUnit is the value followed by its display unit, unless there is no value.
func (v value) withUnit(unit string) string {
	if v.missing != "" || unit == "" {
		return v.String()
	}
	return v.String() + " " + unit
}

// cell is the value without its run count, for tables whose caption gives it.
func (v value) cell() string {
	if v.missing != "" || v.n == 1 {
		return v.String()
	}
	if num(v.min) == num(v.max) {
		return num(v.median)
	}
	return fmt.Sprintf("%s (%s–%s)", num(v.median), num(v.min), num(v.max))
}

func (v value) String() string {
	if v.missing != "" {
		return "— (" + v.missing + ")"
	}
	if v.n == 1 {
		return num(v.median)
	}
	if num(v.min) == num(v.max) {
		return fmt.Sprintf("%s (%d runs)", num(v.median), v.n)
	}
	return fmt.Sprintf("%s (%s–%s, %d runs)", num(v.median), num(v.min), num(v.max), v.n)
}

// targetText is the figure's target in its unit, or "recorded" where it has none.
func targetText(t *Target, unit string) string {
	if t == nil {
		return "recorded"
	}
	s := t.Op + " " + strconv.FormatFloat(t.Value, 'g', -1, 64)
	if unit != "" {
		s += " " + unit
	}
	if t.Note != "" {
		s += " (" + t.Note + ")"
	}
	return s
}

func verdict(t *Target, v value) string {
	switch {
	case t == nil:
		return "—"
	case v.missing != "":
		return "**not measured**"
	case t.met(v.median):
		return "yes"
	case num(v.median) == num(t.Value):
		// Printed as the target itself: the digits that miss it.
		return fmt.Sprintf("**no** (%.4g)", v.median)
	default:
		return "**no**"
	}
}

func render(w io.Writer, m Machine, info RunInfo, jobs map[string]*Job, sections []Section, prev previousReport) {
	renderHeader(w, m, info, jobs)
	renderSummary(w, jobs, sections, prev)
	for _, s := range sections {
		if old, ok := prev.sections[s.Title]; ok && !anyRan(jobs, s.Jobs) {
			// Kept as the earlier report had it: its raw results are gone.
			fmt.Fprint(w, old)
			continue
		}
		renderSection(w, jobs, s)
	}
	renderUnreferenced(w, jobs, sections)
}

// renderHeader writes the title, how the figures were obtained, and the machine and
// run they were obtained on.
func renderHeader(w io.Writer, m Machine, info RunInfo, jobs map[string]*Job) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("# layermesh benchmarks\n\n")
	p("Generated by `make bench` (scripts/bench.sh, then scripts/benchreport) on %s. Do not edit by hand:\n", info.Finished)
	p("every figure is read from the raw `go test -bench` output of that run (test/results/bench/, git-ignored),\n")
	p("and each section gives the exact command that produced it. Commands run from the repository root with\n")
	p("`ORT_LIB` pointing at the ONNX Runtime library (make exports it). A figure is the median over the runs\n")
	p("(-count), with the range when there were several. Ratios are measured side by side in one benchmark\n")
	p("process, interleaved per iteration, so both sides see the same machine load.\n\n")

	mode := "full"
	if info.Quick {
		mode = "quick (BENCH_QUICK=1: fewer repetitions, no 3 GB external-data model)"
	}
	var jobSecs float64
	for _, j := range jobs {
		jobSecs += j.Seconds
	}
	if info.Only == "" {
		mode += fmt.Sprintf(", %s for all jobs", duration(jobSecs))
	} else {
		mode += fmt.Sprintf("; this invocation reran only %s (%s); the other sections are kept as the earlier report had them, each with its own commands, finish times and load averages", info.Only, duration(info.Seconds))
	}
	p("| machine | |\n|---|---|\n")
	p("| CPU | %s, %d cores |\n", m.CPU, m.Cores)
	p("| memory | %.1f GiB |\n", m.MemoryGiB)
	p("| kernel | %s |\n", m.Kernel)
	p("| Go | %s |\n", m.GoVersion)
	p("| ONNX Runtime | %s, CPU execution provider |\n", m.ORTVersion)
	commit := m.Commit
	if info.Commit != "" {
		commit = info.Commit
	}
	p("| commit | %s |\n", commit)
	p("| run | %s |\n", mode)
	p("| load average (1, 5, 15 min) | %s at the start, %s at the end |\n\n", info.LoadStart, info.LoadEnd)
	p("The machine is shared: other processes compete for its %d cores during the run, so absolute\n", m.Cores)
	p("times are noisier than the ratios, which are measured interleaved.")
	if busy(info.LoadStart, m.Cores) || busy(info.LoadEnd, m.Cores) {
		p(" **In this run the load average was above\nthe number of cores: expect every figure, ratios included, to be worse than on a quiet machine.**")
	}
	p("\n\n")
}

// renderSummary writes one row per figure with a target or marked Summary, and one
// per section not measured in this run (the earlier report's rows, when it had them).
func renderSummary(w io.Writer, jobs map[string]*Job, sections []Section, prev previousReport) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("## Summary\n\n| section | figure | value | target | met |\n|---|---|---|---|---|\n")
	for _, s := range sections {
		if !anyRan(jobs, s.Jobs) {
			if prev.sections[s.Title] != "" {
				// Kept as the earlier report had it, with its summary rows: none where
				// the section has no figure with a target.
				p("%s", strings.Join(prev.summary[s.Title], ""))
				continue
			}
			p("| %s | | not yet measured | | |\n", s.Title)
			continue
		}
		for _, f := range s.Figures {
			if f.Target == nil && !f.Summary {
				continue
			}
			v := lookup(jobs, f.Job, f.Bench, f.Metric, f.Scale)
			p("| %s | %s | %s | %s | %s |\n", s.Title, f.Label, v.withUnit(f.Unit), targetText(f.Target, f.Unit), verdict(f.Target, v))
		}
	}
	p("\n")
}

// renderSection writes one section: what it measures, its figures, detail tables and
// logs, and how to reproduce them.
func renderSection(w io.Writer, jobs map[string]*Job, s Section) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("## %s\n\n", s.Title)
	p("%s\n\n", strings.TrimSpace(s.Measures))
	if !anyRan(jobs, s.Jobs) {
		why := strings.TrimSpace(s.Pending)
		if why == "" {
			why = fmt.Sprintf("None of its jobs (%s) ran in this run.", strings.Join(s.Jobs, ", "))
		}
		p("**Not yet measured.** %s\n\n", why)
		return
	}
	if len(s.Figures) > 0 {
		p("| figure | value | target | met |\n|---|---|---|---|\n")
		for _, f := range s.Figures {
			v := lookup(jobs, f.Job, f.Bench, f.Metric, f.Scale)
			p("| %s | %s | %s | %s |\n", f.Label, v.withUnit(f.Unit), targetText(f.Target, f.Unit), verdict(f.Target, v))
		}
		p("\n")
	}
	for _, mx := range s.Details {
		renderMatrix(w, jobs, mx)
	}
	for _, name := range s.Logs {
		for _, id := range s.Jobs {
			j, ok := jobs[id]
			if !ok || len(j.Output.Logs[name]) == 0 {
				continue
			}
			p("Log of %s in `%s`:\n\n", name, id)
			for _, l := range j.Output.Logs[name] {
				p("    %s\n", l)
			}
			p("\n")
		}
	}
	if s.Notes != "" {
		p("%s\n\n", strings.TrimSpace(s.Notes))
	}
	renderReproduce(w, jobs, s)
}

// renderReproduce writes the commands of the section's jobs and how each job ended.
func renderReproduce(w io.Writer, jobs map[string]*Job, s Section) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("Reproduce:\n\n")
	for _, id := range s.Jobs {
		j, ok := jobs[id]
		if !ok {
			p("    # %s: not run in this run\n", id)
			continue
		}
		p("    %s\n", j.Command)
	}
	p("\n")
	for _, id := range s.Jobs {
		j, ok := jobs[id]
		if !ok {
			continue
		}
		status := "passed"
		if j.Exit != 0 {
			status = fmt.Sprintf("**FAILED (exit %d)**", j.Exit)
		}
		p("- `%s`: %s, %s, finished %s, load average %s before and %s after.\n", id, status, duration(j.Seconds), j.Finished, j.LoadBefore, j.LoadAfter)
		why := j.Output.Failures
		if j.Exit != 0 && len(why) == 0 {
			why = j.Output.Tail
		}
		for _, f := range why {
			p("  - `%s`\n", strings.ReplaceAll(f, "`", "'"))
		}
	}
	p("\n")
}

func renderMatrix(w io.Writer, jobs map[string]*Job, mx Matrix) {
	runs := 0
	if j, ok := jobs[mx.Job]; ok {
		for _, r := range mx.Rows {
			runs = max(runs, len(j.Output.Results[r.Bench]))
		}
	}
	caption := mx.Caption
	if runs > 1 {
		caption += fmt.Sprintf(" (each cell: the median of %d runs, and their range)", runs)
	}
	fmt.Fprintf(w, "%s:\n\n| |", caption)
	for _, c := range mx.Cols {
		fmt.Fprintf(w, " %s |", c.Header)
	}
	fmt.Fprintf(w, "\n|---|%s\n", strings.Repeat("---|", len(mx.Cols)))
	for _, r := range mx.Rows {
		fmt.Fprintf(w, "| %s |", r.Label)
		for _, c := range mx.Cols {
			fmt.Fprintf(w, " %s |", lookup(jobs, mx.Job, r.Bench, c.Metric, c.Scale).cell())
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
}

// renderUnreferenced lists results that no section names, so that a benchmark added
// to bench.sh before the report knows it still shows up.
func renderUnreferenced(w io.Writer, jobs map[string]*Job, sections []Section) {
	used := map[string]bool{}
	for _, s := range sections {
		for _, f := range s.Figures {
			used[f.Job+" "+f.Bench] = true
		}
		for _, mx := range s.Details {
			for _, r := range mx.Rows {
				used[mx.Job+" "+r.Bench] = true
			}
		}
	}
	var lines []string
	for id, j := range jobs {
		for bench, runs := range j.Output.Results {
			if used[id+" "+bench] {
				continue
			}
			for _, r := range runs {
				units := make([]string, 0, len(r.Metrics))
				for u := range r.Metrics {
					units = append(units, u)
				}
				slices.Sort(units)
				var parts []string
				for _, u := range units {
					parts = append(parts, num(r.Metrics[u])+" "+u)
				}
				lines = append(lines, fmt.Sprintf("| %s | %s | %d | %s |", id, bench, r.Iterations, strings.Join(parts, ", ")))
			}
		}
	}
	if len(lines) == 0 {
		return
	}
	slices.Sort(lines)
	fmt.Fprintf(w, "## Other results of this run\n\nBenchmarks that ran but that no section above describes yet.\n\n")
	fmt.Fprintf(w, "| job | benchmark | iterations | metrics |\n|---|---|---|---|\n%s\n\n", strings.Join(lines, "\n"))
}

func anyRan(jobs map[string]*Job, ids []string) bool {
	for _, id := range ids {
		if _, ok := jobs[id]; ok {
			return true
		}
	}
	return false
}

// busy says whether a "1 5 15" load average line shows more runnable work than cores
// in the last minute.
func busy(loadavg string, cores int) bool {
	f := strings.Fields(loadavg)
	if len(f) == 0 {
		return false
	}
	l, err := strconv.ParseFloat(f[0], 64)
	return err == nil && l > float64(cores)
}

func duration(secs float64) string {
	if secs < 120 {
		return fmt.Sprintf("%.0f s", secs)
	}
	return fmt.Sprintf("%.0f s (%.1f min)", secs, secs/60)
}
