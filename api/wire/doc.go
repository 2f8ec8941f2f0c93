// Package wire holds the shapes that cross layermesh's HTTP API: the KServe v2 /
// Open Inference Protocol request and response bodies (JSON tensors and the binary
// tensor data extension), model and server metadata, the admin (/v1) bodies and the
// error body.
//
// It is shared by the server (package api) and the client (package api/client) so the
// two can never disagree about a field name, and it is pure Go (no cgo) so that
// meshctl links neither ONNX Runtime nor the server.
//
// The codec keeps tensor bytes where they are: a binary request is read into one
// buffer and each input's Data is a slice of it; a binary response hands each
// output's Data to the writer as-is. Only JSON tensors are converted element by
// element.
package wire
