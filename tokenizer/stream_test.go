package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// streamAll pushes ids one at a time and returns every chunk, Flush's last.
func streamAll(tk *Tokenizer, ids []int32) []string {
	d := tk.NewStreamDecoder()
	var chunks []string
	for _, id := range ids {
		chunks = append(chunks, d.Push(id))
	}
	return append(chunks, d.Flush())
}

// TestStreamNeverSplitsCharacters streams every conformance string through
// both vocabularies: each chunk must be valid UTF-8 on its own (no chunk
// carries part of a character) and the chunks must join to the string.
func TestStreamNeverSplitsCharacters(t *testing.T) {
	c := fixtures(t)
	for _, name := range []string{VocabGPT2, VocabO200kHarmony} {
		tk, err := Embedded(name)
		if err != nil {
			t.Fatal(err)
		}
		heldBack := 0
		for _, s := range c.Strings {
			ids := tk.Encode(s)
			chunks := streamAll(tk, ids)
			for i, chunk := range chunks {
				if !utf8.ValidString(chunk) {
					t.Fatalf("%s: %q: chunk %d (%q) is not valid UTF-8", name, s, i, chunk)
				}
				if i < len(ids) && chunk == "" && len(tk.TokenText(ids[i])) > 0 {
					heldBack++
				}
			}
			if got := strings.Join(chunks, ""); got != s {
				t.Fatalf("%s: streamed %q as %q", name, s, got)
			}
			if last := chunks[len(chunks)-1]; last != "" {
				t.Fatalf("%s: %q: Flush returned %q for a complete text", name, s, last)
			}
		}
		if heldBack == 0 {
			t.Errorf("%s: no token was held back, so no character was split across tokens", name)
		}
		t.Logf("%s: %d pushes held back a partial character", name, heldBack)
	}
}

// TestStreamSplitCharacters follows specific texts whose characters GPT-2
// splits across tokens: each chunk must be exactly the characters completed
// by that token.
func TestStreamSplitCharacters(t *testing.T) {
	tk, err := Embedded(VocabGPT2)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"👨‍👩‍👧‍👦",               // ZWJ family: 4-byte characters and U+200D
		"👍🏽 ok",                 // skin tone modifier
		"龘靐齉爨",                  // rare CJK, 3 bytes each
		"e\u0301\u0302 Z\u0351", // combining marks
		"𝄞𝕏𠀋",                   // 4-byte characters outside the BMP
	} {
		ids := tk.Encode(s)
		var bytesSoFar []byte
		emitted := ""
		d := tk.NewStreamDecoder()
		for _, id := range ids {
			bytesSoFar = append(bytesSoFar, tk.TokenText(id)...)
			chunk := d.Push(id)
			emitted += chunk
			// What has been emitted is exactly the complete characters so far.
			complete := len(bytesSoFar) - incompleteTail(bytesSoFar)
			if emitted != string(bytesSoFar[:complete]) {
				t.Fatalf("%q: after token %d emitted %q, want %q", s, id, emitted, bytesSoFar[:complete])
			}
		}
		if rest := d.Flush(); rest != "" || emitted != s {
			t.Fatalf("%q: emitted %q, Flush %q", s, emitted, rest)
		}
	}
}

// TestStreamIncomplete checks U+FFFD: only for bytes that can never complete a
// character, and at Flush for a character that was cut off.
func TestStreamIncomplete(t *testing.T) {
	tk, err := Embedded(VocabGPT2)
	if err != nil {
		t.Fatal(err)
	}
	b := func(c byte) int32 { return tk.byteID[c] }
	a, _ := tk.TokenID("a")

	// "😀" is F0 9F 98 80; cut after three bytes.
	d := tk.NewStreamDecoder()
	for _, c := range []byte{0xF0, 0x9F, 0x98} {
		if got := d.Push(b(c)); got != "" {
			t.Fatalf("partial emoji byte %02x emitted %q", c, got)
		}
	}
	if got := d.Flush(); got != "\uFFFD" {
		t.Fatalf("Flush of a cut-off emoji = %q, want one U+FFFD", got)
	}

	// Completed on the fourth byte.
	d = tk.NewStreamDecoder()
	var out string
	for _, c := range []byte{0xF0, 0x9F, 0x98, 0x80} {
		out += d.Push(b(c))
	}
	if out != "😀" || d.Flush() != "" {
		t.Fatalf("byte-by-byte emoji = %q", out)
	}

	// A lead byte followed by a non-continuation: one U+FFFD, then the text.
	d = tk.NewStreamDecoder()
	if got := d.Push(b(0xE4)); got != "" {
		t.Fatalf("lone lead byte emitted %q", got)
	}
	if got := d.Push(a); got != "\uFFFDa" {
		t.Fatalf("lead byte then 'a' = %q, want U+FFFD a", got)
	}

	// A byte that can never start a character is replaced at once.
	d = tk.NewStreamDecoder()
	if got := d.Push(b(0xFF)); got != "\uFFFD" {
		t.Fatalf("0xFF emitted %q", got)
	}
	if got := d.Push(b(0x80)); got != "\uFFFD" {
		t.Fatalf("stray continuation byte emitted %q", got)
	}
}

// TestDecodeReplacement checks Decode's U+FFFD: one per maximal ill-formed
// subsequence, as Python's bytes.decode(errors="replace") gives.
func TestDecodeReplacement(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"\xe4\xb8a", "\uFFFDa"},               // truncated 3-byte sequence
		{"\xf0\x9f\x98", "\uFFFD"},             // truncated 4-byte sequence
		{"a\xffb", "a\uFFFDb"},                 // never valid
		{"\x80\x80", "\uFFFD\uFFFD"},           // stray continuations
		{"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"}, // a surrogate: each byte
		{"ok", "ok"},
	} {
		if got := toValidUTF8([]byte(c.in)); got != c.want {
			t.Errorf("toValidUTF8(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	tk, err := Embedded(VocabGPT2)
	if err != nil {
		t.Fatal(err)
	}
	if got := tk.Decode([]int32{-1, int32(tk.VocabSize())}); got != "\uFFFD\uFFFD" {
		t.Errorf("Decode of ids outside the vocabulary = %q", got)
	}
}
