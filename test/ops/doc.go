// Package ops holds the system tests of the operators' surface: meshctl's every
// command in both output forms against a 3-node cluster of real meshnode
// processes, tokens and their scopes, /metrics counted against the traffic sent, and
// a rolling restart (drain, stop, start, undrain, each node in turn) under a steady
// stream of requests with zero failures. The tests share one cluster, started once,
// because starting real nodes on two shared cores costs more than the checks.
package ops
