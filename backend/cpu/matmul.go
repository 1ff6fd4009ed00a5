package cpu

import (
	"orcd/backend"
	"orcd/tensor"
)

// weight is a read-only view of out rows of in elements each, in the
// tensor's file format: row r is output feature r. For stacked expert
// weights it covers one expert.
type weight struct {
	typ      tensor.Type
	dims     []int
	in, out  int
	rowBytes int       // bytes of one row (non-F32 types)
	f32      []float32 // F32 weights: out*in values
	raw      []byte    // other types: out*rowBytes bytes
	q8       *packedQ8 // whole Q8_0 matrices in the fast precision
}

// weightOf unwraps a weight (or F32 activation) tensor as a matrix of
// Dims[0] columns and all remaining dims flattened into rows.
func (b *Backend) weightOf(t backend.Tensor, op, arg string) *weight {
	ct := b.tensorOf(t, op, arg)
	if ct == nil {
		return nil
	}
	if ct.typ == typeI32 {
		b.fail("%s: %s is an I32 vector, want a weight", op, arg)
		return nil
	}
	in := ct.dims[0]
	w := &weight{typ: ct.typ, dims: ct.dims, in: in, out: ct.elements() / in, f32: ct.f32, raw: ct.raw, q8: ct.q8}
	if ct.typ != tensor.F32 {
		w.rowBytes = in / ct.typ.BlockSize() * ct.typ.TypeSize()
	}
	return w
}

// rows returns the view of rows lo..lo+n-1 of w (one expert of a stack;
// stacks are 3-D, so never packed).
func (w *weight) rows(lo, n int) *weight {
	s := *w
	s.out, s.q8 = n, nil
	if w.typ == tensor.F32 {
		s.f32 = w.f32[lo*w.in : (lo+n)*w.in]
	} else {
		s.raw = w.raw[lo*w.rowBytes : (lo+n)*w.rowBytes]
	}
	return &s
}

// row dequantizes row r of w into dst[:w.in].
func (w *weight) row(r int, dst []float32) {
	if w.q8 != nil {
		w.q8.row(r, dst[:w.in])
		return
	}
	if w.typ == tensor.F32 {
		copy(dst[:w.in], w.f32[r*w.in:])
		return
	}
	decodeRow(w.typ, w.raw[r*w.rowBytes:(r+1)*w.rowBytes], dst[:w.in])
}

// MatMulQKV runs the three MatMuls of one x in turn.
func (b *Backend) MatMulQKV(q, k, v, x, wq, wk, wv, bq, bk, bv backend.Tensor) {
	b.MatMul(q, x, wq, bq)
	b.MatMul(k, x, wk, bk)
	b.MatMul(v, x, wv, bv)
}

// MatMul sets dst = x·wᵀ + bias: x is n×in, w has Dims [in, out], bias (may
// be nil) has out values, dst is n×out.
func (b *Backend) MatMul(dst, x, w, bias backend.Tensor) {
	const op = "MatMul"
	wv := b.weightOf(w, op, "w")
	if wv == nil {
		return
	}
	if len(wv.dims) != 2 {
		b.fail("%s: w must be 2-D, has dims %v", op, wv.dims)
		return
	}
	xs := b.f32(x, op, "x")
	if xs == nil {
		return
	}
	n := xs.rows()
	if xs.cols() != wv.in {
		b.fail("%s: x dims %v do not match w dims %v (%s)", op, xs.dims, wv.dims, wv.typ)
		return
	}
	d := b.matrix(dst, op, "dst", n, wv.out)
	if d == nil {
		return
	}
	if d == xs {
		b.fail("%s: dst is x; MatMul cannot write its output over its input", op)
		return
	}
	var bv []float32
	if bias != nil {
		bs := b.vector(bias, op, "bias", wv.out)
		if bs == nil {
			return
		}
		bv = bs.f32
	}
	b.matmul(d.f32, xs.f32, n, wv, bv)
}

// xTile is how many rows of x a worker runs against its chunk of weight
// rows before taking the next rows of x: 64 rows of even a 3072-wide input
// (GPT-2's down projection) stay within L2 cache, and each decoded weight row
// still serves 64 rows of x.
const xTile = 64

