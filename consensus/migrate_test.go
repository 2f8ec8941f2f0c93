package consensus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// The format-1 fixture (testdata/v1, see its README) holds the log of one node
// that deployed gpt (version 1), deployed gone (version 1) and undeployed it.
const fixturePeer = "12D3KooWFPjuH5NcYXDWgiUbMeUwpyNeuq5KXDWz3Ke8b6AqTgim"

// replayFormatOneLog applies the fixture's logged commands in index order.
func replayFormatOneLog(t *testing.T) *fsm {
	t.Helper()
	files, err := filepath.Glob("testdata/v1/log/[0-9]*.bin")
	if err != nil || len(files) == 0 {
		t.Fatalf("no format-1 log entries: %v", err)
	}
	slices.Sort(files)
	f := newFSM(quietLogger(), nil)
	for _, name := range files {
		var index uint64
		if _, err := fmt.Sscanf(filepath.Base(name), "%d-", &index); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		r := f.Apply(&raft.Log{Index: index, Term: 2, Type: raft.LogCommand, Data: data}).(applyResponse)
		// Index 3 was rejected by the old build too: a member state set before
		// the member record existed.
		if r.err != nil && index != 3 {
			t.Fatalf("%s: %v", name, r.err)
		}
	}
	return f
}

func restoreFormatOneSnapshot(t *testing.T) *fsm {
	t.Helper()
	raw, err := os.ReadFile("testdata/v1/snapshot.json")
	if err != nil {
		t.Fatal(err)
	}
	f := newFSM(quietLogger(), nil)
	if err := f.Restore(io.NopCloser(bytes.NewReader(raw))); err != nil {
		t.Fatalf("Restore of a format-1 snapshot: %v", err)
	}
	return f
}

// checkMigratedFixture checks what both format-1 paths must produce: gpt@1
// with its deploy figures out of the catalogue, no trace of gone@1 but its
// version number.
func checkMigratedFixture(t *testing.T, st *ClusterState) {
	t.Helper()
	gpt, ok := st.Models[ModelKey("gpt", "1")]
	if !ok || len(st.Models) != 1 {
		t.Fatalf("models %v, want gpt@1 only", slices.Sorted(maps.Keys(st.Models)))
	}
	want := DeployInfo{Replicas: 2, StageMem: []int64{113816}, StageFLOPs: []int64{56572}, Cutter: fixturePeer}
	if !reflect.DeepEqual(gpt.Deploy, want) {
		t.Fatalf("gpt@1 deploy = %+v, want %+v", gpt.Deploy, want)
	}
	if len(gpt.Stages) != 1 || gpt.Stages[0].SHA256 != "5e88311547e58ae0ae7ff3bf0a6d56d711e01d8578b5a4b4b6e584302510e07f" {
		t.Fatalf("gpt@1 stages = %+v", gpt.Stages)
	}
	if !reflect.DeepEqual(st.ModelVersions, map[string]uint64{"gpt": 1, "gone": 1}) {
		t.Fatalf("model versions = %v", st.ModelVersions)
	}
	if len(st.Catalog) != 0 || len(st.LegacyDeploys) != 0 {
		t.Fatalf("annotations left behind: catalogue %v, waiting %v", st.Catalog, st.LegacyDeploys)
	}
	if pl := st.Placements[ModelKey("gpt", "1")]; pl.Epoch != 1 || !reflect.DeepEqual(pl.Stages, [][]string{{fixturePeer}}) {
		t.Fatalf("gpt@1 placement = %+v", pl)
	}
	if st.Tokens["admin@n0"].Scope != ScopeAdmin || st.Members[fixturePeer].Name != "n0" {
		t.Fatalf("tokens %v members %v", st.Tokens, st.Members)
	}
}

func TestFormatOneLogReplaysIntoTypedState(t *testing.T) {
	f := replayFormatOneLog(t)
	st := fsmState(f)
	checkMigratedFixture(t, st)
	// The deleted version's number is not handed out again, though nothing of
	// the version is left.
	r := applyCmd(t, f, 100, NewCommand(PutModel{Model{Name: "gone"}}))
	if r.err != nil || r.result.ModelVersion != "2" {
		t.Fatalf("redeploy of gone: %+v %v, want version 2", r.result, r.err)
	}
}

// TestFormatOneSnapshotRestoresIntoTypedState: the snapshot was taken after
// the same log, so restoring it and replaying the log give the same state.
func TestFormatOneSnapshotRestoresIntoTypedState(t *testing.T) {
	restored := fsmState(restoreFormatOneSnapshot(t))
	checkMigratedFixture(t, restored)
	replayed := fsmState(replayFormatOneLog(t))
	rj, _ := json.Marshal(restored)
	pj, _ := json.Marshal(replayed)
	if !bytes.Equal(rj, pj) {
		t.Fatalf("restored\n%s\nreplayed\n%s", rj, pj)
	}
}

