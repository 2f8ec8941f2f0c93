package pipeline

// Learned attempt timeouts: once a stage has answered a few times, an attempt on it
// gets a multiple of its usual duration instead of the configured bound, so a hung
// replica costs about a second rather than the whole stage timeout.

import (
	"time"

	"github.com/layermesh/layermesh/mesh"
)

// usualKey names a stage (or the drive) of a model version whose durations are learned.
// Decode steps of sessions are learned apart: one token is far quicker than a request.
type usualKey struct {
	model, version string
	stage          int
	drive, decode  bool
}

func keyOf(call StageCall) usualKey {
	return usualKey{model: call.Model, version: call.Version, stage: call.Stage, drive: call.Drive, decode: call.Step == mesh.StepDecode}
}

// usualDuration is an exponentially weighted mean of successful attempts.
type usualDuration struct {
	mean    time.Duration
	samples int
}

// learnedSamples is how many answers a stage needs before its learned timeout is used.
const learnedSamples = 3

// attemptTimeout is the bound for one attempt of call: the configured one until the
// stage (or the drive) has answered a few times, then a multiple of its usual duration.
func (r *Router) attemptTimeout(call StageCall, configured time.Duration) time.Duration {
	r.mu.Lock()
	u := r.usual[keyOf(call)]
	r.mu.Unlock()
	if u == nil || u.samples < learnedSamples {
		return configured
	}
	floor := r.cfg.MinStageTimeout
	if call.Drive {
		floor = max(floor, 5*time.Second)
	}
	learned := max(time.Duration(r.cfg.TimeoutFactor*float64(u.mean)), floor)
	if configured > 0 {
		learned = min(learned, configured)
	}
	return learned
}

func (r *Router) learn(call StageCall, d time.Duration) {
	k := keyOf(call)
	r.mu.Lock()
	defer r.mu.Unlock()
	u := r.usual[k]
	if u == nil {
		u = &usualDuration{mean: d}
		r.usual[k] = u
	}
	u.mean += (d - u.mean) / 8
	u.samples++
}
