package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"orcd/tensor"
)

// kernelSets returns the kernel sets with fast-precision loops: the pure-Go
// ones and, where the CPU has VNNI, the assembly.
func kernelSets() map[string]kernels {
	s := map[string]kernels{"go": goKernels}
	if k, ok := simdKernels(); ok && k.q8 != nil {
		s["simd"] = k
	}
	return s
}

// randF16 is n random binary16 values of magnitude up to about scale, as
// a cache holds them, and the same values widened.
func randF16(r *rand.Rand, n int, scale float64) ([]uint16, []float32) {
	h, f := make([]uint16, n), make([]float32, n)
	for i := range h {
		h[i] = tensor.F32ToF16(float32((2*r.Float64() - 1) * scale))
		f[i] = tensor.F16ToF32(h[i])
	}
	return h, f
}

func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s [%d]: %v, want %v", what, i, got[i], want[i])
		}
	}
}

// TestF16KernelsMatchF32 checks that each binary16 attention loop gives,
// bit for bit, what its float32 twin gives for the widened values, in both
// kernel sets: head sizes for the AVX-512 kernels (64), the AVX2 ones
// (other multiples of 8) and the pure-Go fallback (5); key counts around
// the groups of 4 and 8; keys at the end of the cache or with rows after
// them.
func TestF16KernelsMatchF32(t *testing.T) {
	r := newRand(t)
	for name, ks := range kernelSets() {
		for _, d := range []int{64, 88, 32, 24, 5} {
			stride := 3*d + 8
			kh, kf := randF16(r, 30*stride, 1)
			q := randF32(r, 4*stride, 2)
			for n := 0; n <= 29; n++ {
				what := fmt.Sprintf("%s d=%d n=%d", name, d, n)
				for _, end := range []int{max(0, (n-1)*stride+d), len(kh)} {
					got, want := make([]float32, n), make([]float32, n)
					ks.q8.scoresF16(q[:d], kh[:end], stride, got)
					ks.q8.scores(q[:d], kf[:end], stride, want)
					sameBits(t, what+" scores", got, want)
				}
				var got4, want4 [4][]float32
				for i := range 4 {
					got4[i], want4[i] = make([]float32, n), make([]float32, n)
				}
				if n > 0 {
					ks.q8.scores4qF16(q, stride, d, kh, stride, got4)
					ks.q8.scores4q(q, stride, d, kf, stride, want4)
					for i := range 4 {
						sameBits(t, fmt.Sprintf("%s scores4q query %d", what, i), got4[i], want4[i])
					}
				}
				p := randF32(r, n, 1)
				for i := range 4 {
					got4[i], want4[i] = randF32(r, d, 1), nil
					want4[i] = append(want4[i], got4[i]...)
				}
				ks.q8.weightedSumF16(p, kh, stride, got4[0])
				ks.weightedSum(p, kf, stride, want4[0])
				sameBits(t, what+" weightedSum", got4[0], want4[0])
				if n > 0 {
					ps := [4][]float32{p, randF32(r, n, 1), randF32(r, n, 1), randF32(r, n, 1)}
					ks.q8.weightedSum4F16(ps, kh, stride, got4)
					ks.q8.weightedSum4(ps, kf, stride, want4)
					for i := range 4 {
						sameBits(t, fmt.Sprintf("%s weightedSum4 row %d", what, i), got4[i], want4[i])
					}
				}
			}
		}
	}
}

// TestF16KernelsAccuracy checks the binary16 loops against float64 sums
// of the widened values: within 1e-6 of the sum of magnitudes (float32
// sums of at most 64 products).
func TestF16KernelsAccuracy(t *testing.T) {
	r := newRand(t)
	const d, stride, n = 64, 80, 21
	kh, kf := randF16(r, n*stride, 1)
	q, p := randF32(r, d, 1), randF32(r, n, 1)
	for name, ks := range kernelSets() {
		out := make([]float32, n)
		ks.q8.scoresF16(q, kh, stride, out)
		for j := range out {
			var want, mag float64
			for c := range d {
				x := float64(q[c]) * float64(kf[j*stride+c])
				want, mag = want+x, mag+math.Abs(x)
			}
			if math.Abs(float64(out[j])-want) > 1e-6*mag {
				t.Fatalf("%s: score %d = %v, want %v", name, j, out[j], want)
			}
		}
		sum := make([]float32, d)
		ks.q8.weightedSumF16(p, kh, stride, sum)
		for c := range sum {
			var want, mag float64
			for j := range n {
				x := float64(p[j]) * float64(kf[j*stride+c])
				want, mag = want+x, mag+math.Abs(x)
			}
			if math.Abs(float64(sum[c])-want) > 1e-6*mag {
				t.Fatalf("%s: weighted sum [%d] = %v, want %v", name, c, sum[c], want)
			}
		}
	}
}

