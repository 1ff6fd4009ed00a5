package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"orcd/backend"
	"orcd/tensor"
)

// refAttention is attention for one query row at position p, from the
// definition: GQA head mapping, keys max(0, p-window+1)..p (all earlier when
// window is 0), softmax of scale·q·k with the sink as an extra logit whose
// column is dropped. keys and values are indexed by absolute position.
func refAttention(q []float32, p int, keys, values [][]float32, sinks []float32, ap backend.AttentionParams) []float64 {
	out := make([]float64, ap.Heads*ap.HeadDim)
	first := 0
	if ap.Window > 0 && p-ap.Window+1 > 0 {
		first = p - ap.Window + 1
	}
	for h := 0; h < ap.Heads; h++ {
		kvh := h / (ap.Heads / ap.KVHeads)
		var logits []float64
		for j := first; j <= p; j++ {
			var s float64
			for c := 0; c < ap.HeadDim; c++ {
				s += float64(q[h*ap.HeadDim+c]) * float64(keys[j][kvh*ap.HeadDim+c])
			}
			logits = append(logits, s*float64(ap.Scale))
		}
		all := logits
		if sinks != nil {
			all = append(append([]float64(nil), logits...), float64(sinks[h]))
		}
		m := math.Inf(-1)
		for _, l := range all {
			m = math.Max(m, l)
		}
		var z float64
		for _, l := range all {
			z += math.Exp(l - m)
		}
		for i, l := range logits {
			pr := math.Exp(l-m) / z
			for c := 0; c < ap.HeadDim; c++ {
				out[h*ap.HeadDim+c] += pr * float64(values[first+i][kvh*ap.HeadDim+c])
			}
		}
	}
	return out
}

// pagedSeq is one sequence of an attention test: its keys and values by
// absolute position, and the cache block of each of its block indices.
type pagedSeq struct {
	keys, values [][]float32
	blocks       []int32
}

