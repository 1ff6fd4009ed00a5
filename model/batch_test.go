package model_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"orcd/backend/cpu"
	"orcd/internal/batchtest"
	"orcd/model"
)

// TestStepMatchesForward runs several sequences together through Step
// (batchtest.Run: batches that mix prompt chunks of random lengths with
// one-token decode steps, over one pool whose blocks are handed out in a
// shuffled order and recycled as sequences finish and sliding windows
// move) and checks every token's logits against the same sequence run
// alone through Forward: the same to 1e-5 and the same greedy token. The
// sequences are longer than the fixtures' sliding windows (8 and 16), and
// new ones start while others run. It runs in both cpu precisions; the
// fast one rounds activations to 8 bits, where the last-bit differences
// between a row run alone and in a batch (the MoE picks its kernels by rows
// per expert) can move a rounding, which the random fixtures amplify: it is
// checked to 1e-2 and the same greedy token.
func TestStepMatchesForward(t *testing.T) {
	for _, name := range append(slices.Clone(model.HFFixtures), "tiny-llama", "tiny-qwen2") {
		for _, prec := range []cpu.Precision{cpu.Exact, cpu.Fast} {
			t.Run(fmt.Sprintf("%s/precision=%d", name, prec), func(t *testing.T) {
				const maxBatch = 16
				tol := map[cpu.Precision]float64{cpu.Exact: 1e-5, cpu.Fast: 1e-2}[prec]
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
					if e := model.RelErr(got, w); e > tol || model.Argmax(got) != model.Argmax(w) {
						t.Errorf("sequence %d, position %d: relative error %.3g, greedy %d vs %d alone", seq, pos, e, model.Argmax(got), model.Argmax(w))
					}
				})
				if err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}
