package cpu

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"testing"

	"orcd/backend"
	"orcd/tensor"
)

// moeCase holds host copies of random MoE weights and their backend handles.
type moeCase struct {
	hidden, ff, nExp           int
	router, gate, up, down     []float64 // dequantized, row-major [out][in] per expert
	routerB, gateB, upB, downB []float32 // nil when absent
	weights                    backend.MoEWeights
}

func newMoECase(t *testing.T, b *Backend, expertType tensor.Type, hidden, ff, nExp int, biases bool) *moeCase {
	r := newRand(t)
	c := &moeCase{hidden: hidden, ff: ff, nExp: nExp}
	upload := func(name string, typ tensor.Type, dims []int) (backend.Tensor, []float64) {
		n := 1
		for _, d := range dims {
			n *= d
		}
		raw := randWeightBytes(r, typ, n)
		return must(b.Upload(name, typ, dims, raw)), dequant(t, typ, raw, n)
	}
	vec := func(name string, n int) (backend.Tensor, []float32) {
		if !biases {
			return nil, nil
		}
		v := randF32(r, n, 1)
		return must(b.Upload(name, tensor.F32, []int{n}, f32Bytes(v))), v
	}
	w := &c.weights
	w.Router, c.router = upload("router", tensor.F32, []int{hidden, nExp})
	w.Gate, c.gate = upload("gate", expertType, []int{hidden, ff, nExp})
	w.Up, c.up = upload("up", expertType, []int{hidden, ff, nExp})
	w.Down, c.down = upload("down", expertType, []int{ff, hidden, nExp})
	w.RouterBias, c.routerB = vec("router.b", nExp)
	w.GateBias, c.gateB = vec("gate.b", ff*nExp)
	w.UpBias, c.upB = vec("up.b", ff*nExp)
	w.DownBias, c.downB = vec("down.b", hidden*nExp)
	return c
}

// linear64 is x·W[e]ᵀ + bias[e] in float64 for the expert-stacked W.
func linear64(x []float64, w []float64, bias []float32, e, in, out int) []float64 {
	y := make([]float64, out)
	for o := range y {
		row := w[(e*out+o)*in : (e*out+o+1)*in]
		for k, v := range x {
			y[o] += v * row[k]
		}
		if bias != nil {
			y[o] += float64(bias[e*out+o])
		}
	}
	return y
}

// ref computes one output row from the gpt-oss definition.
func (c *moeCase) ref(xr []float32, p backend.MoEParams) []float64 {
	x := make([]float64, len(xr))
	for i, v := range xr {
		x[i] = float64(v)
	}
	logits := linear64(x, c.router, c.routerB, 0, c.hidden, c.nExp)
	idx := make([]int, c.nExp)
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return logits[idx[a]] > logits[idx[b]] })
	top := idx[:p.TopK]
	var z float64
	for _, e := range top {
		z += math.Exp(logits[e] - logits[top[0]])
	}
	out := make([]float64, c.hidden)
	for _, e := range top {
		wt := math.Exp(logits[e]-logits[top[0]]) / z
		g := linear64(x, c.gate, c.gateB, e, c.hidden, c.ff)
		u := linear64(x, c.up, c.upB, e, c.hidden, c.ff)
		h := make([]float64, c.ff)
		for i := range h {
			h[i] = swiglu64(g[i], u[i], p.SwiGLU)
		}
		y := linear64(h, c.down, c.downB, e, c.ff, c.hidden)
		for i := range out {
			out[i] += wt * y[i]
		}
	}
	return out
}

// swiglu64 is the SwiGLU of backend.SwiGLUParams in float64.
func swiglu64(g, u float64, p backend.SwiGLUParams) float64 {
	if p.Limit != 0 {
		lim := float64(p.Limit)
		g = math.Min(g, lim)
		u = math.Max(-lim, math.Min(u, lim))
	}
	return g / (1 + math.Exp(-float64(p.Alpha)*g)) * (u + float64(p.UpShift))
}

// moe runs the model's mixture of experts: the router's MatMul, Route and
// Experts.
func moe(t *testing.T, b *Backend, dst, x backend.Tensor, w *backend.MoEWeights, p backend.MoEParams) {
	n, nExp := backend.Rows(x), w.Router.Dims()[1]
	logits, weights := must(b.NewF32(n, nExp)), must(b.NewF32(n, p.TopK))
	ids := must(b.NewI32(n * p.TopK))
	b.MatMul(logits, x, w.Router, w.RouterBias)
	b.Route(ids, weights, logits, p.TopK)
	b.Experts(dst, x, ids, weights, &w.ExpertWeights, p.SwiGLU)
}

