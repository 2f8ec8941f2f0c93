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