// TestFormatOneCommandsDecode covers the command types the fixture's log
// lacks, applied on top of the migrated state.
func TestFormatOneCommandsDecode(t *testing.T) {
	f := restoreFormatOneSnapshot(t)
	at := time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		file string
		want Payload
		err  error
	}{
		{"type2-set-member-state.bin", SetMemberState{ID: fixturePeer, State: MemberSuspect, At: at}, nil},
		{"type3-remove-member.bin", RemoveMember{ID: "absent"}, ErrNotFound},
		{"type8-revoke-token.bin", RevokeToken{ID: "admin@n0", At: at}, nil},
		{"type9-set-config.bin", SetConfig{Config: ClusterConfig{ClusterID: "c1", ReplicationFactor: 2, DeadNodeTimeout: time.Minute}}, nil},
		{"type10-catalog-put.bin", CatalogPut{Key: "note", Value: "kept", Mode: CatalogRegister}, nil},
	} {
		data, err := os.ReadFile(filepath.Join("testdata/v1/log", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		c, err := DecodeCommand(data)
		if err != nil || !reflect.DeepEqual(c.Payload, tc.want) {
			t.Fatalf("%s: %#v %v, want %#v", tc.file, c.Payload, err, tc.want)
		}
		r := f.Apply(&raft.Log{Index: 30, Type: raft.LogCommand, Data: data}).(applyResponse)
		if !errors.Is(r.err, tc.err) || (tc.err == nil) != (r.err == nil) {
			t.Fatalf("%s applied: %v, want %v", tc.file, r.err, tc.err)
		}
	}
	st := fsmState(f)
	if st.Members[fixturePeer].State != MemberSuspect || !st.Tokens["admin@n0"].Revoked || st.Config.ClusterID != "c1" || st.Catalog["note"] != "kept" {
		t.Fatalf("state after format-1 commands: %+v", st)
	}
}

// TestFormatOneAnnotationWaitsForItsManifest: in format 1 the annotation was
// committed before the manifest; an annotation whose manifest never came is
// dropped once a later deploy of the name commits.
func TestFormatOneAnnotationWaitsForItsManifest(t *testing.T) {
	f := newFSM(quietLogger(), nil)
	idx := uint64(0)
	apply := func(p Payload) applyResponse {
		t.Helper()
		idx++
		data, err := EncodeCommand(NewCommand(p))
		if err != nil {
			t.Fatal(err)
		}
		data[0] = 1 // the same JSON, in a format-1 envelope
		return f.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: data}).(applyResponse)
	}
	apply(CatalogPut{Key: "deploy/m@1", Value: `{"r":3,"m":[10],"f":[20],"c":"p"}`})
	apply(CatalogPut{Key: "deploy/m@2", Value: `{"r":1}`}) // its manifest never came
	if st := fsmState(f); len(st.LegacyDeploys) != 2 || st.ModelVersions["m"] != 2 || len(st.Catalog) != 0 {
		t.Fatalf("waiting annotations %v, versions %v, catalogue %v", st.LegacyDeploys, st.ModelVersions, st.Catalog)
	}
	if r := apply(CatalogPut{Key: "deploy/m@x", Value: `{}`}); !errors.Is(r.err, ErrInvalidCommand) {
		t.Fatalf("annotation with a bad version: %v", r.err)
	}
	if r := apply(CatalogPut{Key: "deploy/m@3", Value: `[`}); !errors.Is(r.err, ErrInvalidCommand) {
		t.Fatalf("unreadable annotation: %v", r.err)
	}
	// A format-1 PutModel takes Version from the model; EncodeCommand refuses it
	// in format 2, so write the envelope by hand.
	body, _ := json.Marshal(PutModel{Model{Name: "m", Version: "1"}})
	data := append([]byte{1, byte(CmdPutModel), 2, 'r', '1'}, body...)
	r := f.Apply(&raft.Log{Index: 10, Type: raft.LogCommand, Data: data}).(applyResponse)
	if r.err != nil || r.result.ModelVersion != "1" {
		t.Fatalf("format-1 PutModel: %+v %v", r.result, r.err)
	}
	st := fsmState(f)
	if d := st.Models["m@1"].Deploy; d.Replicas != 3 || d.StageMem[0] != 10 || d.StageFLOPs[0] != 20 || d.Cutter != "p" {
		t.Fatalf("m@1 deploy = %+v", d)
	}
	if st.LegacyDeploys != nil || st.ModelVersions["m"] != 2 {
		t.Fatalf("after the manifest: waiting %v, versions %v", st.LegacyDeploys, st.ModelVersions)
	}
	idx = 10
	if r := apply(PutModel{Model{Name: "m"}}); r.err == nil {
		t.Fatal("a format-2 PutModel body in a format-1 envelope has no version and must be refused")
	}
	// Format 2: the next version skips the one the orphaned annotation reserved.
	if r := applyCmd(t, f, 20, NewCommand(PutModel{Model{Name: "m"}})); r.err != nil || r.result.ModelVersion != "3" {
		t.Fatalf("next version: %+v %v, want 3", r.result, r.err)
	}
}

