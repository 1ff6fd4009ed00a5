package cpu

import (
	"fmt"
	"math"
	"sort"
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
		lim := float64(p.Limit)
		for i := range h {
			gi := math.Min(g[i], lim)
			ui := math.Max(-lim, math.Min(u[i], lim))
			h[i] = gi / (1 + math.Exp(-float64(p.Alpha)*gi)) * (ui + 1)
		}
		y := linear64(h, c.down, c.downB, e, c.ff, c.hidden)
		for i := range out {
			out[i] += wt * y[i]
		}
	}
	return out
}

func TestMoE(t *testing.T) {
	for name, b := range backends() {
		for _, typ := range []tensor.Type{tensor.F32, tensor.Q8_0, tensor.MXFP4} {
			for _, biases := range []bool{true, false} {
				for _, topK := range []int{1, 3} {
					t.Run(fmt.Sprintf("%s/%s/biases=%v/top%d", name, typ, biases, topK), func(t *testing.T) {
						const hidden, ff, nExp, n = 64, 96, 6, 7
						c := newMoECase(t, b, typ, hidden, ff, nExp, biases)
						p := backend.MoEParams{TopK: topK, Alpha: 1.702, Limit: 7}
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
						b.MoE(dst, x, &c.weights, p)
						compare(t, "dst", read(t, b, dst), want, tol)
						b.MoE(x, x, &c.weights, p) // dst aliasing x
						compare(t, "in place", read(t, b, x), want, tol)
					})
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
	b.MoE(dst, x, &c.weights, backend.MoEParams{TopK: 5, Alpha: 1.702, Limit: 7})
	if b.Sync() == nil {
		t.Error("TopK 5 of 4 experts: no error")
	}
	w := c.weights
	w.Down = w.Up // [32 32 4] happens to fit, so use a wrong bias instead
	w.DownBias = w.RouterBias
	b.MoE(dst, x, &w, backend.MoEParams{TopK: 2, Alpha: 1.702, Limit: 7})
	if b.Sync() == nil {
		t.Error("DownBias of 4 values for hidden 32 × 4 experts: no error")
	}
}
