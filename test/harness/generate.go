package harness

import (
	"context"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/pipeline"
)

// LoopGenerate is the reference generation the mesh is checked against: one session
// of the whole with-past GPT (cfg) in a plain loop (prefill, then one token a step
// with the present tensors fed back), sampling each token as the last stage does,
// until n tokens or the token stop, which it does not return (stop < 0: never).
func LoopGenerate(t testing.TB, sess accel.Session, cfg modelgen.GPTConfig, prompt []int32, n int, s pipeline.Sampling, stop int32) []int32 {
	t.Helper()
	var kv []tensor.Tensor
	hd := int64(cfg.Dim / cfg.Heads)
	for i := 0; i < cfg.Layers; i++ {
		empty := []int64{1, int64(cfg.Heads), 0, hd}
		kv = append(kv, tensor.FromFloat32(modelgen.GPTPastKey(i), empty, nil), tensor.FromFloat32(modelgen.GPTPastValue(i), empty, nil))
	}
	ids := make([]int64, len(prompt))
	for i, p := range prompt {
		ids[i] = int64(p)
	}
	var out []int32
	past := 0
	for len(out) < n {
		seq := len(ids)
		mask, pos := make([]int64, past+seq), make([]int64, seq)
		for i := range mask {
			mask[i] = 1
		}
		for i := range pos {
			pos[i] = int64(past + i)
		}
		in := append([]tensor.Tensor{
			tensor.FromInt64(modelgen.GPTInput, []int64{1, int64(seq)}, ids),
			tensor.FromInt64(modelgen.GPTAttentionMask, []int64{1, int64(past + seq)}, mask),
			tensor.FromInt64(modelgen.GPTPositionIDs, []int64{1, int64(seq)}, pos),
		}, kv...)
		res, err := sess.Run(context.Background(), in, cfg.OutputNames())
		if err != nil {
			t.Fatal(err)
		}
		logits, _ := res[0].Float32s()
		s.Index = len(out)
		tok := s.Sample(logits[(seq-1)*cfg.Vocab : seq*cfg.Vocab])
		if stop >= 0 && tok == stop {
			break
		}
		out = append(out, tok)
		for i := range kv {
			kv[i] = res[1+i]
			kv[i].Name = []string{modelgen.GPTPastKey(i / 2), modelgen.GPTPastValue(i / 2)}[i%2]
		}
		past += seq
		ids = []int64{int64(tok)}
	}
	return out
}
