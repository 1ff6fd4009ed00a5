package tokenizer

import (
	"testing"
	"time"
)

func TestSmoke(t *testing.T) {
	for _, name := range []string{VocabGPT2, VocabO200kHarmony} {
		start := time.Now()
		v, err := VocabGGUF(name)
		if err != nil {
			t.Fatal(err)
		}
		mid := time.Now()
		tk, err := FromVocab(v)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: vocab %v, tokenizer %v", name, mid.Sub(start), time.Since(mid))
		ids := tk.Encode("Hello world")
		t.Logf("%s %v %q", name, ids, tk.Decode(ids))
	}
}
