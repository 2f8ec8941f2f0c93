// Package faults holds layermesh's fault scenarios (issue "Reliability suite"): real
// meshnode processes under SIGKILL, SIGSTOP, partitions, packet loss and hostile input,
// each trial writing a JSON result under test/results and asserting its targets. They
// run with `make test-faults` (LAYERMESH_FAULTS=1); without it each scenario reports
// itself as not run.
//
// Scenarios here so far need only one node: the client part of scenario 7 (every bad
// input in the API catalogue and broken HTTP, under a stream of good requests; the
// catalogue is read from package api so that a new code fails the test until it is
// covered or excused), scenario 6 for a cluster of one (uploads acknowledged before a
// SIGKILL survive the restart), and a SIGSTOP/SIGCONT of a serving node. The cluster
// scenarios (1-5, and 7's wrong secret and garbage peer) are written once meshnode
// runs in cluster mode; the harness (test/harness) already drives such clusters.
package faults
