package cpu

import (
	"fmt"
	"math"

	"orcd/backend"
	"orcd/tensor"
)

// NewKVCache allocates a rows×cols K or V cache: float32 (NewF32) in the
// exact precision, binary16 in the fast one, which halves the bytes that
// batched decode attention streams from memory (NOTES.md §14).
func (b *Backend) NewKVCache(rows, cols int) (backend.Tensor, error) {
	if !b.fast {
		return b.NewF32(rows, cols)
	}
	if rows <= 0 || cols <= 0 || int64(rows)*int64(cols) > 1<<40 {
		return nil, fmt.Errorf("cpu: NewKVCache: bad shape %d×%d", rows, cols)
	}
	return b.track(&Tensor{typ: tensor.F16, dims: []int{cols, rows}, f16: make([]uint16, rows*cols)}), nil
}

// kvCache unwraps a K or V cache: float32, or binary16 in the fast
// precision. It returns nil after recording an error.
func (b *Backend) kvCache(t backend.Tensor, op, arg string) *Tensor {
	ct := b.tensorOf(t, op, arg)
	switch {
	case ct == nil:
		return nil
	case len(ct.dims) == 2 && (ct.typ == tensor.F32 || ct.typ == tensor.F16 && ct.f16 != nil && b.fast):
		return ct
	}
	b.fail("%s: %s must be a KV cache from NewKVCache, is %s", op, arg, describe(ct))
	return nil
}

// View returns the first rows rows of t, sharing its memory.
func (b *Backend) View(t backend.Tensor, rows int) backend.Tensor {
	ct := b.tensorOf(t, "View", "t")
	if ct == nil {
		return t
	}
	switch {
	case ct.typ == typeI32 && rows >= 1 && rows <= len(ct.i32):
		return &Tensor{typ: typeI32, dims: []int{rows}, i32: ct.i32[:rows]}
	case ct.typ == tensor.F32 && len(ct.dims) == 2 && rows >= 1 && rows <= ct.rows():
		return &Tensor{typ: tensor.F32, dims: []int{ct.cols(), rows}, f32: ct.f32[:rows*ct.cols()]}
	}
	b.fail("View: %d rows of %s", rows, describe(ct))
	return t
}

// Graph calls fn: ops run eagerly, so there is nothing to record.
func (b *Backend) Graph(key string, fn func()) { fn() }

// sameDims unwraps dst and x, both float32 of the same dims, for the ops
// that map x to dst row by row or element by element. It returns nils after
// recording an error.
func (b *Backend) sameDims(op string, dst, x backend.Tensor, xArg string) (d, xs *Tensor) {
	if d = b.f32(dst, op, "dst"); d == nil {
		return nil, nil
	}
	if xs = b.matrix(x, op, xArg, d.rows(), d.cols()); xs == nil {
		return nil, nil
	}
	return d, xs
}

// eachRow calls fn with each row of d and the same row of xs (of the same
// dims), rows spread over the workers.
func (b *Backend) eachRow(d, xs *Tensor, fn func(dr, xr []float32)) {
	cols := d.cols()
	b.parallel(d.rows(), 1, func(_, lo, hi int) {
		for r := lo; r < hi; r++ {
			fn(d.f32[r*cols:(r+1)*cols], xs.f32[r*cols:(r+1)*cols])
		}
	})
}

// Embed sets row i of dst to row ids[i] of table, dequantized.
func (b *Backend) Embed(dst, table, ids backend.Tensor) {
	const op = "Embed"
	tb := b.weightOf(table, op, "table")
	if tb == nil {
		return
	}
	d := b.f32(dst, op, "dst")
	if d == nil {
		return
	}
	n := d.rows()
	if d.cols() != tb.in || len(d.f32) != n*tb.in {
		b.fail("%s: dst dims %v do not match table dims %v", op, d.dims, tb.dims)
		return
	}
	id := b.i32(ids, op, "ids", n)
	if id == nil {
		return
	}
	for i, v := range id.i32[:n] {
		if v < 0 || int(v) >= tb.out {
			b.fail("%s: ids[%d] = %d is outside the table's %d rows", op, i, v, tb.out)
			return
		}
	}
	b.parallel(n, 1, func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			tb.row(int(id.i32[i]), d.f32[i*tb.in:(i+1)*tb.in])
		}
	})
}