// TestAttention runs batches of several sequences over one paged cache:
// blocks handed out in a shuffled order, so a sequence's keys are scattered
// and interleaved with other sequences', each step mixing sequences that
// prefill and sequences that decode, and checks every row against the
// definition over that sequence's own keys.
func TestAttention(t *testing.T) {
	cases := []struct {
		name                    string
		heads, kvHeads, headDim int
		window, blockSize       int
		sinks                   bool
		// steps[i][s] is how many tokens sequence s adds in step i (0: not
		// in the step).
		steps [][]int
	}{
		{"mha/full/one-sequence", 4, 4, 8, 0, 4, false, [][]int{{10}, {1}, {1}}},
		{"gqa4/full/mixed", 8, 2, 16, 0, 4, false, [][]int{{7, 3, 0}, {1, 6, 9}, {1, 1, 1}, {0, 1, 5}}},
		{"gqa2/window/sinks", 6, 3, 8, 5, 2, true, [][]int{{4, 1, 2}, {1, 7, 1}, {9, 1, 1}, {1, 1, 1}}},
		{"gqa4/sinks/odd-headdim", 4, 1, 5, 0, 3, true, [][]int{{3, 2}, {6, 1}, {1, 8}}},
		{"mha/window-bigger-than-block", 2, 2, 12, 7, 4, true, [][]int{{5, 0, 11}, {5, 3, 1}, {5, 1, 1}, {1, 9, 1}}},
		{"block-of-one", 2, 1, 4, 3, 1, false, [][]int{{2, 5}, {1, 1}, {4, 1}}},
		// Head size 64 with runs of 4+ consecutive rows: the fast
		// precision's four-row blocks, also across block-table gaps, a
		// window and sinks.
		{"gqa2/headdim64/prefill", 4, 2, 64, 0, 4, true, [][]int{{13, 6, 0}, {5, 4, 9}, {1, 1, 1}, {7, 0, 4}}},
		{"mha/headdim64/window", 2, 2, 64, 6, 4, false, [][]int{{11, 3}, {4, 9}, {1, 1}}},
		// Blocks of 8: four rows scored together over the whole blocks
		// before their own.
		{"gqa2/headdim64/block8", 4, 2, 64, 0, 8, true, [][]int{{21, 3}, {6, 18}, {1, 1}, {9, 1}}},
	}
	for name, b := range backendsWithFast() {
		// The fast precision's caches are binary16; it also runs on float32
		// ones.
		newCaches := map[string]func(rows, cols int) (backend.Tensor, error){"": b.NewKVCache}
		if b.Fast() {
			newCaches["/f32kv"] = b.NewF32
		}
		for cacheName, newCache := range newCaches {
			for _, tc := range cases {
				t.Run(fmt.Sprintf("%s%s/%s", name, cacheName, tc.name), func(t *testing.T) {
					r := newRand(t)
					nSeq := len(tc.steps[0])
					total := make([]int, nSeq)
					for _, st := range tc.steps {
						for s, k := range st {
							total[s] += k
						}
					}
					maxBlocks := 0
					for _, n := range total {
						maxBlocks = max(maxBlocks, (n+tc.blockSize-1)/tc.blockSize)
					}
					nBlocks := nSeq*maxBlocks + 3 // a few never used
					free := r.Perm(nBlocks)
					ap := backend.AttentionParams{
						Heads: tc.heads, KVHeads: tc.kvHeads, HeadDim: tc.headDim,
						Scale: float32(1 / math.Sqrt(float64(tc.headDim))), Window: tc.window,
						BlockSize: tc.blockSize, MaxBlocks: maxBlocks,
					}
					qCols, kvCols := tc.heads*tc.headDim, tc.kvHeads*tc.headDim
					kc := must(newCache(nBlocks*tc.blockSize, kvCols))
					vc := must(newCache(nBlocks*tc.blockSize, kvCols))
					var sinkV []float32
					var sinks backend.Tensor
					if tc.sinks {
						sinkV = randF32(r, tc.heads, 2)
						sinks = activation(t, b, 1, tc.heads, sinkV)
					}
					seqs := make([]pagedSeq, nSeq)
					for _, st := range tc.steps {
						var pos, seqOf, slots []int32
						var rowSeq []int
						for s, k := range st {
							sq := &seqs[s]
							for range k {
								p := len(sq.keys)
								if p%tc.blockSize == 0 {
									sq.blocks = append(sq.blocks, int32(free[0]))
									free = free[1:]
								}
								sq.keys = append(sq.keys, randF32(r, kvCols, 1))
								sq.values = append(sq.values, randF32(r, kvCols, 1))
								pos = append(pos, int32(p))
								seqOf = append(seqOf, int32(s))
								slots = append(slots, sq.blocks[p/tc.blockSize]*int32(tc.blockSize)+int32(p%tc.blockSize))
								rowSeq = append(rowSeq, s)
							}
						}
						n := len(pos)
						var kv, vv []float32
						for i, s := range rowSeq {
							kv = append(kv, seqs[s].keys[pos[i]]...)
							vv = append(vv, seqs[s].values[pos[i]]...)
						}
						table := make([]int32, nSeq*maxBlocks)
						for i := range table {
							table[i] = -1
						}
						for s := range seqs {
							copy(table[s*maxBlocks:], seqs[s].blocks)
						}
						qv := randF32(r, n*qCols, 2)
						b.StoreKV(kc, vc, activation(t, b, n, kvCols, kv), activation(t, b, n, kvCols, vv), ints(t, b, slots))
						dst := poisoned(t, b, n, qCols)
						b.Attention(dst, activation(t, b, n, qCols, qv), kc, vc, ints(t, b, pos), ints(t, b, seqOf), ints(t, b, table), sinks, ap)
						// A binary16 cache holds the values rounded to nearest even
						// (tensor.F32ToF16, checked against reference vectors in
						// package tensor): from those on, the kernels' float32 sums
						// over at most 44 keys of at most 64 products of values
						// below 2 keep the same 1e-5 relative error as float32
						// caches.
						var want []float64
						for i, s := range rowSeq {
							keys, values := seqs[s].keys, seqs[s].values
							if kc.Type() == tensor.F16 {
								keys, values = roundF16(keys), roundF16(values)
							}
							want = append(want, refAttention(qv[i*qCols:(i+1)*qCols], int(pos[i]), keys, values, sinkV, ap)...)
						}
						compare(t, fmt.Sprintf("step %v", st), read(t, b, dst), want, uniformTol(want, 1e-5, 1e-6))
					}
				})
			}
		}
	}
}

