package gpu

import (
	"errors"
	"os"
	"testing"
)

// TestProbeMatchesTheMachine checks Probe against what the machine has: without the
// NVIDIA driver library it must fail with ErrNoNVML rather than crash or invent a
// device; with one, every device must have a name and free memory within its total.
func TestProbeMatchesTheMachine(t *testing.T) {
	devs, err := Probe()
	_, statErr := os.Stat("/dev/nvidiactl")
	if err != nil {
		if !errors.Is(err, ErrNoNVML) {
			t.Fatalf("Probe failed without ErrNoNVML: %v", err)
		}
		if statErr == nil {
			t.Logf("an NVIDIA device node exists but NVML is not usable: %v", err)
		}
		return
	}
	if len(devs) == 0 {
		t.Fatal("Probe returned no device and no error")
	}
	for _, d := range devs {
		if d.Name == "" || d.TotalBytes <= 0 || d.FreeBytes < 0 || d.FreeBytes > d.TotalBytes {
			t.Fatalf("implausible device %+v", d)
		}
	}
}