// TestDeletedVersionLeavesOnlyItsNumber: a delete removes the version from the
// state entirely; the counter alone keeps its number from being reused, and a
// retried PutModel reports the version it allocated the first time.
func TestDeletedVersionLeavesOnlyItsNumber(t *testing.T) {
	f := newFSM(quietLogger(), nil)
	put := NewCommand(PutModel{Model{Name: "m", Deploy: DeployInfo{Replicas: 1}}})
	if r := applyCmd(t, f, 1, put); r.result.ModelVersion != "1" {
		t.Fatalf("first version %q", r.result.ModelVersion)
	}
	if r := applyCmd(t, f, 2, put); !r.result.Duplicate || r.result.ModelVersion != "1" {
		t.Fatalf("retry = %+v, want a duplicate of version 1", r.result)
	}
	applyCmd(t, f, 3, NewCommand(DeleteModel{Name: "m"}))
	st := fsmState(f)
	if len(st.Models) != 0 || len(st.Catalog) != 0 || !reflect.DeepEqual(st.ModelVersions, map[string]uint64{"m": 1}) {
		t.Fatalf("after delete: models %v catalogue %v versions %v", st.Models, st.Catalog, st.ModelVersions)
	}
	if r := applyCmd(t, f, 4, NewCommand(PutModel{Model{Name: "m"}})); r.result.ModelVersion != "2" {
		t.Fatalf("version after delete %q, want 2", r.result.ModelVersion)
	}
	if r := applyCmd(t, f, 5, NewCommand(PutModel{Model{Name: "other"}})); r.result.ModelVersion != "1" {
		t.Fatalf("other model's first version %q, want 1", r.result.ModelVersion)
	}
}

func TestSnapshotFormatChecked(t *testing.T) {
	for _, tc := range []struct {
		snap string
		want string
	}{
		{`{"version":3,"state":{}}`, "newer than this build's 2"},
		{`{"version":3,"state":["a future shape"]}`, "newer than this build's 2"},
		{`{"version":2,"state":["not a state"]}`, "format 2"},
		{`{not json`, "invalid character"},
		{`{"version":0,"state":{}}`, "never written"},
		{`{"version":1,"state":{"models":{"m@x":{"name":"m","version":"x"}}}}`, "not a positive decimal"},
		{`{"version":1,"state":{"catalog":{"deploy/m@1":"{"}}}`, "deploy/m@1"},
	} {
		err := newFSM(quietLogger(), nil).Restore(io.NopCloser(strings.NewReader(tc.snap)))
		if !errors.Is(err, ErrInvalidSnapshot) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Restore(%s) = %v, want ErrInvalidSnapshot saying %q", tc.snap, err, tc.want)
		}
	}
}

func TestCommandFormatChecked(t *testing.T) {
	good, err := EncodeCommand(Command{RequestID: "r", Payload: CatalogPut{Key: "k"}})
	if err != nil || good[0] != CommandVersion {
		t.Fatalf("EncodeCommand: % x %v", good, err)
	}
	newer := append([]byte{CommandVersion + 1}, good[1:]...)
	if _, err := DecodeCommand(newer); !errors.Is(err, ErrInvalidCommand) || !strings.Contains(err.Error(), "newer than this build's") {
		t.Fatalf("newer format: %v", err)
	}
	never := append([]byte{0}, good[1:]...)
	if _, err := DecodeCommand(never); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("format 0: %v", err)
	}
	// A format-0 entry is rejected like any malformed command, not a panic.
	if r := newFSM(quietLogger(), nil).Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: never}).(applyResponse); !errors.Is(r.err, ErrInvalidCommand) {
		t.Fatalf("FSM on format 0: %v", r.err)
	}
	for _, p := range []Payload{formatOneAnnotation{Name: "m", Version: 1}, formatOnePutModel{Model: Model{Name: "m"}, Version: 1}} {
		if _, err := EncodeCommand(Command{RequestID: "r", Payload: p}); !errors.Is(err, ErrInvalidCommand) {
			t.Fatalf("EncodeCommand(%T) = %v, want refused", p, err)
		}
	}
}
