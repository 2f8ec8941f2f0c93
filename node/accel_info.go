package node

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/ort/gpu"
	"github.com/layermesh/layermesh/api/wire"
)

// usesGPU reports whether provider p runs stages on a GPU.
func usesGPU(p accel.Provider) bool {
	return p == accel.ProviderCUDA || p == accel.ProviderTensorRT
}

// accelDevice is the device the node's provider runs on: the first GPU's name for a
// GPU provider when NVML names one, else "" (the CPU, or a GPU NVML cannot see).
func accelDevice(p accel.Provider, gpus []gpu.Device) string {
	if usesGPU(p) && len(gpus) > 0 {
		return gpus[0].Name
	}
	return ""
}

// accelLabel is how a node's accelerator reads in /v1/nodes and meshctl nodes:
// "cpu", or "cuda (NVIDIA H200)".
func accelLabel(provider, device string) string {
	if device == "" {
		return provider
	}
	return provider + " (" + device + ")"
}

// accelerator is what GET /v2 says about the node's execution provider.
func accelerator(p accel.Provider, gpus []gpu.Device) *wire.Accelerator {
	a := &wire.Accelerator{Provider: string(p), Device: accelDevice(p, gpus)}
	if usesGPU(p) && len(gpus) > 0 {
		a.MemTotal, a.MemFree = uint64(gpus[0].TotalBytes), uint64(gpus[0].FreeBytes)
	}
	return a
}

// registerAccelMetrics registers layermesh_accel_provider_info{provider,device} 1,
// the bytes the backend holds between runs where it counts them and, where NVML saw
// GPUs, their memory as it was at start.
func registerAccelMetrics(reg prometheus.Registerer, be accel.Backend, gpus []gpu.Device) error {
	p := be.Provider()
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "layermesh_accel_provider_info",
		Help: "The execution provider this node runs stages on (value 1), with the device it uses.",
	}, []string{"provider", "device"})
	info.WithLabelValues(string(p), accelDevice(p, gpus)).Set(1)
	cols := []prometheus.Collector{info}
	if hc, ok := be.(accel.HeldCounter); ok {
		cols = append(cols, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "layermesh_accel_held_bytes",
			Help: "Bytes of tensors the accelerator backend keeps between runs (session state, logits being sampled), over the process; with no generation running it is 0, and well above layermesh_session_state_bytes it shows a leak.",
		}, func() float64 { return float64(hc.HeldBytes()) }))
	}
	if len(gpus) > 0 {
		total := prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "layermesh_gpu_memory_total_bytes", Help: "GPU memory as NVML reported it at node start.",
		}, []string{"gpu", "name"})
		free := prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "layermesh_gpu_memory_free_bytes", Help: "Free GPU memory as NVML reported it at node start.",
		}, []string{"gpu", "name"})
		for _, d := range gpus {
			idx := strconv.Itoa(d.Index)
			total.WithLabelValues(idx, d.Name).Set(float64(d.TotalBytes))
			free.WithLabelValues(idx, d.Name).Set(float64(d.FreeBytes))
		}
		cols = append(cols, total, free)
	}
	for _, c := range cols {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// accelMeta is NodeMeta.Accels: the provider, then the GPU it runs on if NVML names one.
func accelMeta(p accel.Provider, gpus []gpu.Device) []string {
	if d := accelDevice(p, gpus); d != "" {
		return []string{string(p), d}
	}
	return []string{string(p)}
}
