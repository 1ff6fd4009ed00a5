package tokenizer

import (
	"bytes"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"unicode/utf8"

	"orcd/gguf"
	"orcd/internal/testutil"
)

// conformance is testdata/conformance.json.gz, written by
// tools/tokenizer_conformance.py from tiktoken and HF tokenizers.
type conformance struct {
	Strings        []string             `json:"strings"`
	SpecialStrings []string             `json:"special_strings"`
	IDs            map[string][][]int32 `json:"ids"`
	SpecialIDs     map[string][][]int32 `json:"special_ids"`
	Notes          map[string]any       `json:"notes"`
}

var loadConformance = sync.OnceValues(func() (*conformance, error) {
	var c conformance
	if err := testutil.DecodeGzipJSON("testdata/conformance.json.gz", &c); err != nil {
		return nil, err
	}
	return &c, nil
})

func fixtures(t testing.TB) *conformance {
	t.Helper()
	c, err := loadConformance()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// viaGGUF writes the embedded vocabulary into a GGUF image and loads it back
// with FromGGUF, the path a model file takes.
func viaGGUF(t testing.TB, name string) *Tokenizer {
	t.Helper()
	v, err := VocabGGUF(name)
	if err != nil {
		t.Fatal(err)
	}
	f := ggufImage(t, v)
	tk, err := FromGGUF(f)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// vocabWriter returns a GGUF writer for a tensorless gpt2 file holding v
// (none if v is nil).
func vocabWriter(v *GGUFVocab) *gguf.Writer {
	w := gguf.NewWriter()
	w.SetString("general.architecture", "gpt2")
	if v != nil {
		v.SetOn(w)
	}
	return w
}

// ggufImage parses the file of vocabWriter(v) from memory.
func ggufImage(t testing.TB, v *GGUFVocab) *gguf.File {
	t.Helper()
	var buf bytes.Buffer
	tw, err := vocabWriter(v).Begin(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := gguf.Parse("test.gguf", buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func hfTokenizer(t testing.TB, name string) *Tokenizer {
	t.Helper()
	tk, err := FromHFJSONBytes(testutil.ReadGzip(t, "testdata/"+name+".tokenizer.json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// TestConformance compares every string's ids with the references: the GGUF
// path (embedded vocabularies written to GGUF and read back) with tiktoken,
// the tokenizer.json path with HF tokenizers. It requires 100% identical ids
// and decode(encode(s)) == s.
func TestConformance(t *testing.T) {
	c := fixtures(t)
	if len(c.Strings) < 2000 {
		t.Fatalf("only %d conformance strings", len(c.Strings))
	}
	cases := []struct {
		ref  string
		kind string
		load func(testing.TB) *Tokenizer
	}{
		{"tiktoken/o200k_harmony", KindGGUF, func(t testing.TB) *Tokenizer { return viaGGUF(t, VocabO200kHarmony) }},
		{"tiktoken/gpt2", KindGGUF, func(t testing.TB) *Tokenizer { return viaGGUF(t, VocabGPT2) }},
		{"hf/o200k_harmony", KindHFJSON, func(t testing.TB) *Tokenizer { return hfTokenizer(t, "o200k_harmony") }},
		{"hf/gpt2", KindHFJSON, func(t testing.TB) *Tokenizer { return hfTokenizer(t, "gpt2") }},
	}
	for _, tc := range cases {
		t.Run(tc.ref, func(t *testing.T) {
			want, wantSpecial := c.IDs[tc.ref], c.SpecialIDs[tc.ref]
			if len(want) != len(c.Strings) || len(wantSpecial) != len(c.SpecialStrings) {
				t.Fatalf("fixture has %d/%d id lists for %d/%d strings", len(want), len(wantSpecial), len(c.Strings), len(c.SpecialStrings))
			}
			tk := tc.load(t)
			if tk.Kind() != tc.kind {
				t.Errorf("Kind() = %q, want %q", tk.Kind(), tc.kind)
			}
			same, roundTrip := 0, 0
			for i, s := range c.Strings {
				got := tk.Encode(s)
				if slices.Equal(got, want[i]) {
					same++
				} else if len(c.Strings)-same < 10 {
					t.Errorf("Encode(%q)\n got %v\nwant %v", s, got, want[i])
				}
				if tk.Decode(got) == s {
					roundTrip++
				} else {
					t.Errorf("Decode(Encode(%q)) = %q", s, tk.Decode(got))
				}
			}
			sameSpecial := 0
			for i, s := range c.SpecialStrings {
				got := tk.EncodeSpecial(s)
				if slices.Equal(got, wantSpecial[i]) {
					sameSpecial++
				} else {
					t.Errorf("EncodeSpecial(%q)\n got %v\nwant %v", s, got, wantSpecial[i])
				}
				if d := tk.Decode(got); d != s {
					t.Errorf("Decode(EncodeSpecial(%q)) = %q", s, d)
				}
			}
			t.Logf("%s: Encode identical on %d/%d strings, round trip %d/%d; EncodeSpecial identical on %d/%d",
				tc.ref, same, len(c.Strings), roundTrip, len(c.Strings), sameSpecial, len(c.SpecialStrings))
			if same != len(c.Strings) || sameSpecial != len(c.SpecialStrings) {
				t.Errorf("%d + %d strings differ from the reference", len(c.Strings)-same, len(c.SpecialStrings)-sameSpecial)
			}
		})
	}
}

// TestSpecialTextIsPlainByDefault checks the security property: special-token
// text typed by a user never becomes a special token unless asked for.
func TestSpecialTextIsPlainByDefault(t *testing.T) {
	c := fixtures(t)
	for _, name := range []string{VocabO200kHarmony, VocabGPT2} {
		tk, err := Embedded(name)
		if err != nil {
			t.Fatal(err)
		}
		parsedSome := false
		for _, s := range c.SpecialStrings {
			ids := tk.Encode(s)
			for _, id := range ids {
				if tk.IsSpecial(id) {
					t.Fatalf("%s: Encode(%q) produced special token %d (%q)", name, s, id, tk.TokenText(id))
				}
			}
			if tk.Decode(ids) != s {
				t.Errorf("%s: Decode(Encode(%q)) = %q", name, s, tk.Decode(ids))
			}
			if special := tk.EncodeSpecial(s); !slices.Equal(special, ids) {
				parsedSome = true
			}
		}
		if !parsedSome {
			t.Errorf("%s: EncodeSpecial parsed no special token in any special string", name)
		}
	}
	tk, err := Embedded(VocabO200kHarmony)
	if err != nil {
		t.Fatal(err)
	}
	if got := tk.EncodeSpecial("<|start|>user<|message|>"); !slices.Equal(got, []int32{200006, 1428, 200008}) {
		t.Errorf("EncodeSpecial(<|start|>user<|message|>) = %v", got)
	}
}

// TestMetadata checks the special ids of both embedded vocabularies against
// the published values (issue 3, tiktoken's o200k_harmony and gpt2).
func TestMetadata(t *testing.T) {
	o, err := Embedded(VocabO200kHarmony)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Embedded(VocabGPT2)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"o200k VocabSize", o.VocabSize(), 201088},
		{"o200k BOS", o.BOS(), int32(199998)},
		{"o200k EOS", o.EOS(), int32(200002)},
		{"o200k PAD", o.PAD(), int32(199999)},
		{"o200k EOG", o.EOG(), []int32{199999, 200002, 200012}},
		{"gpt2 VocabSize", g.VocabSize(), 50257},
		{"gpt2 BOS", g.BOS(), int32(50256)},
		{"gpt2 EOS", g.EOS(), int32(50256)},
		{"gpt2 PAD", g.PAD(), int32(-1)},
		{"gpt2 EOG", g.EOG(), []int32{50256}},
		// The longest entries of o200k_base.tiktoken (base64-decoded) and of
		// gpt2's encoder.json (one character per byte) are 128 bytes.
		{"o200k MaxTokenBytes", o.MaxTokenBytes(), 128},
		{"gpt2 MaxTokenBytes", g.MaxTokenBytes(), 128},
	}
	for _, c := range checks {
		gotJSON, _ := json.Marshal(c.got)
		wantJSON, _ := json.Marshal(c.want)
		if string(gotJSON) != string(wantJSON) {
			t.Errorf("%s = %s, want %s", c.what, gotJSON, wantJSON)
		}
	}
	for text, want := range map[string]int32{"<|start|>": 200006, "<|message|>": 200008, "<|end|>": 200007,
		"<|channel|>": 200005, "<|constrain|>": 200003, "<|reserved_200013|>": 200013, "<|reserved_201087|>": 201087} {
		if id, ok := o.TokenID(text); !ok || id != want {
			t.Errorf("TokenID(%q) = %d, %v; want %d", text, id, ok, want)
		}
		if o.TokenText(want) != text {
			t.Errorf("TokenText(%d) = %q, want %q", want, o.TokenText(want), text)
		}
	}
	if !o.IsEOG(200012) || o.IsEOG(200007) || !g.IsEOG(50256) || g.IsEOG(0) {
		t.Error("IsEOG disagrees with EOG")
	}
	if o.AddBOS() || g.AddBOS() {
		t.Error("neither vocabulary adds BOS")
	}
}

// TestHFJSONMergeStrings loads the GPT-2 tokenizer.json with its merges
// rewritten from [a, b] pairs to "a b" strings (the older form) and checks
// it encodes the same.
func TestHFJSONMergeStrings(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal(testutil.ReadGzip(t, "testdata/gpt2.tokenizer.json.gz"), &doc); err != nil {
		t.Fatal(err)
	}
	model := doc["model"].(map[string]any)
	pairs, ok := model["merges"].([]any)
	if !ok || len(pairs) == 0 {
		t.Fatal("no merges")
	}
	asStrings := make([]string, len(pairs))
	for i, p := range pairs {
		switch p := p.(type) {
		case []any:
			asStrings[i] = p[0].(string) + " " + p[1].(string)
		case string:
			asStrings[i] = p
		}
	}
	model["merges"] = asStrings
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	tk, err := FromHFJSONBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	c := fixtures(t)
	for i, s := range c.Strings {
		if got := tk.Encode(s); !slices.Equal(got, c.IDs["hf/gpt2"][i]) {
			t.Fatalf("Encode(%q) = %v, want %v", s, got, c.IDs["hf/gpt2"][i])
		}
	}
}

// TestTokensSplitCharacters makes sure the fixtures exercise the stream
// decoder: some tokens must hold only part of a character.
func TestTokensSplitCharacters(t *testing.T) {
	tk, err := Embedded(VocabGPT2)
	if err != nil {
		t.Fatal(err)
	}
	partial := 0
	for _, id := range tk.Encode("👨‍👩‍👧‍👦 龘靐齉爨 e\u0301") {
		if !utf8.ValidString(tk.TokenText(id)) {
			partial++
		}
	}
	if partial == 0 {
		t.Fatal("no token holds a partial character")
	}
}

// TestVocabGGUFMatchesHF compares the embedded vocabularies in GGUF form with
// the tokenizer.json files built by HF tokenizers: the same tokens in the
// byte-level alphabet, and for o200k_harmony the same merges, which
// tools/tokenizer_conformance.py derived from the ranks independently of
// mergesFromRanks.
func TestVocabGGUFMatchesHF(t *testing.T) {
	for _, name := range []string{VocabO200kHarmony, VocabGPT2} {
		var doc struct {
			AddedTokens []struct {
				ID      int32  `json:"id"`
				Content string `json:"content"`
			} `json:"added_tokens"`
			Model struct {
				Vocab  map[string]int32 `json:"vocab"`
				Merges [][2]string      `json:"merges"`
			} `json:"model"`
		}
		if err := json.Unmarshal(testutil.ReadGzip(t, "testdata/"+name+".tokenizer.json.gz"), &doc); err != nil {
			t.Fatal(err)
		}
		v, err := VocabGGUF(name)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]string, len(v.Tokens))
		for tok, id := range doc.Model.Vocab {
			want[id] = tok
		}
		for _, a := range doc.AddedTokens {
			want[a.ID] = a.Content
		}
		if !slices.Equal(v.Tokens, want) {
			t.Errorf("%s: tokens differ from the tokenizer.json", name)
		}
		if len(v.Merges) != len(doc.Model.Merges) {
			t.Fatalf("%s: %d merges, tokenizer.json has %d", name, len(v.Merges), len(doc.Model.Merges))
		}
		for i, m := range doc.Model.Merges {
			if v.Merges[i] != m[0]+" "+m[1] {
				t.Fatalf("%s: merge %d is %q, tokenizer.json has %q", name, i, v.Merges[i], m)
			}
		}
	}
}

// TestConcurrentEncode uses one tokenizer from several goroutines, as the
// server does (run with -race to check the "safe for concurrent use" claim).
func TestConcurrentEncode(t *testing.T) {
	c := fixtures(t)
	tk, err := Embedded(VocabO200kHarmony)
	if err != nil {
		t.Fatal(err)
	}
	want := c.IDs["tiktoken/o200k_harmony"]
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for g := range 4 {
		wg.Go(func() {
			for i := g; i < len(c.Strings); i += 4 {
				if !slices.Equal(tk.Encode(c.Strings[i]), want[i]) {
					errs <- c.Strings[i]
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for s := range errs {
		t.Errorf("concurrent Encode(%q) differs", s)
	}
}
