// Package partition cuts an ONNX model into contiguous pipeline stages.
//
// The flow is Load -> Analyze -> Plan -> Extract (Partition does all four), and
// Verify checks that the chain of stage models computes what the whole model does.
//
// A model is analysed in one topological order of its compute nodes. A cut point p
// splits that order into nodes[:p] and nodes[p:]; the tensors produced before p and
// read after it are the activations that cross the cut. Weights never cross: an
// initializer or Constant node is copied into every stage that reads it and counted in
// each stage's memory, because shipping a weight per request would cost far more than
// storing it twice. Graph inputs go straight to every stage that reads them. Nodes with
// subgraphs (If, Loop, Scan) are single nodes here, and the outer tensors their bodies
// read count as their inputs, so a cut never separates a body from its captures.
//
// The planner is an exact dynamic program over cut points that minimises the slowest
// stage (compute time plus the time to send its crossing tensors on) subject to every
// stage fitting its device's memory budget.
package partition
