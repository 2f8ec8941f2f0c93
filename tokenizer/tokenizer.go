package tokenizer

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"
)

// ErrInvalid is wrapped by every error about a tokenizer file that cannot be used:
// it does not parse, is not byte-level BPE, or its merges name unknown tokens.
var ErrInvalid = errors.New("invalid tokenizer")

// ErrUnknownID is wrapped when Decode meets an id outside the vocabulary.
var ErrUnknownID = errors.New("token id outside the vocabulary")

// Tokenizer is a byte-level BPE tokenizer. It is safe for concurrent use.
type Tokenizer struct {
	vocab map[string]int32
	// tokenBytes is each id's bytes; nil for an id the vocabulary skips.
	tokenBytes [][]byte
	ranks      map[mergePair]int
	// merges keeps the merge list in rank order, for Marshal.
	merges []mergePair
	// added are the special tokens (<|endoftext|>, chat markers) matched whole in the
	// text before BPE, longest first so that one marker never hides a longer one.
	added []addedToken

	mu    sync.Mutex
	cache map[string][]int32
}

type mergePair struct{ left, right string }

type addedToken struct {
	Content string
	ID      int32
	Special bool
}

// cacheLimit bounds the per-piece cache. Real text repeats a few thousand pieces;
// a client sending random text must not grow it without end, so it is dropped when full.
const cacheLimit = 1 << 16

// newTokenizer checks the vocabulary and merges and builds a Tokenizer.
func newTokenizer(vocab map[string]int32, merges []mergePair, added []addedToken) (*Tokenizer, error) {
	if len(vocab) == 0 {
		return nil, fmt.Errorf("%w: empty vocabulary", ErrInvalid)
	}
	maxID := int32(-1)
	for tok, id := range vocab {
		if id < 0 {
			return nil, fmt.Errorf("%w: token %q has negative id %d", ErrInvalid, tok, id)
		}
		maxID = max(maxID, id)
	}
	for _, a := range added {
		if a.ID < 0 || a.Content == "" {
			return nil, fmt.Errorf("%w: added token %q with id %d", ErrInvalid, a.Content, a.ID)
		}
		maxID = max(maxID, a.ID)
	}
	if int(maxID) >= 4*len(vocab)+len(added)+1024 {
		// A sparse id space would make tokenBytes huge for a small file.
		return nil, fmt.Errorf("%w: id %d is far beyond the vocabulary's %d entries", ErrInvalid, maxID, len(vocab))
	}
	t := &Tokenizer{vocab: vocab, tokenBytes: make([][]byte, maxID+1), ranks: make(map[mergePair]int, len(merges)),
		merges: merges, cache: map[string][]int32{}}
	for tok, id := range vocab {
		b, err := runesToBytes(tok)
		if err != nil {
			return nil, err
		}
		t.tokenBytes[id] = b
	}
	for b := 0; b < 256; b++ {
		if _, ok := vocab[string(byteToRune[b])]; !ok {
			return nil, fmt.Errorf("%w: the vocabulary lacks byte 0x%02x, so some text could not be encoded (not a byte-level BPE vocabulary)", ErrInvalid, b)
		}
	}
	for rank, m := range merges {
		for _, part := range []string{m.left, m.right, m.left + m.right} {
			if _, ok := vocab[part]; !ok {
				return nil, fmt.Errorf("%w: merge %d (%q %q) uses %q, which is not in the vocabulary", ErrInvalid, rank+1, m.left, m.right, part)
			}
		}
		if _, dup := t.ranks[m]; !dup {
			t.ranks[m] = rank
		}
	}
	t.added = append([]addedToken(nil), added...)
	sort.SliceStable(t.added, func(i, j int) bool { return len(t.added[i].Content) > len(t.added[j].Content) })
	for _, a := range t.added {
		t.tokenBytes[a.ID] = []byte(a.Content)
	}
	return t, nil
}

// runesToBytes undoes the byte-to-rune mapping of a vocabulary entry.
func runesToBytes(tok string) ([]byte, error) {
	out := make([]byte, 0, len(tok))
	for _, r := range tok {
		b, ok := runeToByte[r]
		if !ok {
			return nil, fmt.Errorf("%w: token %q has rune %U, which no byte maps to (not a byte-level BPE vocabulary)", ErrInvalid, tok, r)
		}
		out = append(out, b)
	}
	return out, nil
}

// VocabSize is one more than the largest id: the size of a model's logits row.
func (t *Tokenizer) VocabSize() int { return len(t.tokenBytes) }

