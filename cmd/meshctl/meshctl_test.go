package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/tokenizer"
)

// npyBytes writes a .npy file the way numpy.save does (format 1.0, header padded so
// the data starts on a 64-byte boundary).
func npyBytes(descr, shape string, data []byte) []byte {
	h := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr, shape)
	pad := 64 - (10+len(h)+1)%64
	h += strings.Repeat(" ", pad) + "\n"
	var b bytes.Buffer
	b.WriteString("\x93NUMPY\x01\x00")
	binary.Write(&b, binary.LittleEndian, uint16(len(h)))
	b.WriteString(h)
	b.Write(data)
	return b.Bytes()
}

func TestReadNPY(t *testing.T) {
	f32 := tensor.FromFloat32("", []int64{2, 3}, []float32{1, 2, 3, 4, 5, 6})
	got, err := tensor.ReadNPY(bytes.NewReader(npyBytes("<f4", "(2, 3)", f32.Data)))
	if err != nil {
		t.Fatal(err)
	}
	if got.DType != tensor.Float32 || fmt.Sprint(got.Shape) != "[2 3]" || !bytes.Equal(got.Data, f32.Data) {
		t.Errorf("got %+v", got)
	}
	i64 := tensor.FromInt64("", []int64{3}, []int64{-1, 0, 7})
	got, err = tensor.ReadNPY(bytes.NewReader(npyBytes("<i8", "(3,)", i64.Data)))
	if err != nil || got.DType != tensor.Int64 || fmt.Sprint(got.Shape) != "[3]" {
		t.Errorf("int64: %+v %v", got, err)
	}
	got, err = tensor.ReadNPY(bytes.NewReader(npyBytes("<f8", "()", make([]byte, 8))))
	if err != nil || len(got.Shape) != 0 || len(got.Data) != 8 {
		t.Errorf("scalar: %+v %v", got, err)
	}
	for name, file := range map[string][]byte{
		"big-endian":      npyBytes(">f4", "(1,)", make([]byte, 4)),
		"fortran":         bytes.Replace(npyBytes("<f4", "(1,)", make([]byte, 4)), []byte("False"), []byte("True "), 1),
		"short data":      npyBytes("<f4", "(2, 3)", make([]byte, 20)),
		"long data":       npyBytes("<f4", "(1,)", make([]byte, 8)),
		"huge shape":      npyBytes("<f4", "(4611686018427387904, 4)", nil),
		"no magic":        []byte("NUMPY not really"),
		"object array":    npyBytes("|O", "(1,)", make([]byte, 8)),
		"truncated head":  npyBytes("<f4", "(1,)", nil)[:12],
		"format 9":        append([]byte("\x93NUMPY\x09\x00"), 0, 0),
		"negative dim":    npyBytes("<f4", "(-1,)", nil),
		"unparsable dims": npyBytes("<f4", "(a,)", nil),
	} {
		if _, err := tensor.ReadNPY(bytes.NewReader(file)); !errors.Is(err, tensor.ErrNPY) {
			t.Errorf("%s: %v, want tensor.ErrNPY", name, err)
		}
	}
}

