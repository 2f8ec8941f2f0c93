package split

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hostBandwidth is the memory bandwidth this machine gives one core alone and its
// first two cores at once, in GB/s of bytes read plus written.
type hostBandwidth struct{ one, both float64 }

func (h hostBandwidth) String() string {
	return fmt.Sprintf("one core %.1f GB/s, both cores %.1f GB/s (%.2f x)", h.one, h.both, h.both/h.one)
}

// meanBothOverOne is the mean over hs of both cores' bandwidth over one core's.
func meanBothOverOne(hs []hostBandwidth) float64 {
	sum := 0.0
	for _, h := range hs {
		sum += h.both / h.one
	}
	return sum / float64(len(hs))
}

// bandwidthProbe copies buffers far larger than the last-level cache on threads
// pinned to cores 0 and 1: the bandwidth the pinned nodes of a benchmark share.
// A shared host moves it from minute to minute, and a decode step, which reads
// every weight of its stage once, moves with it.
type bandwidthProbe struct {
	src, dst [2][]byte
}

// probeBytes is each core's buffer: four times a 32 MiB last-level cache.
const probeBytes = 128 << 20

func newBandwidthProbe() *bandwidthProbe {
	p := &bandwidthProbe{}
	for c := range 2 {
		p.src[c], p.dst[c] = make([]byte, probeBytes), make([]byte, probeBytes)
		for i := range p.src[c] {
			p.src[c][i] = byte(i)
		}
		copy(p.dst[c], p.src[c])
	}
	return p
}

// measure times 8 copies on core 0 alone, then 8 on each core at once.
func (p *bandwidthProbe) measure(b *testing.B) hostBandwidth {
	b.Helper()
	const rounds = 8
	run := func(cores int) float64 {
		var wg sync.WaitGroup
		errs := make([]error, cores)
		start := time.Now()
		for c := range cores {
			wg.Go(func() { errs[c] = p.copyPinned(c, rounds) })
		}
		wg.Wait()
		span := time.Since(start)
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		return float64(cores*rounds*2*probeBytes) / span.Seconds() / 1e9
	}
	return hostBandwidth{one: run(1), both: run(2)}
}

// copyPinned copies core's buffer rounds times on an OS thread pinned to core, then
// gives the thread back its cores. The thread must not end with the goroutine (as a
// locked one would): the harness's nodes get SIGKILL when the thread that started
// them ends (Pdeathsig), and this may be that thread.
func (p *bandwidthProbe) copyPinned(core, rounds int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var was, only unix.CPUSet
	if err := unix.SchedGetaffinity(0, &was); err != nil {
		return fmt.Errorf("read this thread's cores: %w", err)
	}
	only.Set(core)
	if err := unix.SchedSetaffinity(0, &only); err != nil {
		return fmt.Errorf("pin a thread to core %d: %w", core, err)
	}
	for range rounds {
		copy(p.dst[core], p.src[core])
	}
	if err := unix.SchedSetaffinity(0, &was); err != nil {
		return fmt.Errorf("unpin the thread from core %d: %w", core, err)
	}
	return nil
}
