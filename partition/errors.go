package partition

import "errors"

// Errors callers match with errors.Is. Each is wrapped with the detail that explains it.
var (
	// ErrNotONNX means the bytes do not decode as an ONNX ModelProto with a graph.
	ErrNotONNX = errors.New("not an ONNX model")
	// ErrTruncated means the file ends in the middle of a protobuf field.
	ErrTruncated = errors.New("truncated ONNX model")
	// ErrExternalData means an external-data reference is invalid or unreadable.
	ErrExternalData = errors.New("invalid external data")
	// ErrCycle means the graph's nodes cannot be ordered topologically.
	ErrCycle = errors.New("graph has a cycle")
	// ErrDanglingInput means a node reads a tensor that nothing produces.
	ErrDanglingInput = errors.New("node input has no producer")
	// ErrDuplicateOutput means two nodes (or a node and a graph input) produce one name.
	ErrDuplicateOutput = errors.New("tensor produced more than once")
	// ErrInputShape means a given input shape does not match the model.
	ErrInputShape = errors.New("invalid input shape")
	// ErrTooManyStages means more stages were asked for than the graph has cut points
	// (plus one) or devices.
	ErrTooManyStages = errors.New("too many stages")
	// ErrNoDevices means the planner was given no device.
	ErrNoDevices = errors.New("no devices")
	// ErrDoesNotFit means no contiguous split fits the devices' memory budgets.
	ErrDoesNotFit = errors.New("model does not fit the devices")
	// ErrBadPlan means a StagePlan does not match the graph it is applied to.
	ErrBadPlan = errors.New("invalid stage plan")
	// ErrNotMeasured means a profile of the model does not time enough of its nodes
	// to plan on (MeasureNodeCosts), or measured costs do not fit the graph.
	ErrNotMeasured = errors.New("node costs not measured")
	// ErrMismatch means a stage chain's outputs differ from the whole model's.
	ErrMismatch = errors.New("stage outputs differ from the whole model")
)
