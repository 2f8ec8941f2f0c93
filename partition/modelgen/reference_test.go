package modelgen

import (
	"math"
	"testing"
)

// Plain-Go forward passes of the tiny ResNet and LSTM, written from the ONNX
// operator definitions, so those models are checked by value and not only by
// shape. float64 throughout.

// referenceLSTM follows ONNX LSTM with default activations (sigmoid for the
// gates, tanh for the cell): gate blocks in W, R and B are ordered i, o, f, c,
// and B holds the W biases then the R biases. x is [seq][batch][features].
func referenceLSTM(t *testing.T, w map[string][]float64, cfg LSTMConfig, x [][][]float64) [][][]float64 {
	t.Helper()
	h := cfg.Hidden
	sigmoid := func(v float64) float64 { return 1 / (1 + math.Exp(-v)) }
	in := cfg.Features
	for l := 0; l < cfg.Layers; l++ {
		p := "layer" + itoa(l)
		W, R, B := w[p+"/W"], w[p+"/R"], w[p+"/B"]
		if len(W) != 4*h*in || len(R) != 4*h*h || len(B) != 8*h {
			t.Fatalf("%s: weight sizes %d %d %d", p, len(W), len(R), len(B))
		}
		out := make([][][]float64, len(x))
		for b := range x[0] {
			hPrev, cPrev := make([]float64, h), make([]float64, h)
			for s := range x {
				gates := make([]float64, 4*h)
				for r := 0; r < 4*h; r++ {
					v := B[r] + B[4*h+r]
					for k := 0; k < in; k++ {
						v += W[r*in+k] * x[s][b][k]
					}
					for k := 0; k < h; k++ {
						v += R[r*h+k] * hPrev[k]
					}
					gates[r] = v
				}
				hNew, cNew := make([]float64, h), make([]float64, h)
				for j := 0; j < h; j++ {
					i, o, f, c := sigmoid(gates[j]), sigmoid(gates[h+j]), sigmoid(gates[2*h+j]), math.Tanh(gates[3*h+j])
					cNew[j] = f*cPrev[j] + i*c
					hNew[j] = o * math.Tanh(cNew[j])
				}
				if out[s] == nil {
					out[s] = make([][]float64, len(x[0]))
				}
				out[s][b] = hNew
				hPrev, cPrev = hNew, cNew
			}
		}
		x, in = out, h
	}
	headW, headB := w["head/weight"], w["head/bias"]
	res := make([][][]float64, len(x))
	for s := range x {
		res[s] = make([][]float64, len(x[s]))
		for b := range x[s] {
			res[s][b] = affine(x[s][b], headW, headB, cfg.Outputs)
		}
	}
	return res
}

// image is one feature map [channels][side][side].
type image [][][]float64

func newImage(c, side int) image {
	img := make(image, c)
	for i := range img {
		img[i] = make([][]float64, side)
		for y := range img[i] {
			img[i][y] = make([]float64, side)
		}
	}
	return img
}

// conv is a square convolution with zero padding k/2 and no bias.
func conv(in image, weight []float64, cout, k, stride int) image {
	cin, side, pad := len(in), len(in[0]), k/2
	outSide := (side+2*pad-k)/stride + 1
	out := newImage(cout, outSide)
	for o := 0; o < cout; o++ {
		for y := 0; y < outSide; y++ {
			for x := 0; x < outSide; x++ {
				var v float64
				for c := 0; c < cin; c++ {
					for ky := 0; ky < k; ky++ {
						iy := y*stride + ky - pad
						if iy < 0 || iy >= side {
							continue
						}
						for kx := 0; kx < k; kx++ {
							ix := x*stride + kx - pad
							if ix < 0 || ix >= side {
								continue
							}
							v += weight[((o*cin+c)*k+ky)*k+kx] * in[c][iy][ix]
						}
					}
				}
				out[o][y][x] = v
			}
		}
	}
	return out
}

