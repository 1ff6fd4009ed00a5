package tokenizer

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"orcd/gguf"
)

// tinyVocab is a small byte-level vocabulary: the 256 bytes, a few merges
// and two control tokens.
func tinyVocab() *GGUFVocab {
	v := &GGUFVocab{Model: "gpt2", Pre: "gpt-2", BOS: -1, EOS: 259, PAD: -1, EOT: -1, EOM: -1}
	for b := range 256 {
		v.Tokens = append(v.Tokens, byteLevelEncode([]byte{byte(b)}))
		v.TokenTypes = append(v.TokenTypes, TypeNormal)
	}
	v.Tokens = append(v.Tokens, "he", "ll", "hell", "<|endoftext|>", "<|x|>")
	v.TokenTypes = append(v.TokenTypes, TypeNormal, TypeNormal, TypeNormal, TypeControl, TypeControl)
	v.Merges = []string{"h e", "l l", "he ll"}
	return v
}

// tinyJSON is tinyVocab as a tokenizer.json document.
func tinyJSON() map[string]any {
	v := tinyVocab()
	vocab := map[string]any{}
	for id, tok := range v.Tokens[:259] {
		vocab[tok] = id
	}
	return map[string]any{
		"added_tokens": []any{
			map[string]any{"id": 259, "content": "<|endoftext|>", "special": true},
			map[string]any{"id": 260, "content": "<|x|>", "special": true},
		},
		"normalizer":    nil,
		"pre_tokenizer": map[string]any{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
		"decoder":       map[string]any{"type": "ByteLevel"},
		"model":         map[string]any{"type": "BPE", "vocab": vocab, "merges": []any{[]any{"h", "e"}, []any{"l", "l"}, []any{"he", "ll"}}},
	}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTinyVocab(t *testing.T) {
	fromGGUF, err := FromVocab(tinyVocab())
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := FromHFJSONBytes(mustJSON(t, tinyJSON()))
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range []*Tokenizer{fromGGUF, fromJSON} {
		// "hello": h e l l o -> he ll -> hell, o (worked by hand).
		if got := tk.Encode("hello"); !slices.Equal(got, []int32{258, 'o'}) {
			t.Errorf("%s: Encode(hello) = %v", tk.Kind(), got)
		}
		if got := tk.EncodeSpecial("a<|x|>"); !slices.Equal(got, []int32{'a', 260}) {
			t.Errorf("%s: EncodeSpecial = %v", tk.Kind(), got)
		}
		// "hell" is the longest normal piece; the control tokens are longer
		// but Encode never produces them.
		if got := tk.MaxTokenBytes(); got != 4 {
			t.Errorf("%s: MaxTokenBytes = %d, want 4", tk.Kind(), got)
		}
		if !tk.IsEOG(259) || tk.EOS() != 259 {
			t.Errorf("%s: EOS %d, EOG %v", tk.Kind(), tk.EOS(), tk.EOG())
		}
	}
}

func TestLoadErrors(t *testing.T) {
	ggufCases := []struct {
		name   string
		change func(v *GGUFVocab)
		want   string
	}{
		{"unknown pre", func(v *GGUFVocab) { v.Pre = "deepseek-llm" }, `tokenizer.ggml.pre "deepseek-llm"`},
		{"unknown model", func(v *GGUFVocab) { v.Model = "llama" }, `tokenizer.ggml.model "llama"`},
		{"types length", func(v *GGUFVocab) { v.TokenTypes = v.TokenTypes[:5] }, "token types"},
		{"bad merge", func(v *GGUFVocab) { v.Merges = append(v.Merges, "he zz") }, `merge 3 ("he" "zz")`},
		{"merge form", func(v *GGUFVocab) { v.Merges = append(v.Merges, "hell") }, "not \"left right\""},
		{"missing byte", func(v *GGUFVocab) { v.TokenTypes[7] = TypeUnused }, "no token for byte 0x07"},
		{"bad alphabet", func(v *GGUFVocab) { v.Tokens[256] = "h\u4e00" }, "byte-level alphabet"},
		{"eos range", func(v *GGUFVocab) { v.EOS = 9999 }, "EOS token id 9999"},
	}
	for _, c := range ggufCases {
		v := tinyVocab()
		v.Tokens = slices.Clone(v.Tokens)
		v.TokenTypes = slices.Clone(v.TokenTypes)
		c.change(v)
		// Through a GGUF image where it can be written, else directly.
		var err error
		if c.name == "types length" {
			_, err = FromVocab(v)
		} else {
			_, err = FromGGUF(ggufImage(t, v))
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}

	jsonCases := []struct {
		name   string
		change func(d map[string]any)
		want   string
	}{
		{"unknown regex", func(d map[string]any) {
			d["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
				map[string]any{"type": "Split", "pattern": map[string]any{"Regex": `\w+`}, "behavior": "Isolated"},
				map[string]any{"type": "ByteLevel", "use_regex": false}}}
		}, "Split regex"},
		{"string pattern", func(d map[string]any) {
			d["pre_tokenizer"] = map[string]any{"type": "Split", "pattern": map[string]any{"String": " "}, "behavior": "Isolated"}
		}, "must be a Regex"},
		{"no byte level", func(d map[string]any) {
			d["pre_tokenizer"] = map[string]any{"type": "Split", "pattern": map[string]any{"Regex": gpt2Pattern}, "behavior": "Isolated"}
		}, "must include ByteLevel"},
		{"byte level without split", func(d map[string]any) {
			d["pre_tokenizer"] = map[string]any{"type": "ByteLevel", "use_regex": false}
		}, "must include ByteLevel and split"},
		{"two splits", func(d map[string]any) {
			d["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
				map[string]any{"type": "Split", "pattern": map[string]any{"Regex": o200kPattern}, "behavior": "Isolated"},
				map[string]any{"type": "ByteLevel"}}}
		}, "more than one splitting step"},
		{"whitespace", func(d map[string]any) { d["pre_tokenizer"] = map[string]any{"type": "Whitespace"} }, `"Whitespace"`},
		{"prefix space", func(d map[string]any) {
			d["pre_tokenizer"] = map[string]any{"type": "ByteLevel", "add_prefix_space": true}
		}, "add_prefix_space"},
		{"normalizer", func(d map[string]any) { d["normalizer"] = map[string]any{"type": "NFKC"} }, "normalizer"},
		{"decoder", func(d map[string]any) { delete(d, "decoder") }, "decoder"},
		{"model", func(d map[string]any) { d["model"].(map[string]any)["type"] = "WordPiece" }, `"WordPiece"`},
		{"byte fallback", func(d map[string]any) { d["model"].(map[string]any)["byte_fallback"] = true }, "byte_fallback"},
		{"gap", func(d map[string]any) { d["added_tokens"].([]any)[0].(map[string]any)["id"] = 260 }, "no token has id 259"},
		{"huge id", func(d map[string]any) { d["added_tokens"].([]any)[1].(map[string]any)["id"] = 1 << 30 }, "beyond"},
		{"merges", func(d map[string]any) { d["model"].(map[string]any)["merges"] = 7 }, "model.merges"},
		{"merge part", func(d map[string]any) { d["model"].(map[string]any)["merges"] = []any{"h q"} }, `merge 0 ("h" "q")`},
		{"mixed merges", func(d map[string]any) { d["model"].(map[string]any)["merges"] = []any{"h e", []any{"l", "l"}} }, "model.merges"},
	}
	for _, c := range jsonCases {
		d := tinyJSON()
		c.change(d)
		_, err := FromHFJSONBytes(mustJSON(t, d))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	if _, err := FromHFJSONBytes([]byte(`{"model": `)); err == nil {
		t.Error("truncated JSON loaded")
	}
}

func writeGGUF(t *testing.T, path string, v *GGUFVocab) *gguf.File {
	t.Helper()
	if err := gguf.WriteFile(path, vocabWriter(v), nil); err != nil {
		t.Fatal(err)
	}
	f, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestLoadResolution(t *testing.T) {
	dir := t.TempDir()
	modelPath := filepath.Join(dir, "m.gguf")
	bare := writeGGUF(t, filepath.Join(dir, "bare.gguf"), nil)

	// No tokenizer anywhere: the error names every place tried.
	_, err := Load(filepath.Join(dir, "bare.gguf"), "", bare)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "tokenizer.json")) || !strings.Contains(err.Error(), "bare.gguf") {
		t.Fatalf("error %v does not list the paths tried", err)
	}

	// The GGUF's own vocabulary.
	v := tinyVocab()
	v.EOS = 260
	f := writeGGUF(t, modelPath, v)
	tk, err := Load(modelPath, "", f)
	if err != nil || tk.Kind() != KindGGUF {
		t.Fatalf("GGUF vocabulary: %v, %v", tk, err)
	}

	// A tokenizer.json beside the model wins, the GGUF's EOS applies, and the
	// vocabulary-size difference is logged.
	d := tinyJSON()
	d["added_tokens"] = append(d["added_tokens"].([]any), map[string]any{"id": 261, "content": "<|y|>", "special": true})
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), mustJSON(t, d), 0o644); err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logged, nil)))
	tk, err = Load(modelPath, "", f)
	slog.SetDefault(old)
	if err != nil || tk.Kind() != KindHFJSON {
		t.Fatalf("tokenizer.json beside the model: %v, %v", tk, err)
	}
	if tk.EOS() != 260 {
		t.Errorf("EOS = %d, want the GGUF's 260", tk.EOS())
	}
	if !strings.Contains(logged.String(), "vocabulary sizes differ") || !strings.Contains(logged.String(), "gguf_vocab=261") {
		t.Errorf("no vocabulary-size warning; log: %q", logged.String())
	}

	// An explicit path that does not exist is an error, not a fallback.
	if _, err := Load(modelPath, filepath.Join(dir, "nope.json"), f); err == nil || !strings.Contains(err.Error(), "nope.json") {
		t.Errorf("missing --tokenizer: %v", err)
	}

	// Without a GGUF, tokenizer_config.json beside the tokenizer.json names
	// BOS and EOS and asks for BOS, as HF reads it.
	cfg := filepath.Join(dir, "tokenizer_config.json")
	if err := os.WriteFile(cfg, []byte(`{"bos_token": "<|y|>", "eos_token": {"content": "<|y|>"}, "add_bos_token": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	tk, err = Load(dir, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if tk.BOS() != 261 || tk.EOS() != 261 || !tk.AddBOS() {
		t.Errorf("from tokenizer_config.json: BOS %d EOS %d add_bos %v, want 261 261 true", tk.BOS(), tk.EOS(), tk.AddBOS())
	}
	// A GGUF's vocabulary still overrides it.
	if tk, err = Load(modelPath, "", f); err != nil || tk.EOS() != 260 {
		t.Errorf("with the GGUF: EOS %d, %v; want the GGUF's 260", tk.EOS(), err)
	}
	if err := os.WriteFile(cfg, []byte(`{"bos_token": "<|nope|>"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir, "", nil); err == nil || !strings.Contains(err.Error(), "tokenizer_config.json: bos_token \"<|nope|>\"") {
		t.Errorf("a bos_token not in the vocabulary: %v", err)
	}
}
