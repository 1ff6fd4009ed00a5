package engine_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"orcd/engine"
	"orcd/engine/enginetest"
)

// letters allows the bytes 'a', 'b' and 'c' and forces '!' after every four,
// then ends with <|endoftext|> once 12 tokens came or the budget is about to
// run out.
type letters struct {
	n    int
	mask []uint64
}

func newLetters() engine.Constraint {
	mask := make([]uint64, (enginetest.VocabSize+63)/64)
	for _, c := range "abc" {
		mask[c/64] |= 1 << (c % 64)
	}
	return &letters{mask: mask}
}

func (l *letters) Next(remaining int) ([]uint64, int32) {
	switch {
	case l.n == 12 || remaining == 1:
		return nil, enginetest.MustID("<|endoftext|>")
	case l.n%5 == 4:
		return nil, '!'
	}
	return l.mask, -1
}

func (l *letters) Accept(id int32) error {
	if id == enginetest.MustID("<|endoftext|>") {
		return nil
	}
	want := l.n%5 == 4
	if l.n == 12 || want && id != '!' || !want && id != '!' && !strings.ContainsRune("abc", rune(id)) {
		return fmt.Errorf("token %d at %d breaks the constraint", id, l.n)
	}
	l.n++
	return nil
}

// TestConstraintInMixedBatch runs constrained and free requests together:
// the constrained ones follow their masks and forced tokens and end when
// forced to; the free ones give the same text as alone.
func TestConstraintInMixedBatch(t *testing.T) {
	reqs := mixedRequests(8)
	for i := range reqs {
		if i%2 == 0 {
			reqs[i].NewConstraint = newLetters
			reqs[i].MaxTokens = 40
		}
	}
	// The tight budget: forced to end at its last token.
	reqs[2].MaxTokens = 7
	fake := func() *enginetest.Model { return &enginetest.Model{} }
	want := solo(t, fake, reqs)
	e := newEngine(t, fake(), engine.Config{MaxActive: 8, StepTokens: 32, BlockSize: 4})
	got := runAll(t, e, reqs)
	for i := range reqs {
		if i%2 == 1 {
			if got[i] != want[i] {
				t.Errorf("free request %d: batched %q, alone %q", i, got[i], want[i])
			}
			continue
		}
		wantLen := 12
		if i == 2 {
			wantLen = 6
		}
		if len(got[i]) != wantLen {
			t.Errorf("constrained request %d: %q, want %d characters", i, got[i], wantLen)
		}
		for k, c := range got[i] {
			if k%5 == 4 && c != '!' || k%5 != 4 && !strings.ContainsRune("abc", c) {
				t.Errorf("constrained request %d: %q breaks the constraint at %d", i, got[i], k)
			}
		}
	}
	_, _, res := generate(t, e, context.Background(), reqs[0])
	if res.StopReason != engine.StopEOG {
		t.Errorf("constrained request stopped by %s, want eog", res.StopReason)
	}
}