func TestBuildInput(t *testing.T) {
	sig := &wire.TensorMetadata{Name: "x", Datatype: "FP32", Shape: []int64{-1, 3}}
	// Inline, shape from the model's one dynamic dim.
	x, err := buildInput("x", "1,2,3,4,5,6", "", "", sig)
	if err != nil || fmt.Sprint(x.Shape) != "[2 3]" || x.DType != tensor.Float32 {
		t.Fatalf("inline: %+v %v", x, err)
	}
	// Inline with explicit shape and datatype.
	x, err = buildInput("x", "1,2,3", "1x3", "FP64", sig)
	if err != nil || fmt.Sprint(x.Shape) != "[1 3]" || x.DType != tensor.Float64 {
		t.Fatalf("explicit: %+v %v", x, err)
	}
	// A nested JSON array carries its shape; a KServe object its shape and type.
	dir := t.TempDir()
	nested := filepath.Join(dir, "nested.json")
	os.WriteFile(nested, []byte(`[[1,2,3],[4,5,6]]`), 0o644)
	x, err = buildInput("x", "@"+nested, "", "", sig)
	if err != nil || fmt.Sprint(x.Shape) != "[2 3]" {
		t.Fatalf("nested file: %+v %v", x, err)
	}
	obj := filepath.Join(dir, "obj.json")
	os.WriteFile(obj, []byte(`{"shape":[1,3],"datatype":"INT64","data":[7,8,9]}`), 0o644)
	x, err = buildInput("x", "@"+obj, "", "", sig)
	if err != nil || x.DType != tensor.Int64 || fmt.Sprint(x.Shape) != "[1 3]" {
		t.Fatalf("object file: %+v %v", x, err)
	}
	npy := filepath.Join(dir, "x.npy")
	os.WriteFile(npy, npyBytes("<f4", "(1, 3)", make([]byte, 12)), 0o644)
	x, err = buildInput("x", "@"+npy, "", "", sig)
	if err != nil || x.Name != "x" || fmt.Sprint(x.Shape) != "[1 3]" {
		t.Fatalf("npy file: %+v %v", x, err)
	}
	// Strings and counts that do not fit.
	s, err := buildInput("s", "a b,c", "", "", &wire.TensorMetadata{Name: "s", Datatype: "BYTES", Shape: []int64{-1}})
	if err != nil || fmt.Sprint(s.Strings) != "[a b c]" {
		t.Fatalf("bytes: %+v %v", s, err)
	}
	if _, err := buildInput("x", "1,2,3,4", "", "", sig); !errors.Is(err, errUsage) {
		t.Errorf("4 values for [-1 3]: %v, want a usage error", err)
	}
	if _, err := buildInput("x", "1,2", "1x3", "", sig); !errors.Is(err, tensor.ErrDataLength) {
		t.Errorf("2 values for 1x3: %v", err)
	}
}

func TestParseArgsInterspersed(t *testing.T) {
	fs := newFlagSetForTest()
	pos, err := parseArgs(fs, []string{"model", "--json", "extra", "--addr", "x:1"})
	if err != nil || fmt.Sprint(pos) != "[model extra]" || fs.Lookup("json").Value.String() != "true" || fs.Lookup("addr").Value.String() != "x:1" {
		t.Errorf("pos %v err %v", pos, err)
	}
}

func TestExitCodes(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
	}{
		{nil, 2},
		{[]string{"nope"}, 2},
		{[]string{"help"}, 0},
		{[]string{"infer"}, 2},
		{[]string{"infer", "m", "--input", "x"}, 2},
		{[]string{"gen-model"}, 2},
		{[]string{"generate", "m"}, 2},
		{[]string{"generate", "m", "hi", "--top-p", "2"}, 2},
		{[]string{"generate", "m", "hi", "--max-tokens", "-1"}, 2},
		{[]string{"gen-model", "no-such-kind", "-o", "x"}, 2},
		{[]string{"models", "--addr", "127.0.0.1:1"}, 1}, // nothing listens on port 1
	} {
		if got := run(c.args, io.Discard, io.Discard); got != c.code {
			t.Errorf("meshctl %v: exit %d, want %d", c.args, got, c.code)
		}
	}
}

func newFlagSetForTest() *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	addCommon(fs)
	return fs
}

func TestCompletionListsEveryCommand(t *testing.T) {
	want := slices.Sorted(maps.Keys(commands))
	completion := func(shell string) string {
		var out bytes.Buffer
		if code := run([]string{"completion", shell}, &out, io.Discard); code != 0 {
			t.Fatalf("completion %s: exit %d", shell, code)
		}
		return out.String()
	}
	// bash: the word list of the first argument.
	_, words, _ := strings.Cut(completion("bash"), `compgen -W "`)
	words, _, _ = strings.Cut(words, `"`)
	if got := strings.Fields(words); !slices.Equal(got, want) {
		t.Errorf("bash completes %v, want %v", got, want)
	}
	// zsh: one 'name:summary' line per command.
	var got []string
	for _, m := range regexp.MustCompile(`(?m)^    '([a-z-]+):`).FindAllStringSubmatch(completion("zsh"), -1) {
		got = append(got, m[1])
	}
	if !slices.Equal(got, want) {
		t.Errorf("zsh completes %v, want %v", got, want)
	}
}

