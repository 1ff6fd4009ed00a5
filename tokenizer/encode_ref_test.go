package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
)

// refEncoder is the straightforward encoder that the fast paths of Encode
// are tested against: the reference pre-tokenizer (pretok_ref_test.go), a
// Go map of the merges built here from the vocabulary's merge strings, and
// BPE by scanning all pairs for the lowest rank at every step.
type refEncoder struct {
	tk     *Tokenizer // Embedded's, to test
	pretok preTokenizer
	ranks  map[[2]int32]int // merge rank by (left, right); the first merge of a pair wins
	merges []merge
	normal map[string]int32 // whole-word ids
	byteID [256]int32
}

var refEncoders = sync.OnceValues(func() (map[string]*refEncoder, error) {
	out := map[string]*refEncoder{}
	for _, name := range []string{VocabO200kHarmony, VocabGPT2} {
		v, err := VocabGGUF(name)
		if err != nil {
			return nil, err
		}
		e := &refEncoder{ranks: map[[2]int32]int{}, normal: map[string]int32{}}
		if e.tk, err = Embedded(name); err != nil {
			return nil, err
		}
		e.pretok = map[string]preTokenizer{"gpt-2": refGpt2Next, "gpt-4o": refO200kNext}[v.Pre]
		byText := map[string]int32{}
		for id, tok := range v.Tokens {
			byText[tok] = int32(id)
			if v.TokenTypes[id] != TypeNormal {
				continue
			}
			raw := []byte(nil)
			for _, r := range tok {
				raw = append(raw, byte(runeToByte[r]))
			}
			if _, dup := e.normal[string(raw)]; !dup {
				e.normal[string(raw)] = int32(id)
			}
			if len(raw) == 1 {
				e.byteID[raw[0]] = int32(id)
			}
		}
		if e.merges, err = parseMerges(v.Merges, byText); err != nil {
			return nil, err
		}
		for rank, m := range e.merges {
			if _, dup := e.ranks[[2]int32{m.left, m.right}]; !dup {
				e.ranks[[2]int32{m.left, m.right}] = rank
			}
		}
		out[name] = e
	}
	return out, nil
})

// encode is Encode without special tokens, for a vocabulary that looks
// whole pieces up first (both embedded ones do).
func (e *refEncoder) encode(text string) []int32 {
	var ids []int32
	for i := 0; i < len(text); {
		j := e.pretok(text, i)
		piece := text[i:j]
		i = j
		if id, ok := e.normal[piece]; ok {
			ids = append(ids, id)
			continue
		}
		parts := make([]int32, len(piece))
		for k := range parts {
			parts[k] = e.byteID[piece[k]]
		}
		for {
			best, at := -1, -1
			for k := 0; k+1 < len(parts); k++ {
				if r, ok := e.ranks[[2]int32{parts[k], parts[k+1]}]; ok && (best < 0 || r < best) {
					best, at = r, k
				}
			}
			if at < 0 {
				break
			}
			parts = slices.Replace(parts, at, at+2, e.merges[best].result)
		}
		ids = append(ids, parts...)
	}
	return ids
}

// checkEncode fails the test where Encode differs from the reference.
func checkEncode(t *testing.T, text string) {
	t.Helper()
	refs, err := refEncoders()
	if err != nil {
		t.Fatal(err)
	}
	for name, e := range refs {
		got, want := e.tk.Encode(text), e.encode(text)
		if !slices.Equal(got, want) {
			k := 0
			for k < min(len(got), len(want)) && got[k] == want[k] {
				k++
			}
			t.Fatalf("%s: Encode differs from the reference at token %d of %d: got %v, want %v (text %q)",
				name, k, len(want), got[k:min(len(got), k+5)], want[k:min(len(want), k+5)], clipText(text, 0))
		}
	}
}

// TestEncodeMatchesReference encodes the start of every benchmark corpus,
// pieces of every length around the switch between the two BPE
// implementations, and random text.
func TestEncodeMatchesReference(t *testing.T) {
	for _, c := range benchCorpora {
		text := c.text(t)
		checkEncode(t, text[:min(len(text), 1<<18)])
	}
	rng := rand.New(rand.NewPCG(3, 3))
	letters := []rune("abcxyzéßжщλאبء中文語ー한국👍🏽\u0301")
	var sb strings.Builder
	for n := 2; n <= 3*maxLinearBPE+5; n++ {
		sb.Reset()
		for sb.Len() < n {
			sb.WriteRune(letters[rng.IntN(len(letters))])
		}
		checkEncode(t, sb.String())
		checkEncode(t, strings.Repeat(" ", n)+"x")
		checkEncode(t, strings.Repeat("ab", n))
	}
}

// FuzzEncodeMatchesReference: Encode agrees with the reference on any text.
func FuzzEncodeMatchesReference(f *testing.F) {
	for _, s := range []string{"", "Hello world", "  \r\n\t x", "中文 한국어 👨‍👩‍👧‍👦", strings.Repeat("中文語", 50), "\xff\xc3 \xe2\x82"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { checkEncode(t, s) })
}
