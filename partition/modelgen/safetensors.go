package modelgen

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/layermesh/layermesh/accel/tensor"
)

// maxSafetensorsHeader bounds the JSON header a file may declare, so that a corrupt
// length field cannot ask for gigabytes before anything is checked.
const maxSafetensorsHeader = 64 << 20

// TrainedTensor is one float32 tensor of a weights file.
type TrainedTensor struct {
	Shape []int64
	Data  []float32
}

// Trained are weights read from a file that replace the drawn ones of a GPT by name
// (GPTConfig.Weights). Names are modelgen's initializer names ("wte",
// "block0/attn/qkv/weight", ...); Hugging Face GPT-2 names are translated on reading.
type Trained struct {
	Tensors map[string]TrainedTensor
	// Meta is the file's __metadata__ (free-form strings).
	Meta map[string]string
}

// String keeps a configuration printable: a summary, never the values.
func (t *Trained) String() string {
	if t == nil {
		return "none"
	}
	return fmt.Sprintf("%d trained tensors", len(t.Tensors))
}

// ReadSafetensors reads a safetensors file of float32, float16 or bfloat16 tensors
// (converted to float32). See ParseSafetensors.
func ReadSafetensors(path string) (*Trained, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := ParseSafetensors(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// safetensorsEntry is one tensor's record in a safetensors header.
type safetensorsEntry struct {
	DType   string   `json:"dtype"`
	Shape   []int64  `json:"shape"`
	Offsets []uint64 `json:"data_offsets"`
}

// lmHead is where ParseSafetensors keeps a checkpoint's lm_head until it has checked
// that it is the token table (the graph ties the two).
const lmHead = "\x00lm_head"

// ParseSafetensors decodes a safetensors file: an 8-byte little-endian header length,
// a JSON header naming each tensor's dtype, shape and byte range, then the data, which
// the ranges must cover exactly (no gap, no overlap), so that decoding never makes
// more values than the file holds bytes. Tensors named as in Hugging Face's GPT-2
// checkpoints (h.0.attn.c_attn.weight, with or without a "transformer." prefix) get
// modelgen's names; GPT-2's attention-mask buffers are skipped undecoded, and an
// lm_head must equal the token table (ErrWeights otherwise).
func ParseSafetensors(data []byte) (*Trained, error) {
	entries, meta, body, err := safetensorsHeader(data)
	if err != nil {
		return nil, err
	}
	out := &Trained{Tensors: map[string]TrainedTensor{}, Meta: meta}
	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		mapped, keep := gptWeightName(name)
		if !keep {
			continue
		}
		if _, dup := out.Tensors[mapped]; dup {
			return nil, fmt.Errorf("%w: two tensors are %q", ErrSafetensors, mapped)
		}
		e := entries[name]
		vals, err := e.decode(body)
		if err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %w", ErrSafetensors, name, err)
		}
		out.Tensors[mapped] = TrainedTensor{Shape: e.Shape, Data: vals}
	}
	if head, ok := out.Tensors[lmHead]; ok {
		wte := out.Tensors[TokenEmbedding]
		if !slices.Equal(head.Shape, wte.Shape) || !slices.Equal(head.Data, wte.Data) {
			return nil, fmt.Errorf("%w: lm_head is not the token table, and the graph ties the two", ErrWeights)
		}
		delete(out.Tensors, lmHead)
	}
	return out, nil
}

