package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/api/wire"
)

// TestDeployCompressFlagsReachTheQuery: deploy's compression flags become the
// deploy's query parameters, and the answer's compression (sizes and verification
// figures) is printed.
func TestDeployCompressFlagsReachTheQuery(t *testing.T) {
	var got url.Values
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.URL.Query()
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(wire.ModelStatus{Name: "m", Version: "1", Size: 1000,
			Stages: []wire.StageStatus{{Index: 0, Size: 300}},
			Compression: &wire.Compression{Quantize: "int8", SizeBefore: 1000, SizeAfter: 300, VerifySamples: 4,
				MaxAbs: 0.01, MaxRel: 0.005, MinCosine: 0.9999, MinTop1: 1}})
	}))
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	args := []string{"deploy", "meshctl_test.go", "--name", "m", "--quiet", "--compress", "int8", "--prune", "0.3",
		"--block-size", "32", "--verify", "4", "--max-error", "0.05", "--min-agreement", "0.9", "--plan", "measured", "--plan-past", "96",
		"--addr", strings.TrimPrefix(srv.URL, "http://"), "--token", "t"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	want := map[string]string{"compress": "int8", "prune": "0.3", "block_size": "32", "verify": "4", "max_error": "0.05", "min_agreement": "0.9", "plan": "measured", "plan_past": "96"}
	for k, v := range want {
		if got.Get(k) != v {
			t.Errorf("query %s=%q, want %q (query %v)", k, got.Get(k), v, got)
		}
	}
	if out := stdout.String(); !strings.Contains(out, "compression int8") || !strings.Contains(out, "verified on 4 inputs") {
		t.Errorf("output lacks the compression figures:\n%s", out)
	}
}

// TestDeployPlanFlagsRefused: a plan that is neither flops nor measured, or a plan
// past without the measured plan, is a usage error before anything is sent.
func TestDeployPlanFlagsRefused(t *testing.T) {
	for _, args := range [][]string{{"--plan", "fastest"}, {"--plan-past", "8"}, {"--plan", "measured", "--plan-past", "-1"}} {
		var stderr bytes.Buffer
		all := append([]string{"deploy", "meshctl_test.go", "--quiet", "--addr", "127.0.0.1:1"}, args...)
		if code := run(all, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "--plan") {
			t.Errorf("%v: exit %d, %s", args, code, stderr.String())
		}
	}
}