// matmul computes dst (n×w.out) = x (n×w.in) · wᵀ + bias, splitting the
// output features over the workers.
//
// Every output is one float32 dot product summed in one order (dot4x2's,
// which dot1x4 shares) plus the bias, whatever n, the split and which rows
// of x share a kernel call, so a row gets the same bits alone or in any
// batch: the mixture of experts batches the rows routed to each expert,
// and the fast precision's two-digit activations carry a last-bit
// difference on to the sampled tokens.
func (b *Backend) matmul(dst, x []float32, n int, w *weight, bias []float32) {
	if w.q8 != nil {
		b.matmulQ8(dst, x, n, w, bias)
		return
	}
	in, out := w.in, w.out
	k := &b.k
	biasAt := func(o int) float32 {
		if bias == nil {
			return 0
		}
		return bias[o]
	}
	scratch := make([][]float32, b.threads) // four decoded rows per worker
	b.parallel(out, 16, func(worker, lo, hi int) {
		var bufs [4][]float32
		if w.typ != tensor.F32 {
			if scratch[worker] == nil {
				scratch[worker] = make([]float32, 4*in)
			}
			for j := range bufs {
				bufs[j] = scratch[worker][j*in : (j+1)*in]
			}
		}
		var res4 [4]float32
		if n < 4 {
			// Decode: four weight rows at a time against each row of x, each
			// weight byte read once (by the type's fused kernel where it has
			// one). The four rows are a quarter of the chunk apart, so that
			// they are four long sequential streams for the prefetcher, not
			// four rows' worth of short ones; rows left over go alone, as
			// four copies of themselves.
			fused := k.fused[w.typ]
			if in%8 != 0 {
				fused = nil // dot4x2 and dot1x4 run the Go loops
			}
			// rows4 does rows o, o+step, o+2·step and o+3·step, the first m
			// of them stored.
			rows4 := func(o, step, m int) {
				if fused != nil {
					for i := 0; i < n; i++ {
						fused(w.raw[o*w.rowBytes:], step*w.rowBytes, x[i*in:(i+1)*in], &res4)
						for j := range m {
							dst[i*out+o+j*step] = res4[j] + biasAt(o+j*step)
						}
					}
					return
				}
				var r [4][]float32
				for j := range r {
					r[j] = r[0]
					if j < m {
						r[j] = w.decoded(k, o+j*step, bufs[j])
					}
				}
				for i := 0; i < n; i++ {
					k.dot1x4(x[i*in:(i+1)*in], r[0], r[1], r[2], r[3], &res4)
					for j := range m {
						dst[i*out+o+j*step] = res4[j] + biasAt(o+j*step)
					}
				}
			}
			q := (hi - lo) / 4
			for o := lo; o < lo+q; o++ {
				rows4(o, q, 4)
			}
			for o := lo + 4*q; o < hi; o++ {
				rows4(o, 0, 1)
			}
			return
		}
		var res [8]float32
		for t0 := 0; t0 < n; t0 += xTile {
			t1 := min(t0+xTile, n)
			// Weight rows go in pairs through dot4x2, four rows of x at a
			// time; an odd last weight row goes as a pair with itself, and
			// leftover rows of x through dot1x4.
			for o := lo; o < hi; o += 2 {
				r0, b0 := w.decoded(k, o, bufs[0]), biasAt(o)
				r1, b1 := r0, b0
				if o+1 < hi {
					r1, b1 = w.decoded(k, o+1, bufs[1]), biasAt(o+1)
				}
				i := t0
				for ; i+4 <= t1; i += 4 {
					k.dot4x2(x[i*in:], in, r0, r1, &res)
					for j := 0; j < 4; j++ {
						dst[(i+j)*out+o] = res[2*j] + b0
						if o+1 < hi {
							dst[(i+j)*out+o+1] = res[2*j+1] + b1
						}
					}
				}
				for ; i < t1; i++ {
					k.dot1x4(x[i*in:(i+1)*in], r0, r1, r0, r1, &res4)
					dst[i*out+o] = res4[0] + b0
					if o+1 < hi {
						dst[i*out+o+1] = res4[1] + b1
					}
				}
			}
		}
	})
}

// decoded returns row r of w as float32: the weight's own memory for F32,
// else buf filled by the kernels' decoder for the type.
func (w *weight) decoded(k *kernels, r int, buf []float32) []float32 {
	if w.typ == tensor.F32 {
		return w.f32[r*w.in : (r+1)*w.in]
	}
	src := w.raw[r*w.rowBytes : (r+1)*w.rowBytes]
	if dec := k.decode[w.typ]; dec != nil {
		dec(src, buf)
	} else {
		decodeRow(w.typ, src, buf)
	}
	return buf
}
