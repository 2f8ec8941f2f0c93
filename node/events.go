package node

// The node's event feed (package events): what changed in the Raft state this node
// applies (members drained or removed, placement epochs, stages ready and unloaded,
// deploys), who leads, what memberlist reports, and the router's failovers. Every
// node derives the feed itself, so any node's /v1/events and /ui show the cluster.

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/events"
	"github.com/layermesh/layermesh/mesh"
)

// leaderPoll is how often the event loop looks for a leader change that came with
// no state change (an election with nothing applied yet).
const leaderPoll = 500 * time.Millisecond

// runEvents publishes the cluster's events on bus until ctx ends.
func (c *Cluster) runEvents(ctx context.Context, bus events.Publisher) {
	watch, stopWatch := c.store.Watch()
	defer stopWatch()
	members, stopMembers := c.mesh.Subscribe()
	defer stopMembers()
	c.router.OnFailover(func(model, version string, stage int, drive bool, from, to string) {
		c.publishFailover(bus, model, version, stage, drive, from, to)
	})
	defer c.router.OnFailover(nil)
	c.router.OnSessionReplay(func(model, version string, stage int, from, to string) {
		c.publishSessionReplay(bus, model, version, stage, from, to)
	})
	defer c.router.OnSessionReplay(nil)
	tick := time.NewTicker(leaderPoll)
	defer tick.Stop()

	// Until this node has caught up, what it applies is history replayed, not news:
	// the baseline moves with it silently.
	prev := c.store.View()
	leader := ""
	seen := map[string]string{} // node -> the last member state published
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-watch:
			if !ok {
				return
			}
			cur := c.store.View()
			if c.caughtUp.Load() {
				for _, e := range stateEvents(prev, cur) {
					bus.Publish(e)
				}
			}
			prev = cur
		case ev, ok := <-members:
			if !ok {
				return
			}
			// memberlist may report one suspicion several times; the feed says it once.
			if e, ok := memberEvent(ev); ok && seen[e.Node] != e.State {
				seen[e.Node] = e.State
				bus.Publish(e)
			}
		case <-tick.C:
		}
		if now := c.store.Leader(); now != leader {
			leader = now
			name := memberName(c.store.View(), now)
			bus.Publish(events.Event{Type: events.LeaderChange, Subject: name, Node: name})
		}
	}
}

func (c *Cluster) publishFailover(bus events.Publisher, model, version string, stage int, drive bool, from, to string) {
	st := c.store.View()
	e := events.Event{Type: events.Failover, Subject: consensus.ModelKey(model, version), Model: model, Version: version,
		From: memberName(st, from), To: memberName(st, to)}
	if drive {
		e.Detail = "request handed to another driver"
	} else {
		e.Stage = events.StageIndex(stage)
	}
	bus.Publish(e)
}

// publishSessionReplay says that a generation session this node drives lost its
// replica of stage and replays its tokens on another.
func (c *Cluster) publishSessionReplay(bus events.Publisher, model, version string, stage int, from, to string) {
	st := c.store.View()
	bus.Publish(events.Event{Type: events.SessionReplay, Subject: consensus.ModelKey(model, version), Model: model, Version: version,
		Stage: events.StageIndex(stage), From: memberName(st, from), To: memberName(st, to),
		Detail: "generation session replayed on another replica"})
}

// memberEvents maps memberlist's reports onto member events; metadata updates (the
// load, every few seconds) are not news.
var memberStates = map[mesh.MemberEventType]string{
	mesh.MemberJoin:    "alive",
	mesh.MemberSuspect: "suspect",
	mesh.MemberDead:    "dead",
	mesh.MemberLeave:   "left",
}

func memberEvent(ev mesh.MemberEvent) (events.Event, bool) {
	state, ok := memberStates[ev.Type]
	if !ok {
		return events.Event{}, false
	}
	name := ev.Member.Meta.Name
	if name == "" {
		name = ev.Member.PeerID.String()
	}
	return events.Event{Type: events.MemberState, Subject: name, Node: name, State: state, Detail: "memberlist"}, true
}

func memberName(st *consensus.ClusterState, id string) string {
	if m, ok := st.Members[id]; ok && m.Name != "" {
		return m.Name
	}
	return id
}

// stateEvents lists what changed from prev to cur, each part of the state by its own
// diff, in a fixed order: members, deploys, placements, stages.
func stateEvents(prev, cur *consensus.ClusterState) []events.Event {
	var out []events.Event
	for _, diff := range []func(prev, cur *consensus.ClusterState) []events.Event{
		memberChanges, deployChanges, placementChanges, servingChanges,
	} {
		out = append(out, diff(prev, cur)...)
	}
	return out
}

// memberChanges reports members recorded, drained, undrained, left and removed.
// Health (alive, suspect, dead) comes from memberlist, seconds earlier than Raft.
func memberChanges(prev, cur *consensus.ClusterState) []events.Event {
	var out []events.Event
	for _, id := range slices.Sorted(maps.Keys(cur.Members)) {
		m := cur.Members[id]
		old, known := prev.Members[id]
		e := events.Event{Subject: m.Name, Node: m.Name, State: string(m.State)}
		switch {
		case !known:
			e.Type, e.Detail = events.MemberState, "recorded in the cluster"
		case old.State == m.State:
			continue
		case m.State == consensus.MemberDraining:
			e.Type = events.Drain
		case old.State == consensus.MemberDraining && m.State == consensus.MemberAlive:
			e.Type = events.Undrain
		case m.State == consensus.MemberLeft || m.State == consensus.MemberRemoved:
			e.Type = events.MemberState
		default:
			continue
		}
		out = append(out, e)
	}
	return out
}

