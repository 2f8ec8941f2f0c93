package control

// Compression at deploy: the node that receives an upload compresses it (compress
// package, on this node's backend) before it plans, so the planner sizes the stages
// of the compressed model and the manifest records what was done and how close the
// compressed model stayed to the upload. A deploy carries no calibration set, so
// only the modes that need none run here; static int8 is compressed locally
// (meshctl compress --calib) and deployed as a plain model.

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/compress"
	"github.com/layermesh/layermesh/consensus"
)

// askedCompression is what the manifest records of a deploy's compression options;
// nil when the deploy does not compress.
func askedCompression(o api.CompressOptions) *consensus.CompressionInfo {
	if !o.Enabled() {
		return nil
	}
	return &consensus.CompressionInfo{
		Quantize: o.Quantize, BlockSize: o.BlockSize, Symmetric: o.Symmetric, Prune: o.Prune, PruneGlobal: o.PruneGlobal,
		Verify: o.Verify, MaxError: o.MaxError, MinAgreement: o.MinAgreement,
	}
}

// sameCompression says whether a deployed version was compressed with the options
// asked (both nil: neither compresses).
func sameCompression(have, asked *consensus.CompressionInfo) bool {
	if have == nil || asked == nil {
		return have == asked
	}
	return have.Quantize == asked.Quantize && have.BlockSize == asked.BlockSize && have.Symmetric == asked.Symmetric &&
		have.Prune == asked.Prune && have.PruneGlobal == asked.PruneGlobal && have.Verify == asked.Verify &&
		have.MaxError == asked.MaxError && have.MinAgreement == asked.MinAgreement
}

// compressUpload compresses the upload at src into tmpDir. It returns the file to
// cut (src itself when there was nothing to compress) and info completed with the
// sizes and verification figures. Errors wrap api.ErrBadRequest (options, model)
// or api.ErrCompressionFailed (verification).
func (c *Controller) compressUpload(ctx context.Context, src, tmpDir string, info *consensus.CompressionInfo) (string, error) {
	if info.Quantize == compress.QuantStatic {
		return "", fmt.Errorf("%w: compress=static needs a calibration set, which a deploy does not carry: "+
			"compress the model with meshctl compress --calib and deploy the result", api.ErrBadRequest)
	}
	if c.cfg.Backend == nil {
		return "", fmt.Errorf("%w: this node has no backend to compress with", api.ErrBadRequest)
	}
	dst := filepath.Join(tmpDir, "compressed.onnx")
	rep, err := compress.Compress(ctx, src, dst, compress.Options{
		Quantize: info.Quantize, BlockSize: info.BlockSize, Symmetric: info.Symmetric,
		Prune: info.Prune, PruneGlobal: info.PruneGlobal, PruneCriterion: compress.CriterionL1,
		Backend: c.cfg.Backend, Verify: info.Verify, MaxError: info.MaxError, MinAgreement: info.MinAgreement,
	})
	if rep != nil {
		info.SizeBefore, info.SizeAfter, info.NothingToDo = rep.SizeBefore, rep.SizeAfter, rep.NothingToDo
		if v := rep.Verify; v != nil {
			info.VerifySamples, info.MaxAbs, info.MaxRel, info.MinCosine, info.MinTop1 = v.Samples, v.MaxAbs, v.MaxRel, v.MinCosine, v.MinTop1
		}
	}
	switch {
	case errors.Is(err, compress.ErrVerifyFailed):
		return "", fmt.Errorf("%w: %w (max abs %.4g, max rel %.4g, min cosine %.6f, min top-1 %.4f over %d inputs)",
			api.ErrCompressionFailed, err, info.MaxAbs, info.MaxRel, info.MinCosine, info.MinTop1, info.VerifySamples)
	case errors.Is(err, compress.ErrInvalidOptions), errors.Is(err, compress.ErrUnsupportedModel), errors.Is(err, compress.ErrCalibration):
		return "", fmt.Errorf("%w: %w", api.ErrBadRequest, err)
	case err != nil:
		return "", fmt.Errorf("compress: %w", err)
	case rep.NothingToDo:
		info.SizeAfter = info.SizeBefore
		return src, nil
	}
	return dst, nil
}

// compressionStatus is the API's view of a version's compression; nil when the
// deploy did not compress.
func compressionStatus(info *consensus.CompressionInfo) *wire.Compression {
	if info == nil {
		return nil
	}
	return &wire.Compression{
		Quantize: info.Quantize, Prune: info.Prune, NothingToDo: info.NothingToDo,
		SizeBefore: info.SizeBefore, SizeAfter: info.SizeAfter, VerifySamples: info.VerifySamples,
		MaxAbs: info.MaxAbs, MaxRel: info.MaxRel, MinCosine: info.MinCosine, MinTop1: info.MinTop1,
	}
}