// TokenID returns the id of a token given as text (a special token such as
// "<|endoftext|>", or a plain token such as "hello"), and whether there is one.
func (t *Tokenizer) TokenID(text string) (int32, bool) {
	for _, a := range t.added {
		if a.Content == text {
			return a.ID, true
		}
	}
	var b strings.Builder
	for i := 0; i < len(text); i++ {
		b.WriteRune(byteToRune[text[i]])
	}
	id, ok := t.vocab[b.String()]
	return id, ok
}

// Encode turns text into token ids. Added (special) tokens in the text become their
// own ids; the rest is split GPT-2's way and merged by rank. Every text encodes: the
// vocabulary holds all 256 bytes.
func (t *Tokenizer) Encode(text string) []int32 {
	var ids []int32
	for text != "" {
		at, tok := t.nextAdded(text)
		for _, piece := range splitPieces(text[:at]) {
			ids = append(ids, t.encodePiece(piece)...)
		}
		if tok == nil {
			break
		}
		ids = append(ids, tok.ID)
		text = text[at+len(tok.Content):]
	}
	return ids
}

// nextAdded finds the first added token in text: its offset and the token, or
// len(text) and nil.
func (t *Tokenizer) nextAdded(text string) (int, *addedToken) {
	at, found := len(text), (*addedToken)(nil)
	for i := range t.added {
		if j := strings.Index(text, t.added[i].Content); j >= 0 && j < at {
			at, found = j, &t.added[i]
		}
	}
	return at, found
}

// encodePiece applies the merges to one pre-tokenized piece.
func (t *Tokenizer) encodePiece(piece string) []int32 {
	t.mu.Lock()
	ids, ok := t.cache[piece]
	t.mu.Unlock()
	if ok {
		return ids
	}
	word := make([]string, len(piece))
	for i := 0; i < len(piece); i++ {
		word[i] = string(byteToRune[piece[i]])
	}
	word = t.merge(word)
	ids = make([]int32, len(word))
	for i, w := range word {
		ids[i] = t.vocab[w] // present: bytes and merge results are checked at load
	}
	t.mu.Lock()
	if len(t.cache) >= cacheLimit {
		clear(t.cache)
	}
	t.cache[piece] = ids
	t.mu.Unlock()
	return ids
}

// merge repeatedly joins the adjacent pair of lowest rank, every occurrence of it left
// to right, until no pair has a rank: GPT-2's bpe().
func (t *Tokenizer) merge(word []string) []string {
	for len(word) > 1 {
		best, bestRank := mergePair{}, -1
		for i := 0; i+1 < len(word); i++ {
			p := mergePair{word[i], word[i+1]}
			if r, ok := t.ranks[p]; ok && (bestRank < 0 || r < bestRank) {
				best, bestRank = p, r
			}
		}
		if bestRank < 0 {
			break
		}
		next := word[:0:0]
		for i := 0; i < len(word); i++ {
			if i+1 < len(word) && word[i] == best.left && word[i+1] == best.right {
				next = append(next, best.left+best.right)
				i++
				continue
			}
			next = append(next, word[i])
		}
		word = next
	}
	return word
}

// Decode turns ids back into bytes. The bytes are UTF-8 once the ids are a whole
// text; a prefix of a generation can end inside a character.
func (t *Tokenizer) Decode(ids []int32) ([]byte, error) {
	var out []byte
	for _, id := range ids {
		if id < 0 || int(id) >= len(t.tokenBytes) || t.tokenBytes[id] == nil {
			return nil, fmt.Errorf("%w: %d (vocabulary of %d)", ErrUnknownID, id, len(t.tokenBytes))
		}
		out = append(out, t.tokenBytes[id]...)
	}
	return out, nil
}

// DecodeString is Decode for whole texts: bytes that are not UTF-8 become U+FFFD.
func (t *Tokenizer) DecodeString(ids []int32) (string, error) {
	b, err := t.Decode(ids)
	if err != nil {
		return "", err
	}
	if utf8.Valid(b) {
		return string(b), nil
	}
	return strings.ToValidUTF8(string(b), "\uFFFD"), nil
}

// byteToRune is GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest
// to runes from U+0100 on, so every token is printable text in vocab files.
var byteToRune, runeToByte = byteRunes()

func byteRunes() ([256]rune, map[rune]byte) {
	var fwd [256]rune
	back := make(map[rune]byte, 256)
	printable := func(b int) bool {
		return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
	}
	n := 0
	for b := 0; b < 256; b++ {
		r := rune(b)
		if !printable(b) {
			r = rune(256 + n)
			n++
		}
		fwd[b] = r
		back[r] = byte(b)
	}
	return fwd, back
}
