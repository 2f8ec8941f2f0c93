package ort

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
)

// profiling is how a session is opened for ProfileNodes: basic, at the basic graph
// optimization level, so that the nodes keep the model's names and a plain run runs
// the graph whose nodes the profile times; with a prefix, ORT's profiler writes there.
// The zero value opens a session as any other.
type profiling struct {
	basic  bool
	prefix string
}

// ProfileNodes opens the model at path in one session and times runs of inputs after
// warmup runs, closes it, then does the same in a session with ORT's profiler on
// (accel.NodeProfiler): the two never hold the model's weights at once. Both optimize
// the graph at the basic level only, so a plain run runs the very nodes the profile
// times. It times CPU sessions only: on a GPU a kernel's profiled time is its launch.
func (o *Backend) ProfileNodes(ctx context.Context, path string, opts accel.SessionOptions, inputs []tensor.Tensor, warmup, runs int, tmpDir string) (*accel.NodeProfile, error) {
	if warmup < 0 || runs <= 0 {
		return nil, fmt.Errorf("profile %s: %d warm-up and %d timed runs: want at least one timed run", path, warmup, runs)
	}
	if o.provider != accel.ProviderCPU {
		return nil, fmt.Errorf("profile %s: node times are measured on the CPU only, this node runs %s", path, o.provider)
	}
	opts.PoolSize = 1
	run, err := o.timeRuns(ctx, path, opts, inputs, warmup, runs)
	if err != nil {
		return nil, err
	}
	nodes, err := o.profileRuns(ctx, path, opts, inputs, warmup, runs, tmpDir)
	if err != nil {
		return nil, err
	}
	return &accel.NodeProfile{Run: run, Nodes: nodes}, nil
}

// timeRuns returns the median wall time of runs plain runs after warmup.
func (o *Backend) timeRuns(ctx context.Context, path string, opts accel.SessionOptions, inputs []tensor.Tensor, warmup, runs int) (time.Duration, error) {
	p, err := openPool(ctx, o, path, opts, profiling{basic: true})
	if err != nil {
		return 0, err
	}
	defer p.Close()
	times := make([]time.Duration, 0, runs)
	for i := range warmup + runs {
		start := time.Now()
		if err := p.runKept(ctx, inputs); err != nil {
			return 0, err
		}
		if i >= warmup {
			times = append(times, time.Since(start))
		}
	}
	return median(times), nil
}

// profileRuns returns each node's median kernel time over runs profiled runs after
// warmup.
func (o *Backend) profileRuns(ctx context.Context, path string, opts accel.SessionOptions, inputs []tensor.Tensor, warmup, runs int, tmpDir string) (map[string]time.Duration, error) {
	dir, err := os.MkdirTemp(tmpDir, "layermesh-profile-")
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	p, err := openPool(ctx, o, path, opts, profiling{basic: true, prefix: filepath.Join(dir, "profile")})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	for range warmup + runs {
		if err := p.runKept(ctx, inputs); err != nil {
			return nil, err
		}
	}
	file, err := p.all[0].endProfiling()
	if err != nil {
		return nil, fmt.Errorf("profile %s: end: %w", path, err)
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", path, err)
	}
	defer f.Close()
	times, err := parseProfile(f)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", path, err)
	}
	out := make(map[string]time.Duration, len(times))
	for name, ds := range times {
		// Every node of the graph runs once a run; ORT stops recording past a
		// million events, and a short count would mix warm-up runs in.
		if len(ds) != warmup+runs {
			return nil, fmt.Errorf("profile %s: node %q has %d kernel times for %d runs (ORT's profile is cut short on a graph this large)", path, name, len(ds), warmup+runs)
		}
		out[name] = median(ds[warmup:]) // the warm-up runs come first
	}
	return out, nil
}

// runKept runs inputs once and keeps every tensor output in ONNX Runtime's memory,
// then releases them: a stage keeps its state and its logits there, and copying
// megabytes of outputs into fresh Go memory on every run would time the page faults
// of that copy rather than the model.
func (p *ortPool) runKept(ctx context.Context, inputs []tensor.Tensor) error {
	var keep []string
	for _, o := range p.outputs {
		if o.isTensor && o.DType.Valid() && o.DType != tensor.String {
			keep = append(keep, o.Name)
		}
	}
	_, held, err := p.run(ctx, inputs, nil, nil, keep)
	for _, h := range held {
		h.Release()
	}
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	return nil
}

// median returns the middle of ds (the upper one of an even count), sorting ds.
func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// profileEvent is the part of one event of ORT's profile (a Chrome trace: a JSON
// array of events) that ProfileNodes reads.
type profileEvent struct {
	Cat  string  `json:"cat"`
	Name string  `json:"name"`
	Dur  float64 `json:"dur"` // microseconds
}

// kernelSuffix ends the name of the event that times a node's kernel; the node's
// other events (fence_before, fence_after) time the executor around it.
const kernelSuffix = "_kernel_time"

// parseProfile returns, per node name, the kernel times of its runs in order. It
// decodes the events one at a time: a profile holds hundreds of bytes per node and run.
func parseProfile(r io.Reader) (map[string][]time.Duration, error) {
	dec := json.NewDecoder(r)
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, fmt.Errorf("reading ONNX Runtime's profile: not a JSON array of events (%v)", err)
	}
	out := map[string][]time.Duration{}
	for dec.More() {
		var e profileEvent
		if err := dec.Decode(&e); err != nil {
			return nil, fmt.Errorf("reading ONNX Runtime's profile: %w", err)
		}
		name, ok := strings.CutSuffix(e.Name, kernelSuffix)
		if e.Cat != "Node" || !ok || name == "" || e.Dur < 0 {
			continue
		}
		out[name] = append(out[name], time.Duration(e.Dur*float64(time.Microsecond)))
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("reading ONNX Runtime's profile: %w", err)
	}
	return out, nil
}
