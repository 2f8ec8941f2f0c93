package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
)

// endOfText is GPT-2's one special token. Loaded from a vocab + merges pair it
// becomes an added token, as the Hugging Face GPT-2 tokenizer makes it.
const endOfText = "<|endoftext|>"

// hfFile is the part of a Hugging Face tokenizer.json this package reads.
type hfFile struct {
	AddedTokens  []hfAdded       `json:"added_tokens"`
	PreTokenizer *hfComponent    `json:"pre_tokenizer"`
	Decoder      *hfComponent    `json:"decoder"`
	Model        *hfModel        `json:"model"`
	Normalizer   json.RawMessage `json:"normalizer"`
}

type hfAdded struct {
	ID         int32  `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type hfComponent struct {
	Type           string `json:"type"`
	AddPrefixSpace bool   `json:"add_prefix_space"`
	UseRegex       *bool  `json:"use_regex"`
}

type hfModel struct {
	Type   string           `json:"type"`
	Vocab  map[string]int32 `json:"vocab"`
	Merges json.RawMessage  `json:"merges"`
	// Options that change how BPE merges; GPT-2's values are the zero values.
	Dropout                 *float64 `json:"dropout"`
	ContinuingSubwordPrefix string   `json:"continuing_subword_prefix"`
	EndOfWordSuffix         string   `json:"end_of_word_suffix"`
	ByteFallback            bool     `json:"byte_fallback"`
	IgnoreMerges            bool     `json:"ignore_merges"`
}

// checkOptions refuses BPE options this package does not implement, rather than
// tokenize differently from the model's training.
func (m *hfModel) checkOptions() error {
	switch {
	case m.Dropout != nil && *m.Dropout != 0:
		return fmt.Errorf("%w: BPE dropout is not supported", ErrInvalid)
	case m.ContinuingSubwordPrefix != "" || m.EndOfWordSuffix != "":
		return fmt.Errorf("%w: BPE subword prefixes and suffixes are not supported", ErrInvalid)
	case m.ByteFallback:
		return fmt.Errorf("%w: BPE byte_fallback is not supported", ErrInvalid)
	case m.IgnoreMerges:
		return fmt.Errorf("%w: BPE ignore_merges is not supported", ErrInvalid)
	}
	return nil
}

// Parse reads a Hugging Face tokenizer.json. It accepts a BPE model with a ByteLevel
// pre-tokenizer (GPT-2, GPT-J, GPT-NeoX, OPT, ...); other kinds (WordPiece,
// SentencePiece's Metaspace) are refused, not half-supported.
func Parse(data []byte) (*Tokenizer, error) {
	var f hfFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%w: tokenizer.json does not parse: %w", ErrInvalid, err)
	}
	if f.Model == nil || f.Model.Type != "BPE" {
		kind := "none"
		if f.Model != nil {
			kind = f.Model.Type
		}
		return nil, fmt.Errorf("%w: model type %q, want BPE", ErrInvalid, kind)
	}
	if f.PreTokenizer == nil || !f.PreTokenizer.isByteLevel() {
		return nil, fmt.Errorf("%w: the pre-tokenizer is not GPT-2's ByteLevel split (only that one is supported)", ErrInvalid)
	}
	if f.PreTokenizer.AddPrefixSpace {
		return nil, fmt.Errorf("%w: ByteLevel add_prefix_space is not supported", ErrInvalid)
	}
	if len(f.Normalizer) > 0 && !bytes.Equal(bytes.TrimSpace(f.Normalizer), []byte("null")) {
		return nil, fmt.Errorf("%w: normalizers are not supported", ErrInvalid)
	}
	if err := f.Model.checkOptions(); err != nil {
		return nil, err
	}
	merges, err := parseMerges(f.Model.Merges)
	if err != nil {
		return nil, err
	}
	added := make([]addedToken, 0, len(f.AddedTokens))
	for _, a := range f.AddedTokens {
		added = append(added, addedToken{Content: a.Content, ID: a.ID, Special: a.Special})
	}
	vocab := f.Model.Vocab
	for _, a := range added {
		delete(vocab, a.Content) // matched whole before BPE; its bytes are not runes
	}
	return newTokenizer(vocab, merges, added)
}

// isByteLevel says whether the pre-tokenizer is GPT-2's: ByteLevel with its split
// pattern. A Sequence (Llama 3, Qwen2) carries its own Split pattern, which this
// package does not implement, so it is refused rather than tokenized differently.
func (c *hfComponent) isByteLevel() bool {
	return c.Type == "ByteLevel" && (c.UseRegex == nil || *c.UseRegex)
}

// parseMerges reads both encodings of tokenizer.json merges: "a b" strings (older
// files) and ["a", "b"] pairs (tokenizers 0.20 on).
func parseMerges(raw json.RawMessage) ([]mergePair, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var asStrings []string
	if err := json.Unmarshal(raw, &asStrings); err == nil {
		return mergesFromLines(asStrings, 0)
	}
	var asPairs [][]string
	if err := json.Unmarshal(raw, &asPairs); err != nil {
		return nil, fmt.Errorf("%w: merges are neither strings nor pairs: %w", ErrInvalid, err)
	}
	out := make([]mergePair, len(asPairs))
	for i, p := range asPairs {
		if len(p) != 2 || p[0] == "" || p[1] == "" {
			return nil, fmt.Errorf("%w: merge %d is not a pair of tokens", ErrInvalid, i+1)
		}
		out[i] = mergePair{p[0], p[1]}
	}
	return out, nil
}

// mergesFromLines parses "left right" lines; first is the line number of lines[0],
// for messages.
func mergesFromLines(lines []string, first int) ([]mergePair, error) {
	out := make([]mergePair, 0, len(lines))
	for i, l := range lines {
		parts := strings.Split(l, " ")
		if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
			return nil, fmt.Errorf("%w: merges line %d is not two tokens separated by one space: %q", ErrInvalid, first+i+1, l)
		}
		out = append(out, mergePair{parts[0], parts[1]})
	}
	return out, nil
}

// ParseVocabMerges reads a vocab.json (token -> id; GPT-2's encoder.json) and a
// merges.txt (GPT-2's vocab.bpe: an optional "#version" line, then one merge per line).
func ParseVocabMerges(vocabJSON, mergesTxt []byte) (*Tokenizer, error) {
	var vocab map[string]int32
	if err := json.Unmarshal(vocabJSON, &vocab); err != nil {
		return nil, fmt.Errorf("%w: vocabulary does not parse: %w", ErrInvalid, err)
	}
	lines := strings.Split(strings.ReplaceAll(string(mergesTxt), "\r\n", "\n"), "\n")
	first := 0
	if len(lines) > 0 && strings.HasPrefix(lines[0], "#version") {
		lines, first = lines[1:], 1
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	merges, err := mergesFromLines(lines, first)
	if err != nil {
		return nil, err
	}
	var added []addedToken
	if id, ok := vocab[endOfText]; ok {
		added = append(added, addedToken{Content: endOfText, ID: id, Special: true})
		delete(vocab, endOfText)
	}
	return newTokenizer(vocab, merges, added)
}

// Load reads a tokenizer from path: a tokenizer.json file, or a directory holding
// tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe.
func Load(path string) (*Tokenizer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		t, err := Parse(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return t, nil
	}
	if _, err := os.Stat(filepath.Join(path, "tokenizer.json")); err == nil {
		return Load(filepath.Join(path, "tokenizer.json"))
	}
	for _, pair := range [][2]string{{"vocab.json", "merges.txt"}, {"encoder.json", "vocab.bpe"}} {
		v, m := filepath.Join(path, pair[0]), filepath.Join(path, pair[1])
		if _, err := os.Stat(v); err == nil {
			return LoadFiles(v, m)
		}
	}
	return nil, fmt.Errorf("%w: %s has no tokenizer.json, vocab.json + merges.txt or encoder.json + vocab.bpe", ErrInvalid, path)
}

// LoadFiles reads a vocabulary file and a merges file.
func LoadFiles(vocabPath, mergesPath string) (*Tokenizer, error) {
	v, err := os.ReadFile(vocabPath)
	if err != nil {
		return nil, err
	}
	m, err := os.ReadFile(mergesPath)
	if err != nil {
		return nil, err
	}
	t, err := ParseVocabMerges(v, m)
	if err != nil {
		return nil, fmt.Errorf("%s, %s: %w", vocabPath, mergesPath, err)
	}
	return t, nil
}

// MarshalJSON writes the tokenizer as a minimal Hugging Face tokenizer.json that Parse
// reads back to the same tokenizer: this is the one form a tokenizer travels in when
// it is deployed with a model, whatever files it was read from.
func (t *Tokenizer) MarshalJSON() ([]byte, error) {
	merges := make([][2]string, len(t.merges))
	for i, m := range t.merges {
		merges[i] = [2]string{m.left, m.right}
	}
	added := make([]hfAdded, len(t.added))
	for i, a := range t.added {
		added[i] = hfAdded{ID: a.ID, Content: a.Content, Special: a.Special}
	}
	// Every key a Hugging Face tokenizer.json has, with GPT-2's values, so other
	// readers of the format (the Rust and JavaScript tokenizers) take it too.
	type model struct {
		Type                    string           `json:"type"`
		Dropout                 *float64         `json:"dropout"`
		UnkToken                *string          `json:"unk_token"`
		ContinuingSubwordPrefix string           `json:"continuing_subword_prefix"`
		EndOfWordSuffix         string           `json:"end_of_word_suffix"`
		FuseUnk                 bool             `json:"fuse_unk"`
		ByteFallback            bool             `json:"byte_fallback"`
		IgnoreMerges            bool             `json:"ignore_merges"`
		Vocab                   map[string]int32 `json:"vocab"`
		Merges                  [][2]string      `json:"merges"`
	}
	type byteLevel struct {
		Type           string `json:"type"`
		AddPrefixSpace bool   `json:"add_prefix_space"`
		TrimOffsets    bool   `json:"trim_offsets"`
		UseRegex       bool   `json:"use_regex"`
	}
	bl := &byteLevel{Type: "ByteLevel", TrimOffsets: true, UseRegex: true}
	vocab := maps.Clone(t.vocab)
	for _, a := range t.added {
		vocab[a.Content] = a.ID // the format lists added tokens in the vocabulary too
	}
	return json.Marshal(struct {
		Version       string    `json:"version"`
		Truncation    any       `json:"truncation"`
		Padding       any       `json:"padding"`
		AddedTokens   []hfAdded `json:"added_tokens"`
		Normalizer    any       `json:"normalizer"`
		PreTokenizer  any       `json:"pre_tokenizer"`
		PostProcessor any       `json:"post_processor"`
		Decoder       any       `json:"decoder"`
		Model         model     `json:"model"`
	}{Version: "1.0", AddedTokens: added, PreTokenizer: bl, PostProcessor: bl, Decoder: bl,
		Model: model{Type: "BPE", Vocab: vocab, Merges: merges}})
}
