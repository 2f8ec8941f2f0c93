// Package harness runs real processes for layermesh's system and fault tests: it builds
// or finds the meshnode binary, starts nodes each with its own data dir and log file,
// kills them with SIGKILL, pauses them with SIGSTOP, restarts them on the same data dir,
// puts them into network namespaces with nftables partitions and packet loss (as root),
// adds latency through a user-space TCP proxy (this kernel has no netem), drives KServe v2
// load with client-side retries, and records each scenario's outcome as JSON.
//
// Everything is tied to a testing.TB: every process, proxy, namespace and rule the
// harness creates is removed by t.Cleanup, processes are started in their own process
// group with a parent-death signal so that even a test binary killed with SIGKILL leaves
// no node behind, and stale namespaces of a dead run are removed by the next one.
//
// The package is a library of non-test files so that test packages elsewhere in test/
// import it; its own tests check its mechanics against a trivial server
// (testdata/echonode), not against meshnode.
package harness
