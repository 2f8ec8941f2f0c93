package main

import (
	"fmt"
	"regexp"
)

// fashionCases are the compressions compress's TestFashionMNISTAccuracyAfterCompression
// logs, by the name it logs them under, with the report's label for each.
var fashionCases = []Row{
	{"static int8 minmax", "static int8, min-max calibration"},
	{"static int8 percentile", "static int8, percentile calibration"},
	{"dynamic int8", "dynamic int8"},
	{"prune 30% l1 per layer", "30% of filters, per layer, L1 norm (no fine-tuning)"},
	{"prune 50% l1 per layer", "50% of filters, per layer, L1 norm (no fine-tuning)"},
	{"prune 30% l1 global", "30% of filters, whole model, L1 norm"},
	{"prune 30% output global", "30% of filters, whole model, output error"},
	{"prune 50% output global", "50% of filters, whole model, output error"},
}

const fashionTest = "TestFashionMNISTAccuracyAfterCompression"

// fashionFigures reads the accuracy test's log: float32's accuracy, and each
// compression's accuracy, its change in points and its size.
func fashionFigures() []LogFigure {
	out := []LogFigure{{
		Job: "compress-accuracy", Name: fashionTest + "/float32",
		Pattern: regexp.MustCompile(`: float32: ([\d.]+)%`),
		Metrics: []string{"accuracy-%"},
	}}
	for _, c := range fashionCases {
		out = append(out, LogFigure{
			Job: "compress-accuracy", Name: fashionTest + "/" + c.Bench,
			Pattern: regexp.MustCompile(fmt.Sprintf(`: %s: ([\d.]+)%% \(([+-]?[\d.]+) points\), size ([\d.]+)x`, regexp.QuoteMeta(c.Bench))),
			Metrics: []string{"accuracy-%", "delta-points", "size-ratio"},
		})
	}
	return out
}

// fashionAccuracySection reports the Fashion-MNIST CNN's test-set accuracy after each
// compression.
func fashionAccuracySection() Section {
	rows := []Row{{fashionTest + "/float32", "float32"}}
	for _, c := range fashionCases {
		rows = append(rows, Row{fashionTest + "/" + c.Bench, c.Label})
	}
	return Section{
		Title: "Accuracy of the compressed Fashion-MNIST CNN",
		Measures: `
Measured by compress's TestFashionMNISTAccuracyAfterCompression (go test -v; not a go
benchmark): the Fashion-MNIST CNN (compress/testdata/fashion_cnn.onnx) and each
compression of it classify the 10,000 test images of Debian's dataset-fashion-mnist;
top-1 accuracy, its change from float32 in points, and the size against float32.
Calibration (static int8, and the means moved into the biases when pruning) uses 8
batches of 64 training images. Pruning applies no fine-tuning or retraining. The model
was trained (scripts/train_fashion_cnn.py) with a network-slimming penalty that drives
half of the BatchNorm scales in each group of residual-coupled channels to near zero, so
it is built to be pruned up to 50%; a model trained without such a penalty loses far
more (with a plain L1 penalty of 3e-3 on the scales, silencing the channels 30% pruning
removes left 17% accuracy). The test asserts static int8 within 0.5 points of float32
and 30% per-layer pruning within 2 points.`,
		Jobs: []string{"compress-accuracy"},
		Figures: []Figure{
			{Job: "compress-accuracy", Bench: fashionTest + "/float32", Metric: "accuracy-%", Label: "float32 top-1 accuracy", Unit: "%", Summary: true},
			{Job: "compress-accuracy", Bench: fashionTest + "/static int8 minmax", Metric: "delta-points", Label: "static int8 (min-max) against float32", Unit: "points", Target: &Target{Op: ">=", Value: -0.5}},
			{Job: "compress-accuracy", Bench: fashionTest + "/dynamic int8", Metric: "delta-points", Label: "dynamic int8 against float32", Unit: "points", Summary: true},
			{Job: "compress-accuracy", Bench: fashionTest + "/prune 30% l1 per layer", Metric: "delta-points", Label: "30% filter pruning against float32, no fine-tuning", Unit: "points", Target: &Target{Op: ">=", Value: -2}},
			{Job: "compress-accuracy", Bench: fashionTest + "/prune 50% l1 per layer", Metric: "delta-points", Label: "50% filter pruning against float32, no fine-tuning", Unit: "points", Summary: true},
		},
		Details: []Matrix{{
			Job:     "compress-accuracy",
			Caption: "Top-1 accuracy on the 10,000 test images",
			Rows:    rows,
			Cols: []Col{
				{Metric: "accuracy-%", Header: "accuracy %"},
				{Metric: "delta-points", Header: "points vs float32"},
				{Metric: "size-ratio", Header: "size / float32"},
			},
		}},
	}
}
