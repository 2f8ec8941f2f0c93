package split

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/compress"
	"github.com/layermesh/layermesh/test/harness"
)

// deployCompressed uploads the model at path through node via with the given stage
// count and compression.
func (c *splitCluster) deployCompressed(via int, path string, size int64, stages int, comp client.CompressOptions) (wire.ModelStatus, error) {
	f, err := os.Open(path)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return c.client(via).UploadModel(ctx, "gpt", f, size, client.UploadOptions{Stages: stages, Replicas: 1, Compress: comp})
}

// TestSplitCompressedDeployNeedsFewerStages: on 3 nodes whose budgets hold the fp32
// GPT only in 3 stages (2 are refused for capacity), the same upload deployed with
// compress=int8 fits in one stage on the same budgets, records its sizes and
// verification figures, and answers like one ONNX Runtime session on the model
// compressed locally with the same options. The compressed deploy asks for one
// stage: left to choose, the planner takes 3 for both, since it picks the count
// with the fastest bottleneck among those that fit.
func TestSplitCompressedDeployNeedsFewerStages(t *testing.T) {
	path, size := model(t)
	local := filepath.Join(t.TempDir(), "gpt-int8.onnx")
	rep, err := compress.Compress(context.Background(), path, local, compress.Options{Quantize: compress.QuantInt8, Backend: backend(t)})
	if err != nil {
		t.Fatalf("compressing locally: %v", err)
	}
	ref := newReference(t, local)
	budget := size * 45 / 100
	t.Logf("fp32 model %d bytes, int8 %d bytes; budget %d bytes per node", size, rep.SizeAfter, budget)
	c := startCluster(t, 3, budget)

	var apiErr *client.Error
	refused := map[string]struct {
		comp client.CompressOptions
		code string
	}{
		"static (needs calibration)": {client.CompressOptions{Quantize: "static"}, "bad_request"},
		"unknown mode":               {client.CompressOptions{Quantize: "int3"}, "bad_request"},
		"past max_error":             {client.CompressOptions{Quantize: "int4", Verify: 2, MaxError: 1e-7}, "compression_failed"},
	}
	for name, r := range refused {
		_, err := c.deployCompressed(2, path, size, 0, r.comp)
		if !errors.As(err, &apiErr) || apiErr.Code != r.code {
			t.Fatalf("%s: got %v, want %s", name, err, r.code)
		}
		t.Logf("%s: %d %s: %s", name, apiErr.Status, apiErr.Code, apiErr.Message)
	}
	if models, err := c.client(0).Models(context.Background()); err != nil || len(models) != 0 {
		t.Fatalf("refused deploys left models %v (%v)", models, err)
	}
	if _, err := c.deploy(0, path, size, 2, 1); !errors.As(err, &apiErr) || apiErr.Code != "insufficient_capacity" {
		t.Fatalf("fp32 in 2 stages on 3 x %d bytes: got %v, want insufficient_capacity", budget, err)
	}
	st, err := c.deploy(0, path, size, 0, 1)
	if err != nil {
		t.Fatalf("fp32 deploy: %v", err)
	}
	if len(st.Stages) != 3 {
		t.Fatalf("fp32 deploy planned %d stages, want 3", len(st.Stages))
	}
	if err := c.client(0).DeleteModel(context.Background(), "gpt"); err != nil {
		t.Fatal(err)
	}

	comp := client.CompressOptions{Quantize: "int8", Verify: 2, MaxError: 0.05}
	st, err = c.deployCompressed(1, path, size, 1, comp)
	if err != nil {
		t.Fatalf("int8 deploy in 1 stage on the same budgets: %v", err)
	}
	t.Logf("int8 deploy: %d stage (sizes %v), compression %+v", len(st.Stages), stageSizes(st), *st.Compression)
	if len(st.Stages) != 1 {
		t.Fatalf("int8 deploy has %d stages, want 1", len(st.Stages))
	}
	if cm := st.Compression; cm == nil || cm.Quantize != "int8" || cm.SizeBefore != size || cm.SizeAfter != rep.SizeAfter || cm.VerifySamples != 2 {
		t.Fatalf("status records compression %+v, want int8 from %d to %d bytes verified on 2 inputs", cm, size, rep.SizeAfter)
	}
	again, err := c.deployCompressed(2, path, size, 0, comp)
	if err != nil || again.Version != st.Version {
		t.Fatalf("same upload and options again: version %q, %v; want the existing %q", again.Version, err, st.Version)
	}
	if err := c.waitReplicas(0, 1, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		in := inputs(t, i)
		got, err := c.infer(i, in)
		if err != nil {
			t.Fatalf("infer via node %d: %v", i, err)
		}
		if d := harness.MaxRelDiff(got, ref.logits(t, in)); d > 1e-4 {
			t.Fatalf("via node %d: output differs from the locally compressed model by %g", i, d)
		}
	}
}

func stageSizes(st wire.ModelStatus) []int64 {
	out := make([]int64, len(st.Stages))
	for i, s := range st.Stages {
		out[i] = s.Size
	}
	return out
}
