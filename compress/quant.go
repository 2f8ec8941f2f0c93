package compress

import "math"

// blockQuant is a weight matrix quantized block-wise along K, laid out as
// MatMulNBits wants it: for each of the N output columns, ceil(K/block) blocks
// of block*bits/8 bytes, low bits first.
type blockQuant struct {
	N, K, Bits, Block int
	// Packed is [N, kBlocks, blob] uint8.
	Packed []byte
	// Scales is [N, kBlocks].
	Scales []float32
	// ZeroPoints is [N, ceil(kBlocks*bits/8)] packed like Packed; nil when
	// symmetric (ONNX Runtime then uses 2^(bits-1)).
	ZeroPoints []byte
}

func (q *blockQuant) kBlocks() int { return (q.K + q.Block - 1) / q.Block }
func (q *blockQuant) blob() int    { return q.Block * q.Bits / 8 }
func (q *blockQuant) zpRow() int   { return (q.kBlocks()*q.Bits + 7) / 8 }

// quantizeBlocks quantizes w, an [N][K] matrix read through at(n, k), with
// round-to-nearest per block. Symmetric blocks use scale = absmax/(2^(bits-1)-1)
// around the implicit zero point; asymmetric ones span [min(0,lo), max(0,hi)]
// with a per-block zero point, so 0 stays exactly representable either way.
func quantizeBlocks(n, k, bits, block int, symmetric bool, at func(n, k int) float32) *blockQuant {
	q := &blockQuant{N: n, K: k, Bits: bits, Block: block}
	kb, blob := q.kBlocks(), q.blob()
	q.Packed = make([]byte, n*kb*blob)
	q.Scales = make([]float32, n*kb)
	if !symmetric {
		q.ZeroPoints = make([]byte, n*q.zpRow())
	}
	levels := float64(int(1)<<bits - 1)
	mid := int(1) << (bits - 1)
	vals := make([]float64, block)
	for col := 0; col < n; col++ {
		for b := 0; b < kb; b++ {
			lo, hi := 0.0, 0.0
			for i := range vals {
				vals[i] = 0
				if kk := b*block + i; kk < k {
					vals[i] = float64(at(col, kk))
				}
				lo, hi = math.Min(lo, vals[i]), math.Max(hi, vals[i])
			}
			var scale float64
			zp := mid
			if symmetric {
				scale = math.Max(-lo, hi) / float64(mid-1)
			} else {
				scale = (hi - lo) / levels
				if scale > 0 {
					zp = int(math.Round(-lo / scale))
				}
			}
			if scale == 0 {
				scale = 1
			}
			q.Scales[col*kb+b] = float32(scale)
			if !symmetric {
				putBits(q.ZeroPoints[col*q.zpRow():], b, bits, zp)
			}
			row := q.Packed[(col*kb+b)*blob:]
			for i, v := range vals {
				x := int(math.Round(v/float64(float32(scale)))) + zp
				putBits(row, i, bits, min(max(x, 0), int(levels)))
			}
		}
	}
	return q
}

// putBits stores v as element i of a bits-wide packed array (bits is 4 or 8).
func putBits(b []byte, i, bits, v int) {
	if bits == 8 {
		b[i] = byte(v)
		return
	}
	if i%2 == 0 {
		b[i/2] = b[i/2]&0xf0 | byte(v&0x0f)
	} else {
		b[i/2] = b[i/2]&0x0f | byte(v&0x0f)<<4
	}
}

// getBits reads element i of a bits-wide packed array.
func getBits(b []byte, i, bits int) int {
	if bits == 8 {
		return int(b[i])
	}
	if i%2 == 0 {
		return int(b[i/2] & 0x0f)
	}
	return int(b[i/2] >> 4)
}

// dequant returns the value q stands for at column n, row k: what ONNX Runtime
// computes with.
func (q *blockQuant) dequant(n, k int) float32 {
	kb := q.kBlocks()
	b := k / q.Block
	zp := 1 << (q.Bits - 1)
	if q.ZeroPoints != nil {
		zp = getBits(q.ZeroPoints[n*q.zpRow():], b, q.Bits)
	}
	v := getBits(q.Packed[(n*kb+b)*q.blob():], k%q.Block, q.Bits)
	return float32(v-zp) * q.Scales[n*kb+b]
}
