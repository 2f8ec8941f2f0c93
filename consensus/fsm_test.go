package consensus

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// applyCmd feeds one command through the FSM as raft would.
func applyCmd(t *testing.T, f *fsm, index uint64, c Command) applyResponse {
	t.Helper()
	data, err := EncodeCommand(c)
	if err != nil {
		t.Fatalf("EncodeCommand: %v", err)
	}
	resp, ok := f.Apply(&raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}).(applyResponse)
	if !ok {
		t.Fatalf("FSM returned a non-applyResponse")
	}
	return resp
}

func TestFSMCommands(t *testing.T) {
	f := newFSM(quietLogger(), nil)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	idx := uint64(0)
	ok := func(c Command) Result {
		t.Helper()
		idx++
		r := applyCmd(t, f, idx, c)
		if r.err != nil {
			t.Fatalf("%T: %v", c.Payload, r.err)
		}
		if r.result.Index != idx {
			t.Fatalf("%T: result index %d, want %d", c.Payload, r.result.Index, idx)
		}
		return r.result
	}
	fail := func(c Command, want error) {
		t.Helper()
		idx++
		r := applyCmd(t, f, idx, c)
		if !errors.Is(r.err, want) || !errors.Is(r.err, ErrFailed) {
			t.Fatalf("%T: err %v, want %v wrapped with ErrFailed", c.Payload, r.err, want)
		}
	}

	ok(NewCommand(UpsertMember{Member{ID: "a", Name: "alpha", Addrs: []string{"/ip4/127.0.0.1/tcp/1"}, Capacity: Capacity{MemBudget: 1 << 30, Cores: 4, Speed: 1.5}, Voter: true}}))
	ok(NewCommand(UpsertMember{Member{ID: "b", Name: "beta", State: MemberSuspect}}))
	fail(NewCommand(UpsertMember{Member{Name: "no id"}}), ErrInvalidCommand)
	fail(NewCommand(UpsertMember{Member{ID: "c", State: "zombie"}}), ErrInvalidCommand)
	ok(NewCommand(SetMemberState{ID: "b", State: MemberDead, At: at}))
	fail(NewCommand(SetMemberState{ID: "nobody", State: MemberDead, At: at}), ErrNotFound)
	r := ok(NewCommand(PutModel{Model{Name: "gpt", SourceSHA256: "ab", SourceSize: 10,
		Signature: Signature{Inputs: []TensorSpec{{Name: "ids", DType: 7, Shape: []int64{1, -1}}}},
		Stages:    []StageManifest{{Index: 0, SHA256: "s0", Size: 5, Inputs: []string{"ids"}, Outputs: []string{"h"}, ParamBytes: 4}},
		Deploy:    DeployInfo{Replicas: 2, StageMem: []int64{9}, StageFLOPs: []int64{7}, Cutter: "a"}}}))
	if r.ModelVersion != "1" {
		t.Fatalf("first version of gpt is %q, want 1", r.ModelVersion)
	}
	fail(NewCommand(PutModel{Model{Name: "gpt", Version: "7"}}), ErrInvalidCommand)
	fail(NewCommand(PutModel{Model{}}), ErrInvalidCommand)
	r = ok(NewCommand(SetPlacement{Placement: Placement{Model: "gpt", Version: "1", Stages: [][]string{{"a", "b"}}}, ExpectedEpoch: 0}))
	if r.Epoch != 1 {
		t.Fatalf("first placement epoch %d, want 1", r.Epoch)
	}
	fail(NewCommand(SetPlacement{Placement: Placement{Model: "gpt", Version: "1", Stages: [][]string{{"b"}}}, ExpectedEpoch: 0}), ErrEpochMismatch)
	r = ok(NewCommand(SetPlacement{Placement: Placement{Model: "gpt", Version: "1", Stages: [][]string{{"b"}}}, ExpectedEpoch: 1}))
	if r.Epoch != 2 {
		t.Fatalf("second placement epoch %d, want 2", r.Epoch)
	}
	fail(NewCommand(SetPlacement{Placement: Placement{Model: "nope", Version: "1"}}), ErrNotFound)
	ok(NewCommand(PutToken{Token{ID: "t1", Hash: "h", Scope: ScopeAdmin, Created: at}}))
	fail(NewCommand(PutToken{Token{ID: "t2", Hash: "h", Scope: "root"}}), ErrInvalidCommand)
	ok(NewCommand(RevokeToken{ID: "t1", At: at}))
	fail(NewCommand(RevokeToken{ID: "t9", At: at}), ErrNotFound)
	ok(NewCommand(SetConfig{ClusterConfig{ClusterID: "c1", ReplicationFactor: 2, DeadNodeTimeout: time.Minute}}))
	fail(NewCommand(SetConfig{ClusterConfig{ReplicationFactor: -1}}), ErrInvalidCommand)
	ok(NewCommand(CatalogPut{Key: "k", Value: "v1", Mode: CatalogRegister}))
	fail(NewCommand(CatalogPut{Key: "k", Value: "v2", Mode: CatalogRegister}), ErrExists)
	fail(NewCommand(CatalogPut{Key: "x", Value: "v2", Mode: CatalogUpdate}), ErrNotFound)
	ok(NewCommand(CatalogPut{Key: "k", Value: "v3", Mode: CatalogUpdate}))
	fail(NewCommand(CatalogPut{Key: "k", Mode: "bogus"}), ErrInvalidCommand)

	st, applied := f.current()
	if applied != idx {
		t.Fatalf("applied %d, want %d", applied, idx)
	}
	if m := st.Members["a"]; m.Voter || m.State != MemberAlive || m.Capacity.Cores != 4 {
		t.Fatalf("member a = %+v (Voter must not be settable by UpsertMember)", m)
	}
	if m := st.Members["b"]; m.State != MemberDead || !m.StateSince.Equal(at) {
		t.Fatalf("member b = %+v", m)
	}
	if p := st.Placements[ModelKey("gpt", "1")]; p.Epoch != 2 || !reflect.DeepEqual(p.Stages, [][]string{{"b"}}) {
		t.Fatalf("placement = %+v", p)
	}
	if tok := st.Tokens["t1"]; !tok.Revoked || !tok.RevokedAt.Equal(at) {
		t.Fatalf("token = %+v", tok)
	}
	if d := st.Models[ModelKey("gpt", "1")].Deploy; d.Replicas != 2 || d.StageMem[0] != 9 || d.StageFLOPs[0] != 7 || d.Cutter != "a" {
		t.Fatalf("deploy figures = %+v", d)
	}
	if st.Catalog["k"] != "v3" || st.Config.ClusterID != "c1" {
		t.Fatalf("catalog/config = %v %+v", st.Catalog, st.Config)
	}

	ok(NewCommand(DeleteModel{Name: "gpt"}))
	fail(NewCommand(DeleteModel{Name: "gpt"}), ErrNotFound)
	ok(NewCommand(RemoveMember{ID: "b"}))
	fail(NewCommand(RemoveMember{ID: "b"}), ErrNotFound)
	st, _ = f.current()
	if len(st.Models) != 0 || len(st.Placements) != 0 || len(st.Members) != 1 {
		t.Fatalf("after deletes: %d models %d placements %d members", len(st.Models), len(st.Placements), len(st.Members))
	}
}