// TestAttentionMissingBlock checks that a row needing a block whose table
// entry is missing is an error, not a silent wrong answer, while missing
// entries a row cannot see (out of its window) are fine.
func TestAttentionMissingBlock(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(1, 2))
	ap := backend.AttentionParams{Heads: 2, KVHeads: 2, HeadDim: 4, Scale: 0.5, BlockSize: 4, MaxBlocks: 3}
	kc, vc := must(b.NewKVCache(12, 8)), must(b.NewKVCache(12, 8))
	q := activation(t, b, 1, 8, randF32(r, 8, 1))
	dst := must(b.NewF32(1, 8))
	one := ints(t, b, []int32{0})
	run := func(pos int32, table []int32, window int) error {
		ap.Window = window
		b.Attention(dst, q, kc, vc, ints(t, b, []int32{pos}), one, ints(t, b, table), nil, ap)
		return b.Sync()
	}
	if err := run(9, []int32{2, 0, 1}, 0); err != nil {
		t.Fatalf("position 9, all blocks present: %v", err)
	}
	if run(9, []int32{2, -1, 1}, 0) == nil {
		t.Error("full attention at position 9 with block 1 missing: no error")
	}
	if err := run(9, []int32{-1, -1, 1}, 2); err != nil {
		t.Errorf("window 2 at position 9 (keys 8, 9) with blocks 0 and 1 missing: %v", err)
	}
	if run(9, []int32{-1, -1, 1}, 3) == nil {
		t.Error("window 3 at position 9 (keys 7..9) with block 1 missing: no error")
	}
	if run(9, []int32{2, 0, 3}, 0) == nil {
		t.Error("table entry 3 in a 3-block cache: no error")
	}
	if run(12, []int32{2, 0, 1}, 0) == nil {
		t.Error("position 12 past a 3-block table: no error")
	}
}

func TestExpNonPositive(t *testing.T) {
	for x := 0.0; x > -750; x -= 0.0137 {
		got, want := expNonPositive(x), math.Exp(x)
		if x < -700 {
			want = 0 // flushed: e^-700 ≈ 1e-304 is nothing next to the softmax's largest term, 1
		}
		if math.Abs(got-want) > 1e-8*want {
			t.Fatalf("expNonPositive(%v) = %v, want %v", x, got, want)
		}
	}
	if got := expNonPositive(math.Inf(-1)); got != 0 {
		t.Errorf("expNonPositive(-Inf) = %v, want 0", got)
	}
}

// TestAttentionRowsAlone checks that each row of a prefill gets the same
// bits as when it is the only row of its call, as the package promises
// (the fast precision runs runs of four rows together).
func TestAttentionRowsAlone(t *testing.T) {
	const heads, kvHeads, headDim, ctx, n = 4, 2, 64, 32, 11
	for name, b := range backendsWithFast() {
		for _, window := range []int{0, 5} {
			t.Run(fmt.Sprintf("%s/window=%d", name, window), func(t *testing.T) {
				r := newRand(t)
				qCols, kvCols := heads*headDim, kvHeads*headDim
				kc, vc := must(b.NewKVCache(ctx, kvCols)), must(b.NewKVCache(ctx, kvCols))
				slots := make([]int32, ctx)
				for i := range slots {
					slots[i] = int32(i)
				}
				b.StoreKV(kc, vc, activation(t, b, ctx, kvCols, randF32(r, ctx*kvCols, 1)), activation(t, b, ctx, kvCols, randF32(r, ctx*kvCols, 1)), ints(t, b, slots))
				seq, table, ap := contiguousTable(b, n, ctx)
				ap.Heads, ap.KVHeads, ap.HeadDim, ap.Window = heads, kvHeads, headDim, window
				ap.Scale = 0.125
				sinks := activation(t, b, 1, heads, randF32(r, heads, 2))
				qv := randF32(r, n*qCols, 2)
				pos := make([]int32, n)
				for i := range pos {
					pos[i] = int32(ctx - n + i) // rows of 4 with a whole block before them
				}
				dst := poisoned(t, b, n, qCols)
				b.Attention(dst, activation(t, b, n, qCols, qv), kc, vc, ints(t, b, pos), seq, table, sinks, ap)
				all := read(t, b, dst)
				seq1, _, _ := contiguousTable(b, 1, ctx)
				for i := range n {
					one := poisoned(t, b, 1, qCols)
					b.Attention(one, activation(t, b, 1, qCols, qv[i*qCols:(i+1)*qCols]), kc, vc, ints(t, b, pos[i:i+1]), seq1, table, sinks, ap)
					for c, v := range read(t, b, one) {
						if math.Float32bits(float32(v)) != math.Float32bits(float32(all[i*qCols+c])) {
							t.Fatalf("row %d [%d]: %v alone, %v in the batch", i, c, v, all[i*qCols+c])
						}
					}
				}
			})
		}
	}
}

