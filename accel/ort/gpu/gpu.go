// Package gpu reads what the node's NVIDIA GPUs hold through NVML. go-nvml opens
// libnvidia-ml.so.1 at run time, so a binary built with this package starts and runs
// on a machine without a GPU or driver: Probe then returns ErrNoNVML and the node
// reports no GPU memory.
package gpu

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// ErrNoNVML means NVML could not be used: no driver library, or no device.
var ErrNoNVML = errors.New("no NVIDIA GPU visible through NVML")

// Device is one GPU as NVML reports it at probe time.
type Device struct {
	Index      int
	Name       string // e.g. "NVIDIA H200"
	TotalBytes int64
	FreeBytes  int64
}

// Probe lists the GPUs NVML sees with their memory. It initialises NVML and shuts it
// down again: the node reads memory once at start, as it reads host memory.
func Probe() ([]Device, error) {
	if ret := nvml.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("%w: %s", ErrNoNVML, nvml.ErrorString(ret))
	}
	defer nvml.Shutdown()
	n, ret := nvml.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("%w: device count: %s", ErrNoNVML, nvml.ErrorString(ret))
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: the driver reports no device", ErrNoNVML)
	}
	devs := make([]Device, 0, n)
	for i := range n {
		d, ret := nvml.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("gpu %d: %s", i, nvml.ErrorString(ret))
		}
		name, ret := d.GetName()
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("gpu %d name: %s", i, nvml.ErrorString(ret))
		}
		mem, ret := d.GetMemoryInfo()
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("gpu %d memory: %s", i, nvml.ErrorString(ret))
		}
		devs = append(devs, Device{Index: i, Name: name, TotalBytes: int64(mem.Total), FreeBytes: int64(mem.Free)})
	}
	return devs, nil
}
