package tokenizer

import (
	"slices"
	"testing"
)

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
