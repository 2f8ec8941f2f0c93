package tokenizer

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// gpt2Dir is where make setup puts GPT-2's encoder.json and vocab.bpe.
const gpt2Dir = "../third_party/tokenizers/gpt2"

func loadGPT2(t testing.TB) *Tokenizer {
	t.Helper()
	tok, err := Load(gpt2Dir)
	if err != nil {
		t.Fatalf("GPT-2 tokenizer files not readable in %s (make setup fetches them): %v", gpt2Dir, err)
	}
	return tok
}

type reference struct {
	Text string  `json:"text"`
	IDs  []int32 `json:"ids"`
}

// loadReference reads the ids the gpt-3-encoder JavaScript encoder gives (see
// testdata/reference.js for how the file was made).
func loadReference(t *testing.T) []reference {
	t.Helper()
	b, err := os.ReadFile("testdata/gpt2_reference.json")
	if err != nil {
		t.Fatal(err)
	}
	var refs []reference
	if err := json.Unmarshal(b, &refs); err != nil {
		t.Fatal(err)
	}
	if len(refs) < 20 {
		t.Fatalf("reference set has %d strings, want the full set", len(refs))
	}
	return refs
}

func TestEncodeMatchesGPT2ReferenceIDs(t *testing.T) {
	gpt2 := loadGPT2(t)
	// The same vocabulary after the trip through tokenizer.json, the form a tokenizer
	// is deployed in, must tokenize identically.
	js, err := json.Marshal(gpt2)
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := Parse(js)
	if err != nil {
		t.Fatalf("Parse of the marshalled tokenizer: %v", err)
	}
	for name, tok := range map[string]*Tokenizer{"encoder.json+vocab.bpe": gpt2, "tokenizer.json": fromJSON} {
		for _, ref := range loadReference(t) {
			got := tok.Encode(ref.Text)
			if len(got) == 0 && len(ref.IDs) == 0 {
				got = ref.IDs
			}
			if !reflect.DeepEqual(got, ref.IDs) {
				t.Errorf("%s: Encode(%q) = %v, want %v", name, ref.Text, got, ref.IDs)
			}
			text, err := tok.Decode(ref.IDs)
			if err != nil || string(text) != ref.Text {
				t.Errorf("%s: Decode(%v) = %q, %v; want %q", name, ref.IDs, text, err, ref.Text)
			}
		}
	}
	if gpt2.VocabSize() != 50257 {
		t.Errorf("VocabSize = %d, want GPT-2's 50257", gpt2.VocabSize())
	}
}

func TestSpecialTokenIsMatchedWholeInText(t *testing.T) {
	gpt2 := loadGPT2(t)
	got := gpt2.Encode("Hello<|endoftext|> world")
	want := []int32{15496, 50256, 995}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Encode = %v, want %v", got, want)
	}
	if id, ok := gpt2.TokenID("<|endoftext|>"); !ok || id != 50256 {
		t.Errorf("TokenID(<|endoftext|>) = %d, %v", id, ok)
	}
	if id, ok := gpt2.TokenID(" world"); !ok || id != 995 {
		t.Errorf("TokenID(\" world\") = %d, %v", id, ok)
	}
	if s, err := gpt2.DecodeString([]int32{15496, 50256}); err != nil || s != "Hello<|endoftext|>" {
		t.Errorf("DecodeString = %q, %v", s, err)
	}
}

