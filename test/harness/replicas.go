package harness

import (
	"context"
	"math"
	"regexp"
	"slices"
	"strconv"

	"github.com/layermesh/layermesh/api/client"
)

// stageEntry parses one entry of a node's served stages as the API lists them:
// "gpt@1/stage2 (ready)".
var stageEntry = regexp.MustCompile(`^(.+)@(\d+)/stage(\d+) \((ready|loading)\)$`)

// StageEntry is one parsed entry of a node's served stages.
type StageEntry struct {
	Model, Version string
	Stage          int
	Ready          bool
}

// ParseStageEntry parses an entry such as "gpt@1/stage2 (ready)"; ok is false for any
// other form.
func ParseStageEntry(entry string) (e StageEntry, ok bool) {
	m := stageEntry.FindStringSubmatch(entry)
	if m == nil {
		return StageEntry{}, false
	}
	k, err := strconv.Atoi(m[3])
	if err != nil {
		return StageEntry{}, false
	}
	return StageEntry{Model: m[1], Version: m[2], Stage: k, Ready: m[4] == "ready"}, true
}

// ReadyReplicas counts, per stage of model's current version, the alive nodes that
// serve it ready as the node behind cl reports them, leaving out the nodes named in
// exclude (a killed node stays listed until memberlist declares it dead). stages is
// the number of stages of that version.
func ReadyReplicas(ctx context.Context, cl *client.Client, model string, exclude ...string) (counts map[int]int, stages int, err error) {
	st, err := cl.Model(ctx, model)
	if err != nil {
		return nil, 0, err
	}
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		return nil, 0, err
	}
	counts = map[int]int{}
	for _, nd := range nodes {
		if nd.State != "alive" || slices.Contains(exclude, nd.Name) {
			continue
		}
		for _, entry := range nd.Models {
			if e, ok := ParseStageEntry(entry); ok && e.Ready && e.Model == model && e.Version == st.Version {
				counts[e.Stage]++
			}
		}
	}
	return counts, len(st.Stages), nil
}

// MaxRelDiff is the largest element difference relative to max(1, |want|): the
// measure every system test holds a distributed answer to against one ONNX Runtime
// session on the whole model. Different lengths are infinitely far apart.
func MaxRelDiff(got, want []float32) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	worst := 0.0
	for i := range got {
		worst = max(worst, math.Abs(float64(got[i])-float64(want[i]))/max(1, math.Abs(float64(want[i]))))
	}
	return worst
}
