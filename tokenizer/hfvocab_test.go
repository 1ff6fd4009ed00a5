package tokenizer

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"orcd/internal/testutil"
)

// TestHFVocabFixtures converts the Llama-3-style, Qwen2-style and harmony
// tokenizer fixtures (model/testdata/hf_tok, see tools/make_tokenizer_fixtures.py)
// to GGUF vocabularies and checks what llama.cpp's converter would write:
// the pre-tokenizer's name, the special ids, add_bos and the template.
func TestHFVocabFixtures(t *testing.T) {
	for _, c := range []struct {
		dir, pre            string
		bos, eos, pad       int32
		addBOS, nfc, chatOK bool
	}{
		{"llama3", "llama-bpe", 1000, 1004, -1, true, false, true},
		{"qwen2", "qwen2", -1, 1002, 1000, false, true, true},
		{"harmony", "gpt-4o", 1000, 1002, 1001, false, false, false},
	} {
		t.Run(c.dir, func(t *testing.T) {
			dir := filepath.Join("..", "model", "testdata", "hf_tok", c.dir)
			tj, err := os.ReadFile(filepath.Join(dir, "tokenizer.json"))
			if err != nil {
				t.Fatal(err)
			}
			tc, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
			if err != nil {
				t.Fatal(err)
			}
			v, tmpl, err := HFVocab(tj, tc, nil)
			if err != nil {
				t.Fatal(err)
			}
			if v.Pre != c.pre || v.BOS != c.bos || v.EOS != c.eos || v.PAD != c.pad || v.AddBOS != c.addBOS || (tmpl != "") != c.chatOK {
				t.Errorf("pre %q bos %d eos %d pad %d add_bos %v template %d bytes", v.Pre, v.BOS, v.EOS, v.PAD, v.AddBOS, len(tmpl))
			}
			// The GGUF form loads to the same tokenizer as the tokenizer.json.
			fromJSON, err := FromHFJSONBytes(tj)
			if err != nil {
				t.Fatal(err)
			}
			fromGGUF, err := FromVocab(v)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"Hello world's 12345 ÅÅ café\n\n  x", "<|im_start|>user\nhi<|im_end|>", "a\u0301 e\u0301"} {
				a, b := fromJSON.EncodeSpecial(s), fromGGUF.EncodeSpecial(s)
				if len(a) != len(b) {
					t.Fatalf("%q: %v from tokenizer.json, %v from GGUF", s, a, b)
				}
				for i := range a {
					if a[i] != b[i] {
						t.Fatalf("%q: %v from tokenizer.json, %v from GGUF", s, a, b)
					}
				}
			}
			if fromJSON.nfc != c.nfc || fromGGUF.nfc != c.nfc {
				t.Errorf("NFC %v (json) %v (gguf), want %v", fromJSON.nfc, fromGGUF.nfc, c.nfc)
			}
		})
	}
}

// TestHFTokenizerIDs encodes the strings of testdata/hf/tokens.json.gz
// (HF tokenizers on the GPU machine, tools/hf_arch_fixtures.py) with the
// Llama-3, Qwen2 and harmony fixture tokenizers and expects HF's ids: the
// pre-tokenizer regexes, NFC and ignore_merges exactly as HF applies them.
func TestHFTokenizerIDs(t *testing.T) {
	path := filepath.Join("..", "model", "testdata", "hf", "tokens.json.gz")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("model/testdata/hf is missing (tools/hf_arch_fixtures.py makes it): %v", err)
	}
	var fx struct {
		Strings []string             `json:"strings"`
		IDs     map[string][][]int32 `json:"ids"`
		// "Hi" with the tokens the tokenizer adds itself (Llama 3's BOS).
		WithSpecial map[string][]int32 `json:"hi_with_special"`
	}
	testutil.ReadGzipJSON(t, path, &fx)
	for _, fam := range []string{"llama3", "qwen2", "harmony"} {
		tok, err := Load(filepath.Join("..", "model", "testdata", "hf_tok", fam), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		want := fx.IDs[fam]
		if len(want) != len(fx.Strings) {
			t.Fatalf("%s: %d id lists for %d strings", fam, len(want), len(fx.Strings))
		}
		want1 := tok.EncodeSpecial("Hi")
		if tok.AddBOS() {
			want1 = append([]int32{tok.BOS()}, want1...)
		}
		if !slices.Equal(want1, fx.WithSpecial[fam]) {
			t.Errorf("%s: \"Hi\" with added tokens is %v, HF %v (AddBOS %v)", fam, want1, fx.WithSpecial[fam], tok.AddBOS())
		}
		for i, s := range fx.Strings {
			if got := tok.EncodeSpecial(s); !slices.Equal(got, want[i]) { // HF parses special-token text too
				t.Errorf("%s %q: %v, HF %v", fam, s, got, want[i])
			}
		}
	}
}
