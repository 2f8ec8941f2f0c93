// Package modelgen builds deterministic ONNX models in memory: a GPT-2-style
// decoder, a ResNet-style CNN and a stacked LSTM.
//
// Tests, benchmarks, the demo and `meshctl gen-model` need models of any size
// without downloading anything, and they need the same bytes every time so that
// a split of a model can be compared against the whole. Every weight is drawn
// from a pseudo-random stream seeded by the configuration's seed and the
// tensor's name, so a model depends only on its configuration; a GPT may be
// given trained weights instead (GPTConfig.Weights, ReadSafetensors).
//
// Weights are written straight into raw_data (one []float32 per tensor viewed
// as bytes, no per-float encoding), which keeps building the GPT-2-small shape
// (125M parameters) to a few seconds. WriteFile switches to ONNX external data
// for models whose protobuf would not fit the 2 GiB protobuf limit.
package modelgen

import "errors"

// MaxWeightBytes caps the float32 weights a configuration may ask for, so a
// typo on a command line (a dim of 76800 for 768) fails at once instead of
// exhausting memory. 16 GiB is far above anything an edge mesh serves.
const MaxWeightBytes = 16 << 30

// Sentinel errors returned (wrapped) by this package.
var (
	// ErrInvalidConfig means a configuration cannot describe a valid model
	// (zero layers, a width not divisible by the head count, ...).
	ErrInvalidConfig = errors.New("modelgen: invalid config")
	// ErrUnknownKind means Generate or ExampleInputs was asked for a model
	// kind it does not build.
	ErrUnknownKind = errors.New("modelgen: unknown model kind")
	// ErrSafetensors means a weights file is not a well-formed safetensors file.
	ErrSafetensors = errors.New("modelgen: not a valid safetensors file")
	// ErrWeights means trained weights do not fit the model they are given to: a
	// tensor is missing, has another shape, or belongs to no weight of the model.
	ErrWeights = errors.New("modelgen: weights do not fit the model")
	// ErrMissingWeight means ReferenceGPT could not find an initializer it
	// expects in the model.
	ErrMissingWeight = errors.New("modelgen: missing weight")
	// ErrBadInput means example or reference inputs do not fit the model
	// (a token id outside the vocabulary, a sequence longer than the context).
	ErrBadInput = errors.New("modelgen: bad input")
)