// safetensorsHeader splits a safetensors file into its tensor records, its metadata
// and its data section, checking that the records' byte ranges tile the data.
func safetensorsHeader(data []byte) (map[string]safetensorsEntry, map[string]string, []byte, error) {
	if len(data) < 8 {
		return nil, nil, nil, fmt.Errorf("%w: %d bytes, shorter than the header length", ErrSafetensors, len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n > maxSafetensorsHeader || n > uint64(len(data)-8) {
		return nil, nil, nil, fmt.Errorf("%w: header of %d bytes in a file of %d", ErrSafetensors, n, len(data))
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data[8:8+n], &raw); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: header: %w", ErrSafetensors, err)
	}
	body := data[8+n:]
	meta := map[string]string{}
	entries := make(map[string]safetensorsEntry, len(raw))
	var ranges [][2]uint64
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &meta); err != nil {
				return nil, nil, nil, fmt.Errorf("%w: __metadata__ is not a map of strings: %w", ErrSafetensors, err)
			}
			continue
		}
		var e safetensorsEntry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, nil, nil, fmt.Errorf("%w: tensor %q: %w", ErrSafetensors, name, err)
		}
		if len(e.Offsets) != 2 || e.Offsets[0] > e.Offsets[1] {
			return nil, nil, nil, fmt.Errorf("%w: tensor %q: data_offsets %v are not [begin, end]", ErrSafetensors, name, e.Offsets)
		}
		entries[name] = e
		ranges = append(ranges, [2]uint64{e.Offsets[0], e.Offsets[1]})
	}
	slices.SortFunc(ranges, func(a, b [2]uint64) int { return cmp.Compare(a[0], b[0]) })
	end := uint64(0)
	for _, r := range ranges {
		if r[0] != end {
			return nil, nil, nil, fmt.Errorf("%w: the tensors' data_offsets leave a gap or overlap at byte %d", ErrSafetensors, min(r[0], end))
		}
		end = r[1]
	}
	if end != uint64(len(body)) {
		return nil, nil, nil, fmt.Errorf("%w: the tensors cover %d of the %d data bytes", ErrSafetensors, end, len(body))
	}
	return entries, meta, body, nil
}

// safetensorsDTypes decode the dtypes ParseSafetensors reads: element size and the
// conversion of one element to float32.
var safetensorsDTypes = map[string]struct {
	size   uint64
	decode func([]byte) float32
}{
	"F32":  {4, func(b []byte) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b)) }},
	"F16":  {2, func(b []byte) float32 { return tensor.HalfToFloat32(binary.LittleEndian.Uint16(b)) }},
	"BF16": {2, func(b []byte) float32 { return math.Float32frombits(uint32(binary.LittleEndian.Uint16(b)) << 16) }},
}

// decode checks e's shape against its byte range (safetensorsHeader checked the
// range) and converts its bytes to float32.
func (e safetensorsEntry) decode(body []byte) ([]float32, error) {
	dt, ok := safetensorsDTypes[e.DType]
	if !ok {
		return nil, fmt.Errorf("dtype %q (only F32, F16 and BF16 are read)", e.DType)
	}
	count := uint64(1)
	for _, d := range e.Shape {
		switch {
		case d < 0:
			return nil, fmt.Errorf("shape %v has a negative dimension", e.Shape)
		case d > 0 && count > math.MaxInt32/uint64(d):
			return nil, fmt.Errorf("shape %v has more than %d elements", e.Shape, math.MaxInt32)
		}
		count *= uint64(d)
	}
	if e.Offsets[1]-e.Offsets[0] != count*dt.size {
		return nil, fmt.Errorf("shape %v of %s is %d bytes, data_offsets give %d", e.Shape, e.DType, count*dt.size, e.Offsets[1]-e.Offsets[0])
	}
	src := body[e.Offsets[0]:e.Offsets[1]]
	vals := make([]float32, count)
	for i := range vals {
		vals[i] = dt.decode(src[uint64(i)*dt.size:])
	}
	return vals, nil
}

// hfBlockNames maps the per-block tensor names of Hugging Face's GPT-2 to modelgen's
// (the part after "h.<i>."). Both store each matrix [in, out].
var hfBlockNames = map[string]string{
	"ln_1.weight": "ln1/scale", "ln_1.bias": "ln1/bias",
	"attn.c_attn.weight": "attn/qkv/weight", "attn.c_attn.bias": "attn/qkv/bias",
	"attn.c_proj.weight": "attn/proj/weight", "attn.c_proj.bias": "attn/proj/bias",
	"ln_2.weight": "ln2/scale", "ln_2.bias": "ln2/bias",
	"mlp.c_fc.weight": "mlp/fc/weight", "mlp.c_fc.bias": "mlp/fc/bias",
	"mlp.c_proj.weight": "mlp/proj/weight", "mlp.c_proj.bias": "mlp/proj/bias",
}

