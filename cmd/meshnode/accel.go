package main

import (
	"log/slog"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/ort/gpu"
)

// backendConfig maps the accel flags onto ort.Config; check has validated them.
func backendConfig(cfg *config, log *slog.Logger) ort.Config {
	var libs map[accel.Provider]string
	for _, s := range cfg.EPLib {
		libs, _ = ort.ParsePluginLibrary(libs, s)
	}
	var opts ort.ProviderOptions
	for _, s := range cfg.EPOption {
		opts, _ = ort.ParseProviderOption(opts, s)
	}
	return ort.Config{
		LibraryPath:     cfg.ORTLib,
		Provider:        accel.Provider(cfg.Accel),
		IntraOpThreads:  cfg.Threads,
		PluginLibraries: libs,
		ProviderOptions: opts,
		Logger:          log,
	}
}

// gpuHeadroom is the share of a GPU's free memory a node offers by default: the CUDA
// context, cuDNN/cuBLAS workspaces and ONNX Runtime's arena rounding live outside the
// stages' own estimate.
const gpuHeadroom = 0.9

// stageBudget is the memory this node offers the planner for stages. A node that runs
// its stages on a GPU holds their weights and activations in GPU memory, so it offers
// its GPU budget (--gpu-mem-budget, else 90% of the first GPU's free memory); the host
// budget (--mem-budget, 0 for the node's default) holds for the CPU, and for a GPU
// provider whose memory NVML cannot report. It also says where the figure came from.
func stageBudget(cfg *config, p accel.Provider, gpus []gpu.Device) (int64, string) {
	if p != accel.ProviderCUDA && p != accel.ProviderTensorRT {
		return int64(cfg.MemBudget), "host"
	}
	switch {
	case cfg.GPUMemBudget > 0:
		return int64(cfg.GPUMemBudget), "--gpu-mem-budget"
	case len(gpus) > 0:
		return int64(float64(gpus[0].FreeBytes) * gpuHeadroom), "nvml free memory"
	default:
		return int64(cfg.MemBudget), "host (NVML reports no GPU)"
	}
}

// goProcs is how many threads Go's scheduler runs the node's own work on (its
// GOMAXPROCS: HTTP, the stage RPC, gossip, Raft), with where the figure comes from.
// ONNX Runtime computes on threads of its own, outside that count; on the CPU, the
// intra-op threads of each pooled session hold their cores for the length of a run.
// A scheduler given those cores too wakes and spins threads on them at every network
// event, and takes that time from the run: with 3 nodes sharing 2 cores, one
// scheduler thread per process halved their system time per token and took a 3-stage
// generation's time per token over one node's from 1.079-1.089 to 1.042-1.085 (1.063
// on average over 6 runs; BENCHMARKS.md). So with stages on the CPU the node keeps to
// the cores ONNX Runtime leaves, at least 1; with stages on a GPU, to every core.
// --go-procs, else the GOMAXPROCS environment variable (which Go has applied
// already), overrides it. The count is one stage's threads times the session pool: a
// node running several CPU stages at once has fewer cores free than that, and gets 1
// with the default --threads. cores is what Go gives the process by default (its CPU
// affinity and limit).
func goProcs(cfg *config, p accel.Provider, cores int, envSet bool) (int, string) {
	switch {
	case cfg.GoProcs > 0:
		return cfg.GoProcs, "--go-procs"
	case envSet:
		return cores, "GOMAXPROCS"
	case p == accel.ProviderCUDA || p == accel.ProviderTensorRT:
		return cores, "every core: stages run on the GPU"
	}
	return max(1, cores-cfg.Threads*max(1, cfg.SessionPool)), "the cores ONNX Runtime's threads leave"
}