// Add sets dst = a + b elementwise; all three have the same dims.
func (b *Backend) Add(dst, x, y backend.Tensor) {
	const op = "Add"
	d, xa := b.sameDims(op, dst, x, "a")
	if d == nil {
		return
	}
	ya := b.matrix(y, op, "b", d.rows(), d.cols())
	if ya == nil {
		return
	}
	b.parallel(len(d.f32), 1<<14, func(_, lo, hi int) {
		dd, xx, yy := d.f32[lo:hi], xa.f32[lo:hi], ya.f32[lo:hi]
		for i := range dd {
			dd[i] = xx[i] + yy[i]
		}
	})
}

// CopyCols copies columns srcCol..srcCol+Cols(dst)-1 of src into dst.
func (b *Backend) CopyCols(dst, src backend.Tensor, srcCol int) {
	const op = "CopyCols"
	d := b.f32(dst, op, "dst")
	if d == nil {
		return
	}
	rows, cols := d.rows(), d.cols()
	s := b.f32(src, op, "src")
	if s == nil {
		return
	}
	sc := s.cols()
	if s.rows() != rows || srcCol < 0 || srcCol+cols > sc {
		b.fail("%s: columns %d..%d of src %v into dst %v", op, srcCol, srcCol+cols-1, s.dims, d.dims)
		return
	}
	for r := 0; r < rows; r++ {
		copy(d.f32[r*cols:(r+1)*cols], s.f32[r*sc+srcCol:])
	}
}

// LayerNorm sets each row of dst to (x-mean)/sqrt(var+eps)·w + b, with the
// mean and the biased variance of the row computed in float64.
func (b *Backend) LayerNorm(dst, x, w, bias backend.Tensor, eps float32) {
	const op = "LayerNorm"
	d, xs := b.sameDims(op, dst, x, "x")
	if d == nil {
		return
	}
	cols := d.cols()
	ws := b.vector(w, op, "w", cols)
	bs := b.vector(bias, op, "b", cols)
	if ws == nil || bs == nil {
		return
	}
	b.eachRow(d, xs, func(dr, xr []float32) {
		var sum float64
		for _, v := range xr {
			sum += float64(v)
		}
		mean := sum / float64(cols)
		var sq float64
		for _, v := range xr {
			dv := float64(v) - mean
			sq += dv * dv
		}
		inv := 1 / math.Sqrt(sq/float64(cols)+float64(eps))
		for i, v := range xr {
			dr[i] = float32((float64(v)-mean)*inv)*ws.f32[i] + bs.f32[i]
		}
	})
}

// RMSNorm sets each row of dst to x/sqrt(mean(x²)+eps)·w, the mean of
// squares computed in float64.
func (b *Backend) RMSNorm(dst, x, w backend.Tensor, eps float32) {
	const op = "RMSNorm"
	d, xs := b.sameDims(op, dst, x, "x")
	if d == nil {
		return
	}
	cols := d.cols()
	ws := b.vector(w, op, "w", cols)
	if ws == nil {
		return
	}
	b.eachRow(d, xs, func(dr, xr []float32) { rmsNormRow(dr, xr, ws.f32, eps) })
}

// AddRMSNorm sets x += delta, then dst = RMSNorm(x, w): exactly Add then
// RMSNorm.
func (b *Backend) AddRMSNorm(dst, x, delta, w backend.Tensor, eps float32) {
	b.Add(x, x, delta)
	b.RMSNorm(dst, x, w, eps)
}

// GELU sets dst = 0.5x(1+tanh(√(2/π)(x+0.044715x³))), evaluated in float64
// (in the fast precision in float32, by geluF32).
func (b *Backend) GELU(dst, x backend.Tensor) {
	d, xs := b.sameDims("GELU", dst, x, "x")
	if d == nil {
		return
	}
	b.parallel(len(d.f32), 1<<12, func(_, lo, hi int) {
		if b.fast {
			b.k.q8.gelu(xs.f32[lo:hi], d.f32[lo:hi])
			return
		}
		for i := lo; i < hi; i++ {
			d.f32[i] = gelu(xs.f32[i])
		}
	})
}

func gelu(x float32) float32 {
	v := float64(x)
	const c = 0.7978845608028654 // √(2/π)
	return float32(0.5 * v * (1 + math.Tanh(c*(v+0.044715*v*v*v))))
}

