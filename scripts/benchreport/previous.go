package main

import (
	"os"
	"strings"
)

// previousReport is what an earlier BENCHMARKS.md says of each section, so that a
// rerun of some jobs (BENCH_ONLY) keeps the figures of the sections whose raw
// results are no longer on the machine instead of marking them not measured.
type previousReport struct {
	sections map[string]string   // title -> the section's text, heading included
	summary  map[string][]string // title -> its rows of the summary table
}

// readPrevious parses the report at path; a missing or unreadable file keeps
// nothing.
func readPrevious(path string) previousReport {
	prev := previousReport{sections: map[string]string{}, summary: map[string][]string{}}
	data, err := os.ReadFile(path)
	if err != nil {
		return prev
	}
	var title string
	var body strings.Builder
	flush := func() {
		if title != "" && title != "Summary" && !strings.Contains(body.String(), "**Not yet measured.**") {
			prev.sections[title] = body.String()
		}
		body.Reset()
	}
	for line := range strings.Lines(string(data)) {
		if t, ok := strings.CutPrefix(line, "## "); ok {
			flush()
			title = strings.TrimSpace(t)
		}
		if title == "Summary" && strings.HasPrefix(line, "| ") && !strings.Contains(line, "| not yet measured |") {
			cells := strings.Split(line, " | ")
			if len(cells) > 1 {
				t := strings.TrimPrefix(cells[0], "| ")
				prev.summary[t] = append(prev.summary[t], line)
			}
		}
		if title != "" {
			body.WriteString(line)
		}
	}
	flush()
	return prev
}
