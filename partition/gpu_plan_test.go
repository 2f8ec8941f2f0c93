package partition

import (
	"testing"

	"github.com/layermesh/layermesh/partition/modelgen"
)

// TestMixedMeshGivesTheGPUTheHeavyStages plans a 12-layer GPT over one GPU node and
// two CPU nodes with the speed scores such nodes measure (a GPU's matmul rate is some
// hundred times a CPU's): the GPU's stage must carry nearly all the FLOPs, and when the
// GPU's memory budget holds only part of the weights, as much as that budget allows.
func TestMixedMeshGivesTheGPUTheHeavyStages(t *testing.T) {
	cfg := modelgen.GPTConfig{Layers: 12, Dim: 256, Heads: 4, Vocab: 512, Context: 64, Seed: 1, Name: "gpt-12x256"}
	m, err := Load(writeGenerated(t, cfg, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	g, err := Analyze(m, map[string][]int64{modelgen.GPTInput: {1, 64}})
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, nd := range g.Nodes {
		total += nd.FLOPs
	}
	lan := func(int, int) float64 { return 1e9 } // bytes/s of a gigabit-class link
	gpuShare := func(p *StagePlan) float64 {
		var f int64
		for _, s := range p.Stages {
			if s.Device.Name == "gpu" {
				f += s.FLOPs
			}
		}
		return float64(f) / float64(total)
	}
	devices := func(gpuBudget int64) []Device {
		return []Device{
			{Name: "cpu-a", MemBudget: 1 << 30, Speed: 100e9},
			{Name: "gpu", MemBudget: gpuBudget, Speed: 30e12},
			{Name: "cpu-b", MemBudget: 1 << 30, Speed: 100e9},
		}
	}

	p, err := Plan(g, devices(1<<30), PlanOptions{Stages: 3, LinkBandwidth: lan, ReorderDevices: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range p.Stages {
		t.Logf("3 stages: stage %d on %s nodes [%d,%d) %.1f%% of FLOPs", s.Index, s.Device.Name, s.Start, s.End, 100*float64(s.FLOPs)/float64(total))
	}
	if share := gpuShare(p); share < 0.8 {
		t.Errorf("three stages: the GPU carries %.0f%% of the FLOPs, want most", 100*share)
	}

	auto, err := Plan(g, devices(1<<30), PlanOptions{LinkBandwidth: lan, ReorderDevices: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(auto.Stages) != 1 || auto.Stages[0].Device.Name != "gpu" {
		t.Errorf("auto stages: want the whole model on the GPU alone, got %d stages, first on %s", len(auto.Stages), auto.Stages[0].Device.Name)
	}

	// A GPU budget of 60% of the weights: the GPU still takes the biggest share it can
	// hold, and no stage exceeds its device's budget.
	tight, err := Plan(g, devices(g.ParamBytes*6/10), PlanOptions{Stages: 3, LinkBandwidth: lan, ReorderDevices: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range tight.Stages {
		if s.MemoryBytes > s.Device.MemBudget {
			t.Fatalf("stage %d on %s: %d bytes over its budget %d", s.Index, s.Device.Name, s.MemoryBytes, s.Device.MemBudget)
		}
	}
	if share := gpuShare(tight); share < 0.4 {
		t.Errorf("GPU budget of 60%% of the weights: the GPU carries only %.0f%% of the FLOPs", 100*share)
	}
}
