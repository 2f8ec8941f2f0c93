// Package mesh is the network layer of a layermesh node: one libp2p host with a
// persistent identity, discovery (mDNS scoped by cluster id, static seeds, an optional
// Kademlia DHT rendezvous), membership and failure detection through hashicorp/memberlist,
// cluster-secret security, and the node-to-node protocols (stage RPC, blob transfer,
// link probes).
//
// # Security
//
// The cluster secret never travels. It derives (HKDF-SHA256, salted with the cluster id)
// three keys: the memberlist keyring key, the join-handshake MAC key and, only when the
// private-network option is on, the libp2p pre-shared key. A peer proves it knows the
// secret in the join handshake (/layermesh/join/1: nonces from both sides, HMAC over both
// peer ids and both nonces, so a proof is bound to one authenticated connection and cannot
// be replayed). Until a peer has either passed that handshake in this process or is listed
// as a member by the cluster state (Config.IsMember), every other protocol refuses it:
// stream handlers registered through Host() are wrapped so the refusal happens before any
// handler code runs, and the refusal is explicit (a refusal frame on our own protocols, a
// reset with a logged reason on foreign ones), never a silent timeout.
//
// # Two wires
//
// Control traffic (join handshake, Raft, stage calls to a peer whose data port is not
// known) uses libp2p streams over TLS 1.3 (or Noise) + yamux. Bulk traffic (stage
// tensors, blob chunks, bandwidth probes) uses a separate data connection: a direct TCP
// connection on which a TLS 1.3 handshake authenticates both peers with certificates
// signed by their libp2p identity keys (libp2p's own TLS identity scheme, so the peer
// id is verified exactly as libp2p verifies it) and agrees the keys. The bytes then move
// in 1 MiB AES-GCM records keyed from that session (sealed.go): no multiplexer, no 16 KiB
// TLS records, records sealed and opened on parallel workers, and a record read straight
// into the tensor's final memory and decrypted in place. One exchange runs at a time per
// connection; a small pool of connections per peer serves concurrent calls.
//
// # Lifetimes
//
// Every goroutine the Mesh starts is tied to its root context and a WaitGroup; Close
// cancels the context, closes listeners and connections, and waits for all of them.
package mesh
