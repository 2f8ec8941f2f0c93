package ort

import (
	"context"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/partition/onnxpb"
	"google.golang.org/protobuf/proto"
)

// TestProfileNodesTimesEachNamedNode: a profile names each node of the model by its
// own name, with a positive time for the matrix product, and gives a plain run's
// time; no timed run, or inputs the model refuses, are errors.
func TestProfileNodesTimesEachNamedNode(t *testing.T) {
	mm := node("MatMul", []string{"a", "b"}, []string{"c"})
	mm.Name = proto.String("the_matmul")
	neg := node("Neg", []string{"c"}, []string{"d"})
	neg.Name = proto.String("the_neg")
	path := writeModel(t, &onnxpb.GraphProto{
		Node:   []*onnxpb.NodeProto{mm, neg},
		Input:  []*onnxpb.ValueInfoProto{valueInfo("a", tensor.Float32, -1, 64), valueInfo("b", tensor.Float32, 64, 64)},
		Output: []*onnxpb.ValueInfoProto{valueInfo("d", tensor.Float32, -1, 64)},
	})
	in := []tensor.Tensor{
		tensor.FromFloat32("a", []int64{32, 64}, make([]float32, 32*64)),
		tensor.FromFloat32("b", []int64{64, 64}, make([]float32, 64*64)),
	}
	be := newCPU(t)
	prof, err := be.(accel.NodeProfiler).ProfileNodes(context.Background(), path, accel.SessionOptions{}, in, 2, 7, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(prof.Nodes) != 2 {
		t.Fatalf("profiled nodes %v, want the_matmul and the_neg", prof.Nodes)
	}
	if prof.Nodes["the_matmul"] <= 0 {
		t.Errorf("the_matmul: %v", prof.Nodes["the_matmul"])
	}
	if _, ok := prof.Nodes["the_neg"]; !ok {
		t.Errorf("the_neg is missing: %v", prof.Nodes)
	}
	if prof.Run <= 0 {
		t.Errorf("plain run time %v", prof.Run)
	}

	if _, err := be.(accel.NodeProfiler).ProfileNodes(context.Background(), path, accel.SessionOptions{}, in, 1, 0, ""); err == nil {
		t.Error("0 timed runs: no error")
	}
	bad := []tensor.Tensor{tensor.FromFloat32("a", []int64{2, 3}, make([]float32, 6)), in[1]}
	if _, err := be.(accel.NodeProfiler).ProfileNodes(context.Background(), path, accel.SessionOptions{}, bad, 0, 1, ""); err == nil {
		t.Error("inputs of the wrong shape: no error")
	}
}

func TestParseProfile(t *testing.T) {
	got, err := parseProfile(strings.NewReader(`[
		{"cat":"Session","name":"model_run","dur":900},
		{"cat":"Node","name":"n1_fence_before","dur":0},
		{"cat":"Node","name":"n1_kernel_time","dur":12.5},
		{"cat":"Node","name":"n1_kernel_time","dur":7},
		{"cat":"Node","name":"_kernel_time","dur":3},
		{"cat":"Node","name":"n2_kernel_time","dur":-1}]`))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(got["n1"]) != 2 || got["n1"][0].Microseconds() != 12 || got["n1"][1].Microseconds() != 7 {
		t.Fatalf("parsed %v", got)
	}
	for _, bad := range []string{`{"not": "an array"}`, `[{"cat":"Node","name":"n_kernel_time","dur":1}`, `[{"cat":}]`} {
		if _, err := parseProfile(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "profile") {
			t.Errorf("malformed profile %s: %v", bad, err)
		}
	}
}
