package faults

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/test/harness"
)

// uploadOutcome is what the uploader learned about one model upload.
type uploadOutcome struct {
	name  string
	bias  []float32
	acked bool // 201 received: the model must survive anything from now on
}

// restartSingleNode starts n again on the same data dir and flags, after a kill left
// its old address file behind.
func restartSingleNode(t *testing.T, n *singleNode) {
	t.Helper()
	if err := os.Remove(filepath.Join(n.dataDir, harness.HTTPAddrFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if err := n.proc.Start(); err != nil {
		t.Fatal(err)
	}
	addr, err := harness.ReadAddrFile(n.proc, filepath.Join(n.dataDir, harness.HTTPAddrFile), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := harness.WaitHTTPReady(ctx, addr, n.proc); err != nil {
		t.Fatal(err)
	}
	n.addr = addr
}

// checkModel infers x = [1,1,1] on name and compares with 1 + bias.
func checkModel(ctx context.Context, c *client.Client, name string, bias []float32) error {
	x := tensor.FromFloat32("x", []int64{1, 3}, []float32{1, 1, 1})
	resp, err := c.Infer(ctx, name, &wire.Request{Inputs: []tensor.Tensor{x}}, client.InferOptions{})
	if err != nil {
		return err
	}
	y, ok := resp.Output("y")
	if !ok {
		return errors.New("no output y")
	}
	got, err := y.Float32s()
	if err != nil {
		return err
	}
	for i := range bias {
		if len(got) != len(bias) || math.Abs(float64(got[i]-(1+bias[i]))) > 1e-6 {
			return fmt.Errorf("y = %v, want 1 + %v: the stored model is not the one uploaded", got, bias)
		}
	}
	return nil
}

// TestFaultSingleNodeKillRestart is scenario 6 for a cluster of one: model uploads
// stream in while the node is killed with SIGKILL at a random moment; after a restart
// on the same data dir every acknowledged upload must be served with its own weights,
// and an upload cut off mid-way must be either absent or whole. SIGKILL leaves the page
// cache intact, so this checks atomicity of the node's writes, not their fsync.
func TestFaultSingleNodeKillRestart(t *testing.T) {
	requireFaults(t)
	const trials = 3
	n := startSingleNode(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 6))
	var all []uploadOutcome
	for trial := 1; trial <= trials; trial++ {
		result := harness.Result{Scenario: "single-node-kill-restart", Trial: trial, Started: time.Now()}
		admin, err := client.New(n.addr, client.WithToken(n.token))
		if err != nil {
			t.Fatal(err)
		}
		var (
			mu       sync.Mutex
			outcomes []uploadOutcome
		)
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				o := uploadOutcome{name: fmt.Sprintf("t%d-m%d", trial, k), bias: []float32{float32(trial*1000 + k), 0.5, -0.5}}
				body := addModelWithBias(t, o.bias)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := admin.UploadModel(ctx, o.name, bytes.NewReader(body), int64(len(body)), client.UploadOptions{})
				cancel()
				o.acked = err == nil
				mu.Lock()
				outcomes = append(outcomes, o)
				mu.Unlock()
				if err != nil {
					return // the node is gone: a real client would stop here too
				}
			}
		}()
		time.Sleep(time.Duration(300+rng.IntN(1500)) * time.Millisecond)
		killedAt := time.Now()
		if err := n.proc.Kill(); err != nil {
			t.Fatal(err)
		}
		close(stop)
		<-done
		restartSingleNode(t, n)
		c, err := client.New(n.addr, client.WithToken(n.token))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, outcomes...)
		acked, cutOff, cutOffKept := 0, 0, 0
		for _, o := range all {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := checkModel(ctx, c, o.name, o.bias)
			cancel()
			result.Requests++
			switch {
			case err == nil:
			case !o.acked && client.IsCode(err, string(api.CodeModelNotFound)):
				// Cut off before its acknowledgement and not kept: allowed.
			case o.acked && client.IsCode(err, string(api.CodeModelNotFound)):
				result.LostAcks++
				t.Errorf("trial %d: acknowledged upload %s lost after SIGKILL", trial, o.name)
			default:
				result.Violations++
				t.Errorf("trial %d: %s (acked=%v) after restart: %v", trial, o.name, o.acked, err)
			}
			if o.acked {
				acked++
			} else {
				cutOff++
				if err == nil {
					cutOffKept++
				}
			}
		}
		result.FailoverMS = float64(time.Since(killedAt).Microseconds()) / 1000
		result.Notef("%d uploads this trial, %d acknowledged in all trials so far, all re-checked after the restart", len(outcomes), acked)
		result.Notef("%d uploads cut off by a kill so far, %d of them kept whole", cutOff, cutOffKept)
		result.Notef("failover_ms here is kill -> restarted node ready -> every model checked")
		result.Finished = time.Now()
		result.Passed = result.LostAcks == 0 && result.Violations == 0
		harness.RecordResult(t, result)
		if len(outcomes) < 2 {
			t.Errorf("trial %d: only %d uploads before the kill; the trial tested nothing", trial, len(outcomes))
		}
	}
}
