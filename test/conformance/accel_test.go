package conformance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
)

// minPasses is the floor of node tests (of 932) that must pass through accel: a drop
// below it means the backend lost ops it ran before.
const minPasses = 800

// TestAccelConformance runs every ONNX backend node test through the ONNX Runtime
// backend, one session per case, and compares each output with the expected .pb.
// Every case that does not pass must be listed in KnownFailures with its reason; a
// listed case that passes is reported too, so the list stays true.
func TestAccelConformance(t *testing.T) {
	dir := os.Getenv("ONNX_NODE_TESTS")
	if dir == "" {
		dir = DefaultDir
	}
	cases, err := Cases(dir)
	if err != nil {
		t.Fatalf("ONNX node tests not readable at %s (Debian package libonnx-testdata; make setup installs it): %v", dir, err)
	}
	b, err := ort.New(ort.Config{Provider: accel.ProviderCPU, IntraOpThreads: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("ONNX Runtime backend: %v", err)
	}
	defer b.Close()

	start := time.Now()
	passed := 0
	var unexpected, stale []string
	for _, c := range cases {
		err := runCase(b, c)
		reason, known := KnownFailures[c.Name]
		switch {
		case err == nil && known:
			passed++
			stale = append(stale, fmt.Sprintf("%s (listed as %q)", c.Name, reason))
		case err == nil:
			passed++
		case !known:
			unexpected = append(unexpected, fmt.Sprintf("%s [%s]: %v", c.Name, c.Describe(), err))
		}
	}
	summary := fmt.Sprintf("accel conformance: %d of %d ONNX node tests pass (%d listed as known failures) in %v", passed, len(cases), len(cases)-passed, time.Since(start).Round(time.Millisecond))
	t.Log(summary)
	fmt.Println(summary)
	sort.Strings(unexpected)
	for _, u := range unexpected {
		t.Errorf("unexpected failure: %s", u)
	}
	for _, s := range stale {
		t.Errorf("known failure now passes, remove it from KnownFailures: %s", s)
	}
	if passed < minPasses {
		t.Errorf("%d passes, want at least %d", passed, minPasses)
	}
	if len(cases) != 932 {
		t.Errorf("found %d cases in %s, the suite has 932", len(cases), dir)
	}
}

// runCase opens c's model and checks every data set.
func runCase(b accel.Backend, c Case) error {
	if c.Err != nil {
		return fmt.Errorf("reading case: %w", c.Err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := b.Open(ctx, c.Model, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		return err
	}
	defer s.Close()
	for _, ds := range c.Sets {
		var ins []tensor.Tensor
		for _, v := range ds.Inputs {
			if !v.IsTensor() {
				return fmt.Errorf("%s: input %q: %w: %s", ds.Name, v.Name, ErrNotTensor, v.Kind)
			}
			ins = append(ins, v.Tensor)
		}
		var names []string
		for _, v := range ds.Outputs {
			if !v.IsTensor() {
				return fmt.Errorf("%s: output %q: %w: %s", ds.Name, v.Name, ErrNotTensor, v.Kind)
			}
			names = append(names, v.Name)
		}
		got, err := s.Run(ctx, ins, names)
		if err != nil {
			return fmt.Errorf("%s: %w", ds.Name, err)
		}
		var errs []error
		for i, want := range ds.Outputs {
			if err := Compare(got[i], want.Tensor); err != nil {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("%s: %s", ds.Name, strings.ReplaceAll(err.Error(), "\n", "; "))
		}
	}
	return nil
}
