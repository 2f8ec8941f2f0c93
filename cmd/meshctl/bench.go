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

// runBench sends the same inference request n times from c workers and reports
// latency percentiles and throughput.
func runBench(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	cf := addCommon(fs)
	var inputs, shapes, dtypes keyValues
	fs.Var(&inputs, "input", "NAME=VALUES|@file.json|@file.npy, as for infer; repeatable")
	fs.Var(&shapes, "shape", "NAME=1x3, as for infer")
	fs.Var(&dtypes, "datatype", "NAME=FP32, as for infer")
	requests := fs.Int("requests", 100, "requests to send")
	concurrency := fs.Int("concurrency", 1, "requests in flight at once")
	jsonWire := fs.Bool("json-wire", false, "JSON tensors instead of the binary tensor extension")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || len(inputs.keys) == 0 || *requests < 1 || *concurrency < 1 {
		return usagef("want MODEL, at least one --input, --requests >= 1 and --concurrency >= 1")
	}
	model := pos[0]
	cl, err := cf.client()
	if err != nil {
		return err
	}
	ctx, cancel := cf.context(ctx)
	defer cancel()
	md, err := cl.ModelMetadata(ctx, model, "")
	if err != nil {
		return err
	}
	req := &wire.Request{BinaryOutputs: !*jsonWire}
	for _, name := range inputs.keys {
		i := slices.IndexFunc(md.Inputs, func(m wire.TensorMetadata) bool { return m.Name == name })
		if i < 0 {
			return usagef("model %s has no input %q", model, name)
		}
		t, err := buildInput(name, inputs.vals[name], shapes.vals[name], dtypes.vals[name], &md.Inputs[i])
		if err != nil {
			return err
		}
		req.Inputs = append(req.Inputs, t)
	}
	res := benchLoop(ctx, cl, model, req, !*jsonWire, *requests, *concurrency)
	lat, failed, firstErr, took := res.latencies, res.failed, res.firstErr, res.took
	rep := benchReport{Model: model, Requests: *requests, Failed: failed, Concurrency: *concurrency, Seconds: took.Seconds()}
	if len(lat) > 0 {
		slices.Sort(lat)
		ms := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1e3 }
		rep.P50ms, rep.P90ms, rep.P99ms, rep.MaxMs = ms(0.5), ms(0.9), ms(0.99), ms(1)
		rep.PerSecond = float64(len(lat)) / took.Seconds()
	}
	if firstErr != nil {
		rep.FirstError = firstErr.Error()
	}
	if cf.json {
		if err := printJSON(stdout, rep); err != nil {
			return err
		}
	} else {
		tw := newTable(stdout)
		fmt.Fprintf(tw, "model\t%s\nrequests\t%d (%d failed), concurrency %d\nthroughput\t%.2f req/s over %.2f s\nlatency ms\tp50 %.2f  p90 %.2f  p99 %.2f  max %.2f\n",
			rep.Model, rep.Requests, rep.Failed, rep.Concurrency, rep.PerSecond, rep.Seconds, rep.P50ms, rep.P90ms, rep.P99ms, rep.MaxMs)
		if rep.FirstError != "" {
			fmt.Fprintf(tw, "first error\t%s\n", rep.FirstError)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d requests failed: %w", failed, *requests, firstErr)
	}
	return nil
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
