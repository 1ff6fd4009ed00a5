package cpu

import (
	"math"
	"slices"

	"orcd/backend"
)

// The mixture of experts as two ops (the cpu backend has no fused MoE: the
// model runs the router's MatMul, Route and Experts).

// Route writes each row's top k experts (ties to the lower index), in
// ascending expert order, and the softmax of their logits, computed in
// float64; see backend.Backend.
func (b *Backend) Route(ids, weights, logits backend.Tensor, k int) {
	const op = "Route"
	lg := b.f32(logits, op, "logits")
	if lg == nil {
		return
	}
	n, nExp := lg.rows(), lg.cols()
	if k < 1 || k > nExp {
		b.fail("%s: k %d with %d experts", op, k, nExp)
		return
	}
	wt := b.matrix(weights, op, "weights", n, k)
	id := b.i32(ids, op, "ids", n*k)
	if wt == nil || id == nil {
		return
	}
	b.parallel(n, 16, func(_, lo, hi int) {
		chosen := make([]int, k)
		for r := lo; r < hi; r++ {
			lr := lg.f32[r*nExp : (r+1)*nExp]
			topK(lr, chosen)
			top := float64(lr[chosen[0]])
			slices.Sort(chosen)
			var sum float64
			for _, e := range chosen {
				sum += math.Exp(float64(lr[e]) - top)
			}
			for j, e := range chosen {
				id.i32[r*k+j] = int32(e)
				wt.f32[r*k+j] = float32(math.Exp(float64(lr[e])-top) / sum)
			}
		}
	})
}

// Experts computes the weighted sum of each row's experts; see
// backend.Backend. Every selected expert e computes g = x·Gate[e]ᵀ +
// GateBias[e] and u = x·Up[e]ᵀ + UpBias[e], h = SwiGLU(g, u) and y =
// h·Down[e]ᵀ + DownBias[e]; the output row is Σ weight·y in ascending
// expert order, as HF transformers sums. Rows routed to the same expert are
// batched so each expert's weights are read once per call. dst may alias x.
func (b *Backend) Experts(dst, x, ids, weights backend.Tensor, w *backend.ExpertWeights, p backend.SwiGLUParams) {
	const op = "Experts"
	if w == nil {
		b.fail("%s: nil weights", op)
		return
	}
	xs, wt := b.f32(x, op, "x"), b.f32(weights, op, "weights")
	if xs == nil || wt == nil {
		return
	}
	n, hidden, k := xs.rows(), xs.cols(), wt.cols()
	d := b.matrix(dst, op, "dst", n, hidden)
	id := b.i32(ids, op, "ids", n*k)
	gate := b.weightOf(w.Gate, op, "Gate")
	if d == nil || id == nil || gate == nil || b.matrix(weights, op, "weights", n, k) == nil {
		return
	}
	if len(gate.dims) != 3 || gate.dims[0] != hidden {
		b.fail("%s: Gate dims %v, want [%d ff nExpert]", op, gate.dims, hidden)
		return
	}
	ff, nExp := gate.dims[1], gate.dims[2]
	up := b.expertWeight(w.Up, op, "Up", hidden, ff, nExp)
	down := b.expertWeight(w.Down, op, "Down", ff, hidden, nExp)
	gateBias := b.optionalVector(w.GateBias, op, "GateBias", ff*nExp)
	upBias := b.optionalVector(w.UpBias, op, "UpBias", ff*nExp)
	downBias := b.optionalVector(w.DownBias, op, "DownBias", hidden*nExp)
	if up == nil || down == nil || b.Err() != nil {
		return
	}
	// rowsOf[e] lists the rows routed to expert e and their weights.
	rowsOf := make([][]int, nExp)
	weightsOf := make([][]float32, nExp)
	for r := 0; r < n; r++ {
		for j := 0; j < k; j++ {
			e := id.i32[r*k+j]
			if e < 0 || int(e) >= nExp {
				b.fail("%s: ids[%d] = %d is not one of the %d experts", op, r*k+j, e, nExp)
				return
			}
			rowsOf[e] = append(rowsOf[e], r)
			weightsOf[e] = append(weightsOf[e], wt.f32[r*k+j])
		}
	}
	out := make([]float32, n*hidden)
	for e := 0; e < nExp; e++ {
		rows := rowsOf[e]
		m := len(rows)
		if m == 0 {
			continue
		}
		xg := make([]float32, m*hidden)
		for i, r := range rows {
			copy(xg[i*hidden:(i+1)*hidden], xs.f32[r*hidden:])
		}
		g := make([]float32, m*ff)
		u := make([]float32, m*ff)
		b.matmul(g, xg, m, gate.rows(e*ff, ff), slice(gateBias, e*ff, ff))
		b.matmul(u, xg, m, up.rows(e*ff, ff), slice(upBias, e*ff, ff))
		for i := range g {
			g[i] = swiglu(g[i], u[i], p)
		}
		y := xg // m×hidden, x rows no longer needed
		b.matmul(y, g, m, down.rows(e*hidden, hidden), slice(downBias, e*hidden, hidden))
		for i, r := range rows {
			wt := weightsOf[e][i]
			or, yr := out[r*hidden:(r+1)*hidden], y[i*hidden:(i+1)*hidden]
			for c := range or {
				or[c] += wt * yr[c]
			}
		}
	}
	copy(d.f32, out)
}

// swiglu is g·σ(Alpha·g)·(u+UpShift), g and u clamped first when Limit is
// set; the sigmoid is evaluated in float64.
func swiglu(g, u float32, p backend.SwiGLUParams) float32 {
	if p.Limit != 0 {
		g = min(g, p.Limit)
		u = max(-p.Limit, min(u, p.Limit))
	}
	sig := float32(1 / (1 + math.Exp(-float64(p.Alpha*g))))
	return g * sig * (u + p.UpShift)
}

// topK writes into chosen the indices of the len(chosen) largest values of
// v, largest first; equal values go to the lower index first.
func topK(v []float32, chosen []int) {
	for k := range chosen {
		best := -1
		for i, x := range v {
			taken := false
			for _, c := range chosen[:k] {
				if c == i {
					taken = true
					break
				}
			}
			if !taken && (best < 0 || x > v[best]) {
				best = i
			}
		}
		chosen[k] = best
	}
}

// expertWeight unwraps a stacked expert weight with Dims [in, out, nExp]
// and returns it as a matrix of nExp·out rows.
func (b *Backend) expertWeight(t backend.Tensor, op, arg string, in, out, nExp int) *weight {
	w := b.weightOf(t, op, arg)
	if w == nil {
		return nil
	}
	if len(w.dims) != 3 || w.dims[0] != in || w.dims[1] != out || w.dims[2] != nExp {
		b.fail("%s: %s dims %v, want [%d %d %d]", op, arg, w.dims, in, out, nExp)
		return nil
	}
	return w
}

// optionalVector unwraps an F32 vector of n values, or returns nil for a nil
// tensor.
func (b *Backend) optionalVector(t backend.Tensor, op, arg string, n int) []float32 {
	if t == nil {
		return nil
	}
	if v := b.vector(t, op, arg, n); v != nil {
		return v.f32
	}
	return nil
}

// slice returns v[off:off+n], or nil when v is nil.
func slice(v []float32, off, n int) []float32 {
	if v == nil {
		return nil
	}
	return v[off : off+n]
}