// RoPE rotates each head of each row of x in place, pairing elements as
// p.Mode says. As in HF transformers' float32 path, the angle is the
// float32 product pos·invFreq[i] (its cosine and sine then evaluated exactly
// and rounded to float32) and both are scaled by MScale before rotating.
func (b *Backend) RoPE(x, pos, invFreq backend.Tensor, p backend.RoPEParams) {
	const op = "RoPE"
	xs := b.f32(x, op, "x")
	if xs == nil {
		return
	}
	rows, cols, headDim := xs.rows(), xs.cols(), p.HeadDim
	if headDim <= 0 || headDim%2 != 0 || cols%headDim != 0 {
		b.fail("%s: headDim %d does not split x's %d columns into heads of even size", op, headDim, cols)
		return
	}
	if p.Mode != backend.RoPENeoX && p.Mode != backend.RoPENormal {
		b.fail("%s: unknown mode %d", op, p.Mode)
		return
	}
	half := headDim / 2
	fs := b.vector(invFreq, op, "invFreq", half)
	ps := b.i32(pos, op, "pos", rows)
	if fs == nil || ps == nil {
		return
	}
	// Pair i is elements (i, i+half) for NeoX, (2i, 2i+1) for Normal.
	second, stride := half, 1
	if p.Mode == backend.RoPENormal {
		second, stride = 1, 2
	}
	b.parallel(rows, 1, func(_, lo, hi int) {
		cs := make([]float32, 2*half)
		for r := lo; r < hi; r++ {
			pos := float32(ps.i32[r])
			for i, f := range fs.f32 {
				a := float64(pos * f)
				cs[i] = float32(math.Cos(a)) * p.MScale
				cs[half+i] = float32(math.Sin(a)) * p.MScale
			}
			row := xs.f32[r*cols : (r+1)*cols]
			for h := 0; h < cols; h += headDim {
				head := row[h : h+headDim]
				for i := range half {
					j := i * stride
					a, c, s := head[j], cs[i], cs[half+i]
					head[j] = a*c - head[j+second]*s
					head[j+second] = head[j+second]*c + a*s
				}
			}
		}
	})
}

// StoreKV copies row i of k and v into row slots[i] of kCache and vCache,
// rounded to nearest even where the caches are binary16.
func (b *Backend) StoreKV(kCache, vCache, k, v, slots backend.Tensor) {
	const op = "StoreKV"
	kc, vc := b.kvCache(kCache, op, "kCache"), b.kvCache(vCache, op, "vCache")
	if kc == nil || vc == nil {
		return
	}
	capRows, cols := kc.rows(), kc.cols()
	if vc.typ != kc.typ || vc.rows() != capRows || vc.cols() != cols {
		b.fail("%s: vCache %s does not match kCache %s", op, describe(vc), describe(kc))
		return
	}
	ks := b.f32(k, op, "k")
	if ks == nil {
		return
	}
	n := ks.rows()
	if ks.cols() != cols {
		b.fail("%s: k dims %v do not match cache dims %v", op, ks.dims, kc.dims)
		return
	}
	vs := b.matrix(v, op, "v", n, cols)
	ss := b.i32(slots, op, "slots", n)
	if vs == nil || ss == nil {
		return
	}
	for i, s := range ss.i32[:n] {
		if s < 0 || int(s) >= capRows {
			b.fail("%s: slots[%d] = %d is outside the cache's %d rows", op, i, s, capRows)
			return
		}
	}
	if kc.typ == tensor.F16 {
		// A prompt's rows are many conversions: split them.
		b.parallel(n, max(1, 4096/cols), func(_, lo, hi int) {
			for i, s := range ss.i32[lo:hi] {
				i, s := lo+i, int(s)
				b.k.q8.encodeF16(ks.f32[i*cols:], kc.f16[s*cols:(s+1)*cols])
				b.k.q8.encodeF16(vs.f32[i*cols:], vc.f16[s*cols:(s+1)*cols])
			}
		})
		return
	}
	for i, s := range ss.i32[:n] {
		copy(kc.f32[int(s)*cols:(int(s)+1)*cols], ks.f32[i*cols:])
		copy(vc.f32[int(s)*cols:(int(s)+1)*cols], vs.f32[i*cols:])
	}
}
