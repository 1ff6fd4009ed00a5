package tokenizer

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"orcd/gguf"
)

// exercise runs a loaded tokenizer over a text; it must not panic.
func exercise(tk *Tokenizer) {
	for _, s := range []string{"", "hello <|x|> wörld 👍\r\n  1234", "\xff\xfe"} {
		ids := tk.EncodeSpecial(s)
		tk.Decode(ids)
		d := tk.NewStreamDecoder()
		for _, id := range append(ids, -5, int32(tk.VocabSize())) {
			d.Push(id)
		}
		d.Flush()
	}
}

// FuzzFromHFJSON: bad tokenizer.json input gives an error, never a panic.
func FuzzFromHFJSON(f *testing.F) {
	f.Add(mustJSON(f, tinyJSON()))
	d := tinyJSON()
	d["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
		map[string]any{"type": "Split", "pattern": map[string]any{"Regex": o200kPattern}, "behavior": "Isolated"},
		map[string]any{"type": "ByteLevel", "use_regex": false}}}
	f.Add(mustJSON(f, d))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{"a":5},"merges":[["a","a"]]},"decoder":{"type":"ByteLevel"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tk, err := FromHFJSONBytes(data)
		if err != nil {
			if tk != nil {
				t.Fatal("tokenizer and error both returned")
			}
			return
		}
		exercise(tk)
	})
}

// FuzzFromGGUF: a GGUF whose tokenizer metadata is damaged gives an error,
// never a panic.
func FuzzFromGGUF(f *testing.F) {
	w := gguf.NewWriter()
	tinyVocab().SetOn(w)
	var buf bytes.Buffer
	tw, err := w.Begin(&buf)
	if err != nil {
		f.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := gguf.Parse("fuzz.gguf", data)
		if err != nil {
			return
		}
		tk, err := FromGGUF(file)
		if err != nil {
			return
		}
		exercise(tk)
	})
}

// FuzzEncode: any text round-trips through both vocabularies, and the
// stream decoder's chunks are valid UTF-8 that join to Decode's result.
func FuzzEncode(f *testing.F) {
	for _, s := range []string{"", "Hello world", "  \r\n\t x", "don't DON'T 'S", "中文 한국어 👨‍👩‍👧‍👦", "e\u0301\u0301ABC", "<|start|>x", "\xff\xc3"} {
		f.Add(s)
	}
	var toks []*Tokenizer
	for _, name := range []string{VocabGPT2, VocabO200kHarmony} {
		tk, err := Embedded(name)
		if err != nil {
			f.Fatal(err)
		}
		toks = append(toks, tk)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, tk := range toks {
			ids := tk.Encode(s)
			if got := string(tk.DecodeBytes(ids)); got != s {
				t.Fatalf("DecodeBytes(Encode(%q)) = %q", s, got)
			}
			if got := string(tk.DecodeBytes(tk.EncodeSpecial(s))); got != s {
				t.Fatalf("DecodeBytes(EncodeSpecial(%q)) = %q", s, got)
			}
			var sb strings.Builder
			d := tk.NewStreamDecoder()
			for _, id := range ids {
				chunk := d.Push(id)
				if !utf8.ValidString(chunk) {
					t.Fatalf("%q: chunk %q is not valid UTF-8", s, chunk)
				}
				sb.WriteString(chunk)
			}
			sb.WriteString(d.Flush())
			if want := tk.Decode(ids); sb.String() != want && utf8.ValidString(s) {
				t.Fatalf("%q: streamed %q, Decode %q", s, sb.String(), want)
			}
		}
	})
}