// hfTopNames maps Hugging Face GPT-2's other tensors (its lm_head is checked against
// the token table, which the graph's LM head reads).
var hfTopNames = map[string]string{
	"wte.weight": TokenEmbedding, "wpe.weight": PosEmbedding,
	"ln_f.weight": lnfScale, "ln_f.bias": lnfBias, "lm_head.weight": lmHead,
}

var hfBlock = regexp.MustCompile(`^h\.(\d+)\.(.+)$`)

// gptWeightName translates a Hugging Face GPT-2 tensor name to modelgen's; other
// names pass unchanged. keep is false for tensors the graph does not use.
func gptWeightName(name string) (string, bool) {
	n := strings.TrimPrefix(name, "transformer.")
	if to, ok := hfTopNames[n]; ok {
		return to, true
	}
	if m := hfBlock.FindStringSubmatch(n); m != nil {
		if m[2] == "attn.bias" || m[2] == "attn.masked_bias" {
			return "", false // GPT-2's causal-mask buffers, not weights
		}
		if to, ok := hfBlockNames[m[2]]; ok {
			return "block" + m[1] + "/" + to, true
		}
	}
	return name, true
}

// Config returns base shaped like the weights: layers, dim, vocab and context from
// the tensors, heads from heads when positive, else from the file's metadata
// ("heads" or "n_head"), and Weights set to t.
func (t *Trained) Config(base GPTConfig, heads int) (GPTConfig, error) {
	wte, ok := t.Tensors[TokenEmbedding]
	if !ok || len(wte.Shape) != 2 {
		return base, fmt.Errorf("%w: no 2-D token table %q", ErrWeights, TokenEmbedding)
	}
	wpe, ok := t.Tensors[PosEmbedding]
	if !ok || len(wpe.Shape) != 2 {
		return base, fmt.Errorf("%w: no 2-D position table %q", ErrWeights, PosEmbedding)
	}
	layers := 0
	for {
		if _, ok := t.Tensors[gptBlock(layers).ln1Scale]; !ok {
			break
		}
		layers++
	}
	if heads <= 0 {
		for _, key := range []string{"heads", "n_head"} {
			if v, err := strconv.Atoi(t.Meta[key]); err == nil && v > 0 {
				heads = v
				break
			}
		}
	}
	if heads <= 0 {
		return base, fmt.Errorf("%w: the file does not say how many attention heads (give them)", ErrWeights)
	}
	c := base
	c.Layers, c.Heads, c.Vocab, c.Dim, c.Context = layers, heads, int(wte.Shape[0]), int(wte.Shape[1]), int(wpe.Shape[0])
	c.Weights = t
	return c, c.Validate()
}

// trainedWeight gives the values of weight name when the builder has trained weights
// (ok true): the trained ones, or zeros with an error recorded when they are missing
// or shaped otherwise. ok is false without trained weights.
func (g *graphBuilder) trainedWeight(name string, dims []int64) (vals []float32, ok bool) {
	if g.given == nil {
		return nil, false
	}
	t, ok := g.given.Tensors[name]
	switch {
	case !ok:
		g.fail(fmt.Errorf("%w: no tensor %q", ErrWeights, name))
	case !slices.Equal(t.Shape, dims) || int64(len(t.Data)) != product(dims):
		g.fail(fmt.Errorf("%w: %q is %v (%d values), the model needs %v", ErrWeights, name, t.Shape, len(t.Data), dims))
	default:
		g.used[name] = true
		return t.Data, true
	}
	return make([]float32, product(dims)), true
}

// givenErr is the first error trainedWeight recorded, or an error naming a trained
// tensor the model has no weight for.
func (g *graphBuilder) givenErr() error {
	if g.err != nil || g.given == nil {
		return g.err
	}
	var extra []string
	for name := range g.given.Tensors {
		if !g.used[name] {
			extra = append(extra, name)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return fmt.Errorf("%w: the model has no weight for %s", ErrWeights, strings.Join(extra, ", "))
	}
	return nil
}

func (g *graphBuilder) fail(err error) {
	if g.err == nil {
		g.err = err
	}
}
