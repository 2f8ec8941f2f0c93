// Package split holds the system tests of split inference: real meshnode processes
// (started by test/harness) deploy a generated GPT as pipeline stages with replicas,
// answer through any node, and keep answering while stage holders and the leader are
// killed with SIGKILL. Every output is compared with a single ONNX Runtime session on
// the whole model, run in the test process.
package split
