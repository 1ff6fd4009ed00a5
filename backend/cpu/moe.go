package cpu

import (
	"math"

	"orcd/backend"
)

// MoE computes the gpt-oss mixture of experts; see backend.Backend.
//
// Router logits are x·Routerᵀ + RouterBias; each row takes its TopK largest
// logits (ties go to the lower expert index) and softmaxes them (float64).
// Every selected expert e computes g = x·Gate[e]ᵀ + GateBias[e] and
// u = x·Up[e]ᵀ + UpBias[e], clamps g ≤ Limit and -Limit ≤ u ≤ Limit, forms
// h = g·σ(Alpha·g)·(u+1) and y = h·Down[e]ᵀ + DownBias[e]. The output row is
// Σ weight·y, summed in ascending expert order as HF transformers does. Rows
// routed to the same expert are batched so each expert's weights are read
// once per call. dst may alias x.
func (b *Backend) MoE(dst, x backend.Tensor, w *backend.MoEWeights, p backend.MoEParams) {
	const op = "MoE"
	if w == nil {
		b.fail("%s: nil weights", op)
		return
	}
	xs := b.f32(x, op, "x")
	if xs == nil {
		return
	}
	n, hidden := xs.rows(), xs.cols()
	d := b.matrix(dst, op, "dst", n, hidden)
	router := b.weightOf(w.Router, op, "Router")
	if d == nil || router == nil {
		return
	}
	if len(router.dims) != 2 || router.in != hidden {
		b.fail("%s: Router dims %v, want [%d nExpert]", op, router.dims, hidden)
		return
	}
	nExp := router.out
	if p.TopK < 1 || p.TopK > nExp {
		b.fail("%s: TopK %d with %d experts", op, p.TopK, nExp)
		return
	}
	gate := b.expertWeight(w.Gate, op, "Gate", hidden, 0, nExp)
	if gate == nil {
		return
	}
	ff := gate.dims[1]
	up := b.expertWeight(w.Up, op, "Up", hidden, ff, nExp)
	down := b.expertWeight(w.Down, op, "Down", ff, hidden, nExp)
	routerBias := b.optionalVector(w.RouterBias, op, "RouterBias", nExp)
	gateBias := b.optionalVector(w.GateBias, op, "GateBias", ff*nExp)
	upBias := b.optionalVector(w.UpBias, op, "UpBias", ff*nExp)
	downBias := b.optionalVector(w.DownBias, op, "DownBias", hidden*nExp)
	if up == nil || down == nil || b.Err() != nil {
		return
	}

	logits := make([]float32, n*nExp)
	b.matmul(logits, xs.f32, n, router, routerBias)

	// rowsOf[e] lists the rows routed to expert e and their weights.
	rowsOf := make([][]int, nExp)
	weightsOf := make([][]float32, nExp)
	chosen := make([]int, p.TopK)
	for r := 0; r < n; r++ {
		topK(logits[r*nExp:(r+1)*nExp], chosen)
		lr := logits[r*nExp:]
		top := float64(lr[chosen[0]])
		var sum float64
		for _, e := range chosen {
			sum += math.Exp(float64(lr[e]) - top)
		}
		for _, e := range chosen {
			rowsOf[e] = append(rowsOf[e], r)
			weightsOf[e] = append(weightsOf[e], float32(math.Exp(float64(lr[e])-top)/sum))
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
			g[i] = swiglu(g[i], u[i], p.Alpha, p.Limit)
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

// swiglu is gpt-oss's clamped SwiGLU of one gate value g and up value u.
func swiglu(g, u, alpha, limit float32) float32 {
	g = min(g, limit)
	u = max(-limit, min(u, limit))
	sig := float32(1 / (1 + math.Exp(-float64(alpha*g))))
	return g * sig * (u + 1)
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
// (out 0 means any) and returns it as a matrix of nExp·out rows.
func (b *Backend) expertWeight(t backend.Tensor, op, arg string, in, out, nExp int) *weight {
	w := b.weightOf(t, op, arg)
	if w == nil {
		return nil
	}
	if len(w.dims) != 3 || w.dims[0] != in || (out != 0 && w.dims[1] != out) || w.dims[2] != nExp {
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