// TestFSMDedup replays one request id: the second apply changes nothing and
// returns the first outcome, for successes and rejections alike.
func TestFSMDedup(t *testing.T) {
	f := newFSM(quietLogger(), nil)
	cmd := NewCommand(CatalogPut{Key: "k", Value: "1", Mode: CatalogRegister})
	first := applyCmd(t, f, 1, cmd)
	applyCmd(t, f, 2, NewCommand(CatalogPut{Key: "k", Value: "2"}))
	again := applyCmd(t, f, 3, cmd)
	if again.err != nil || !again.result.Duplicate || again.result.Index != first.result.Index {
		t.Fatalf("replay = %+v %v, want duplicate of index %d", again.result, again.err, first.result.Index)
	}
	st, _ := f.current()
	if st.Catalog["k"] != "2" {
		t.Fatalf("replay changed state: %q", st.Catalog["k"])
	}
	rej := NewCommand(CatalogPut{Key: "k", Value: "3", Mode: CatalogRegister})
	r1 := applyCmd(t, f, 4, rej)
	r2 := applyCmd(t, f, 5, rej)
	if !errors.Is(r1.err, ErrExists) || !errors.Is(r2.err, ErrExists) || !r2.result.Duplicate {
		t.Fatalf("rejected replay: %v / %v %+v", r1.err, r2.err, r2.result)
	}
}

