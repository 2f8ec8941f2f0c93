package consensus

import "testing"

// TestPutModelWithTheRequestOfAVersionAppliesAsIt: a PutModel whose deploy request a
// version of the same name already has applies as that version and creates nothing,
// however stale the proposer's view was (a deploy retried on another node after its
// first try was committed); a new request, another name, a PutModel without a
// request, or a request whose version was deleted, each make a new version.
func TestPutModelWithTheRequestOfAVersionAppliesAsIt(t *testing.T) {
	st := NewClusterState()
	put := func(name, request, cutter string) string {
		t.Helper()
		out, err := PutModel{Model: Model{Name: name, SourceSHA256: "ab", Deploy: DeployInfo{Request: request, Cutter: cutter}}}.apply(st)
		if err != nil {
			t.Fatal(err)
		}
		return out.modelVersion
	}
	if v := put("m", "r1", "node-a"); v != "1" {
		t.Fatalf("first deploy: version %q", v)
	}
	if v := put("m", "r1", "node-b"); v != "1" {
		t.Fatalf("the same deploy retried on another node: version %q, want 1", v)
	}
	if got := st.Models[ModelKey("m", "1")].Deploy.Cutter; got != "node-a" {
		t.Fatalf("the retried deploy replaced the first one's record (cutter %s)", got)
	}
	if len(st.Models) != 1 || st.ModelVersions["m"] != 1 {
		t.Fatalf("after a retried deploy: %d models, counter %d", len(st.Models), st.ModelVersions["m"])
	}
	if v := put("m", "r2", "node-a"); v != "2" {
		t.Fatalf("another request: version %q, want 2", v)
	}
	if v := put("m", "r1", "node-c"); v != "1" {
		t.Fatalf("the first request again: version %q, want 1", v)
	}
	if v := put("other", "r1", "node-a"); v != "1" || len(st.Models) != 3 {
		t.Fatalf("the same request under another name: version %q, %d models", v, len(st.Models))
	}
	if a, b := put("m", "", "node-a"), put("m", "", "node-a"); a != "3" || b != "4" {
		t.Fatalf("puts without a request: versions %q, %q, want 3, 4", a, b)
	}
	if _, err := (DeleteModel{Name: "m", Version: "1"}).apply(st); err != nil {
		t.Fatal(err)
	}
	if v := put("m", "r1", "node-a"); v != "5" {
		t.Fatalf("a request whose version was deleted: version %q, want 5", v)
	}
}
