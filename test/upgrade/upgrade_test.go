// Package upgrade_test starts the meshnode of this tree on data dirs that an earlier
// build wrote (testdata/, see its README): the node must come back as the leader of
// its cluster, list the model it had, answer with it as ONNX Runtime does on the same
// file, and keep the version numbers of deleted models out of reuse.
package upgrade_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/test/harness"
)

// What the fixtures hold: gpt version 1 (its source blob is the model file), and
// gone version 1, deployed then undeployed.
const (
	gptSource  = "d782801e90b259af063495261b630af63fa488c8d086bb62f442b84dfa83b5ef"
	goneSource = "f41f1c808d3198fd82c238482070bb96cf11588527f814b24cc7b5658852ec4f"
)

// fixtureGPT is the generator configuration the fixture's gpt came from (its vocab
// bounds the token ids).
var fixtureGPT = modelgen.GPTConfig{Layers: 2, Dim: 32, Heads: 2, Vocab: 64, Context: 16, Seed: 7}

func TestNodeStartsOnDataDirOfEarlierBuild(t *testing.T) {
	for _, fixture := range []string{"datadir-v1-log", "datadir-v1-snapshot"} {
		t.Run(fixture, func(t *testing.T) { checkUpgrade(t, filepath.Join("testdata", fixture)) })
	}
}

func checkUpgrade(t *testing.T, fixture string) {
	c := harness.NewCluster(t, 1, harness.ClusterOptions{
		Flags: func(c *harness.Cluster, n *harness.Node) []string {
			return append(c.DefaultFlags(n), "--accel", "cpu", "--threads", "1", "--mem-budget", "256MiB")
		},
	})
	if err := os.CopyFS(c.Node(0).DataDir, os.DirFS(fixture)); err != nil {
		t.Fatal(err)
	}
	// git does not keep file modes: the node's secrets must stay private to it.
	for _, f := range []string{"identity.key", "admin.token", "cluster.secret"} {
		if err := os.Chmod(filepath.Join(c.Node(0).DataDir, f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := func() *client.Client {
		t.Helper()
		if err := c.Start(0); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReady(ctx, 0); err != nil {
			t.Fatalf("%v\n%s", err, c.Node(0).LogTail(4096))
		}
		if leader, err := c.WaitForLeader(ctx); err != nil || leader != 0 {
			t.Fatalf("leader %d, %v", leader, err)
		}
		tok, err := c.AdminToken()
		if err != nil {
			t.Fatal(err)
		}
		cl, err := client.New(c.HTTPAddr(0), client.WithToken(tok))
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	cl := start()
	want := reference(t, filepath.Join(fixture, "blobs", gptSource))
	checkServes(ctx, t, cl, want)

	// The deleted version's number stays taken: a new deploy of gone is version 2.
	src, err := os.Open(filepath.Join(fixture, "blobs", goneSource))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	st, err := cl.UploadModel(ctx, "gone", src, -1, client.UploadOptions{})
	if err != nil || st.Version != "2" {
		t.Fatalf("redeploy of gone: version %q, %v; want 2", st.Version, err)
	}

	// The log now holds entries of both formats; a restart replays them all.
	if err := c.Stop(0); err != nil {
		t.Fatal(err)
	}
	cl = start()
	checkServes(ctx, t, cl, want)
	models, err := cl.Models(ctx)
	if err != nil || len(models) != 2 || models[0].Name != "gone" || models[0].Version != "2" {
		t.Fatalf("models after restart: %+v %v", models, err)
	}
}

// checkServes waits until gpt version 1 is the only gpt and ready, then compares its
// answer with want.
func checkServes(ctx context.Context, t *testing.T, cl *client.Client, want []float32) {
	t.Helper()
	harness.Eventually(t, time.Minute, 200*time.Millisecond, func() error {
		m, err := cl.Model(ctx, "gpt")
		if err != nil {
			return err
		}
		if m.Version != "1" || m.SHA256 != gptSource || !m.Ready {
			return &notReady{m}
		}
		return nil
	})
	resp, err := cl.Infer(ctx, "gpt", &wire.Request{Inputs: inputs(t), BinaryOutputs: true}, client.InferOptions{BinaryInputs: true})
	if err != nil {
		t.Fatal(err)
	}
	if resp.ModelVersion != "1" || len(resp.Outputs) != 1 {
		t.Fatalf("answer from version %q with %d outputs", resp.ModelVersion, len(resp.Outputs))
	}
	got, err := resp.Outputs[0].Float32s()
	if err != nil {
		t.Fatal(err)
	}
	if d := harness.MaxRelDiff(got, want); d > 1e-4 {
		t.Fatalf("answer differs from ONNX Runtime's by %g", d)
	}
}

type notReady struct{ m wire.ModelStatus }

func (e *notReady) Error() string {
	return "gpt: version " + e.m.Version + ", sha256 " + e.m.SHA256 + ", not ready: " + e.m.Reason
}

func inputs(t *testing.T) []tensor.Tensor {
	t.Helper()
	in, err := fixtureGPT.ExampleInputs(1, 8, 5)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// reference runs the model file in one ONNX Runtime session.
func reference(t *testing.T, path string) []float32 {
	t.Helper()
	backend, err := ort.New(ort.Config{IntraOpThreads: 1, Provider: accel.ProviderCPU})
	if err != nil {
		t.Fatalf("ONNX Runtime is needed for the reference answer and did not load: %v", err)
	}
	defer backend.Close()
	sess, err := backend.Open(context.Background(), path, accel.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	out, err := sess.Run(context.Background(), inputs(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := out[0].Float32s()
	if err != nil {
		t.Fatal(err)
	}
	return v
}