// TestFSMDedupWindowBounded checks the window forgets the oldest ids.
func TestFSMDedupWindowBounded(t *testing.T) {
	f := newFSM(quietLogger(), nil)
	first := NewCommand(CatalogPut{Key: "k0", Value: "x"})
	applyCmd(t, f, 1, first)
	for i := 0; i < dedupWindow; i++ {
		applyCmd(t, f, uint64(i+2), NewCommand(CatalogPut{Key: "k", Value: "v"}))
	}
	if len(f.seen) != dedupWindow || len(f.order) != dedupWindow {
		t.Fatalf("window holds %d/%d ids, want %d", len(f.seen), len(f.order), dedupWindow)
	}
	if _, ok := f.seen[first.RequestID]; ok {
		t.Fatalf("oldest id still remembered")
	}
}

type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { return nil }

// TestFSMSnapshotRestore round-trips state and dedup window, and checks that
// Snapshot is a point-in-time view unaffected by later applies.
func TestFSMSnapshotRestore(t *testing.T) {
	f := newFSM(quietLogger(), nil)
	dup := NewCommand(CatalogPut{Key: "dup", Value: "1"})
	applyCmd(t, f, 1, dup)
	applyCmd(t, f, 2, NewCommand(UpsertMember{Member{ID: "a", Addrs: []string{"x"}}}))
	applyCmd(t, f, 3, NewCommand(PutModel{Model{Name: "m", Stages: []StageManifest{{Inputs: []string{"i"}}}}}))
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	applyCmd(t, f, 4, NewCommand(CatalogPut{Key: "late", Value: "2"}))
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()

	g := newFSM(quietLogger(), nil)
	applyCmd(t, g, 1, NewCommand(CatalogPut{Key: "junk", Value: "gone after restore"}))
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	want, _ := f.current()
	want = want.Clone()
	delete(want.Catalog, "late")
	want.Index = 3
	got, applied := g.current()
	if applied != 3 {
		t.Fatalf("restored applied index %d, want 3", applied)
	}
	wj, _ := json.Marshal(want)
	gj, _ := json.Marshal(got)
	if !bytes.Equal(wj, gj) {
		t.Fatalf("restored state\n%s\nwant\n%s", gj, wj)
	}
	r := applyCmd(t, g, 5, dup)
	if !r.result.Duplicate {
		t.Fatalf("dedup window not restored: %+v", r.result)
	}
	if err := g.Restore(io.NopCloser(strings.NewReader("{not json"))); err == nil {
		t.Fatal("Restore accepted garbage")
	}
	if got2, _ := g.current(); got2.Catalog["dup"] != "1" {
		t.Fatal("failed Restore changed the state")
	}
}

// TestFSMUnknownTypePanics: a type this build does not know must stop the
// replica instead of being skipped.
func TestFSMUnknownTypePanics(t *testing.T) {
	for _, data := range [][]byte{
		{CommandVersion, 200, 1, 'x', '{', '}'},
		{CommandVersion + 1, byte(CmdCatalogPut), 1, 'x', '{', '}'},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("no panic for envelope % x", data[:2])
				}
			}()
			newFSM(quietLogger(), nil).Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data})
		}()
	}
	// A malformed payload of a known type is rejected deterministically instead.
	f := newFSM(quietLogger(), nil)
	r := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{CommandVersion, byte(CmdCatalogPut), 1, 'x', '['}}).(applyResponse)
	if !errors.Is(r.err, ErrInvalidCommand) {
		t.Fatalf("malformed payload: %v", r.err)
	}
}

func TestStateCloneIsDeep(t *testing.T) {
	s := NewClusterState()
	s.Members["a"] = Member{ID: "a", Addrs: []string{"x"}}
	s.Models["m@1"] = Model{Name: "m", Signature: Signature{Inputs: []TensorSpec{{Shape: []int64{1}}}}, Stages: []StageManifest{{Inputs: []string{"i"}}},
		Deploy: DeployInfo{StageMem: []int64{1}, StageFLOPs: []int64{1}}}
	s.LegacyDeploys = map[string]DeployInfo{"m@2": {StageMem: []int64{1}}}
	s.Placements["m@1"] = Placement{Stages: [][]string{{"a"}}}
	c := s.Clone()
	c.Members["a"].Addrs[0] = "changed"
	c.Models["m@1"].Signature.Inputs[0].Shape[0] = 9
	c.Models["m@1"].Stages[0].Inputs[0] = "changed"
	c.Placements["m@1"].Stages[0][0] = "changed"
	c.Catalog["new"] = "v"
	c.ModelVersions["m"] = 5
	c.Models["m@1"].Deploy.StageMem[0] = 9
	c.Models["m@1"].Deploy.StageFLOPs[0] = 9
	c.LegacyDeploys["m@2"].StageMem[0] = 9
	if s.Models["m@1"].Deploy.StageMem[0] != 1 || s.Models["m@1"].Deploy.StageFLOPs[0] != 1 ||
		s.LegacyDeploys["m@2"].StageMem[0] != 1 || len(s.ModelVersions) != 0 {
		t.Fatal("Clone shares deploy figures or version counters with the original")
	}
	if s.Members["a"].Addrs[0] != "x" || s.Models["m@1"].Signature.Inputs[0].Shape[0] != 1 ||
		s.Models["m@1"].Stages[0].Inputs[0] != "i" || s.Placements["m@1"].Stages[0][0] != "a" || len(s.Catalog) != 0 {
		t.Fatal("Clone shares memory with the original")
	}
}