// referenceResNet follows the builder's layout with ONNX's Conv,
// BatchNormalization (inference: (x-mean)/sqrt(var+eps)*scale+bias), Relu,
// GlobalAveragePool and Gemm. Only the 3x3 stem (Stem 1) is implemented.
func referenceResNet(t *testing.T, w map[string][]float64, cfg ResNetConfig, img image) []float64 {
	t.Helper()
	if cfg.Stem != 1 {
		t.Fatal("referenceResNet implements the 3x3 stem only")
	}
	convBN := func(name string, in image, cout, k, stride int) image {
		out := conv(in, w[name+"/conv/weight"], cout, k, stride)
		scale, bias, mean, variance := w[name+"/bn/scale"], w[name+"/bn/bias"], w[name+"/bn/mean"], w[name+"/bn/var"]
		for c := range out {
			inv := 1 / math.Sqrt(variance[c]+1e-5)
			for y := range out[c] {
				for x := range out[c][y] {
					out[c][y][x] = (out[c][y][x]-mean[c])*inv*scale[c] + bias[c]
				}
			}
		}
		return out
	}
	relu := func(img image) image {
		for c := range img {
			for y := range img[c] {
				for x := range img[c][y] {
					img[c][y][x] = math.Max(img[c][y][x], 0)
				}
			}
		}
		return img
	}
	x := relu(convBN("stem", img, cfg.Width, 3, 1))
	cin := cfg.Width
	for s, n := range cfg.Blocks {
		cout := cfg.Width << s
		for b := 0; b < n; b++ {
			p := "stage" + itoa(s) + "/block" + itoa(b)
			stride := 1
			if s > 0 && b == 0 {
				stride = 2
			}
			h := relu(convBN(p+"/a", x, cout, 3, stride))
			h = convBN(p+"/b", h, cout, 3, 1)
			skip := x
			if stride != 1 || cin != cout {
				skip = convBN(p+"/proj", x, cout, 1, stride)
			}
			for c := range h {
				for y := range h[c] {
					for xx := range h[c][y] {
						h[c][y][xx] += skip[c][y][xx]
					}
				}
			}
			x, cin = relu(h), cout
		}
	}
	pooled := make([]float64, cin)
	for c := range x {
		for y := range x[c] {
			for _, v := range x[c][y] {
				pooled[c] += v
			}
		}
		pooled[c] /= float64(len(x[c]) * len(x[c]))
	}
	// Gemm with transB=1: logits = pooled · Wᵀ + b, W is [classes, cin].
	fcW, fcB := w["head/fc/weight"], w["head/fc/bias"]
	logits := make([]float64, cfg.Classes)
	for k := range logits {
		logits[k] = fcB[k]
		for c, v := range pooled {
			logits[k] += v * fcW[k*cin+c]
		}
	}
	return logits
}

// compareWithin fails when any |got-want| exceeds tol, and logs the largest.
func compareWithin(t *testing.T, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, reference has %d", what, len(got), len(want))
	}
	var maxDiff, maxAbs float64
	for i := range want {
		maxDiff = math.Max(maxDiff, math.Abs(float64(got[i])-want[i]))
		maxAbs = math.Max(maxAbs, math.Abs(want[i]))
	}
	t.Logf("%s: max |ORT - reference| = %.3g over %d values (max |value| %.3g)", what, maxDiff, len(want), maxAbs)
	if maxDiff > tol {
		t.Errorf("%s: ORT differs from the reference by %g > %g", what, maxDiff, tol)
	}
	if maxAbs < 1e-2 {
		t.Errorf("%s: output is degenerate (max |value| %g)", what, maxAbs)
	}
}

func TestLSTMMatchesReference(t *testing.T) {
	cfg := LSTMTiny
	m, err := LSTM(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const batch, seq = 3, 6
	in, err := cfg.ExampleInputs(batch, seq, 4)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := runORT(t, mustWrite(t, m, WriteOptions{}), in, []string{LSTMOutput})
	flat, _ := in[0].Float32s()
	x := make([][][]float64, seq)
	for s := range x {
		x[s] = make([][]float64, batch)
		for b := range x[s] {
			x[s][b] = make([]float64, cfg.Features)
			for k := range x[s][b] {
				x[s][b][k] = float64(flat[(s*batch+b)*cfg.Features+k])
			}
		}
	}
	w, err := readWeights(m)
	if err != nil {
		t.Fatal(err)
	}
	var want []float64
	for _, step := range referenceLSTM(t, w, cfg, x) {
		for _, row := range step {
			want = append(want, row...)
		}
	}
	compareWithin(t, "lstm-tiny", got[0], want, 1e-5)
}

func TestResNetMatchesReference(t *testing.T) {
	cfg := ResNetTiny
	m, err := ResNet(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const batch = 2
	in, err := cfg.ExampleInputs(batch, 0, 4)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := runORT(t, mustWrite(t, m, WriteOptions{}), in, []string{ResNetOutput})
	flat, _ := in[0].Float32s()
	w, err := readWeights(m)
	if err != nil {
		t.Fatal(err)
	}
	side := cfg.ImageSize
	var want []float64
	for b := 0; b < batch; b++ {
		img := newImage(3, side)
		for c := range img {
			for y := range img[c] {
				for x := range img[c][y] {
					img[c][y][x] = float64(flat[((b*3+c)*side+y)*side+x])
				}
			}
		}
		want = append(want, referenceResNet(t, w, cfg, img)...)
	}
	compareWithin(t, "resnet-tiny", got[0], want, 1e-4)
}
