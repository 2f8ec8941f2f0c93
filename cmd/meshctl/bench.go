package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
)

// benchReport is what `bench --json` prints.
type benchReport struct {
	Model       string  `json:"model"`
	Requests    int     `json:"requests"`
	Failed      int     `json:"failed"`
	Concurrency int     `json:"concurrency"`
	Seconds     float64 `json:"seconds"`
	PerSecond   float64 `json:"requests_per_second"`
	P50ms       float64 `json:"p50_ms"`
	P90ms       float64 `json:"p90_ms"`
	P99ms       float64 `json:"p99_ms"`
	MaxMs       float64 `json:"max_ms"`
	FirstError  string  `json:"first_error,omitempty"`
}

// benchFlags: bench sends the same inference request n times from c workers and
// reports latency percentiles and throughput; it fails (exit 1) when any request did.
func benchFlags(fs *flag.FlagSet) step {
	var inputs, shapes, dtypes keyValues
	fs.Var(&inputs, "input", "NAME=VALUES|@file.json|@file.npy, as for infer; repeatable")
	fs.Var(&shapes, "shape", "NAME=1x3, as for infer")
	fs.Var(&dtypes, "datatype", "NAME=FP32, as for infer")
	requests := fs.Int("requests", 100, "requests to send")
	concurrency := fs.Int("concurrency", 1, "requests in flight at once")
	jsonWire := fs.Bool("json-wire", false, "JSON tensors instead of the binary tensor extension")
	check := func(pos []string) error {
		if len(pos) != 1 || len(inputs.keys) == 0 || *requests < 1 || *concurrency < 1 {
			return usagef("want MODEL, at least one --input, --requests >= 1 and --concurrency >= 1")
		}
		return nil
	}
	return step{check: check, call: func(ctx context.Context, in invocation) (output, error) {
		model := in.pos[0]
		md, err := in.client.ModelMetadata(ctx, model, "")
		if err != nil {
			return output{}, err
		}
		req := &wire.Request{BinaryOutputs: !*jsonWire}
		for _, name := range inputs.keys {
			i := slices.IndexFunc(md.Inputs, func(m wire.TensorMetadata) bool { return m.Name == name })
			if i < 0 {
				return output{}, usagef("model %s has no input %q", model, name)
			}
			t, err := buildInput(name, inputs.vals[name], shapes.vals[name], dtypes.vals[name], &md.Inputs[i])
			if err != nil {
				return output{}, err
			}
			req.Inputs = append(req.Inputs, t)
		}
		res := benchLoop(ctx, in.client, model, req, !*jsonWire, *requests, *concurrency)
		rep := res.report(model, *requests, *concurrency)
		out := output{value: rep, human: rep.writeTable}
		if res.failed > 0 {
			out.failed = fmt.Errorf("%d of %d requests failed: %w", res.failed, *requests, res.firstErr)
		}
		return out, nil
	}}
}

// report summarises what benchLoop measured.
func (res benchResult) report(model string, requests, concurrency int) benchReport {
	lat := res.latencies
	rep := benchReport{Model: model, Requests: requests, Failed: res.failed, Concurrency: concurrency, Seconds: res.took.Seconds()}
	if len(lat) > 0 {
		slices.Sort(lat)
		ms := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1e3 }
		rep.P50ms, rep.P90ms, rep.P99ms, rep.MaxMs = ms(0.5), ms(0.9), ms(0.99), ms(1)
		rep.PerSecond = float64(len(lat)) / res.took.Seconds()
	}
	if res.firstErr != nil {
		rep.FirstError = res.firstErr.Error()
	}
	return rep
}

func (rep benchReport) writeTable(w io.Writer) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "model\t%s\nrequests\t%d (%d failed), concurrency %d\nthroughput\t%.2f req/s over %.2f s\nlatency ms\tp50 %.2f  p90 %.2f  p99 %.2f  max %.2f\n",
		rep.Model, rep.Requests, rep.Failed, rep.Concurrency, rep.PerSecond, rep.Seconds, rep.P50ms, rep.P90ms, rep.P99ms, rep.MaxMs)
	if rep.FirstError != "" {
		fmt.Fprintf(tw, "first error\t%s\n", rep.FirstError)
	}
	return tw.Flush()
}

// benchResult is what benchLoop measured.
type benchResult struct {
	latencies []time.Duration // of the successful requests
	failed    int
	firstErr  error
	took      time.Duration
}

// benchLoop runs the requests from workers goroutines.
func benchLoop(ctx context.Context, cl *client.Client, model string, req *wire.Request, binary bool, n, workers int) benchResult {
	var (
		mu       sync.Mutex
		lat      = make([]time.Duration, 0, n)
		failed   int
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				if ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				_, err := cl.Infer(ctx, model, req, client.InferOptions{BinaryInputs: binary})
				d := time.Since(t0)
				mu.Lock()
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil && firstErr == nil {
		firstErr = ctx.Err()
		failed += n - len(lat) - failed
	}
	return benchResult{latencies: lat, failed: failed, firstErr: firstErr, took: time.Since(start)}
}
