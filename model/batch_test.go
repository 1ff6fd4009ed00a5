package model_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"orcd/backend/cpu"
	"orcd/internal/batchtest"
	"orcd/model"
)

// TestStepMatchesForward runs several sequences together through Step
// (batchtest.Run: batches that mix prompt chunks of random lengths with
// one-token decode steps, over one pool of 4-token blocks handed out in a
// shuffled order and recycled as sequences finish and sliding windows
// move) and checks every token's logits against the same sequence run
// alone through Forward (one chunk, 16-token blocks): the same bits, in
// both cpu precisions, as the cpu backend promises (a row's result does not
// depend on the other rows of its step, its chunking or where its keys
// lie). The sequences are longer than the fixtures' sliding windows (8 and
// 16), and new ones start while others run. A last-bit difference matters:
// the fast precision's two-digit activations carry it on to the sampled
// tokens.
func TestStepMatchesForward(t *testing.T) {
	for _, name := range append(slices.Clone(model.HFFixtures), "tiny-llama", "tiny-qwen2") {
		for _, prec := range []cpu.Precision{cpu.Exact, cpu.Fast} {
			t.Run(fmt.Sprintf("%s/precision=%d", name, prec), func(t *testing.T) {
				const maxBatch = 16
				m := model.LoadTestModelOn(t, name, maxBatch, cpu.NewWithOptions(cpu.Options{Precision: prec}))
				vocab := m.Config().VocabSize
				r := rand.New(rand.NewPCG(7, uint64(len(name))))
				seqs := batchtest.RandomSeqs(r, vocab, 23, 1, 9, 40, 17, 30, 5, 33)
				want := make([][]float32, len(seqs))
				for i, s := range seqs {
					c, err := m.NewCache(len(s.Tokens))
					if err != nil {
						t.Fatal(err)
					}
					if want[i], err = m.Forward(c, s.Tokens, true); err != nil {
						t.Fatal(err)
					}
					c.Free()
				}
				err := batchtest.Run(m, seqs, maxBatch, r, func(seq, pos int, got []float32) {
					w := want[seq][pos*vocab : (pos+1)*vocab]
					for i := range got {
						if math.Float32bits(got[i]) != math.Float32bits(w[i]) {
							t.Errorf("sequence %d, position %d: logit %d is %v batched, %v alone (relative error %.3g)",
								seq, pos, i, got[i], w[i], model.RelErr(got, w))
							return
						}
					}
				})
				if err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}
