package tokenizer

import (
	"slices"
	"strings"
	"testing"
)

// TestDuplicateMergeFirstWins: of two merges of the same pair, the first
// (lower) rank counts, in both BPE implementations. With "b c" at rank 2
// instead of 0, "a b" (rank 1) would merge first.
func TestDuplicateMergeFirstWins(t *testing.T) {
	v := &GGUFVocab{Model: "gpt2", Pre: "gpt-2", BOS: -1, EOS: -1, PAD: -1, EOT: -1, EOM: -1}
	for b := range 256 {
		v.Tokens = append(v.Tokens, byteLevelEncode([]byte{byte(b)}))
		v.TokenTypes = append(v.TokenTypes, TypeNormal)
	}
	v.Tokens = append(v.Tokens, "ab", "bc")
	v.TokenTypes = append(v.TokenTypes, TypeNormal, TypeNormal)
	v.Merges = []string{"b c", "a b", "b c"}
	tk, err := FromVocab(v)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, maxLinearBPE} { // one bpeLinear piece, one bpeQueue piece
		var want []int32
		for range n {
			want = append(want, 'a', 257)
		}
		if got := tk.Encode(strings.Repeat("abc", n)); !slices.Equal(got, want) {
			t.Errorf("Encode(%q) = %v, want %v", strings.Repeat("abc", n), got, want)
		}
	}
}
