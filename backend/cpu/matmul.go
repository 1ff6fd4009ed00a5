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
	w := &weight{typ: ct.typ, dims: ct.dims, in: in, out: ct.elements() / in, f32: ct.f32, raw: ct.raw}
	if ct.typ != tensor.F32 {
		w.rowBytes = in / ct.typ.BlockSize() * ct.typ.TypeSize()
	}
	return w
}

// rows returns the view of rows lo..lo+n-1 of w (one expert of a stack).
func (w *weight) rows(lo, n int) *weight {
	s := *w
	s.out = n
	if w.typ == tensor.F32 {
		s.f32 = w.f32[lo*w.in : (lo+n)*w.in]
	} else {
		s.raw = w.raw[lo*w.rowBytes : (lo+n)*w.rowBytes]
	}
	return &s
}

// row dequantizes row r of w into dst[:w.in].
func (w *weight) row(r int, dst []float32) {
	if w.typ == tensor.F32 {
		copy(dst[:w.in], w.f32[r*w.in:])
		return
	}
	decodeRow(w.typ, w.raw[r*w.rowBytes:(r+1)*w.rowBytes], dst[:w.in])
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
	n := backend.Rows(xs)
	if backend.Cols(xs) != wv.in {
		b.fail("%s: x dims %v do not match w dims %v (%s)", op, xs.dims, wv.dims, wv.typ)
		return
	}
	d := b.matrix(dst, op, "dst", n, wv.out)
	if d == nil {
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

// matmul computes dst (n×w.out) = x (n×w.in) · wᵀ + bias, splitting the
// output features over the workers. Each worker dequantizes one weight row
// at a time and reuses it for every row of x.
func (b *Backend) matmul(dst, x []float32, n int, w *weight, bias []float32) {
	in, out := w.in, w.out
	b.parallel(out, 16, func(lo, hi int) {
		buf := make([]float32, in)
		for o := lo; o < hi; o++ {
			w.row(o, buf)
			var bo float32
			if bias != nil {
				bo = bias[o]
			}
			for i := 0; i < n; i++ {
				dst[i*out+o] = dot(x[i*in:(i+1)*in], buf) + bo
			}
		}
	})
}

// dot returns Σ a[i]·b[i] over len(a) elements, accumulated in eight float32
// partial sums.
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	i := 0
	for ; i+8 <= len(a); i += 8 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
		s4 += a[i+4] * b[i+4]
		s5 += a[i+5] * b[i+5]
		s6 += a[i+6] * b[i+6]
		s7 += a[i+7] * b[i+7]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
}