// deployChanges reports a deploy's phases: recorded, placed, loading (k of n stages
// with a ready replica), ready, deleted.
func deployChanges(prev, cur *consensus.ClusterState) []events.Event {
	var out []events.Event
	for _, key := range slices.Sorted(maps.Keys(cur.Models)) {
		m := cur.Models[key]
		e := events.Event{Type: events.Deploy, Subject: key, Model: m.Name, Version: m.Version}
		_, known := prev.Models[key]
		if !known {
			r := e
			r.State, r.Detail = events.DeployRecorded, fmt.Sprintf("%d stages", len(m.Stages))
			out = append(out, r)
		}
		_, wasPlaced := prev.Placements[key]
		if _, placed := cur.Placements[key]; placed && !wasPlaced {
			p := e
			p.State = events.DeployPlaced
			out = append(out, p)
		}
		before, now := readyStages(prev, key), readyStages(cur, key)
		if before == now || now == 0 && !known {
			continue
		}
		e.State = events.DeployLoading
		if now == len(m.Stages) {
			e.State = events.DeployReady
		}
		e.Detail = fmt.Sprintf("%d/%d stages ready", now, len(m.Stages))
		out = append(out, e)
	}
	for _, key := range slices.Sorted(maps.Keys(prev.Models)) {
		if _, ok := cur.Models[key]; !ok {
			m := prev.Models[key]
			out = append(out, events.Event{Type: events.Deploy, Subject: key, Model: m.Name, Version: m.Version, State: events.DeployDeleted})
		}
	}
	return out
}

// readyStages counts the stages of a model version that some placed replica reports
// ready.
func readyStages(st *consensus.ClusterState, key string) int {
	m, ok := st.Models[key]
	p, placed := st.Placements[key]
	if !ok || !placed {
		return 0
	}
	n := 0
	for k := range m.Stages {
		if k >= len(p.Stages) {
			break
		}
		for _, id := range p.Stages[k] {
			rec := st.Serving[id]
			if rec.Serves(rec.Boot, m.Name, m.Version, k) {
				n++
				break
			}
		}
	}
	return n
}

// placementChanges reports every new placement epoch with the replicas each stage
// gained and lost.
func placementChanges(prev, cur *consensus.ClusterState) []events.Event {
	var out []events.Event
	for _, key := range slices.Sorted(maps.Keys(cur.Placements)) {
		p := cur.Placements[key]
		old := prev.Placements[key]
		if old.Epoch == p.Epoch {
			continue
		}
		e := events.Event{Type: events.Placement, Subject: key, Model: p.Model, Version: p.Version, Epoch: p.Epoch}
		for k, ids := range p.Stages {
			var was []string
			if k < len(old.Stages) {
				was = old.Stages[k]
			}
			mv := events.StageMove{Stage: k}
			for _, id := range ids {
				if !slices.Contains(was, id) {
					mv.Added = append(mv.Added, memberName(cur, id))
				}
			}
			for _, id := range was {
				if !slices.Contains(ids, id) {
					mv.Removed = append(mv.Removed, memberName(cur, id))
				}
			}
			if len(mv.Added)+len(mv.Removed) > 0 {
				e.Moved = append(e.Moved, mv)
			}
		}
		out = append(out, e)
	}
	return out
}

// servingChanges reports stages that a node newly reports ready, and stages a node no
// longer holds.
func servingChanges(prev, cur *consensus.ClusterState) []events.Event {
	var out []events.Event
	ids := slices.Sorted(maps.Keys(cur.Serving))
	for id := range prev.Serving {
		if _, ok := cur.Serving[id]; !ok {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		was, now := servedSet(prev.Serving[id]), servedSet(cur.Serving[id])
		name := memberName(cur, id)
		for _, ref := range cur.Serving[id].Stages {
			if ref.Ready && !was[stageOf(ref)] {
				out = append(out, stageEvent(events.StageReady, name, ref))
			}
		}
		for _, ref := range prev.Serving[id].Stages {
			if _, still := now[stageOf(ref)]; !still {
				out = append(out, stageEvent(events.StageUnloaded, name, ref))
			}
		}
	}
	return out
}

type servedStage struct {
	model, version string
	stage          int
}

func stageOf(r consensus.ServedRef) servedStage { return servedStage{r.Model, r.Version, r.Stage} }

// servedSet maps each stage of a serving record to whether it is ready.
func servedSet(s consensus.Serving) map[servedStage]bool {
	out := make(map[servedStage]bool, len(s.Stages))
	for _, r := range s.Stages {
		out[stageOf(r)] = r.Ready
	}
	return out
}

func stageEvent(t events.Type, node string, r consensus.ServedRef) events.Event {
	return events.Event{Type: t, Subject: consensus.ModelKey(r.Model, r.Version), Node: node,
		Model: r.Model, Version: r.Version, Stage: events.StageIndex(r.Stage)}
}
