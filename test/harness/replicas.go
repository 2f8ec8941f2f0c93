package harness

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"time"

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

// AliveEverywhere checks that every running, unpaused node of c sees exactly want
// alive members (GET /v1/nodes with token, at most 3 s a node).
func (c *Cluster) AliveEverywhere(token string, want int) error {
	for i, n := range c.Nodes {
		if !n.Running() || n.Paused() {
			continue
		}
		cl, err := client.New(c.HTTPAddr(i), client.WithToken(token))
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		nodes, err := cl.Nodes(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("node %d: %w", i, err)
		}
		alive := 0
		for _, nd := range nodes {
			if nd.State == "alive" {
				alive++
			}
		}
		if alive != want {
			return fmt.Errorf("node %d sees %d alive members, want %d", i, alive, want)
		}
	}
	return nil
}
