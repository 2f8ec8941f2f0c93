package node

import (
	"reflect"
	"testing"

	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/events"
)

// stateWith builds a cluster state of three members a, b, c (ids ia, ib, ic), one
// two-stage model m@1 placed by stages, and serving records.
func stateWith(states map[string]consensus.MemberState, stages [][]string, epoch uint64, serving map[string][]consensus.ServedRef) *consensus.ClusterState {
	st := consensus.NewClusterState()
	for _, n := range []string{"a", "b", "c"} {
		s := consensus.MemberAlive
		if v, ok := states[n]; ok {
			s = v
		}
		st.Members["i"+n] = consensus.Member{ID: "i" + n, Name: n, State: s}
	}
	if stages != nil {
		st.Models["m@1"] = consensus.Model{Name: "m", Version: "1", Stages: make([]consensus.StageManifest, 2)}
		st.Placements["m@1"] = consensus.Placement{Model: "m", Version: "1", Stages: stages, Epoch: epoch}
	}
	for id, refs := range serving {
		st.Serving[id] = consensus.Serving{Boot: "boot-" + id, Stages: refs}
	}
	return st
}

func ref(stage int, ready bool) consensus.ServedRef {
	return consensus.ServedRef{Model: "m", Version: "1", Stage: stage, Ready: ready}
}

func TestStateEventsDescribeFailoverOfAStageToAnotherNode(t *testing.T) {
	prev := stateWith(nil, [][]string{{"ia"}, {"ib"}}, 3,
		map[string][]consensus.ServedRef{"ia": {ref(0, true)}, "ib": {ref(1, true)}})
	// b died: the leader moved stage 1 to c, which reports it loading, then ready.
	moved := stateWith(map[string]consensus.MemberState{"b": consensus.MemberDead}, [][]string{{"ia"}, {"ic"}}, 4,
		map[string][]consensus.ServedRef{"ia": {ref(0, true)}, "ic": {ref(1, false)}})
	got := stateEvents(prev, moved)
	want := []events.Event{
		{Type: events.Deploy, Subject: "m@1", Model: "m", Version: "1", State: events.DeployLoading, Detail: "1/2 stages ready"},
		{Type: events.Placement, Subject: "m@1", Model: "m", Version: "1", Epoch: 4,
			Moved: []events.StageMove{{Stage: 1, Added: []string{"c"}, Removed: []string{"b"}}}},
		{Type: events.StageUnloaded, Subject: "m@1", Node: "b", Model: "m", Version: "1", Stage: events.StageIndex(1)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events after the move:\n got %+v\nwant %+v", got, want)
	}
	ready := stateWith(map[string]consensus.MemberState{"b": consensus.MemberDead}, [][]string{{"ia"}, {"ic"}}, 4,
		map[string][]consensus.ServedRef{"ia": {ref(0, true)}, "ic": {ref(1, true)}})
	got = stateEvents(moved, ready)
	want = []events.Event{
		{Type: events.Deploy, Subject: "m@1", Model: "m", Version: "1", State: events.DeployReady, Detail: "2/2 stages ready"},
		{Type: events.StageReady, Subject: "m@1", Node: "c", Model: "m", Version: "1", Stage: events.StageIndex(1)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events once c is ready:\n got %+v\nwant %+v", got, want)
	}
	if got := stateEvents(ready, ready); len(got) != 0 {
		t.Fatalf("no change gave events %+v", got)
	}
}

func TestStateEventsDescribeDeploysAndDrains(t *testing.T) {
	empty := stateWith(nil, nil, 0, nil)
	deployed := stateWith(nil, [][]string{{"ia"}, {"ib"}}, 1, nil)
	got := stateEvents(empty, deployed)
	want := []events.Event{
		{Type: events.Deploy, Subject: "m@1", Model: "m", Version: "1", State: events.DeployRecorded, Detail: "2 stages"},
		{Type: events.Deploy, Subject: "m@1", Model: "m", Version: "1", State: events.DeployPlaced},
		{Type: events.Placement, Subject: "m@1", Model: "m", Version: "1", Epoch: 1,
			Moved: []events.StageMove{{Stage: 0, Added: []string{"a"}}, {Stage: 1, Added: []string{"b"}}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("deploy events:\n got %+v\nwant %+v", got, want)
	}
	drained := stateWith(map[string]consensus.MemberState{"a": consensus.MemberDraining}, nil, 0, nil)
	got = stateEvents(empty, drained)
	if len(got) != 1 || got[0].Type != events.Drain || got[0].Node != "a" {
		t.Fatalf("drain events = %+v, want one drain of a", got)
	}
	got = stateEvents(drained, empty)
	if len(got) != 1 || got[0].Type != events.Undrain || got[0].Node != "a" {
		t.Fatalf("undrain events = %+v, want one undrain of a", got)
	}
	got = stateEvents(deployed, empty)
	if len(got) != 1 || got[0].Type != events.Deploy || got[0].State != events.DeployDeleted {
		t.Fatalf("delete events = %+v, want one deploy deleted", got)
	}
}