// TestEncodeF16 checks StoreKV's rounding to binary16 in both kernel sets:
// values worked by hand (ties to even, the largest finite value, overflow,
// subnormals) and random values of every magnitude against
// tensor.F32ToF16, bit for bit.
func TestEncodeF16(t *testing.T) {
	cases := []struct {
		x    float32
		want uint16
	}{
		{1, 0x3c00},
		{1 + 1.0/2048, 0x3c00},               // halfway between 1 and 1+2^-10: to even (1)
		{1 + 3.0/2048, 0x3c02},               // halfway between 1+2^-10 and 1+2^-9: to even
		{1 + 1.0/2048 + 1.0/(1<<20), 0x3c01}, // just above halfway
		{-2, 0xc000},
		{65504, 0x7bff},     // largest finite
		{65519, 0x7bff},     // below the halfway point to 65536
		{65520, 0x7c00},     // halfway: rounds to even, which is infinity
		{0x1p-24, 0x0001},   // smallest subnormal
		{0x1p-25, 0x0000},   // halfway to it: to even (0)
		{0x1.8p-25, 0x0001}, // above halfway
		{float32(math.Copysign(0, -1)), 0x8000},
		{float32(math.Inf(-1)), 0xfc00},
	}
	r := newRand(t)
	x := make([]float32, 0, len(cases)+4096)
	for _, c := range cases {
		x = append(x, c.x)
	}
	for range 4096 {
		x = append(x, float32((2*r.Float64()-1)*math.Exp2(float64(r.IntN(60)-30))))
	}
	for name, ks := range kernelSets() {
		for _, n := range []int{len(x), len(x) - 3, 5} { // the 8-wide loop and the tail
			out := make([]uint16, n)
			ks.q8.encodeF16(x, out)
			for i, h := range out {
				want := tensor.F32ToF16(x[i])
				if i < len(cases) {
					want = cases[i].want
				}
				if h != want {
					t.Fatalf("%s n=%d: %v → %#04x, want %#04x", name, n, x[i], h, want)
				}
			}
		}
	}
}

// TestStoreKVF16 checks that the fast precision's caches are binary16 and
// that StoreKV rounds rows into their slots, leaving the others alone.
func TestStoreKVF16(t *testing.T) {
	for name, b := range backendsWithFast() {
		if !b.Fast() {
			continue
		}
		t.Run(name, func(t *testing.T) {
			r := newRand(t)
			const capRows, cols = 5, 12
			kc, vc := must(b.NewKVCache(capRows, cols)), must(b.NewKVCache(capRows, cols))
			if kc.Type() != tensor.F16 || b.Allocated() < 2*capRows*cols*2 {
				t.Fatalf("cache type %s", kc.Type())
			}
			kv, vv := randF32(r, 2*cols, 3), randF32(r, 2*cols, 3)
			b.StoreKV(kc, vc, activation(t, b, 2, cols, kv), activation(t, b, 2, cols, vv), ints(t, b, []int32{4, 1}))
			if err := b.Sync(); err != nil {
				t.Fatal(err)
			}
			k, v := kc.(*Tensor).f16, vc.(*Tensor).f16
			for c := range cols {
				for i, s := range []int{4, 1} {
					if k[s*cols+c] != tensor.F32ToF16(kv[i*cols+c]) || v[s*cols+c] != tensor.F32ToF16(vv[i*cols+c]) {
						t.Fatalf("row %d column %d not stored rounded at slot %d", i, c, s)
					}
				}
				if k[c] != 0 || v[2*cols+c] != 0 {
					t.Fatalf("column %d: an unused slot was written", c)
				}
			}
			f32 := must(b.NewF32(capRows, cols))
			b.StoreKV(kc, f32, activation(t, b, 1, cols, kv[:cols]), activation(t, b, 1, cols, vv[:cols]), ints(t, b, []int32{0}))
			if b.Sync() == nil {
				t.Error("an F16 K cache with an F32 V cache: no error")
			}
		})
	}
}
