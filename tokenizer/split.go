package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// contractions are the suffixes GPT-2 splits off as their own pieces, in the order its
// pattern tries them. They are case-sensitive, as in GPT-2.
var contractions = []string{"s", "t", "re", "ve", "m", "ll", "d"}

// splitPieces splits text as GPT-2's pre-tokenizer pattern does:
//
//	's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// The alternatives are tried in order at each position and the first that matches
// wins, as in a backtracking regexp engine.
func splitPieces(text string) []string {
	var out []string
	for i := 0; i < len(text); {
		n := matchAt(text, i)
		out = append(out, text[i:i+n])
		i += n
	}
	return out
}

// matchAt returns the length of the piece that starts at i (always > 0).
func matchAt(text string, i int) int {
	if n := matchContraction(text, i); n > 0 {
		return n
	}
	for _, class := range []func(rune) bool{isLetter, isNumber, isOther} {
		if n := matchClassRun(text, i, class); n > 0 {
			return n
		}
	}
	return matchSpace(text, i)
}

func isLetter(r rune) bool { return unicode.IsLetter(r) }
func isNumber(r rune) bool { return unicode.IsNumber(r) }
func isOther(r rune) bool  { return !unicode.IsSpace(r) && !isLetter(r) && !isNumber(r) }

func matchContraction(text string, i int) int {
	if text[i] != '\'' {
		return 0
	}
	for _, c := range contractions {
		if len(text)-i-1 >= len(c) && text[i+1:i+1+len(c)] == c {
			return 1 + len(c)
		}
	}
	return 0
}

// matchClassRun matches ` ?class+`: an optional ASCII space, then one or more runes of
// the class. The space is tried first, as the greedy `?` does.
func matchClassRun(text string, i int, class func(rune) bool) int {
	start := i
	if text[i] == ' ' {
		if n := runLength(text, i+1, class); n > 0 {
			return 1 + n
		}
	}
	return runLength(text, start, class)
}

// runLength is the byte length of the run of class runes starting at i.
func runLength(text string, i int, class func(rune) bool) int {
	j := i
	for j < len(text) {
		r, size := utf8.DecodeRuneInString(text[j:])
		if !class(r) {
			break
		}
		j += size
	}
	return j - i
}

// matchSpace matches `\s+(?!\S)|\s+`. The first alternative gives back the run's last
// whitespace rune when a non-space follows, so that rune can lead the next piece (" a"
// rather than " " + "a"); a single whitespace rune before a non-space falls to `\s+`.
// Text that reaches here starts with whitespace: every other rune is a letter, a number
// or "other" and matched above. Invalid UTF-8 decodes to U+FFFD, which is "other".
func matchSpace(text string, i int) int {
	n := runLength(text, i, unicode.IsSpace)
	if i+n == len(text) {
		return n
	}
	_, lastSize := utf8.DecodeLastRuneInString(text[i : i+n])
	if n > lastSize {
		return n - lastSize
	}
	return n
}
