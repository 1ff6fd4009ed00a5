package cpu

import (
	"math"

	"orcd/backend"
)

// Attention computes causal (optionally sliding-window) attention with GQA
// and optional per-head sinks over the paged K/V caches, for the rows of a
// batch of sequences; see backend.Backend.
//
// Scores are float32 dot products times Scale; the softmax runs in float64
// and the probability-weighted sum of values in float32. A sink joins the
// softmax as one more logit whose column is dropped, so it only enlarges the
// denominator. Each row is computed on its own, the same way whatever else
// is in the batch.
//
// It records an error if a row would read a block table entry that is
// missing (-1 or past the table) or outside the cache: that is a bug in the
// caller's block bookkeeping, and reading another sequence's keys would
// give a silently wrong answer.
func (b *Backend) Attention(dst, q, kCache, vCache, pos, seq, table, sinks backend.Tensor, p backend.AttentionParams) {
	const op = "Attention"
	if p.Heads <= 0 || p.KVHeads <= 0 || p.HeadDim <= 0 || p.Heads%p.KVHeads != 0 || p.Window < 0 ||
		p.BlockSize <= 0 || p.MaxBlocks <= 0 {
		b.fail("%s: bad params %+v", op, p)
		return
	}
	qs := b.f32(q, op, "q")
	if qs == nil {
		return
	}
	n, qCols := qs.rows(), p.Heads*p.HeadDim
	kvCols := p.KVHeads * p.HeadDim
	if qs.cols() != qCols {
		b.fail("%s: q dims %v, want %d columns (%d heads × %d)", op, qs.dims, qCols, p.Heads, p.HeadDim)
		return
	}
	d := b.matrix(dst, op, "dst", n, qCols)
	kc, vc := b.f32(kCache, op, "kCache"), b.f32(vCache, op, "vCache")
	ps, ss, ts := b.i32(pos, op, "pos", n), b.i32(seq, op, "seq", n), b.tensorOf(table, op, "table")
	if d == nil || kc == nil || vc == nil || ps == nil || ss == nil || ts == nil {
		return
	}
	cacheRows := kc.rows()
	if kc.cols() != kvCols || vc.cols() != kvCols || vc.rows() != cacheRows || cacheRows%p.BlockSize != 0 {
		b.fail("%s: caches %v and %v, want %d columns and the same rows, a multiple of the block size %d",
			op, kc.dims, vc.dims, kvCols, p.BlockSize)
		return
	}
	if ts.typ != typeI32 || len(ts.i32)%p.MaxBlocks != 0 {
		b.fail("%s: table must be an I32 vector of whole rows of %d entries, is %s", op, p.MaxBlocks, describe(ts))
		return
	}
	var sink []float32
	if sinks != nil {
		sv := b.vector(sinks, op, "sinks", p.Heads)
		if sv == nil {
			return
		}
		sink = sv.f32
	}
	positions, seqs, tbl := ps.i32[:n], ss.i32[:n], ts.i32
	nSeq, blocks := len(tbl)/p.MaxBlocks, int32(cacheRows/p.BlockSize)
	maxKeys := 0
	for r := range n {
		pr, s := int(positions[r]), int(seqs[r])
		if pr < 0 || s < 0 || s >= nSeq {
			b.fail("%s: row %d: position %d, sequence %d of %d", op, r, pr, s, nSeq)
			return
		}
		first := firstKey(pr, p.Window)
		if pr/p.BlockSize >= p.MaxBlocks {
			b.fail("%s: row %d: position %d is past the %d-block table", op, r, pr, p.MaxBlocks)
			return
		}
		for blk := first / p.BlockSize; blk <= pr/p.BlockSize; blk++ {
			if e := tbl[s*p.MaxBlocks+blk]; e < 0 || e >= blocks {
				b.fail("%s: row %d (sequence %d, position %d) needs block %d, whose table entry is %d (the cache has %d blocks)",
					op, r, s, pr, blk, e, blocks)
				return
			}
		}
		maxKeys = max(maxKeys, pr-first+1)
	}
	group := p.Heads / p.KVHeads
	type buffers struct {
		logits, probs []float32
		exps          []float64
	}
	scratch := make([]*buffers, b.threads)
	scoresOf := b.k.scores
	if b.fast {
		scoresOf = b.k.q8.scores
	}
	b.parallel(n*p.Heads, 1, func(worker, lo, hi int) {
		if scratch[worker] == nil {
			scratch[worker] = &buffers{make([]float32, maxKeys), make([]float32, maxKeys), make([]float64, maxKeys)}
		}
		logits, probs, exps := scratch[worker].logits, scratch[worker].probs, scratch[worker].exps
		for task := lo; task < hi; task++ {
			r, h := task/p.Heads, task%p.Heads
			pr := int(positions[r])
			first := firstKey(pr, p.Window)
			keys := pr - first + 1
			rowTable := tbl[int(seqs[r])*p.MaxBlocks:]
			qh := qs.f32[r*qCols+h*p.HeadDim : r*qCols+(h+1)*p.HeadDim]
			kvOff := (h / group) * p.HeadDim
			// The keys first..pr lie in runs of consecutive cache rows, one
			// run per block.
			forEachRun(first, keys, p.BlockSize, rowTable, func(i, row, run int) {
				scoresOf(qh, kc.f32[row*kvCols+kvOff:], kvCols, logits[i:i+run])
			})
			m := math.Inf(-1)
			ls := logits[:keys]
			for _, l := range ls {
				m = max(m, float64(l*p.Scale))
			}
			if sink != nil {
				m = max(m, float64(sink[h]))
			}
			out := d.f32[r*qCols+h*p.HeadDim : r*qCols+(h+1)*p.HeadDim]
			if b.fast {
				// float32 exps, 8 at a time; the sum of p·v is divided by
				// the denominator once instead of every p.
				denom := b.k.q8.expSum(ls, p.Scale, float32(m), probs[:keys])
				if sink != nil {
					denom += float32(math.Exp(float64(sink[h]) - m))
				}
				clear(out)
				forEachRun(first, keys, p.BlockSize, rowTable, func(i, row, run int) {
					b.k.weightedSum(probs[i:i+run], vc.f32[row*kvCols+kvOff:], kvCols, out)
				})
				inv := 1 / denom
				for c := range out {
					out[c] *= inv
				}
				continue
			}
			var denom float64
			for i, l := range ls {
				exps[i] = expNonPositive(float64(l*p.Scale) - m)
				denom += exps[i]
			}
			if sink != nil {
				denom += math.Exp(float64(sink[h]) - m)
			}
			for i, e := range exps[:keys] {
				probs[i] = float32(e / denom)
			}
			clear(out)
			forEachRun(first, keys, p.BlockSize, rowTable, func(i, row, run int) {
				b.k.weightedSum(probs[i:i+run], vc.f32[row*kvCols+kvOff:], kvCols, out)
			})
		}
	})
}

