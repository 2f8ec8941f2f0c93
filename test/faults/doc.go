// Package faults holds layermesh's fault scenarios: real
// meshnode processes under SIGKILL, SIGSTOP, partitions, packet loss and hostile input,
// each trial writing a JSON result under test/results and asserting its targets. They
// run with `make test-faults` (LAYERMESH_FAULTS=1); without it each scenario reports
// itself as not run. The scenarios that need network namespaces (minority partition,
// packet loss) report "NOT RUN: needs root" when not root.
//
// The cluster scenarios share one shape (cluster_test.go): 3 nodes serve a 2-layer GPT
// cut in 2 stages x 2 replicas; an inference stream comes from a client that knows every
// node and retries a request on the next node on no answer or a 429/502/503/504, within
// the request's deadline; a failed inference is one without a correct answer (logits
// equal to the cluster's own answer before any fault) by then. Catalogue writes are
// uploads of tiny models, each under its own name with its own weights, so a name's
// value is its upload's sha256; a second client reads names back on random nodes. Both
// go into a history that porcupine checks for linearizability (a write without a
// definite answer is recorded as of unknown outcome), and after each trial every node
// must hold the same catalogue with every acknowledged write in it exactly once.
//
// Single-node scenarios: the client part of scenario 7 (every bad input in the API
// catalogue and broken HTTP, under a stream of good requests; the catalogue is read
// from package api so that a new code fails the test until it is covered or excused),
// scenario 6 for a cluster of one, and a SIGSTOP/SIGCONT of a serving node.
package faults
