// Package gen holds the system test of text generation across real meshnode
// processes: a with-past GPT with the GPT-2 tokenizer deployed in 3 stages x 2
// replicas on 3 nodes, asked through the OpenAI-compatible API (streamed and whole,
// completions and chat) and through meshctl generate, checked token for token
// against one ONNX Runtime session of the whole model, and a stage holder killed
// mid-stream. Its failover line ("generation failover: stall X ms") is what the
// benchmark report reads.
package gen
