package model

import (
	"slices"
	"testing"
)

// TestForwardReusesLogits checks the contract of Forward's result: the last
// token's logits live in a buffer of the cache, reused by the next Forward
// on that cache, so a decode step allocates no vocabulary-sized slice; a
// Forward on another cache leaves them alone; every token's logits (all) are
// the caller's own.
func TestForwardReusesLogits(t *testing.T) {
	m := loadFixtureModel(t, "gpt2_tied_q8", 0)
	a, err := m.NewCache(16)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Free()
	b, err := m.NewCache(16)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()

	first, err := m.Forward(a, []int32{1, 2, 3}, false)
	if err != nil {
		t.Fatal(err)
	}
	kept := slices.Clone(first)
	other, err := m.Forward(b, []int32{7, 8}, false)
	if err != nil {
		t.Fatal(err)
	}
	if &other[0] == &first[0] {
		t.Fatal("two caches share one logits buffer")
	}
	if !slices.Equal(first, kept) {
		t.Error("Forward on another cache changed this cache's logits")
	}
	all, err := m.Forward(a, []int32{4, 5}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(first, kept) {
		t.Error("Forward with all changed the last-token buffer")
	}
	next, err := m.Forward(a, []int32{6}, false)
	if err != nil {
		t.Fatal(err)
	}
	if &next[0] != &first[0] {
		t.Error("a decode step allocated a new logits slice")
	}
	if slices.Equal(next, kept) {
		t.Error("the next step's logits equal the first step's")
	}
	vocab := m.Config().VocabSize
	if len(all) != 2*vocab || len(next) != vocab {
		t.Errorf("lengths %d and %d, want %d and %d", len(all), len(next), 2*vocab, vocab)
	}
}
