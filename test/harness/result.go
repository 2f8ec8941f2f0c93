package harness

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// ErrResult is returned when a scenario result cannot be written.
var ErrResult = errors.New("harness: cannot write result")

// Result is what one trial of a fault scenario measured. docs/RELIABILITY.md quotes
// these files; the scenario asserts its targets on the same numbers it writes, so the
// record and the verdict cannot disagree.
type Result struct {
	Scenario string `json:"scenario"`
	Trial    int    `json:"trial"`
	// FailoverMS is the time from the fault (kill, pause, partition) to the first
	// success after it that needed the failover: a new leader's first committed write, or
	// a retried request's answer.
	FailoverMS float64 `json:"failover_ms"`
	// ClientErrors counts requests that failed as the client saw them, after its retries.
	ClientErrors int `json:"client_errors"`
	// LostAcks counts writes acknowledged to a client and missing afterwards.
	LostAcks int `json:"lost_acks"`
	// Duplicates counts writes applied more than once.
	Duplicates int `json:"duplicates"`
	// Violations counts linearizability violations found in the history (porcupine).
	Violations int `json:"violations"`
	// Requests counts the client requests the trial sent.
	Requests int `json:"requests"`
	// Notes say what else the trial saw (which node was killed, retries, latencies).
	Notes []string `json:"notes,omitempty"`

	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Passed is the scenario's verdict on its own targets.
	Passed bool `json:"passed"`
}

// Notef adds a note.
func (r *Result) Notef(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

var scenarioName = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// ResultsDir returns <repo>/test/results, where scenario results go (git-ignored).
func ResultsDir() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "test", "results"), nil
}

// WriteResult writes r as test/results/<scenario>-<timestamp>.json and returns the
// path. The timestamp is of Finished (now, when unset), in UTC to the microsecond, so
// trials never overwrite each other and the files sort in time order.
func WriteResult(r Result) (string, error) {
	if !scenarioName.MatchString(r.Scenario) {
		return "", fmt.Errorf("%w: scenario name %q", ErrResult, r.Scenario)
	}
	if r.Finished.IsZero() {
		r.Finished = time.Now()
	}
	dir, err := ResultsDir()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrResult, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("%w: %w", ErrResult, err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // notes read "kill -> ready", not "kill -\u003e ready"
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return "", fmt.Errorf("%w: %w", ErrResult, err)
	}
	b := buf.Bytes()
	ts := r.Finished.UTC()
	for {
		path := filepath.Join(dir, fmt.Sprintf("%s-%s.json", r.Scenario, ts.Format("20060102T150405.000000Z")))
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if errors.Is(err, os.ErrExist) {
			ts = ts.Add(time.Microsecond)
			continue
		}
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrResult, err)
		}
		if _, err := f.Write(b); err != nil {
			f.Close()
			return "", fmt.Errorf("%w: %w", ErrResult, err)
		}
		if err := f.Close(); err != nil {
			return "", fmt.Errorf("%w: %w", ErrResult, err)
		}
		return path, nil
	}
}

// RecordResult writes r and logs where; a failure to write fails the test.
func RecordResult(t testing.TB, r Result) string {
	t.Helper()
	path, err := WriteResult(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("result %s trial %d: passed=%v failover=%.0fms client_errors=%d lost_acks=%d duplicates=%d violations=%d requests=%d -> %s",
		r.Scenario, r.Trial, r.Passed, r.FailoverMS, r.ClientErrors, r.LostAcks, r.Duplicates, r.Violations, r.Requests, path)
	return path
}