// forEachRun splits the key positions first..first+keys-1 into runs of
// consecutive cache rows (position j is row table[j/bs]*bs + j%bs) and calls
// fn with each run's offset among the keys, first row and length.
func forEachRun(first, keys, bs int, table []int32, fn func(i, row, run int)) {
	for i := 0; i < keys; {
		j := first + i
		run := min(keys-i, bs-j%bs)
		fn(i, int(table[j/bs])*bs+j%bs, run)
		i += run
	}
}

// expNonPositive returns e^x for x ≤ 0 with a relative error below 1e-8,
// far under float32's 6e-8, which is all the softmax probabilities keep. It
// is about five times faster than math.Exp, which dominated long-context
// decode attention: x = k·ln2 + r with |r| ≤ ln2/2, e^r by its degree-8
// Taylor polynomial (truncation error r⁹/9! < 2e-9), times 2^k.
func expNonPositive(x float64) float64 {
	if x < -700 { // e^-700 is far below every float32; 2^k would underflow
		return 0
	}
	k := math.Round(x * math.Log2E)
	// ln2 split in a high part with trailing zero bits (so k·ln2Hi is exact
	// for |k| < 2^11) and the rest.
	const ln2Hi, ln2Lo = 6.93147180369123816490e-01, 1.90821492927058770002e-10
	r := (x - k*ln2Hi) - k*ln2Lo
	p := 1 + r*(1+r*(1.0/2+r*(1.0/6+r*(1.0/24+r*(1.0/120+r*(1.0/720+r*(1.0/5040+r*(1.0/40320))))))))
	return p * math.Float64frombits(uint64(int64(k)+1023)<<52)
}

// firstKey is the oldest key position a query at position pos sees.
func firstKey(pos, window int) int {
	if window == 0 {
		return 0
	}
	return max(0, pos-window+1)
}
