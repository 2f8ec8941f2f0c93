// Package tokenizer is the byte-level BPE tokenizer of the GPT-2 family, read from a
// Hugging Face tokenizer.json or from a vocabulary and merges pair (vocab.json +
// merges.txt, or GPT-2's original encoder.json + vocab.bpe). It turns text into the
// token ids a generative model takes and ids back into bytes.
//
// Text is split the way GPT-2 splits it (contractions, letter runs, number runs,
// other runs, whitespace), each piece's UTF-8 bytes are mapped to printable runes and
// merged by rank. GPT-2's split pattern needs a lookahead (`\s+(?!\S)`) that Go's
// regexp lacks, so the splitter is written by hand (split.go). Whitespace is Unicode's
// White_Space property, as in the Rust tokenizers; letters and numbers are \p{L} and
// \p{N}.
//
// Decoding yields bytes, not a string: one token can hold part of a multi-byte
// character, so a stream of tokens only becomes text once the caller has whole
// characters (see the api package's streaming).
package tokenizer