// TestAttentionBlockLayout checks that a row's output has the same bits
// whatever the block size and the order of its blocks in the cache, and
// whether it is computed alone or among all of its sequence's rows: the
// fast precision scores keys in groups, and a key's score must not depend
// on the group its block boundaries put it in (a prompt computed in one
// chunk and one computed step by step must agree).
func TestAttentionBlockLayout(t *testing.T) {
	const heads, kvHeads, ctx = 4, 2, 45
	for name, b := range backendsWithFast() {
		for _, headDim := range []int{64, 32} {
			for _, window := range []int{0, 7} {
				t.Run(fmt.Sprintf("%s/d=%d/window=%d", name, headDim, window), func(t *testing.T) {
					r := newRand(t)
					qCols, kvCols := heads*headDim, kvHeads*headDim
					keys, values := randF32(r, ctx*kvCols, 1), randF32(r, ctx*kvCols, 1)
					qv := randF32(r, ctx*qCols, 2)
					sinks := activation(t, b, 1, heads, randF32(r, heads, 2))
					// run lays the keys out in blocks of bs in the cache order
					// perm gives and computes the rows at positions rows.
					run := func(bs int, perm []int, rows []int32) []float32 {
						nBlocks := (ctx + bs - 1) / bs
						table := make([]int32, nBlocks)
						for i := range table {
							table[i] = int32(perm[i])
						}
						slots := make([]int32, ctx)
						for j := range slots {
							slots[j] = int32(perm[j/bs]*bs + j%bs)
						}
						kt, vt := must(b.NewKVCache(nBlocks*bs, kvCols)), must(b.NewKVCache(nBlocks*bs, kvCols))
						b.StoreKV(kt, vt, activation(t, b, ctx, kvCols, keys), activation(t, b, ctx, kvCols, values), ints(t, b, slots))
						q := make([]float32, 0, len(rows)*qCols)
						for _, p := range rows {
							q = append(q, qv[int(p)*qCols:(int(p)+1)*qCols]...)
						}
						ap := backend.AttentionParams{Heads: heads, KVHeads: kvHeads, HeadDim: headDim, Scale: 0.125,
							Window: window, BlockSize: bs, MaxBlocks: nBlocks}
						dst := poisoned(t, b, len(rows), qCols)
						b.Attention(dst, activation(t, b, len(rows), qCols, q), kt, vt, ints(t, b, rows),
							ints(t, b, make([]int32, len(rows))), ints(t, b, table), sinks, ap)
						if err := b.Sync(); err != nil {
							t.Fatal(err)
						}
						return read(t, b, dst)
					}
					all := make([]int32, ctx)
					for i := range all {
						all[i] = int32(i)
					}
					want := run(16, r.Perm(3), all)
					for _, bs := range []int{1, 4, 5, 8, 32} {
						perm := r.Perm((ctx + bs - 1) / bs)
						got := run(bs, perm, all)
						for p := range ctx {
							if p%9 == 0 {
								got = append(got[:p*qCols], append(run(bs, perm, []int32{int32(p)}), got[(p+1)*qCols:]...)...)
							}
						}
						for i, v := range got {
							if math.Float32bits(v) != math.Float32bits(want[i]) {
								t.Fatalf("block size %d: position %d [%d] = %v, %v with blocks of 16", bs, i/qCols, i%qCols, v, want[i])
							}
						}
					}
				})
			}
		}
	}
}

// roundF16 is rows rounded to binary16 and back, as a binary16 KV cache
// holds them.
func roundF16(rows [][]float32) [][]float32 {
	out := make([][]float32, len(rows))
	for i, r := range rows {
		out[i] = make([]float32, len(r))
		for c, v := range r {
			out[i][c] = tensor.F16ToF32(tensor.F32ToF16(v))
		}
	}
	return out
}