// TestNodeCommandsShareExitCodes runs every node command through the scaffold: a
// flag it does not know is a wrong command line (2), -h is not a failure (0), and a
// well-formed command against an address where nothing listens failed (1), except
// version, which reports the unreachable node in its output.
func TestNodeCommandsShareExitCodes(t *testing.T) {
	wellFormed := map[string][]string{
		"infer": {"m", "--input", "x=1"}, "bench": {"m", "--input", "x=1"}, "generate": {"m", "Hello", "--max-tokens", "4"},
		"model": {"m"}, "deploy": {"meshctl_test.go"}, "undeploy": {"m"}, "plan": {"m"},
		"drain": {"n"}, "undrain": {"n"}, "remove": {"n"},
		"token create": {"--scope", "infer"}, "token revoke": {"id"},
	}
	var names []string
	for name, cmd := range commands {
		if cmd.offline != nil {
			continue
		}
		if cmd.subcommands == nil {
			names = append(names, name)
		}
		for sub := range cmd.subcommands {
			names = append(names, name+" "+sub)
		}
	}
	if len(names) < 17 {
		t.Fatalf("only %d node commands: %v", len(names), names)
	}
	for _, name := range names {
		cmdline := strings.Fields(name)
		checks := []struct {
			args []string
			code int
		}{
			{[]string{"--no-such-flag"}, 2},
			{[]string{"-h"}, 0},
			{append(slices.Clone(wellFormed[name]), "--addr", "127.0.0.1:1"), 1}, // nothing listens on port 1
		}
		if name == "version" {
			checks[2].code = 0
		}
		for _, c := range checks {
			args := append(slices.Clone(cmdline), c.args...)
			if got := run(args, io.Discard, io.Discard); got != c.code {
				t.Errorf("meshctl %v: exit %d, want %d", args, got, c.code)
			}
		}
	}
}

func TestDeployReadsTokenizerAndTemplateBeforeUploading(t *testing.T) {
	text, err := readModelText("../../third_party/tokenizers/gpt2", "")
	if err != nil {
		t.Fatalf("GPT-2's encoder.json + vocab.bpe (make setup fetches them): %v", err)
	}
	tok, err := tokenizer.Parse(text.tokenizer)
	if err != nil || tok.VocabSize() != 50257 {
		t.Fatalf("the tokenizer.json sent does not read back: %v", err)
	}
	dir := t.TempDir()
	good, bad, notBPE := filepath.Join(dir, "good.tmpl"), filepath.Join(dir, "bad.tmpl"), filepath.Join(dir, "tokenizer.json")
	for path, body := range map[string]string{good: "{{range .Messages}}{{.Content}}{{end}}", bad: "{{range .Messages}", notBPE: `{"model":{"type":"Unigram"}}`} {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if text, err := readModelText("", good); err != nil || text.chatTemplate == "" || text.tokenizer != nil {
		t.Errorf("good template: %+v, %v", text, err)
	}
	for _, c := range [][2]string{{"", bad}, {notBPE, ""}, {filepath.Join(dir, "missing"), ""}} {
		if _, err := readModelText(c[0], c[1]); err == nil {
			t.Errorf("readModelText(%q, %q) accepted it", c[0], c[1])
		}
	}
	// Through the command: refused before any connection (nothing listens on port 1
	// either, but the error must name the flag).
	var stderr bytes.Buffer
	if code := run([]string{"deploy", "meshctl_test.go", "--chat-template", bad, "--addr", "127.0.0.1:1"}, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "--chat-template") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}
