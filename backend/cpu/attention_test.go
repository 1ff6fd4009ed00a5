package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"orcd/backend"
)

// refAttention is attention for one query row at position p, from the
// definition: GQA head mapping, keys max(0, p-window+1)..p (all earlier when
// window is 0), softmax of scale·q·k with the sink as an extra logit whose
// column is dropped. keys and values are indexed by absolute position.
func refAttention(q []float32, p int, keys, values [][]float32, sinks []float32, ap backend.AttentionParams) []float64 {
	out := make([]float64, ap.Heads*ap.HeadDim)
	first := 0
	if ap.Window > 0 && p-ap.Window+1 > 0 {
		first = p - ap.Window + 1
	}
	for h := 0; h < ap.Heads; h++ {
		kvh := h / (ap.Heads / ap.KVHeads)
		var logits []float64
		for j := first; j <= p; j++ {
			var s float64
			for c := 0; c < ap.HeadDim; c++ {
				s += float64(q[h*ap.HeadDim+c]) * float64(keys[j][kvh*ap.HeadDim+c])
			}
			logits = append(logits, s*float64(ap.Scale))
		}
		all := logits
		if sinks != nil {
			all = append(append([]float64(nil), logits...), float64(sinks[h]))
		}
		m := math.Inf(-1)
		for _, l := range all {
			m = math.Max(m, l)
		}
		var z float64
		for _, l := range all {
			z += math.Exp(l - m)
		}
		for i, l := range logits {
			pr := math.Exp(l-m) / z
			for c := 0; c < ap.HeadDim; c++ {
				out[h*ap.HeadDim+c] += pr * float64(values[first+i][kvh*ap.HeadDim+c])
			}
		}
	}
	return out
}

func TestAttention(t *testing.T) {
	type step []int // positions of the rows of one call, in order
	seq := func(lo, hi int) step {
		var s step
		for p := lo; p < hi; p++ {
			s = append(s, p)
		}
		return s
	}
	decode := func(lo, hi int) []step {
		var s []step
		for p := lo; p < hi; p++ {
			s = append(s, step{p})
		}
		return s
	}
	cases := []struct {
		name                    string
		heads, kvHeads, headDim int
		window, cacheCap        int
		sinks                   bool
		steps                   []step
	}{
		{"mha/full/prefill", 4, 4, 8, 0, 32, false, []step{seq(0, 10)}},
		{"gqa4/full/decode", 8, 2, 16, 0, 32, false, append([]step{seq(0, 20)}, decode(20, 23)...)},
		{"gqa2/window/sinks/wraparound", 6, 3, 8, 5, 8, true, append([]step{seq(0, 4)}, decode(4, 21)...)},
		{"gqa4/sinks/odd-headdim", 4, 1, 5, 0, 16, true, []step{seq(0, 3), seq(3, 9), {9}}},
		{"mha/window/prefill-after-wrap", 2, 2, 12, 3, 8, true, []step{seq(0, 5), seq(5, 10), seq(10, 15), {15}}},
		{"window-equals-cache", 2, 1, 4, 4, 4, false, decode(0, 11)},
	}
	for name, b := range backends() {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/%s", name, tc.name), func(t *testing.T) {
				r := newRand(t)
				ap := backend.AttentionParams{
					Heads: tc.heads, KVHeads: tc.kvHeads, HeadDim: tc.headDim,
					Scale: float32(1 / math.Sqrt(float64(tc.headDim))), Window: tc.window, CacheCap: tc.cacheCap,
				}
				qCols, kvCols := tc.heads*tc.headDim, tc.kvHeads*tc.headDim
				kc, vc := must(b.NewKVCache(tc.cacheCap, kvCols)), must(b.NewKVCache(tc.cacheCap, kvCols))
				var sinkV []float32
				var sinks backend.Tensor
				if tc.sinks {
					sinkV = randF32(r, tc.heads, 2)
					sinks = activation(t, b, 1, tc.heads, sinkV)
				}
				var keys, values [][]float32
				for _, st := range tc.steps {
					n := len(st)
					kv, vv, qv := randF32(r, n*kvCols, 1), randF32(r, n*kvCols, 1), randF32(r, n*qCols, 2)
					pos, slots := make([]int32, n), make([]int32, n)
					for i, p := range st {
						keys = append(keys, kv[i*kvCols:(i+1)*kvCols])
						values = append(values, vv[i*kvCols:(i+1)*kvCols])
						pos[i], slots[i] = int32(p), int32(p%tc.cacheCap)
					}
					b.StoreKV(kc, vc, activation(t, b, n, kvCols, kv), activation(t, b, n, kvCols, vv), ints(t, b, slots))
					dst := poisoned(t, b, n, qCols)
					b.Attention(dst, activation(t, b, n, qCols, qv), kc, vc, ints(t, b, pos), sinks, ap)
					var want []float64
					for i, p := range st {
						want = append(want, refAttention(qv[i*qCols:(i+1)*qCols], p, keys, values, sinkV, ap)...)
					}
					compare(t, fmt.Sprintf("positions %v", st), read(t, b, dst), want, uniformTol(want, 1e-5, 1e-6))
				}
			})
		}
	}
}

// TestAttentionOverwrittenKeys checks that a row needing a key the ring
// buffer has already overwritten is an error, not a silent wrong answer.
func TestAttentionOverwrittenKeys(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(1, 2))
	ap := backend.AttentionParams{Heads: 2, KVHeads: 2, HeadDim: 4, Scale: 0.5, Window: 0, CacheCap: 8}
	kc, vc := must(b.NewKVCache(8, 8)), must(b.NewKVCache(8, 8))
	q := activation(t, b, 1, 8, randF32(r, 8, 1))
	dst := must(b.NewF32(1, 8))
	b.Attention(dst, q, kc, vc, ints(t, b, []int32{7}), nil, ap)
	if err := b.Sync(); err != nil {
		t.Fatalf("position 7 in an 8-row cache: %v", err)
	}
	b.Attention(dst, q, kc, vc, ints(t, b, []int32{8}), nil, ap)
	if b.Sync() == nil {
		t.Error("full attention at position 8 in an 8-row cache: no error")
	}
	ap.Window = 4 // a 4-row window with a 5-row prefill in an 8-row cache
	q5 := activation(t, b, 5, 8, randF32(r, 40, 1))
	b.Attention(must(b.NewF32(5, 8)), q5, kc, vc, ints(t, b, []int32{10, 11, 12, 13, 14}), nil, ap)
	if err := b.Sync(); err != nil {
		t.Errorf("window 4, prefill 10..14, cache 8: %v", err)
	}
	b.Attention(must(b.NewF32(5, 8)), q5, kc, vc, ints(t, b, []int32{10, 11, 12, 13, 15}), nil, ap)
	if b.Sync() == nil {
		t.Error("window 4, rows at 10 and 15, cache 8 (key 7 overwritten by 15): no error")
	}
}

func TestExpNonPositive(t *testing.T) {
	for x := 0.0; x > -750; x -= 0.0137 {
		got, want := expNonPositive(x), math.Exp(x)
		if x < -700 {
			want = 0 // flushed: e^-700 ≈ 1e-304 is nothing next to the softmax's largest term, 1
		}
		if math.Abs(got-want) > 1e-8*want {
			t.Fatalf("expNonPositive(%v) = %v, want %v", x, got, want)
		}
	}
	if got := expNonPositive(math.Inf(-1)); got != 0 {
		t.Errorf("expNonPositive(-Inf) = %v, want 0", got)
	}
}
