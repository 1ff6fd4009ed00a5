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

// TestWordTable looks up every normal token of both vocabularies, and
// strings one byte away from each (most of them not tokens), in the
// tokenizer's wordTable and in a Go map of the same tokens.
func TestWordTable(t *testing.T) {
	for _, name := range []string{VocabO200kHarmony, VocabGPT2} {
		tk, err := Embedded(name)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int32{}
		for id, p := range tk.pieces {
			if tk.types[id] == TypeNormal {
				if _, dup := want[string(p)]; !dup {
					want[string(p)] = int32(id)
				}
			}
		}
		check := func(s string) {
			id, ok := tk.words.get(s)
			wantID, wantOK := want[s]
			if ok != wantOK || id != wantID {
				t.Fatalf("%s: words.get(%q) = %d, %v; want %d, %v", name, s, id, ok, wantID, wantOK)
			}
		}
		found := 0
		for s := range want {
			check(s)
			check(s + "e")
			check(s[:len(s)-1])
			if _, ok := want[s[:len(s)-1]]; ok {
				found++
			}
			b := []byte(s)
			b[len(b)/2] ^= 0x20
			check(string(b))
		}
		if found == 0 {
			t.Errorf("%s: no prefix of a token is a token; the test checks nothing found", name)
		}
	}
}
