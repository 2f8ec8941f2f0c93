package api_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/client"
)

// The client's compression options reach the model service as the handler parsed
// them from the query, and malformed values are 400 before the service runs.
func TestDeployCarriesCompressionOptions(t *testing.T) {
	rec := &deployRecorder{}
	srv, err := api.New(api.Config{Models: rec, Health: genHealth{}, Cluster: genCluster{}, Tokens: genTokens{}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	c, err := client.New(hs.URL, client.WithToken(adminToken))
	if err != nil {
		t.Fatal(err)
	}
	model := []byte("not really onnx, the service only stores it")
	comp := client.CompressOptions{Quantize: "int4", BlockSize: 32, Symmetric: true, Prune: 0.25, PruneGlobal: true, Verify: 3, MaxError: 0.02, MinAgreement: 0.9}
	if _, err := c.UploadModel(context.Background(), "gpt", bytes.NewReader(model), int64(len(model)), client.UploadOptions{Compress: comp}); err != nil {
		t.Fatal(err)
	}
	want := api.CompressOptions{Quantize: "int4", BlockSize: 32, Symmetric: true, Prune: 0.25, PruneGlobal: true, Verify: 3, MaxError: 0.02, MinAgreement: 0.9}
	if rec.opts.Compress != want || !rec.opts.Compress.Enabled() {
		t.Errorf("service got %+v, want %+v", rec.opts.Compress, want)
	}

	for _, query := range []string{"prune=-0.1", "prune=NaN", "max_error=x", "verify=-1", "symmetric=maybe", "block_size=1.5"} {
		rec.opts = api.DeployOptions{}
		req, err := http.NewRequest(http.MethodPut, hs.URL+"/v1/models/gpt?compress=int8&"+query, bytes.NewReader(model))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || rec.opts.Compress.Enabled() {
			t.Errorf("%s: status %d, service got %+v; want 400 before the service", query, resp.StatusCode, rec.opts.Compress)
		}
	}
}

// A compressed model that fails verification is 422 compression_failed.
func TestCompressionFailedIsUnprocessable(t *testing.T) {
	e := api.Classify(errors.Join(errors.New("deploy gpt"), api.ErrCompressionFailed))
	if e.Code != api.CodeCompressionFailed || e.Status != http.StatusUnprocessableEntity {
		t.Errorf("classified as %s %d", e.Code, e.Status)
	}
}