func TestMoE(t *testing.T) {
	gptoss := backend.SwiGLUParams{Alpha: 1.702, Limit: 7, UpShift: 1}
	for name, b := range backends() {
		for _, typ := range []tensor.Type{tensor.F32, tensor.Q8_0, tensor.MXFP4} {
			for _, biases := range []bool{true, false} {
				for _, topK := range []int{1, 3} {
					for _, act := range []backend.SwiGLUParams{gptoss, {Alpha: 1}} {
						t.Run(fmt.Sprintf("%s/%s/biases=%v/top%d/limit=%g", name, typ, biases, topK, act.Limit), func(t *testing.T) {
							const hidden, ff, nExp, n = 64, 96, 6, 7
							c := newMoECase(t, b, typ, hidden, ff, nExp, biases)
							p := backend.MoEParams{TopK: topK, SwiGLU: act}
							// Inputs of scale 0.5 put many gate and up values past ±7,
							// so the clamps matter.
							xv := randF32(newRand(t), n*hidden, 0.5)
							var want []float64
							for i := 0; i < n; i++ {
								want = append(want, c.ref(xv[i*hidden:(i+1)*hidden], p)...)
							}
							var scale float64
							for _, v := range want {
								scale = math.Max(scale, math.Abs(v))
							}
							tol := make([]float64, len(want))
							for i := range tol {
								tol[i] = 2e-6 * scale
							}
							dst := poisoned(t, b, n, hidden)
							x := activation(t, b, n, hidden, xv)
							moe(t, b, dst, x, &c.weights, p)
							compare(t, "dst", read(t, b, dst), want, tol)
							moe(t, b, x, x, &c.weights, p) // dst aliasing x
							compare(t, "in place", read(t, b, x), want, tol)
						})
					}
				}
			}
		}
	}
}

// TestTopKTies checks that equal router logits go to the lower expert index.
func TestTopKTies(t *testing.T) {
	chosen := make([]int, 3)
	topK([]float32{1, 3, 3, 0, 3, 2}, chosen)
	if chosen[0] != 1 || chosen[1] != 2 || chosen[2] != 4 {
		t.Errorf("top 3 of [1 3 3 0 3 2] = %v, want [1 2 4]", chosen)
	}
}

func TestMoEShapeErrors(t *testing.T) {
	b := New()
	c := newMoECase(t, b, tensor.F32, 32, 32, 4, true)
	x, dst := must(b.NewF32(2, 32)), must(b.NewF32(2, 32))
	logits, weights, ids := must(b.NewF32(2, 4)), must(b.NewF32(2, 2)), must(b.NewI32(4))
	b.Route(ids, weights, logits, 5)
	if b.Sync() == nil {
		t.Error("Route: k 5 of 4 experts: no error")
	}
	p := backend.SwiGLUParams{Alpha: 1}
	w := c.weights.ExpertWeights
	w.DownBias = c.weights.RouterBias
	b.Experts(dst, x, ids, weights, &w, p)
	if b.Sync() == nil {
		t.Error("DownBias of 4 values for hidden 32 × 4 experts: no error")
	}
	b.WriteI32(ids, []int32{0, 1, 2, 9})
	b.Experts(dst, x, ids, weights, &c.weights.ExpertWeights, p)
	if err := b.Sync(); err == nil || !strings.Contains(err.Error(), "ids[3] = 9") {
		t.Errorf("an expert id out of range: %v", err)
	}
}

// TestActivations checks SiLU, SwiGLU (plain and gpt-oss's clamped form) and
// RMSNormHeads against float64 formulas.
func TestActivations(t *testing.T) {
	b := NewWithThreads(3)
	r := newRand(t)
	const rows, cols, headDim = 3, 48, 16
	gv, uv := randF32(r, rows*cols, 4), randF32(r, rows*cols, 4)
	g, u := activation(t, b, rows, cols, gv), activation(t, b, rows, cols, uv)
	for _, p := range []backend.SwiGLUParams{{Alpha: 1}, {Alpha: 1.702, Limit: 7, UpShift: 1}} {
		want := make([]float64, len(gv))
		for i := range want {
			want[i] = swiglu64(float64(gv[i]), float64(uv[i]), p)
		}
		dst := poisoned(t, b, rows, cols)
		b.SwiGLU(dst, g, u, p)
		compare(t, fmt.Sprintf("SwiGLU %+v", p), read(t, b, dst), want, uniformTol(want, 1e-6, 1e-7))
	}
	want := make([]float64, len(gv))
	for i, v := range gv {
		want[i] = float64(v) / (1 + math.Exp(-float64(v)))
	}
	dst := poisoned(t, b, rows, cols)
	b.SiLU(dst, g)
	compare(t, "SiLU", read(t, b, dst), want, uniformTol(want, 1e-6, 1e-7))

	wv := randF32(r, headDim, 1)
	for row := 0; row < rows; row++ {
		for h := 0; h < cols; h += headDim {
			var sq float64
			seg := gv[row*cols+h : row*cols+h+headDim]
			for _, v := range seg {
				sq += float64(v) * float64(v)
			}
			inv := 1 / math.Sqrt(sq/headDim+1e-6)
			for i, v := range seg {
				want[row*cols+h+i] = float64(v) * inv * float64(wv[i])
			}
		}
	}
	b.RMSNormHeads(dst, g, activation(t, b, 1, headDim, wv), headDim, 1e-6)
	compare(t, "RMSNormHeads", read(t, b, dst), want, uniformTol(want, 1e-6, 1e-7))
	b.RMSNormHeads(dst, g, activation(t, b, 1, headDim, wv), 20, 1e-6)
	if b.Sync() == nil {
		t.Error("RMSNormHeads: head dim 20 of 48 columns: no error")
	}
}
