package ort

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/layermesh/layermesh/accel"
)

// Errors of execution provider plugins. Both also match accel.ErrProviderUnavailable
// when New returns them.
var (
	// ErrPluginLoad means the plugin library did not load: the file is missing or no
	// shared library, or a library it needs (CUDA, cuDNN) is absent; the message
	// carries dlopen's, which names the missing one.
	ErrPluginLoad = errors.New("execution provider plugin does not load")
	// ErrNotPlugin means the library loads but does not export the EP ABI's
	// CreateEpFactories: it is no execution provider plugin.
	ErrNotPlugin = errors.New("not an execution provider plugin")
)

// pluginNames are the file names under which a GPU provider's plugin library is
// looked for beside the core library (where an npm or release package puts it).
var pluginNames = map[accel.Provider]string{
	accel.ProviderCUDA:     "libonnxruntime_providers_cuda.so",
	accel.ProviderTensorRT: "libonnxruntime_providers_tensorrt.so",
}

// ProviderOptions are the string options passed to each GPU provider, as ORT names
// them (cuda: device_id, use_tf32, gpu_mem_limit, ...; tensorrt: trt_fp16_enable,
// ...). A TensorRT session also takes the CUDA options for the CUDA provider it
// appends after TensorRT.
type ProviderOptions map[accel.Provider]map[string]string

// pairs returns p's options as parallel key and value lists in key order.
func (o ProviderOptions) pairs(p accel.Provider) (keys, vals []string) {
	for k := range o[p] {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		vals = append(vals, o[p][k])
	}
	return keys, vals
}

// ParseProviderOption parses one "provider:key=value" option (the form of
// meshnode's --ep-option) into opts, creating it if nil.
func ParseProviderOption(opts ProviderOptions, s string) (ProviderOptions, error) {
	prov, kv, ok := strings.Cut(s, ":")
	k, v, ok2 := strings.Cut(kv, "=")
	p := accel.Provider(prov)
	if !ok || !ok2 || k == "" || pluginNames[p] == "" {
		return opts, fmt.Errorf("provider option %q: want cuda:KEY=VALUE or tensorrt:KEY=VALUE", s)
	}
	if opts == nil {
		opts = ProviderOptions{}
	}
	if opts[p] == nil {
		opts[p] = map[string]string{}
	}
	opts[p][k] = v
	return opts, nil
}

// ParsePluginLibrary parses one "provider=path" plugin naming (meshnode's --ep-lib).
func ParsePluginLibrary(libs map[accel.Provider]string, s string) (map[accel.Provider]string, error) {
	prov, path, ok := strings.Cut(s, "=")
	p := accel.Provider(prov)
	if !ok || path == "" || pluginNames[p] == "" {
		return libs, fmt.Errorf("plugin library %q: want cuda=PATH or tensorrt=PATH", s)
	}
	if libs == nil {
		libs = map[accel.Provider]string{}
	}
	libs[p] = path
	return libs, nil
}

// EPDevice is one execution provider and device pair that ONNX Runtime offers: its
// built-in CPU provider, and one entry per device of each registered plugin.
type EPDevice struct {
	EP       string // ORT's provider name, e.g. CPUExecutionProvider
	EPVendor string
	Hardware string // cpu, gpu or npu
	VendorID uint32 // PCI vendor id; 0x10de for NVIDIA
	DeviceID uint32
}

// EPDevices lists what ONNX Runtime's GetEpDevices reports in this process.
func (o *Backend) EPDevices() ([]EPDevice, error) {
	runtimeState.mu.Lock()
	defer runtimeState.mu.Unlock()
	return epDevices()
}

// pluginState is the outcome of registering one provider's plugin, once per process.
type pluginState struct {
	path string
	err  error
}

// usePlugin registers the plugin at path for p once per process. A second, different
// path for the same provider is refused: ORT keeps the first.
func usePlugin(p accel.Provider, path string) error {
	runtimeState.mu.Lock()
	defer runtimeState.mu.Unlock()
	if st, ok := runtimeState.plugins[p]; ok {
		if st.path != path {
			return fmt.Errorf("%w: %s plugin already loaded from %s; cannot also load %s", accel.ErrProviderUnavailable, p, st.path, path)
		}
		return st.err
	}
	err := pluginLoadError(path)
	if err == nil {
		var n int
		n, err = registerPlugin(p, path)
		if err == nil && n == 0 {
			err = fmt.Errorf("%w: %s registered but offers no device (no GPU, or its driver is missing)", ErrPluginLoad, path)
		} else if err != nil {
			err = fmt.Errorf("%w: register %s: %w", ErrPluginLoad, path, err)
		}
	}
	if err != nil {
		err = fmt.Errorf("%w: %s: %w", accel.ErrProviderUnavailable, p, err)
	}
	runtimeState.plugins[p] = pluginState{path: path, err: err}
	delete(runtimeState.probed, p) // a probe from before the plugin no longer holds
	return err
}

// setUpProvider makes GPU provider p usable or says why not. A plugin named in libs is
// registered and must load; a plugin beside the core library is registered when it is
// one (a legacy provider library of a GPU build of the core is not, and the legacy
// append then serves). The provider must then create a session on a one-node model.
func setUpProvider(p accel.Provider, libs map[accel.Provider]string, opts ProviderOptions) error {
	if path, ok := libs[p]; ok {
		if err := usePlugin(p, path); err != nil {
			return err
		}
	} else if path := filepath.Join(filepath.Dir(loadedPath()), pluginNames[p]); fileExists(path) {
		if err := usePlugin(p, path); err != nil && !errors.Is(err, ErrNotPlugin) {
			return err
		}
	}
	return probeProvider(p, opts)
}

// loadedPath is the path of the ONNX Runtime library this process loaded.
func loadedPath() string {
	runtimeState.mu.Lock()
	defer runtimeState.mu.Unlock()
	return runtimeState.path
}
