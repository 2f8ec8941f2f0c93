package conformance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/node"
)

// httpOnlyFailures lists, per wire form, the cases that pass through accel but not
// through the KServe v2 HTTP endpoint, with the reason. The binary tensor extension
// carries everything accel runs (every dtype, scalars, zero-sized tensors, BYTES).
var httpOnlyFailures = map[string]map[string]string{
	"binary": {},
	"json":   {},
}

// TestHTTPConformance pushes every ONNX backend node test through a real node's HTTP
// API: the model is uploaded with PUT /v1/models/{name}, each data set is sent to
// POST /v2/models/{name}/infer, and each output is compared with the expected .pb as
// the accel test does. It runs twice: with the binary tensor data extension both ways,
// and with JSON tensors both ways.
func TestHTTPConformance(t *testing.T) {
	dir := os.Getenv("ONNX_NODE_TESTS")
	if dir == "" {
		dir = DefaultDir
	}
	cases, err := Cases(dir)
	if err != nil {
		t.Fatalf("ONNX node tests not readable at %s (Debian package libonnx-testdata; make setup installs it): %v", dir, err)
	}
	quiet := slog.New(slog.DiscardHandler)
	b, err := ort.New(ort.Config{Provider: accel.ProviderCPU, IntraOpThreads: 1, Logger: quiet})
	if err != nil {
		t.Fatalf("ONNX Runtime backend: %v", err)
	}
	defer b.Close()
	dataDir := t.TempDir()
	n, err := node.New(node.Config{Name: "conformance", DataDir: dataDir, HTTPAddr: "127.0.0.1:0", Backend: b, IntraOpThreads: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node.Run: %v", err)
		}
	}()
	token, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(n.URL(), client.WithToken(string(token)))
	if err != nil {
		t.Fatal(err)
	}

	for _, form := range []string{"binary", "json"} {
		t.Run(form, func(t *testing.T) { runCasesHTTP(t, c, cases, form) })
	}
}

func runCasesHTTP(t *testing.T, c *client.Client, cases []Case, form string) {
	start := time.Now()
	passed := 0
	var unexpected, stale []string
	for _, cs := range cases {
		err := runCaseHTTP(c, cs, form == "binary")
		reason, known := KnownFailures[cs.Name]
		if r, ok := httpOnlyFailures[form][cs.Name]; ok {
			reason, known = r, true
		}
		switch {
		case err == nil && known:
			passed++
			stale = append(stale, fmt.Sprintf("%s (listed as %q)", cs.Name, reason))
		case err == nil:
			passed++
		case !known:
			unexpected = append(unexpected, fmt.Sprintf("%s [%s]: %v", cs.Name, cs.Describe(), err))
		}
	}
	summary := fmt.Sprintf("http conformance (%s tensors): %d of %d ONNX node tests pass through the KServe v2 endpoint (%d listed as known failures) in %v",
		form, passed, len(cases), len(cases)-passed, time.Since(start).Round(time.Millisecond))
	t.Log(summary)
	fmt.Println(summary)
	sort.Strings(unexpected)
	for _, u := range unexpected {
		t.Errorf("unexpected failure: %s", u)
	}
	for _, s := range stale {
		t.Errorf("known failure now passes, remove it from the list: %s", s)
	}
	if passed < minPasses {
		t.Errorf("%d passes, want at least %d", passed, minPasses)
	}
}

// runCaseHTTP uploads c's model, runs every data set over HTTP and deletes the model.
func runCaseHTTP(c *client.Client, cs Case, binary bool) error {
	if cs.Err != nil {
		return fmt.Errorf("reading case: %w", cs.Err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f, err := os.Open(cs.Model)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	_, err = c.UploadModel(ctx, cs.Name, f, fi.Size(), client.UploadOptions{})
	f.Close()
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	defer c.DeleteModel(context.Background(), cs.Name)
	for _, ds := range cs.Sets {
		req := &wire.Request{ID: ds.Name}
		for _, v := range ds.Inputs {
			if !v.IsTensor() {
				return fmt.Errorf("%s: input %q: %w: %s", ds.Name, v.Name, ErrNotTensor, v.Kind)
			}
			req.Inputs = append(req.Inputs, v.Tensor)
		}
		for _, v := range ds.Outputs {
			if !v.IsTensor() {
				return fmt.Errorf("%s: output %q: %w: %s", ds.Name, v.Name, ErrNotTensor, v.Kind)
			}
			req.Outputs = append(req.Outputs, wire.OutputRequest{Name: v.Name, Binary: binary})
		}
		resp, err := c.Infer(ctx, cs.Name, req, client.InferOptions{BinaryInputs: binary})
		if err != nil {
			return fmt.Errorf("%s: %w", ds.Name, err)
		}
		var errs []error
		for _, want := range ds.Outputs {
			got, ok := resp.Output(want.Name)
			if !ok {
				errs = append(errs, fmt.Errorf("output %q missing from the response", want.Name))
				continue
			}
			if err := Compare(got, want.Tensor); err != nil {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("%s: %s", ds.Name, strings.ReplaceAll(err.Error(), "\n", "; "))
		}
	}
	return nil
}
