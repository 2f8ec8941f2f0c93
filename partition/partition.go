package partition

import "fmt"

// Options configure Partition.
type Options struct {
	// InputShapes bind the model's symbolic input dims for sizes and FLOPs.
	InputShapes map[string][]int64
	// Devices are the stage devices in pipeline order. Empty means Plan.Stages devices
	// with unlimited memory and equal speed.
	Devices []Device
	Plan    PlanOptions
	Extract ExtractOptions
}

// Partition loads the model at path, analyses it, plans its stages and writes them
// and the manifest to outDir.
func Partition(path, outDir string, opts Options) (*Manifest, error) {
	m, err := Load(path)
	if err != nil {
		return nil, err
	}
	g, err := Analyze(m, opts.InputShapes)
	if err != nil {
		return nil, fmt.Errorf("partition: analyze %s: %w", path, err)
	}
	devices := opts.Devices
	if len(devices) == 0 {
		k := max(opts.Plan.Stages, 1)
		devices = UniformDevices(k, 1<<62, 1)
	}
	p, err := Plan(g, devices, opts.Plan)
	if err != nil {
		return nil, fmt.Errorf("partition: plan %s: %w", path, err)
	}
	return ExtractWith(m, g, p, outDir, opts.Extract)
}

// UniformDevices returns n devices with the same budget and speed, named dev0, dev1...
func UniformDevices(n int, budget int64, speed float64) []Device {
	out := make([]Device, n)
	for i := range out {
		out[i] = Device{Name: fmt.Sprintf("dev%d", i), MemBudget: budget, Speed: speed}
	}
	return out
}
