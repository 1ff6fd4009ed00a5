package model

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// batchSeq is one sequence of TestStepMatchesForward: all its tokens, how
// many have run, and its block tables.
type batchSeq struct {
	tokens []int32
	done   int
	tables [][]int32
	want   []float32 // every position's logits, from Forward alone
}

// TestStepMatchesForward runs several sequences together through Step, in
// batches that mix prompt chunks of random lengths with one-token decode
// steps, over one pool whose blocks are handed out in a shuffled order and
// recycled as sequences finish and sliding windows move, and checks every
// token's logits against the same sequence run alone through Forward: the
// same to 1e-5 and the same greedy token. The sequences are longer than the
// fixtures' sliding windows (8 and 16), and new ones start while others run.
func TestStepMatchesForward(t *testing.T) {
	for _, name := range append(slices.Clone(hfFixtures), "tiny-llama", "tiny-qwen2") {
		t.Run(name, func(t *testing.T) {
			const maxBatch = 16
			m := loadTestModel(t, name, maxBatch)
			cfg := m.Config()
			r := rand.New(rand.NewPCG(7, uint64(len(name))))
			lengths := []int{23, 1, 9, 40, 17, 30, 5, 33}
			seqs := make([]*batchSeq, len(lengths))
			for i, n := range lengths {
				s := &batchSeq{tokens: make([]int32, n)}
				for j := range s.tokens {
					s.tokens[j] = int32(r.IntN(cfg.VocabSize))
				}
				c, err := m.NewCache(n)
				if err != nil {
					t.Fatal(err)
				}
				if s.want, err = m.Forward(c, s.tokens, true); err != nil {
					t.Fatal(err)
				}
				c.Free()
				seqs[i] = s
			}

			kv, err := m.NewKV(40, 4)
			if err != nil {
				t.Fatal(err)
			}
			defer kv.Free()
			groups := kv.Groups()
			var free []int32
			for _, b := range r.Perm(kv.Blocks()) {
				free = append(free, int32(b))
			}
			running := []*batchSeq{}
			next := 0
			for step := 0; next < len(seqs) || len(running) > 0; step++ {
				// Up to four sequences at once: start new ones as others end.
				for len(running) < 4 && next < len(seqs) {
					s := seqs[next]
					s.tables = make([][]int32, len(groups))
					running = append(running, s)
					next++
				}
				// Decoding sequences (their first 40% counts as the prompt)
				// take one token, first; prompts take chunks of 1 to 7.
				var batch Batch
				var in []*batchSeq
				budget := maxBatch
				for _, prefill := range []bool{false, true} {
					for _, s := range running {
						inPrompt := s.done < len(s.tokens)*2/5
						if inPrompt != prefill || budget == 0 {
							continue
						}
						n := 1
						if prefill {
							n = min(1+r.IntN(7), len(s.tokens)-s.done, budget)
						}
						alloc := func() (int32, bool) {
							if len(free) == 0 {
								return -1, false
							}
							b := free[len(free)-1]
							free = free[:len(free)-1]
							return b, true
						}
						release := func(b int32) { free = append(free, b) }
						if !GrowTables(s.tables, groups, kv.BlockSize(), s.done, s.done+n, alloc, release) {
							t.Fatalf("step %d: the pool ran out", step)
						}
						mode := AllLogits
						if r.IntN(3) == 0 {
							mode = LastLogits
						}
						batch.Chunks = append(batch.Chunks, Chunk{Tokens: s.tokens[s.done : s.done+n], Pos: s.done, Tables: s.tables, Logits: mode})
						in = append(in, s)
						budget -= n
					}
				}
				logits, err := m.Step(kv, &batch)
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				got := make([]float32, logits.Rows()*cfg.VocabSize)
				if err := logits.Read(got); err != nil {
					t.Fatal(err)
				}
				row := 0
				for i, ch := range batch.Chunks {
					s := in[i]
					for j := range ch.Tokens {
						if ch.Logits == LastLogits && j < len(ch.Tokens)-1 {
							continue
						}
						p := ch.Pos + j
						g, w := got[row*cfg.VocabSize:(row+1)*cfg.VocabSize], s.want[p*cfg.VocabSize:(p+1)*cfg.VocabSize]
						if e := relErr(g, w); e > 1e-5 || argmax(g) != argmax(w) {
							t.Errorf("step %d, chunk %d, position %d: relative error %.3g, greedy %d vs %d alone",
								step, i, p, e, argmax(g), argmax(w))
						}
						row++
					}
					s.done += len(ch.Tokens)
				}
				if row != logits.Rows() {
					t.Fatalf("step %d: %d logits rows, want %d", step, logits.Rows(), row)
				}
				// Finished sequences give their blocks back.
				kept := running[:0]
				for _, s := range running {
					if s.done < len(s.tokens) {
						kept = append(kept, s)
						continue
					}
					for _, tab := range s.tables {
						for _, b := range tab {
							if b >= 0 {
								free = append(free, b)
							}
						}
					}
				}
				running = kept
			}
			if len(free) != kv.Blocks() {
				t.Errorf("%d of %d blocks back in the free list", len(free), kv.Blocks())
			}
		})
	}
}

