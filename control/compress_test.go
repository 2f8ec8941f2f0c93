package control

import (
	"context"
	"errors"
	"testing"

	"github.com/layermesh/layermesh/api"
)

// The same-deploy check tells compression options apart: the same bytes deployed
// with another mode, block size or threshold are a new version, and a deploy that
// does not compress matches only versions that were not compressed.
func TestSameCompressionComparesEveryOption(t *testing.T) {
	base := api.CompressOptions{Quantize: "int8", BlockSize: 32, Verify: 4, MaxError: 0.05}
	if askedCompression(api.CompressOptions{}) != nil || !sameCompression(nil, askedCompression(api.CompressOptions{})) {
		t.Fatal("a deploy without compression must record none and match an uncompressed version")
	}
	have := askedCompression(base)
	have.SizeBefore, have.SizeAfter, have.MaxRel = 1000, 300, 0.01 // results do not count
	if !sameCompression(have, askedCompression(base)) {
		t.Error("the same options must match the version they deployed")
	}
	for name, o := range map[string]api.CompressOptions{
		"mode":       {Quantize: "int4", BlockSize: 32, Verify: 4, MaxError: 0.05},
		"block size": {Quantize: "int8", Verify: 4, MaxError: 0.05},
		"verify":     {Quantize: "int8", BlockSize: 32, MaxError: 0.05},
		"max error":  {Quantize: "int8", BlockSize: 32, Verify: 4},
		"prune":      {Quantize: "int8", BlockSize: 32, Verify: 4, MaxError: 0.05, Prune: 0.3},
		"none":       {},
	} {
		if sameCompression(have, askedCompression(o)) {
			t.Errorf("%s differs but matched", name)
		}
	}
}

// Static int8 needs a calibration set a deploy does not carry: refused as a bad
// request before anything runs.
func TestCompressUploadRefusesStatic(t *testing.T) {
	c := &Controller{}
	info := askedCompression(api.CompressOptions{Quantize: "static"})
	if _, err := c.compressUpload(context.Background(), "unused.onnx", t.TempDir(), info); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("static at deploy: %v, want ErrBadRequest", err)
	}
}
