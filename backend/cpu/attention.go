package cpu

import (
	"math"
	"sync"

	"orcd/backend"
	"orcd/tensor"
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
	kc, vc := b.kvCache(kCache, op, "kCache"), b.kvCache(vCache, op, "vCache")
	ps, ss, ts := b.i32(pos, op, "pos", n), b.i32(seq, op, "seq", n), b.tensorOf(table, op, "table")
	if d == nil || kc == nil || vc == nil || ps == nil || ss == nil || ts == nil {
		return
	}
	cacheRows := kc.rows()
	if kc.cols() != kvCols || vc.cols() != kvCols || vc.rows() != cacheRows || cacheRows%p.BlockSize != 0 || vc.typ != kc.typ {
		b.fail("%s: caches %s and %s, want one type, %d columns and the same rows, a multiple of the block size %d",
			op, describe(kc), describe(vc), kvCols, p.BlockSize)
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
	scoresOf := b.k.scores
	tasks := n * p.Heads
	if b.fast {
		scoresOf = b.k.q8.scores
		// Tasks are blocks of 4 rows of one head (see attend4).
		tasks = (n + 3) / 4 * p.Heads
	}
	// The loops over a run of cache rows from row on, at column kvOff: the
	// float32 kernels, or in the fast precision their binary16 twins.
	f16 := kc.typ == tensor.F16
	scoreRun := func(qh []float32, row, kvOff int, out []float32) {
		if f16 {
			b.k.q8.scoresF16(qh, kc.f16[row*kvCols+kvOff:], kvCols, out)
			return
		}
		scoresOf(qh, kc.f32[row*kvCols+kvOff:], kvCols, out)
	}
	score4Run := func(q4 []float32, row, kvOff int, out [4][]float32) {
		if f16 {
			b.k.q8.scores4qF16(q4, qCols, p.HeadDim, kc.f16[row*kvCols+kvOff:], kvCols, out)
			return
		}
		b.k.q8.scores4q(q4, qCols, p.HeadDim, kc.f32[row*kvCols+kvOff:], kvCols, out)
	}
	sumRun := func(ps []float32, row, kvOff int, out []float32) {
		if f16 {
			b.k.q8.weightedSumF16(ps, vc.f16[row*kvCols+kvOff:], kvCols, out)
			return
		}
		b.k.weightedSum(ps, vc.f32[row*kvCols+kvOff:], kvCols, out)
	}
	sum4Run := func(ps [4][]float32, row, kvOff int, out [4][]float32) {
		if f16 {
			b.k.q8.weightedSum4F16(ps, vc.f16[row*kvCols+kvOff:], kvCols, out)
			return
		}
		b.k.q8.weightedSum4(ps, vc.f32[row*kvCols+kvOff:], kvCols, out)
	}
	b.parallel(tasks, 1, func(_, lo, hi int) {
		sb := attnScratch.Get().(*attnBuffers)
		defer attnScratch.Put(sb)
		sb.grow(maxKeys, b.fast && n >= 4)
		logits, probs, exps := sb.logits, sb.probs, sb.exps
		// softmaxFast sets probs to the float32 exps of ls (the scores of
		// head h, times Scale, less their largest) and returns their sum
		// with the sink's term.
		softmaxFast := func(ls, probs []float32, h int) float32 {
			var m float64
			if p.Scale > 0 {
				m = float64(b.k.q8.max(ls) * p.Scale)
			} else {
				m = math.Inf(-1)
				for _, l := range ls {
					m = max(m, float64(l*p.Scale))
				}
			}
			if sink != nil {
				m = max(m, float64(sink[h]))
			}
			denom := b.k.q8.expSum(ls, p.Scale, float32(m), probs)
			if sink != nil {
				denom += float32(math.Exp(float64(sink[h]) - m))
			}
			return denom
		}
		// attend4 is row r0..r0+3 of head h, four consecutive positions of
		// one sequence: the scores and softmax of each row as one row's are,
		// and the weighted sums of all four over the union of their keys
		// in one pass over the values (a row's probability is 0 outside its
		// own keys, which leaves its sums exactly as one row's pass would).
		attend4 := func(r0, h int) {
			p0 := int(positions[r0])
			f0 := firstKey(p0, p.Window)
			union := p0 + 3 - f0 + 1
			rowTable := tbl[int(seqs[r0])*p.MaxBlocks:]
			kvOff := (h / group) * p.HeadDim
			var outs [4][]float32
			var ps [4][]float32
			var denoms [4]float32
			// Without a window, the whole blocks before p0's are every
			// row's runs of blockSize keys: scored four rows at once when
			// blockSize is a multiple of 8 (scores4q gives what scoresOf
			// gives for such runs).
			shared := 0
			if p.Window == 0 && p.BlockSize%8 == 0 {
				shared = p0 / p.BlockSize * p.BlockSize
				q4 := qs.f32[r0*qCols+h*p.HeadDim:]
				forEachRun(0, shared, p.BlockSize, rowTable, func(j, row, run int) {
					score4Run(q4, row, kvOff, [4][]float32{
						sb.logits4[0][j : j+run], sb.logits4[1][j : j+run], sb.logits4[2][j : j+run], sb.logits4[3][j : j+run]})
				})
			}
			for i := range 4 {
				pr := p0 + i
				first := firstKey(pr, p.Window)
				keys, off := pr-first+1, first-f0
				qh := qs.f32[(r0+i)*qCols+h*p.HeadDim : (r0+i)*qCols+(h+1)*p.HeadDim]
				ls := sb.logits4[i][off : off+keys]
				forEachRun(first+shared, keys-shared, p.BlockSize, rowTable, func(j, row, run int) {
					scoreRun(qh, row, kvOff, ls[shared+j:shared+j+run])
				})
				ps[i] = sb.probs4[i][:union]
				clear(ps[i][:off])
				clear(ps[i][off+keys:])
				denoms[i] = softmaxFast(ls, ps[i][off:off+keys], h)
				outs[i] = d.f32[(r0+i)*qCols+h*p.HeadDim : (r0+i)*qCols+(h+1)*p.HeadDim]
				clear(outs[i])
			}
			forEachRun(f0, union, p.BlockSize, rowTable, func(j, row, run int) {
				sum4Run([4][]float32{ps[0][j : j+run], ps[1][j : j+run], ps[2][j : j+run], ps[3][j : j+run]}, row, kvOff, outs)
			})
			for i, out := range outs {
				inv := 1 / denoms[i]
				for c := range out {
					out[c] *= inv
				}
			}
		}
		for task := lo; task < hi; task++ {
			r, h, end := task/p.Heads, task%p.Heads, task/p.Heads+1
			if b.fast {
				r, end = 4*r, min(n, 4*r+4)
				if end == r+4 && positions[r+3] == positions[r]+3 && seqs[r+3] == seqs[r] &&
					positions[r+1] == positions[r]+1 && seqs[r+1] == seqs[r] &&
					positions[r+2] == positions[r]+2 && seqs[r+2] == seqs[r] {
					attend4(r, h)
					continue
				}
			}
			for r1 := r; r1 < end; r1++ {
				pr := int(positions[r1])
				first := firstKey(pr, p.Window)
				keys := pr - first + 1
				rowTable := tbl[int(seqs[r1])*p.MaxBlocks:]
				qh := qs.f32[r1*qCols+h*p.HeadDim : r1*qCols+(h+1)*p.HeadDim]
				kvOff := (h / group) * p.HeadDim
				// The keys first..pr lie in runs of consecutive cache rows,
				// one run per block.
				forEachRun(first, keys, p.BlockSize, rowTable, func(i, row, run int) {
					scoreRun(qh, row, kvOff, logits[i:i+run])
				})
				ls := logits[:keys]
				out := d.f32[r1*qCols+h*p.HeadDim : r1*qCols+(h+1)*p.HeadDim]
				if b.fast {
					// float32 exps, 8 at a time; the sum of p·v is divided by
					// the denominator once instead of every p.
					denom := softmaxFast(ls, probs[:keys], h)
					clear(out)
					forEachRun(first, keys, p.BlockSize, rowTable, func(i, row, run int) {
						sumRun(probs[i:i+run], row, kvOff, out)
					})
					inv := 1 / denom
					for c := range out {
						out[c] *= inv
					}
					continue
				}
				m := math.Inf(-1)
				for _, l := range ls {
					m = max(m, float64(l*p.Scale))
				}
				if sink != nil {
					m = max(m, float64(sink[h]))
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
					sumRun(probs[i:i+run], row, kvOff, out)
				})
			}
		}
	})
}

// attnBuffers are one worker's scratch rows for Attention: a row's logits,
// probabilities and (exact) float64 exps, and the fast precision's four
// rows of logits and probabilities.
type attnBuffers struct {
	logits, probs   []float32
	exps            []float64
	logits4, probs4 [4][]float32
}

// attnScratch recycles attnBuffers: a decode step's attention calls would
// otherwise allocate them each time.
var attnScratch = sync.Pool{New: func() any { return new(attnBuffers) }}

// grow makes the buffers hold keys values, and the four-row ones too when
// rows4 is set.
func (sb *attnBuffers) grow(keys int, rows4 bool) {
	if len(sb.logits) < keys {
		sb.logits, sb.probs, sb.exps = make([]float32, keys), make([]float32, keys), make([]float64, keys)
	}
	if rows4 && len(sb.logits4[0]) < keys+3 {
		for i := range 4 {
			sb.logits4[i], sb.probs4[i] = make([]float32, keys+3), make([]float32, keys+3)
		}
	}
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