func TestEncodeRejects(t *testing.T) {
	if _, err := EncodeCommand(Command{Payload: CatalogPut{Key: "k"}}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("empty request id: %v", err)
	}
	if _, err := EncodeCommand(Command{RequestID: "x"}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("nil payload: %v", err)
	}
	if _, err := EncodeCommand(Command{RequestID: strings.Repeat("x", maxRequestIDLen+1), Payload: CatalogPut{Key: "k"}}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("long request id: %v", err)
	}
}

func TestTokenForSecret(t *testing.T) {
	s := NewClusterState()
	s.Tokens["a"] = Token{ID: "a", Hash: TokenHash("secret-a"), Scope: ScopeAdmin}
	s.Tokens["b"] = Token{ID: "b", Hash: TokenHash("secret-b"), Scope: ScopeInfer, Revoked: true}
	if tok, ok := s.TokenForSecret("secret-a"); !ok || tok.ID != "a" {
		t.Fatalf("secret-a -> %+v %v", tok, ok)
	}
	if tok, ok := s.TokenForSecret("secret-b"); !ok || tok.ID != "b" || !tok.Revoked {
		t.Fatalf("secret-b -> %+v %v", tok, ok)
	}
	if _, ok := s.TokenForSecret("secret-c"); ok {
		t.Fatal("unknown secret matched")
	}
	if TokenHash("x") != "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881" {
		t.Fatalf("TokenHash(x) = %s", TokenHash("x"))
	}
}

func TestFSMReportServing(t *testing.T) {
	f := newFSM(quietLogger(), nil)
	idx := uint64(0)
	apply := func(p Payload) error {
		t.Helper()
		idx++
		return applyCmd(t, f, idx, NewCommand(p)).err
	}
	report := ReportServing{Node: "a", Serving: Serving{Boot: "b1", Stages: []ServedRef{{Model: "gpt", Version: "v1", Stage: 1, Ready: true}, {Model: "gpt", Version: "v1", Stage: 2}}}}
	if err := apply(report); !errors.Is(err, ErrNotFound) {
		t.Fatalf("report from a non-member: %v, want %v", err, ErrNotFound)
	}
	if err := apply(UpsertMember{Member{ID: "a", Name: "alpha"}}); err != nil {
		t.Fatal(err)
	}
	if err := apply(report); err != nil {
		t.Fatal(err)
	}
	got := fsmState(f).Serving["a"]
	if !got.Serves("b1", "gpt", "v1", 1) || got.Serves("b1", "gpt", "v1", 2) || got.Serves("b2", "gpt", "v1", 1) || got.Serves("b1", "gpt", "v2", 1) {
		t.Fatalf("Serves wrong on %+v", got)
	}
	for _, bad := range []ReportServing{
		{Node: "a", Serving: Serving{Stages: report.Serving.Stages}},
		{Node: "a", Serving: Serving{Boot: "b1", Stages: []ServedRef{{Model: "gpt", Stage: 0}}}},
		{Node: "a", Serving: Serving{Boot: "b1", Stages: make([]ServedRef, MaxServedStages+1)}},
	} {
		if err := apply(bad); !errors.Is(err, ErrInvalidCommand) {
			t.Fatalf("%+v: %v, want %v", bad.Serving.Boot, err, ErrInvalidCommand)
		}
	}
	if err := apply(RemoveMember{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := fsmState(f).Serving["a"]; ok {
		t.Fatal("a removed member's serving record stays")
	}
}

func fsmState(f *fsm) *ClusterState {
	st, _ := f.current()
	return st
}
