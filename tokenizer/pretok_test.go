package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// scanners pairs each pre-tokenizer with its reference (pretok_ref_test.go).
var scanners = []struct {
	name      string
	fast, ref preTokenizer
}{
	{"o200k", o200kNext, refO200kNext},
	{"gpt2", gpt2Next, refGpt2Next},
}

// checkPieces fails the test where a scanner splits s differently from its
// reference.
func checkPieces(t *testing.T, s string) {
	t.Helper()
	buildClassTable()
	for _, sc := range scanners {
		for i := 0; i < len(s); {
			j, want := sc.fast(s, i), sc.ref(s, i)
			if j != want || j <= i {
				t.Fatalf("%s: piece at byte %d of %q ends at %d, reference %d", sc.name, i, clipText(s, i), j, want)
			}
			i = j
		}
	}
}

// clipText shows some text around byte i of s.
func clipText(s string, i int) string {
	return s[max(0, i-20):min(len(s), i+40)]
}

// TestClassAt compares classAt with utf8.DecodeRuneInString and
// computeClass on every lead byte >= 0x80 followed by every byte and then
// boundary bytes, and on the truncated forms of those sequences.
func TestClassAt(t *testing.T) {
	buildClassTable()
	edges := []byte{0x41, 0x80, 0xBF, 0xC0} // ASCII, continuation bytes, a lead byte
	var buf [4]byte
	for b0 := 0x80; b0 < 0x100; b0++ {
		for b1 := range 0x100 {
			for _, b2 := range edges {
				for _, b3 := range edges {
					buf = [4]byte{byte(b0), byte(b1), b2, b3}
					for n := 1; n <= 4; n++ {
						s := string(buf[:n])
						c, w := split(classAt(s, 0))
						r, wantW := utf8.DecodeRuneInString(s)
						wantC := computeClass(r)
						if r == utf8.RuneError && wantW == 1 {
							wantC = 0 // invalid UTF-8: a byte of class 0
						}
						if c != wantC || w != wantW {
							t.Fatalf("classAt(%q) = class %d width %d, want %d %d", s, c, w, wantC, wantW)
						}
					}
				}
			}
		}
	}
}

// TestPretokMatchesReference splits random strings of characters from every
// class the patterns tell apart, and malformed UTF-8, with both scanners.
func TestPretokMatchesReference(t *testing.T) {
	pool := strings.Split("a|z|A|Z|0|9|'|s|t|re|ll|S|RE|LL|ſ|\"|/|.|,|!|-|_|(|)|é|É|ß|ǅ|ʰ|ª|中|文|ー|한|ا|ب|\u064e|अ|\u094d|ก|\u0e34|"+
		"\u0301|\u0308|\u20dd|\u200d|\ufe0f|²|½|Ⅻ|٣|１|𝟘|👍|🏽|🇯|€|→|…|’|«| |  |\t|\n|\r|\r\n|\u00a0|\u3000|\u2028|\u0085|\x0b|"+
		"\xff|\x80|\xc3|\xe2\x82|\xed\xa0\x80|\xe0\x80\x80|\xf4\x90\x80\x80|\xf0\x9f|\xc0\xaf|𐐀|𐐨|𠀀", "|")
	rng := rand.New(rand.NewPCG(7, 7))
	for range 20000 {
		var sb strings.Builder
		for range 1 + rng.IntN(30) {
			sb.WriteString(pool[rng.IntN(len(pool))])
		}
		checkPieces(t, sb.String())
	}
}

// TestPretokCorpora splits the start of each benchmark corpus with both
// scanners.
func TestPretokCorpora(t *testing.T) {
	for _, c := range benchCorpora {
		text := c.text(t)
		checkPieces(t, text[:min(len(text), 1<<18)])
	}
}

// FuzzPretok: both scanners split any text the same way.
func FuzzPretok(f *testing.F) {
	for _, s := range []string{"", "Hello world", "  \r\n\t x", "don't DON'T 'S ſ x'ſ", "中文 한국어 👨‍👩‍👧‍👦", "e\u0301\u0301ABC", "\xff\xc3 \xe2\x82", "12345 6.7", "HTTPServer ABC def ABCé (Abc) _x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { checkPieces(t, s) })
}

// splitAll pre-tokenizes s with next.
func splitAll(next preTokenizer, s string) []string {
	buildClassTable()
	var out []string
	for i := 0; i < len(s); {
		j := next(s, i)
		out = append(out, s[i:j])
		i = j
	}
	return out
}

// TestLlamaFamilyPieces checks Llama 3's and Qwen2's pre-tokenizers on
// cases worked by hand from their regexes (leftmost alternative first):
// contractions before letters (case-insensitive), one non-letter prefix on
// a letter run, digit runs of at most three (Llama 3) or one (Qwen2),
// punctuation taking the newlines after it, and whitespace giving its last
// character to the next piece.
func TestLlamaFamilyPieces(t *testing.T) {
	cases := []struct {
		in            string
		llama3, qwen2 []string
	}{
		{"Hello world's", []string{"Hello", " world", "'s"}, []string{"Hello", " world", "'s"}},
		{"I'LL 12345", []string{"I", "'LL", " ", "123", "45"}, []string{"I", "'LL", " ", "1", "2", "3", "4", "5"}},
		{"a!!\n\nb", []string{"a", "!!\n\n", "b"}, []string{"a", "!!\n\n", "b"}},
		{"x  \n y", []string{"x", "  \n", " y"}, []string{"x", "  \n", " y"}},
		{"  z", []string{" ", " z"}, []string{" ", " z"}},
		{"$abc", []string{"$abc"}, []string{"$abc"}},
		{"a/b", []string{"a", "/b"}, []string{"a", "/b"}},
		{"end  ", []string{"end", "  "}, []string{"end", "  "}},
	}
	for _, c := range cases {
		if got := splitAll(llama3Next, c.in); !slices.Equal(got, c.llama3) {
			t.Errorf("llama3 %q: %q, want %q", c.in, got, c.llama3)
		}
		if got := splitAll(qwen2Next, c.in); !slices.Equal(got, c.qwen2) {
			t.Errorf("qwen2 %q: %q, want %q", c.in, got, c.qwen2)
		}
	}
}