func TestSplitPiecesFollowsGPT2Pattern(t *testing.T) {
	cases := []struct {
		text string
		want []string
	}{
		{"Hello world", []string{"Hello", " world"}},
		{"a  b", []string{"a", " ", " b"}},         // \s+(?!\S) gives back the last space
		{"a   b", []string{"a", "  ", " b"}},       // ... of a longer run too
		{"a\n\nb", []string{"a", "\n", "\n", "b"}}, // one \n before b: \s+, since " ?" is an ASCII space only
		{"a \n b", []string{"a", " \n", " b"}},
		{"end  ", []string{"end", "  "}}, // a run at the end is kept whole
		{"x \t", []string{"x", " \t"}},
		{"I'm", []string{"I", "'m"}},
		{"they'll've", []string{"they", "'ll", "'ve"}},
		{"DON'T", []string{"DON", "'", "T"}}, // contractions are case-sensitive
		{"'tis", []string{"'t", "is"}},
		{"ab12cd", []string{"ab", "12", "cd"}},
		{" 12 ab !?", []string{" 12", " ab", " !?"}},
		{"¡hola!", []string{"¡", "hola", "!"}},
		{"naïve", []string{"naïve"}},
		{"😀 🎉", []string{"😀", " 🎉"}},
		{"\u00a0x", []string{"\u00a0", "x"}},   // only U+0020 joins the next piece
		{"x\xffy", []string{"x", "\xff", "y"}}, // invalid UTF-8 is "other"
		{"", nil},
	}
	for _, c := range cases {
		if got := splitPieces(c.text); !reflect.DeepEqual(got, c.want) {
			t.Errorf("splitPieces(%q) = %q, want %q", c.text, got, c.want)
		}
	}
}

