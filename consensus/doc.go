// Package consensus keeps layermesh's cluster state in a Raft-replicated state
// machine so that it survives the loss of any minority of nodes, the leader
// included.
//
// It owns hashicorp/raft and everything around it: the badger-backed log and
// stable store (package consensus/badgerstore), raft's FileSnapshotStore, the
// Raft transport over libp2p streams on /layermesh/raft/1 (so Raft traffic is
// authenticated and encrypted by libp2p like every other protocol), the FSM
// holding members, models, placements, cluster config and hashed API tokens,
// leader forwarding on /layermesh/raft-apply/1, and voter management.
//
// Every external entry point goes through *Store:
//
//   - Apply(ctx, cmd) commits a Command from any node. A follower forwards it to
//     the leader. The outcome has three states: nil (applied), an error wrapping
//     ErrFailed (definitely not applied), or an error wrapping ErrUnknownOutcome
//     (it may or may not have been applied, for example when leadership was lost
//     after the entry was appended). Every Command carries a request id and the
//     FSM deduplicates on it, so retrying the same Command value is always safe.
//   - State() returns a private copy of the local state (possibly stale on a
//     follower); Read(ctx, true) returns a linearizable view: the leader confirms
//     its position with a Raft barrier and the caller waits until its own FSM has
//     applied at least that index.
//   - Watch() notifies on every applied change.
//
// The FSM is deliberately thin: commands are a versioned envelope with a type
// byte that selects a handler from a dispatch table; an unknown type panics
// rather than let replicas diverge. FSM handlers never read the clock or any
// other local input: every time stamp travels inside the command.
//
// The command envelope and the snapshot carry a format number (CommandVersion
// and snapshotVersion, both 2). This build still reads format 1, the one the
// builds before typed model records wrote, and migrates it as it applies or
// restores it (migrate.go), so a data dir of such a build starts as it was. A
// newer format is never guessed at: a log entry stops the replica with a panic
// that says to upgrade, a snapshot fails Restore with ErrInvalidSnapshot, and a
// forwarded command is refused to its sender.
//
// A model version's record is typed: manifest and deploy figures (Model.Deploy)
// are one value, committed by one PutModel. The FSM allocates the version
// number from a per-model counter (ClusterState.ModelVersions), so deleting a
// version removes it entirely while its number is never handed out again.
//
// Only members speak to us: streams on RaftProtocol and ApplyProtocol from a
// peer that is neither in the Raft configuration nor a member record (left and
// removed excluded) are dropped, so a peer still in the mesh's join handshake
// cannot vote or write. A node with an empty configuration admits anyone,
// because it cannot yet know the leader that is adding it.
//
// Joining, as the node layer drives it: the new node opens its Store without
// Bootstrap; a member that admitted it (after the secret handshake) calls
// AddNode(ctx, newID) and writes its Member record with UpsertMember; the
// leader's voter manager promotes it when voters are short. Health changes
// arrive as SetMemberState commands from the node layer.
//
// Voter management runs on the leader: the first node bootstraps alone (or, with
// BootstrapExpect N, once N peers are known through Expect), nodes that join
// through AddNode enter as non-voters and are promoted while there are fewer than
// 3 healthy voters (5 once 5 or more healthy nodes exist); a member the node
// layer reports dead for longer than the dead-node timeout is removed from the
// Raft configuration and marked removed.
package consensus
