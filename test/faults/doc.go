// Package faults holds layermesh's fault scenarios (issue "Reliability suite"): real
// meshnode processes under SIGKILL, SIGSTOP, partitions, packet loss and hostile input,
// each trial writing a JSON result under test/results and asserting its targets. They
// run with `make test-faults` (LAYERMESH_FAULTS=1); without it each scenario reports
// itself as not run.
package faults
