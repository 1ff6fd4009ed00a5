package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// dangerStrings returns, for every character of tk's charTable that has
// dangerous neighbours, the character between each of them and next to
// the others, and random mixtures of such characters and neighbours.
func dangerStrings(tk *Tokenizer) []string {
	var out, pool []string
	for r := rune(0x80); r <= utf8.MaxRune; r++ {
		e := tk.chars.get(r)
		if e == nil || e.start == e.end {
			continue
		}
		c := string(r)
		left, right := tk.chars.dangers[e.start:e.mid], tk.chars.dangers[e.mid:e.end]
		for _, x := range left {
			out = append(out, x+c, x+c+c)
		}
		for _, x := range right {
			out = append(out, c+x, c+c+x)
		}
		if len(left) > 0 && len(right) > 0 {
			out = append(out, left[0]+c+right[len(right)-1])
		}
		pool = append(pool, c)
		pool = append(pool, left...)
		pool = append(pool, right...)
	}
	rng := rand.New(rand.NewPCG(5, 5))
	for range 2000 {
		var sb strings.Builder
		for range 2 + rng.IntN(6) {
			sb.WriteString(pool[rng.IntN(len(pool))])
		}
		out = append(out, sb.String())
	}
	return out
}

// TestCharTableDangers checks the characters that BPE starts from already
// merged, where their neighbours are what could make that wrong: Encode
// must agree with the reference encoder. It also checks that the test can
// fail: with the dangers ignored, some strings encode differently.
func TestCharTableDangers(t *testing.T) {
	refs, err := refEncoders()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{VocabO200kHarmony, VocabGPT2} {
		e := refs[name]
		tk := e.tk
		if tk.chars == nil {
			t.Fatalf("%s: no charTable (the embedded merges are monotone)", name)
		}
		strs := dangerStrings(tk)
		want := make([][]int32, len(strs))
		rejected := 0
		for k, s := range strs {
			want[k] = e.encode(s)
			if got := tk.Encode(s); !slices.Equal(got, want[k]) {
				t.Fatalf("%s: Encode(%q) = %v, reference %v", name, s, got, want[k])
			}
			for i := 0; i < len(s); i++ {
				if s[i] >= utf8.RuneSelf && utf8.RuneStart(s[i]) {
					if r, _ := utf8.DecodeRuneInString(s[i:]); tk.chars.get(r) != nil {
						if _, _, ok := tk.charAt(s, i); !ok {
							rejected++
						}
					}
				}
			}
		}
		if rejected == 0 {
			t.Errorf("%s: no character of %d strings was kept from merging in advance", name, len(strs))
		}

		// The same tokenizer, blind to dangers.
		blind := *tk
		chars := *tk.chars
		chars.entries = slices.Clone(chars.entries)
		for i := range chars.entries {
			chars.entries[i].left, chars.entries[i].right = 0, 0
		}
		blind.chars = &chars
		differ := 0
		for k, s := range strs {
			if !slices.Equal(blind.Encode(s), want[k]) {
				differ++
			}
		}
		t.Logf("%s: %d strings, %d characters kept from merging in advance; ignoring dangers, %d strings would encode wrongly",
			name, len(strs), rejected, differ)
		if differ == 0 {
			t.Errorf("%s: ignoring the dangers changes no encoding; the test cannot fail", name)
		}
	}
}
