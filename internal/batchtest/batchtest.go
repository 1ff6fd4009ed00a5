// Package batchtest runs many sequences together through model.Step the
// way a continuous-batching engine does, for the tests that compare a
// backend's batched steps with sequences run alone.
package batchtest

import (
	"fmt"
	"math/rand/v2"

	"orcd/model"
)

// Seq is one sequence: all its tokens, of which the first Prompt are read
// in chunks and the rest one at a time as decode steps.
type Seq struct {
	Tokens []int32
	Prompt int
}

// Run runs seqs through m on one pool, at most four at a time in steps of
// at most maxBatch tokens: decode steps first, then prompt chunks of random
// lengths (1 to 7). Blocks of 4 tokens are handed out in a shuffled order
// and recycled as sequences end and sliding windows move. check gets every
// logits row: the sequence's index, the position, and the logits (valid
// until check returns). It returns the first error.
func Run(m model.Model, seqs []Seq, maxBatch int, r *rand.Rand, check func(seq, pos int, logits []float32)) error {
	vocab := m.Config().VocabSize
	kv, err := m.NewKV(64, 4)
	if err != nil {
		return err
	}
	defer kv.Free()
	groups := kv.Groups()
	var free []int32
	for _, b := range r.Perm(kv.Blocks()) {
		free = append(free, int32(b))
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
	type state struct {
		idx, done int
		tables    [][]int32
	}
	var running []*state
	next := 0
	var got []float32
	for step := 0; next < len(seqs) || len(running) > 0; step++ {
		for len(running) < 4 && next < len(seqs) {
			running = append(running, &state{idx: next, tables: make([][]int32, len(groups))})
			next++
		}
		var batch model.Batch
		var in []*state
		budget := maxBatch
		for _, prefill := range []bool{false, true} {
			for _, s := range running {
				sq := seqs[s.idx]
				decode := s.done >= sq.Prompt
				if decode == prefill || budget == 0 {
					continue
				}
				n := 1
				if prefill {
					n = min(1+r.IntN(7), sq.Prompt-s.done, budget)
				}
				if !model.GrowTables(s.tables, groups, kv.BlockSize(), s.done, s.done+n, alloc, release) {
					return fmt.Errorf("step %d: the pool ran out", step)
				}
				mode := model.AllLogits
				if r.IntN(3) == 0 {
					mode = model.LastLogits
				}
				batch.Chunks = append(batch.Chunks, model.Chunk{Tokens: sq.Tokens[s.done : s.done+n], Pos: s.done, Tables: s.tables, Logits: mode, Decode: decode})
				in = append(in, s)
				budget -= n
			}
		}
		logits, err := m.Step(kv, &batch)
		if err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		if need := logits.Rows() * vocab; len(got) < need {
			got = make([]float32, need)
		}
		if err := logits.Read(got[:logits.Rows()*vocab]); err != nil {
			return err
		}
		row := 0
		for i, ch := range batch.Chunks {
			for j := range ch.Tokens {
				if ch.Logits == model.LastLogits && j < len(ch.Tokens)-1 {
					continue
				}
				check(in[i].idx, ch.Pos+j, got[row*vocab:(row+1)*vocab])
				row++
			}
			in[i].done += len(ch.Tokens)
		}
		if row != logits.Rows() {
			return fmt.Errorf("step %d: %d logits rows, want %d", step, logits.Rows(), row)
		}
		kept := running[:0]
		for _, s := range running {
			if s.done < len(seqs[s.idx].Tokens) {
				kept = append(kept, s)
				continue
			}
			for _, tab := range s.tables {
				for _, b := range tab {
					if b >= 0 {
						release(b)
					}
				}
			}
		}
		running = kept
	}
	if len(free) != kv.Blocks() {
		return fmt.Errorf("%d of %d blocks back in the free list", len(free), kv.Blocks())
	}
	return nil
}

// RandomSeqs returns sequences of the given lengths of random tokens below
// vocab, the first 40% of each being its prompt.
func RandomSeqs(r *rand.Rand, vocab int, lengths ...int) []Seq {
	seqs := make([]Seq, len(lengths))
	for i, n := range lengths {
		seqs[i] = Seq{Tokens: make([]int32, n), Prompt: max(1, n*2/5)}
		for j := range seqs[i].Tokens {
			seqs[i].Tokens[j] = int32(r.IntN(vocab))
		}
	}
	return seqs
}