// tinyVocab builds a byte-level vocabulary with every byte and the given merges.
func tinyVocab(merges ...[2]string) (map[string]int32, []string) {
	vocab := map[string]int32{}
	for b := 0; b < 256; b++ {
		vocab[string(byteToRune[b])] = int32(b)
	}
	var lines []string
	for _, m := range merges {
		vocab[m[0]+m[1]] = int32(len(vocab))
		lines = append(lines, m[0]+" "+m[1])
	}
	return vocab, lines
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMergesApplyByRankAndLeftToRight(t *testing.T) {
	vocab, lines := tinyVocab([2]string{"a", "a"}, [2]string{"b", "c"}, [2]string{"aa", "bc"})
	tok, err := ParseVocabMerges(mustJSON(t, vocab), []byte("#version: 0.2\n"+strings.Join(lines, "\n")+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	// "aaa": the rank-0 pair joins the first two a's only; "aabc": aa and bc, then aabc.
	for text, want := range map[string][]int32{"aaa": {256, 'a'}, "aabc": {258}, "abc": {'a', 257}} {
		if got := tok.Encode(text); !reflect.DeepEqual(got, want) {
			t.Errorf("Encode(%q) = %v, want %v", text, got, want)
		}
	}
}

func TestInvalidTokenizerFilesAreRefused(t *testing.T) {
	vocab, _ := tinyVocab()
	hf := func(model, pre string) []byte {
		return []byte(`{"normalizer":null,"pre_tokenizer":` + pre + `,"model":` + model + `}`)
	}
	bpe := `{"type":"BPE","vocab":` + string(mustJSON(t, vocab)) + `,"merges":[]}`
	byteLevel := `{"type":"ByteLevel","add_prefix_space":false}`
	noBytes := `{"type":"BPE","vocab":{"a":0},"merges":[]}`
	cases := map[string][]byte{
		"not JSON":               []byte("{vocab"),
		"no model":               []byte(`{"pre_tokenizer":` + byteLevel + `}`),
		"WordPiece":              hf(`{"type":"WordPiece","vocab":{"a":0}}`, byteLevel),
		"Metaspace":              hf(bpe, `{"type":"Metaspace"}`),
		"Split sequence":         hf(bpe, `{"type":"Sequence","pretokenizers":[{"type":"Split"},{"type":"ByteLevel","use_regex":false}]}`),
		"prefix space":           hf(bpe, `{"type":"ByteLevel","add_prefix_space":true}`),
		"vocabulary lacks bytes": hf(noBytes, byteLevel),
		"merge of unknown token": hf(`{"type":"BPE","vocab":`+string(mustJSON(t, vocab))+`,"merges":["a zz"]}`, byteLevel),
		"merge result unknown":   hf(`{"type":"BPE","vocab":`+string(mustJSON(t, vocab))+`,"merges":["a b"]}`, byteLevel),
		"malformed merge":        hf(`{"type":"BPE","vocab":`+string(mustJSON(t, vocab))+`,"merges":["a"]}`, byteLevel),
		"dropout":                hf(`{"type":"BPE","dropout":0.1,"vocab":`+string(mustJSON(t, vocab))+`,"merges":[]}`, byteLevel),
		"ignore_merges":          hf(`{"type":"BPE","ignore_merges":true,"vocab":`+string(mustJSON(t, vocab))+`,"merges":[]}`, byteLevel),
		"subword prefix":         hf(`{"type":"BPE","continuing_subword_prefix":"##","vocab":`+string(mustJSON(t, vocab))+`,"merges":[]}`, byteLevel),
		"huge id":                hf(`{"type":"BPE","vocab":{"a":2000000000},"merges":[]}`, byteLevel),
	}
	for name, data := range cases {
		if _, err := Parse(data); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Parse error = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := ParseVocabMerges([]byte(`[1,2]`), nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("vocab.json that is a list: %v, want ErrInvalid", err)
	}
	if _, err := ParseVocabMerges(mustJSON(t, vocab), []byte("a b c\n")); !errors.Is(err, ErrInvalid) {
		t.Errorf("three-token merges line: %v, want ErrInvalid", err)
	}
	dir := t.TempDir()
	if _, err := Load(dir); !errors.Is(err, ErrInvalid) {
		t.Errorf("Load of a folder without tokenizer files: %v, want ErrInvalid", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte("nope"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "tokenizer.json") {
		t.Errorf("Load of a bad tokenizer.json: %v, want ErrInvalid naming the file", err)
	}
}

func TestDecodeRefusesUnknownIDs(t *testing.T) {
	gpt2 := loadGPT2(t)
	for _, id := range []int32{-1, 50257, 1 << 30} {
		if _, err := gpt2.Decode([]int32{15496, id}); !errors.Is(err, ErrUnknownID) {
			t.Errorf("Decode(%d) error = %v, want ErrUnknownID", id, err)
		}
	}
}

func TestMergesReadAsPairsOrStrings(t *testing.T) {
	vocab, _ := tinyVocab([2]string{"h", "i"})
	for _, merges := range []string{`["h i"]`, `[["h","i"]]`} {
		data := `{"pre_tokenizer":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":` + string(mustJSON(t, vocab)) + `,"merges":` + merges + `}}`
		tok, err := Parse([]byte(data))
		if err != nil {
			t.Fatalf("merges %s: %v", merges, err)
		}
		if got := tok.Encode("hi"); !reflect.DeepEqual(got, []int32{256}) {
			t.Errorf("merges %s: Encode(hi) = %v", merges, got)
		}
	}
}

// FuzzEncodeDecodeRoundTrip holds that any text, valid UTF-8 or not, encodes and
// decodes back to its bytes: prompts come from the network.
func FuzzEncodeDecodeRoundTrip(f *testing.F) {
	gpt2 := loadGPT2(f)
	for _, s := range []string{"Hello world", "  x\n\n y", "I'm 😀", "\xff\xfe", "<|endoftext|>a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids := gpt2.Encode(s)
		b, err := gpt2.Decode(ids)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != s {
			t.Fatalf("round trip of %q gave %q", s, b)
		}
		if utf8.ValidString(s) && len(ids) > len(s) {
			t.Fatalf("%q: %d ids for %d bytes", s, len(ids), len(s))
		}
	})
}

func TestChatTemplateRendersAndRefusesBrokenTemplates(t *testing.T) {
	msgs := []ChatMessage{{"system", "Be brief."}, {"user", "Hi"}}
	got, err := DefaultChatTemplate.Render(msgs, "")
	if err != nil || got != "system: Be brief.\nuser: Hi\nassistant:" {
		t.Fatalf("default template = %q, %v", got, err)
	}
	custom, err := ParseChatTemplate(`{{range .Messages}}<|{{.Role}}|>{{.Content}}{{$.EOS}}{{end}}<|assistant|>`)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := custom.Render(msgs, "<|endoftext|>"); err != nil || got != "<|system|>Be brief.<|endoftext|><|user|>Hi<|endoftext|><|assistant|>" {
		t.Errorf("custom template = %q, %v", got, err)
	}
	for _, src := range []string{"{{range .Messages}", "{{.Nope}}", "{{index .Messages 9}}"} {
		if _, err := ParseChatTemplate(src); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseChatTemplate(%q) error = %v, want ErrInvalid", src, err)
		}
	}
}
