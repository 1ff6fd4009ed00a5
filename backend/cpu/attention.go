package cpu

import (
	"math"

	"orcd/backend"
)

// Attention computes causal (optionally sliding-window) attention with GQA
// and optional per-head sinks over the K/V caches; see backend.Backend.
//
// Scores are float32 dot products times Scale; the softmax runs in float64
// and the probability-weighted sum of values in float32. A sink joins the softmax as one more logit
// whose column is dropped, so it only enlarges the denominator.
//
// It records an error if a row would need a key that the ring buffer no
// longer holds: key position j lives in row j % CacheCap, so a row whose
// oldest visible key is lo is only correct while no position in this call
// reaches lo+CacheCap.
func (b *Backend) Attention(dst, q, kCache, vCache, pos, sinks backend.Tensor, p backend.AttentionParams) {
	const op = "Attention"
	if p.Heads <= 0 || p.KVHeads <= 0 || p.HeadDim <= 0 || p.Heads%p.KVHeads != 0 || p.Window < 0 || p.CacheCap <= 0 {
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
	kc := b.matrix(kCache, op, "kCache", p.CacheCap, kvCols)
	vc := b.matrix(vCache, op, "vCache", p.CacheCap, kvCols)
	ps := b.i32(pos, op, "pos", n)
	if d == nil || kc == nil || vc == nil || ps == nil {
		return
	}
	var sink []float32
	if sinks != nil {
		ss := b.vector(sinks, op, "sinks", p.Heads)
		if ss == nil {
			return
		}
		sink = ss.f32
	}
	positions := ps.i32[:n]
	maxPos := int32(0)
	for _, v := range positions {
		maxPos = max(maxPos, v)
	}
	for r, v := range positions {
		if v < 0 {
			b.fail("%s: pos[%d] = %d is negative", op, r, v)
			return
		}
		if lo := firstKey(int(v), p.Window); int(maxPos)-lo >= p.CacheCap {
			b.fail("%s: row %d (position %d) needs key position %d, overwritten in the %d-row cache by position %d",
				op, r, v, lo, p.CacheCap, lo+p.CacheCap)
			return
		}
	}
	group := p.Heads / p.KVHeads
	maxKeys := 0
	for _, v := range positions {
		maxKeys = max(maxKeys, int(v)-firstKey(int(v), p.Window)+1)
	}
	type buffers struct {
		logits, probs []float32
		exps          []float64
	}
	scratch := make([]*buffers, b.threads)
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
			qh := qs.f32[r*qCols+h*p.HeadDim : r*qCols+(h+1)*p.HeadDim]
			kvOff := (h / group) * p.HeadDim
			// The keys first..pr lie in at most two runs of consecutive
			// cache rows: up to the end of the ring, then from its start.
			forEachRun(first, keys, p.CacheCap, func(i, row, run int) {
				b.k.scores(qh, kc.f32[row*kvCols+kvOff:], kvCols, logits[i:i+run])
			})
			m := math.Inf(-1)
			ls := logits[:keys]
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
			out := d.f32[r*qCols+h*p.HeadDim : r*qCols+(h+1)*p.HeadDim]
			clear(out)
			forEachRun(first, keys, p.CacheCap, func(i, row, run int) {
				b.k.weightedSum(probs[i:i+run], vc.f32[row*kvCols+kvOff:], kvCols, out)
			})
		}
	})
}

// forEachRun splits the key positions first..first+keys-1 into runs of
// consecutive ring-buffer rows (position j is row j % capRows) and calls fn
// with each run's offset among the keys, first row and length.
func forEachRun(first, keys, capRows int, fn func(i, row, run int)) {
	for i := 0; i < keys; {
		row := (first + i) % capRows
		run := min(keys-i, capRows-row)
		fn(i, row, run)
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
