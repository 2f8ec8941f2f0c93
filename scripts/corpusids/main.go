// Command corpusids makes what the demo's small GPT is trained on and served with:
//
//   - a byte-level BPE tokenizer of GPT-2's first -merges merges (vocab.json and
//     merges.txt in -tokenizer-out): GPT-2 numbers its tokens 256 + the rank of the
//     merge that makes them, so keeping the first N merges keeps ids 0..255+N as they
//     are, and <|endoftext|> becomes 256+N. A vocabulary of 8,257 instead of 50,257
//     makes the model's token table and LM head six times smaller;
//   - with -out, the token ids of a folder of fortune files (Debian's fortunes
//     package): every fortune (the text between lines holding only "%"), trimmed and
//     followed by a "%" line as in the files, encoded with that tokenizer, written as
//     little-endian int32. The separator is text, not <|endoftext|>, so that a
//     generation (which stops at <|endoftext|>) goes on from one fortune to the next.
//
// Files are read in name order, skipping the index files (.dat), the .u8 links and
// the ASCII-art collection, so the same package version always gives the same ids.
//
// Usage:
//
//	go run ./scripts/corpusids -tokenizer third_party/tokenizers/gpt2 -merges 8000 \
//		-tokenizer-out tok/ -corpus /usr/share/games/fortunes -out ids.bin
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/layermesh/layermesh/tokenizer"
)

// skipped are the collections of the fortunes package that are not prose.
var skipped = map[string]bool{"ascii-art": true}

func main() {
	gpt2 := flag.String("tokenizer", "third_party/tokenizers/gpt2", "GPT-2 tokenizer folder (encoder.json, vocab.bpe)")
	merges := flag.Int("merges", 8000, "merges of GPT-2's to keep")
	tokOut := flag.String("tokenizer-out", "", "folder to write the tokenizer to (vocab.json, merges.txt)")
	corpus := flag.String("corpus", "/usr/share/games/fortunes", "folder of fortune files")
	out := flag.String("out", "", "file to write the corpus's token ids to")
	flag.Parse()
	if *tokOut == "" && *out == "" {
		fmt.Fprintln(os.Stderr, "corpusids: give -tokenizer-out, -out or both")
		os.Exit(2)
	}
	if err := run(*gpt2, *merges, *tokOut, *corpus, *out); err != nil {
		fmt.Fprintln(os.Stderr, "corpusids:", err)
		os.Exit(1)
	}
}

func run(gpt2 string, merges int, tokOut, corpus, out string) error {
	vocab, mergeLines, err := TruncatedGPT2(gpt2, merges)
	if err != nil {
		return err
	}
	if tokOut != "" {
		if err := os.MkdirAll(tokOut, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(tokOut, "vocab.json"), vocab, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(tokOut, "merges.txt"), mergeLines, 0o644); err != nil {
			return err
		}
	}
	if out == "" {
		return nil
	}
	tok, err := tokenizer.ParseVocabMerges(vocab, mergeLines)
	if err != nil {
		return err
	}
	ids, texts, files, err := CorpusIDs(tok, corpus)
	if err != nil {
		return err
	}
	buf := make([]byte, 4*len(ids))
	for i, id := range ids {
		binary.LittleEndian.PutUint32(buf[4*i:], uint32(id))
	}
	if err := os.WriteFile(out, buf, 0o644); err != nil {
		return err
	}
	fmt.Printf("corpusids: %d fortunes from %d files, %d tokens (vocabulary %d) -> %s\n", texts, files, len(ids), tok.VocabSize(), out)
	return nil
}

// TruncatedGPT2 returns the vocab.json and merges.txt of GPT-2's tokenizer (the
// encoder.json and vocab.bpe in dir) cut to its first n merges.
func TruncatedGPT2(dir string, n int) (vocabJSON, mergesTxt []byte, err error) {
	encRaw, err := os.ReadFile(filepath.Join(dir, "encoder.json"))
	if err != nil {
		return nil, nil, err
	}
	bpe, err := os.ReadFile(filepath.Join(dir, "vocab.bpe"))
	if err != nil {
		return nil, nil, err
	}
	var enc map[string]int
	if err := json.Unmarshal(encRaw, &enc); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", dir, err)
	}
	lines := strings.Split(strings.TrimRight(string(bpe), "\n"), "\n")
	if len(lines) < 1+n || n < 0 {
		return nil, nil, fmt.Errorf("%s has %d merges, %d asked", dir, len(lines)-1, n)
	}
	keep := map[string]int{}
	for tok, id := range enc {
		if id < 256+n {
			keep[tok] = id
		}
	}
	// The merge of rank r makes token 256+r: check it, so that a different vocabulary
	// is refused rather than cut wrong.
	for r, line := range lines[1 : 1+n] {
		a, b, ok := strings.Cut(line, " ")
		if !ok || enc[a+b] != 256+r {
			return nil, nil, fmt.Errorf("%s: merge %d (%q) does not make token %d: not GPT-2's numbering", dir, r, line, 256+r)
		}
	}
	if len(keep) != 256+n {
		return nil, nil, fmt.Errorf("%s: %d tokens below id %d, want %d", dir, len(keep), 256+n, 256+n)
	}
	keep["<|endoftext|>"] = 256 + n
	vocabJSON, err = json.Marshal(keep)
	if err != nil {
		return nil, nil, err
	}
	return vocabJSON, []byte(strings.Join(lines[:1+n], "\n") + "\n"), nil
}

// CorpusIDs encodes every fortune under corpus (see the command's doc) and returns the
// ids with the counts of fortunes and files.
func CorpusIDs(tok *tokenizer.Tokenizer, corpus string) (ids []int32, texts, nfiles int, err error) {
	files, err := fortuneFiles(corpus)
	if err != nil {
		return nil, 0, 0, err
	}
	for _, f := range files {
		fortunes, err := readFortunes(f)
		if err != nil {
			return nil, 0, 0, err
		}
		for _, text := range fortunes {
			ids = append(ids, tok.Encode(text+"\n%\n")...)
		}
		texts += len(fortunes)
	}
	if texts == 0 {
		return nil, 0, 0, fmt.Errorf("no fortunes under %s (is Debian's fortunes package installed?)", corpus)
	}
	return ids, texts, len(files), nil
}

// fortuneFiles lists the fortune collections in dir, in name order.
func fortuneFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || strings.Contains(name, ".") || skipped[name] {
			continue
		}
		out = append(out, filepath.Join(dir, name))
	}
	slices.Sort(out)
	return out, nil
}

// readFortunes splits a fortune file at its "%" lines, trimming each fortune.
func readFortunes(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	var cur strings.Builder
	flush := func() {
		if s := strings.TrimSpace(cur.String()); s != "" {
			out = append(out, s)
		}
		cur.Reset()
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		if sc.Text() == "%" {
			flush()
			continue
		}
		cur.WriteString(sc.Text())
		cur.WriteByte('\n')
	}
	flush()
	return out, sc.Err()
}