// TestStepErrors checks that a malformed batch is an error naming what is
// wrong, and that it leaves the pool usable.
func TestStepErrors(t *testing.T) {
	m := loadFixtureModel(t, "gptoss_mxfp4_q8", 8)
	kv, err := m.NewKV(8, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Free()
	ok := [][]int32{{0, 1}, {2, 3}}
	cases := []struct {
		chunk Chunk
		want  string
	}{
		{Chunk{Tokens: nil, Tables: ok}, "no tokens"},
		{Chunk{Tokens: []int32{1}, Pos: -1, Tables: ok}, "outside the model's context"},
		{Chunk{Tokens: []int32{1}, Tables: ok[:1]}, "1 block tables, the pool has 2 KV groups"},
		{Chunk{Tokens: []int32{1, 2, 3, 4, 5}, Pos: 4, Tables: ok}, "position 8 needs 3"},
		{Chunk{Tokens: []int32{1}, Pos: 5, Tables: [][]int32{{-1, 1}, {2, 3}}}, "group 0's block 0 (positions 0..3) is -1"},
		{Chunk{Tokens: []int32{1}, Pos: 5, Tables: [][]int32{{0, 1}, {2, 8}}}, "group 1's block 1 (positions 4..7) is 8"},
		{Chunk{Tokens: []int32{1, 99999}, Tables: ok}, "token 99999 (index 1)"},
		{Chunk{Tokens: make([]int32, 9), Tables: [][]int32{{0, 1, 2}, {3, 4, 5}}}, "9 tokens, want 1 to 8"},
	}
	for _, tc := range cases {
		_, err := m.Step(kv, &Batch{Chunks: []Chunk{tc.chunk}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("chunk %+v: error %v, want one mentioning %q", tc.chunk, err, tc.want)
		}
	}
	if _, err := m.Step(kv, &Batch{}); err == nil {
		t.Error("empty batch: no error")
	}
	other := loadFixtureModel(t, "gptoss_mxfp4_q8", 8)
	if _, err := other.Step(kv, &Batch{Chunks: []Chunk{{Tokens: []int32{1}, Tables: ok}}}); err == nil {
		t.Error("a pool of another model: no error")
	}
	// A window of 8: block 0 (positions 0..3) is out of sight from
	// position 12 on in the sliding group (group 1), so -1 is fine there.
	tables := [][]int32{{0, 1, 2, 3}, {-1, 5, 6, 7}}
	if _, err := m.Step(kv, &Batch{Chunks: []Chunk{{Tokens: []int32{1}, Pos: 12, Tables: tables, Logits: LastLogits}}}); err != nil {
		t.Errorf("sliding group with its out-of-window block given back: %v", err)
	}
}
