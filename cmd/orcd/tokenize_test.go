package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"orcd/internal/testutil"
)

func tokenize(t *testing.T, stdin string, args ...string) (stdout, stderr string, rc int) {
	t.Helper()
	var out, errOut bytes.Buffer
	rc = runMain(append([]string{"tokenize"}, args...), strings.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), rc
}

func TestTokenizeText(t *testing.T) {
	out, errOut, rc := tokenize(t, "", "--vocab", "o200k_harmony", "Hello world")
	// Ids from tiktoken's o200k_harmony (tokenizer/testdata/conformance.json.gz).
	if rc != 0 || out != "[13225,2375]\n13225\t\"Hello\"\n2375\t\" world\"\n" {
		t.Fatalf("rc %d, stdout %q, stderr %q", rc, out, errOut)
	}
}

func TestTokenizeSpecial(t *testing.T) {
	plain, _, _ := tokenize(t, "", "--vocab", "o200k_harmony", "<|start|>")
	if strings.Contains(plain, "200006") {
		t.Fatalf("special text became a special token without --parse-special: %q", plain)
	}
	parsed, _, rc := tokenize(t, "", "--vocab", "o200k_harmony", "--parse-special", "<|start|>")
	if rc != 0 || !strings.HasPrefix(parsed, "[200006]\n") {
		t.Fatalf("--parse-special: rc %d, %q", rc, parsed)
	}
}

func TestTokenizeJSONL(t *testing.T) {
	in := `"Hello world"` + "\n" + `""` + "\r\n" + `"hello world\n"` + "\n" + `"a"`
	out, errOut, rc := tokenize(t, in, "--vocab", "gpt2", "--jsonl")
	// GPT-2 ids as tiktoken gives them (tokenizer/testdata/conformance.json.gz).
	want := "[15496,995]\n[]\n[31373,995,198]\n[64]\n"
	if rc != 0 || out != want {
		t.Fatalf("rc %d, stdout %q (want %q), stderr %q", rc, out, want, errOut)
	}
	_, errOut, rc = tokenize(t, "\"ok\"\nnot json\n", "--vocab", "gpt2", "--jsonl")
	if rc != 1 || !strings.Contains(errOut, "stdin line 2") {
		t.Fatalf("bad line: rc %d, stderr %q", rc, errOut)
	}
}

func TestTokenizeDecode(t *testing.T) {
	out, errOut, rc := tokenize(t, "", "--vocab", "o200k_harmony", "--decode", "[200006, 13225, 2375]")
	if rc != 0 || out != "\"<|start|>Hello world\"\n" {
		t.Fatalf("rc %d, stdout %q, stderr %q", rc, out, errOut)
	}
	out, _, rc = tokenize(t, "[15496]\n[995]\n", "--vocab", "gpt2", "--decode")
	if rc != 0 || out != "\"Hello\"\n\" world\"\n" {
		t.Fatalf("stdin decode: rc %d, %q", rc, out)
	}
	for _, bad := range []string{"[1, 99999999]", "[-1]", "{}", "[1.5]"} {
		if _, errOut, rc := tokenize(t, "", "--vocab", "gpt2", "--decode", bad); rc != 1 || errOut == "" {
			t.Errorf("--decode %s: rc %d, stderr %q", bad, rc, errOut)
		}
	}
}

func TestTokenizeTokenizerJSON(t *testing.T) {
	data := testutil.ReadGzip(t, "../../tokenizer/testdata/gpt2.tokenizer.json.gz")
	path := filepath.Join(t.TempDir(), "tokenizer.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, rc := tokenize(t, "", "--tokenizer", path, "Hello world")
	if rc != 0 || !strings.HasPrefix(out, "[15496,995]\n") {
		t.Fatalf("rc %d, stdout %q, stderr %q", rc, out, errOut)
	}
}

func TestTokenizeUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--vocab", "gpt2"}, "no TEXT to encode"},
		{[]string{"--vocab", "gpt2", "--jsonl", "--decode"}, "--jsonl reads stdin only and excludes --decode"},
		{[]string{"--vocab", "gpt2", "--jsonl", "hi"}, "--jsonl reads stdin only"},
		{[]string{"--vocab", "gpt2", "--model", "x.gguf", "hi"}, "--vocab excludes --model and --tokenizer"},
		{[]string{"--vocab", "nope", "hi"}, `invalid value "nope" for --vocab: want gpt2 or o200k_harmony`},
		{[]string{"hi", "--vocab"}, "flag --vocab needs a value"},
		{[]string{"--vocab", "gpt2", "-x"}, `unknown flag "-x" (an argument that begins with a dash goes after --)`},
	} {
		if _, errOut, rc := tokenize(t, "", c.args...); rc != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: rc %d, stderr %q; want 2 and %q", c.args, rc, errOut, c.want)
		}
	}
	if _, errOut, rc := tokenize(t, "", "--model", "/nonexistent/m.gguf", "hi"); rc != 1 || !strings.Contains(errOut, "m.gguf") {
		t.Errorf("missing model: rc %d, stderr %q", rc, errOut)
	}
}

// Flags may follow the text, and "--" makes text of what looks like a flag.
func TestTokenizeFlagsAfterText(t *testing.T) {
	// GPT-2 ids as tiktoken gives them (tokenizer/testdata/conformance.json.gz).
	out, errOut, rc := tokenize(t, "", "Hello world", "--vocab", "gpt2")
	if rc != 0 || !strings.HasPrefix(out, "[15496,995]\n") {
		t.Errorf("rc %d, stdout %q, stderr %q", rc, out, errOut)
	}
	out, errOut, rc = tokenize(t, "", "--vocab", "gpt2", "--", "-42")
	if rc != 0 || !strings.HasPrefix(out, "[12,3682]\n") {
		t.Errorf("after --: rc %d, stdout %q, stderr %q", rc, out, errOut)
	}
}

// Without --model, --tokenizer or --vocab, tokenize uses the built-in
// model's vocabulary (GPT-2's), as run and serve use the built-in model;
// it needs no model file, so it works in a nodemo build too.
func TestTokenizeDefaultModel(t *testing.T) {
	out, errOut, rc := tokenize(t, "", "Hello world")
	// GPT-2 ids as tiktoken gives them (tokenizer/testdata/conformance.json.gz).
	if rc != 0 || out != "[15496,995]\n15496\t\"Hello\"\n995\t\" world\"\n" {
		t.Fatalf("rc %d, stdout %q, stderr %q", rc, out, errOut)
	}
	if !strings.Contains(errOut, "built-in model's vocabulary") || !strings.Contains(errOut, "vocab=gpt2") {
		t.Errorf("stderr does not say which vocabulary was used: %q", errOut)
	}
}
