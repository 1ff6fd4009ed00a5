package cpu

import (
	"math"

	"orcd/backend"
)

// SiLU sets dst = x·σ(x), the sigmoid evaluated in float64.
func (b *Backend) SiLU(dst, x backend.Tensor) {
	d, xs := b.sameDims("SiLU", dst, x, "x")
	if d == nil {
		return
	}
	b.parallel(len(d.f32), 1<<12, func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			d.f32[i] = swiglu(xs.f32[i], 1, backend.SwiGLUParams{Alpha: 1})
		}
	})
}

// SwiGLU sets dst = g·σ(Alpha·g)·(u+UpShift) elementwise; see swiglu.
func (b *Backend) SwiGLU(dst, g, u backend.Tensor, p backend.SwiGLUParams) {
	const op = "SwiGLU"
	d, gs := b.sameDims(op, dst, g, "g")
	if d == nil {
		return
	}
	us := b.matrix(u, op, "u", d.rows(), d.cols())
	if us == nil {
		return
	}
	b.parallel(len(d.f32), 1<<12, func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			d.f32[i] = swiglu(gs.f32[i], us.f32[i], p)
		}
	})
}

// RMSNormHeads normalizes each headDim-column run of each row on its own
// (the mean of squares in float64), then scales it by w.
func (b *Backend) RMSNormHeads(dst, x, w backend.Tensor, headDim int, eps float32) {
	const op = "RMSNormHeads"
	d, xs := b.sameDims(op, dst, x, "x")
	if d == nil {
		return
	}
	if headDim <= 0 || d.cols()%headDim != 0 {
		b.fail("%s: headDim %d does not split %d columns", op, headDim, d.cols())
		return
	}
	ws := b.vector(w, op, "w", headDim)
	if ws == nil {
		return
	}
	b.eachRow(d, xs, func(dr, xr []float32) {
		for h := 0; h < len(xr); h += headDim {
			rmsNormRow(dr[h:h+headDim], xr[h:h+headDim], ws.f32, eps)
		}
	})
}

// rmsNormRow sets dr = xr/sqrt(mean(xr²)+eps)·w, the mean in float64.
func rmsNormRow(dr, xr, w []float32, eps float32) {
	var sq float64
	for _, v := range xr {
		sq += float64(v) * float64(v)
	}
	inv := 1 / math.Sqrt(sq/float64(len(xr))+float64(eps))
	for i, v := range xr {
		dr[i] = float32(float64(v)*inv) * w[i]
	}
}
