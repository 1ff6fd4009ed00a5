package cpu

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"orcd/tensor"
)

// q8Sets returns the fast-precision kernel sets to test: the pure-Go loops,
// and the assembly where the CPU has it.
func q8Sets() map[string]*q8Kernels {
	s := map[string]*q8Kernels{"go": goQ8Kernels}
	if k, ok := simdKernels(); ok && k.q8 != nil {
		s["simd"] = k.q8
	}
	return s
}

// edgyF32 is random activations with blocks that test the quantizer's
// edges: all zero, one large value among tiny ones, equal magnitudes of
// both signs, and values whose scaled form is exactly half-way.
func edgyF32(r *rand.Rand, blocks int) []float32 {
	x := randF32(r, 32*blocks, 1)
	for b := 0; b < blocks; b++ {
		xb := x[32*b : 32*b+32]
		switch b % 5 {
		case 1:
			clear(xb)
		case 2:
			for k := range xb {
				xb[k] *= 1e-6
			}
			xb[r.IntN(32)] = -1e4
		case 3:
			for k := range xb {
				xb[k] = float32(1 - 2*float64(k%2))
			}
		case 4:
			// amax 127 makes id 1, so k+0.5 values are exact ties.
			for k := range xb {
				xb[k] = float32(k) - 15.5
			}
			xb[0] = 127
		}
	}
	return x
}

func TestQuantQ8(t *testing.T) {
	r := newRand(t)
	const blocks = 50
	x := edgyF32(r, blocks)
	var ref []int8
	for name, k := range q8Sets() {
		q, meta := make([]int8, 64*blocks), make([]q8Meta, blocks)
		k.quant(x, q, meta)
		for b := 0; b < blocks; b++ {
			var amax float64
			for _, v := range x[32*b : 32*b+32] {
				amax = math.Max(amax, math.Abs(float64(v)))
			}
			d := float64(meta[b].d)
			if math.Abs(d-amax/127/256) > 1e-6*amax/127/256 {
				t.Fatalf("%s: block %d: d = %v, want amax/127/256 = %v", name, b, d, amax/127/256)
			}
			var s1, s2 int32
			for j := 0; j < 32; j++ {
				q1, q2 := q[64*b+j], q[64*b+32+j]
				if q1 < -127 {
					t.Fatalf("%s: block %d: q1[%d] = %d, below -127 (amax scales to 127)", name, b, j, q1)
				}
				// Within half a step of the second digit (a few float32
				// roundings more), or one step where q2 saturates at 127.
				tol := d * 0.52
				if q2 == 127 {
					tol = d * 1.02
				}
				xj := float64(x[32*b+j])
				if e := math.Abs(xj - d*(256*float64(q1)+float64(q2))); e > tol {
					t.Fatalf("%s: x[%d] = %v quantized to (256·%d+%d)×%v, off by %v", name, 32*b+j, xj, q1, q2, d, e)
				}
				s1 += int32(q1)
				s2 += int32(q2)
			}
			if b%5 == 4 && (q[64*b+1] != -14 || q[64*b+32+1] != -128) {
				t.Fatalf("%s: -14.5 quantized to %d, %d; want -14, -128 (ties to even)", name, q[64*b+1], q[64*b+32+1])
			}
			if b%5 == 4 && (q[64*b+16] != 0 || q[64*b+32+16] != 127) {
				t.Fatalf("%s: 0.5 quantized to %d, %d; want 0, 127 (q2 saturated)", name, q[64*b+16], q[64*b+32+16])
			}
			if meta[b].c != -128*(256*s1+s2) {
				t.Fatalf("%s: block %d: c = %d, want -128·(256·%d+%d)", name, b, meta[b].c, s1, s2)
			}
		}
		// The assembly must give the very bytes the Go loop gives: the
		// fast path's numbers must not depend on the CPU.
		if ref == nil {
			ref = q
		} else {
			for j := range q {
				if q[j] != ref[j] {
					t.Fatalf("kernel sets disagree at q[%d]: %d vs %d", j, q[j], ref[j])
				}
			}
		}
	}
}

// edgyQ8 returns out rows of in/32 Q8_0 blocks with random quants, some
// blocks at the extremes -128 and 127, and some zero scales.
func edgyQ8(r *rand.Rand, in, out int) []byte {
	raw := make([]byte, out*in/32*34)
	for off := 0; off < len(raw); off += 34 {
		blk := raw[off : off+34]
		putF16(blk, float32(0.001+0.02*r.Float64()))
		for k := 2; k < 34; k++ {
			blk[k] = byte(r.UintN(256))
		}
		switch r.IntN(6) {
		case 0:
			putF16(blk, 0)
		case 1:
			for k := 2; k < 34; k++ {
				blk[k] = 0x80 // -128
			}
		case 2:
			for k := 2; k < 34; k++ {
				blk[k] = 127
			}
		}
	}
	return raw
}

// TestGemmQ8 checks the packed integer dot products against a float64 sum
// over the unpacked Q8_0 bytes, and the assembly against the Go loops.
func TestGemmQ8(t *testing.T) {
	r := newRand(t)
	const in, out, n = 96, 37, 17
	raw := edgyQ8(r, in, out)
	p := packQ8(raw, in, out)
	x := edgyF32(r, n*in/32)
	for name, k := range q8Sets() {
		a := &q8Act{q: make([]int8, 2*n*in), meta: make([]q8Meta, n*in/32)}
		for i := 0; i < n; i++ {
			k.quant(x[i*in:(i+1)*in], a.q[2*i*in:2*(i+1)*in], a.meta[i*in/32:(i+1)*in/32])
		}
		bias := randF32(r, q8Group*p.groups, 1)
		// gemm1 (one row against a run of groups) must give gemm's values,
		// with and without a bias.
		for row := 0; row < n; row++ {
			for _, withBias := range []bool{false, true} {
				var gb []float32
				if withBias {
					gb = bias
				}
				all := make([]float32, q8Group*p.groups)
				k.gemm1(p, 0, p.groups, a, row, gb, all)
				for g := 0; g < p.groups; g++ {
					one, b1 := make([]float32, q8Group), noBias[:]
					if withBias {
						b1 = bias[q8Group*g : q8Group*(g+1)]
					}
					k.gemm(p, g, a, row, 1, b1, one, q8Group)
					for l := range one {
						if all[q8Group*g+l] != one[l] {
							t.Fatalf("%s: gemm1 row %d group %d [%d] = %v, gemm %v (bias %v)", name, row, g, l, all[q8Group*g+l], one[l], withBias)
						}
					}
				}
			}
		}
		// gemm against the float64 sum, plus the bias, writing rows a
		// stride apart (the gaps must stay untouched).
		const stride = q8Group + 5
		for _, rows := range []int{1, 3, q8Rows} {
			for row0 := 0; row0+rows <= n; row0 += rows {
				for g := 0; g < p.groups; g++ {
					got := make([]float32, stride*rows)
					for i := range got {
						got[i] = -7
					}
					gb := bias[q8Group*g : q8Group*(g+1)]
					k.gemm(p, g, a, row0, rows, gb, got, stride)
					for ri := 0; ri < rows; ri++ {
						for l := q8Group; l < stride; l++ {
							if got[stride*ri+l] != -7 {
								t.Fatalf("%s rows=%d: wrote past row %d's %d outputs", name, rows, ri, q8Group)
							}
						}
						for l := 0; l < q8Group; l++ {
							o := q8Group*g + l
							want, mag := float64(gb[l]), math.Abs(float64(gb[l]))
							if o < out {
								for b := 0; b < in/32; b++ {
									blk := raw[(o*in/32+b)*34:]
									ws := float64(tensor.F16ToF32(binary.LittleEndian.Uint16(blk)))
									m := a.meta[(row0+ri)*in/32+b]
									var s int64
									q := a.q[2*(row0+ri)*in+64*b:]
									for j := 0; j < 32; j++ {
										s += int64(int8(blk[2+j])) * (256*int64(q[j]) + int64(q[32+j]))
									}
									want += ws * float64(m.d) * float64(s)
									mag += math.Abs(ws * float64(m.d) * float64(s))
								}
							}
							if e := math.Abs(float64(got[stride*ri+l]) - want); e > 1e-6*mag+1e-30 {
								t.Fatalf("%s rows=%d: x row %d · w row %d = %v, want %v (tolerance %v)",
									name, rows, row0+ri, o, got[stride*ri+l], want, 1e-6*mag)
							}
						}
					}
				}
			}
		}
	}
}

// TestMatMulFast checks the fast precision's MatMul against the exact
// product of the float32 inputs, within the error that quantizing x
// allows: a step of the second digit (amax/127/256, once q2 saturates)
// per element, times Σ|w| over the block. One digit's error, 128 times
// that, fails it.
func TestMatMulFast(t *testing.T) {
	for _, simd := range []bool{false, true} {
		for _, threads := range []int{1, 3} {
			b := newBackend(threads, simd, Fast)
			if !b.Fast() {
				t.Logf("simd=%v: no fast kernels on this CPU", simd)
				continue
			}
			for _, n := range []int{1, 3, 5, 40} {
				for _, shape := range [][2]int{{128, 45}, {64, 512}, {256, 64}} {
					in, out := shape[0], shape[1]
					t.Run(fmt.Sprintf("simd=%v/threads=%d/n=%d/%dx%d", simd, threads, n, out, in), func(t *testing.T) {
						r := newRand(t)
						raw := randWeightBytes(r, tensor.Q8_0, in*out)
						w := must(b.Upload("w", tensor.Q8_0, []int{in, out}, raw))
						xv := randF32(r, n*in, 1)
						biasV := randF32(r, out, 1)
						bt := must(b.Upload("b", tensor.F32, []int{out}, f32Bytes(biasV)))
						dst := poisoned(t, b, n, out)
						b.MatMul(dst, activation(t, b, n, in, xv), w, bt)
						wf := dequant(t, tensor.Q8_0, raw, in*out)
						want, mag := refMatMul(xv, n, in, wf, out, biasV)
						tol := matmulTol(mag)
						for i := 0; i < n; i++ {
							for o := 0; o < out; o++ {
								for blk := 0; blk < in/32; blk++ {
									var amax, wsum float64
									for k := 32 * blk; k < 32*blk+32; k++ {
										amax = math.Max(amax, math.Abs(float64(xv[i*in+k])))
										wsum += math.Abs(wf[o*in+k])
									}
									tol[i*out+o] += amax / 127 / 256 * wsum
								}
							}
						}
						compare(t, "dst", read(t, b, dst), want, tol)
					})
				}
			}
		}
	}
}

// TestGELUFast checks the fast GELU (Go and assembly) against gelu
// (float64, math.Tanh) to a few float32 roundings, from deep in the
// negative tail (where 1+tanh cancels to 0 and the fast one keeps a tiny
// value) to large positive inputs.
func TestGELUFast(t *testing.T) {
	var x []float32
	for v := float32(-30); v <= 30; v += 0.00137 {
		x = append(x, v)
	}
	x = append(x, 0, -0.0, 1e-30, -1e-30)
	for name, k := range q8Sets() {
		out := make([]float32, len(x))
		k.gelu(x, out)
		for i, v := range x {
			want := gelu(v)
			// e^t's relative error grows with |t| ~ x³ from the float32
			// rounding of t itself.
			tol := 4e-7*math.Abs(float64(want))*(1+math.Abs(float64(v*v*v))) + 1e-15
			if d := math.Abs(float64(out[i] - want)); d > tol {
				t.Fatalf("%s: gelu(%v) = %v, want %v", name, v, out[i], want)
			}
		}
	}
}

// TestExpSum checks expSum (Go and assembly) against math.Exp over the
// softmax's range, including the -80 floor.
func TestExpSum(t *testing.T) {
	r := newRand(t)
	const n = 203 // not a multiple of 8: the assembly's Go tail runs too
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(-100 * r.Float64())
	}
	x[0], x[1], x[2] = 0, -80, -0.3466 // the top, the floor, near -ln2/2
	const scale, sub = 0.5, -1.25      // exps of x/2 + 1.25, ≤ 0 for x ≤ -2.5
	for i := range x {
		x[i] = min(x[i], -2.5)
	}
	sets := map[string]func(x []float32, scale, sub float32, out []float32) float32{"go": expSum}
	if k, ok := simdKernels(); ok && k.q8 != nil {
		sets["simd"] = k.q8.expSum
	}
	for name, f := range sets {
		out := make([]float32, n)
		sum := f(x, scale, sub, out)
		var wantSum float64
		for i, v := range x {
			a := float64(v)*scale - sub
			want := math.Exp(max(a, -80))
			wantSum += want
			if math.Abs(float64(out[i])-want) > 4e-7*want {
				t.Fatalf("%s: e^%v = %v, want %v", name, a, out[i], want)
			}
		}
		if math.Abs(float64(sum)-wantSum) > 1e-6*wantSum {
			t.Fatalf("%s: sum %v, want %v", name, sum, wantSum)
		}
	}
}

// TestScoresFast checks the fast precision's scores against a float64 dot
// product, for key counts around the groups of four.
func TestScoresFast(t *testing.T) {
	r := newRand(t)
	const d, stride = 64, 80
	q := randF32(r, d, 1)
	k := randF32(r, 29*stride, 1)
	for name, ks := range q8Sets() {
		// Up to 3 groups of eight keys, one of four and the rest.
		for n := 0; n <= 29; n++ {
			out := make([]float32, n)
			// k ends with the last key's values, as at the end of a cache.
			ks.scores(q, k[:max(0, (n-1)*stride+d)], stride, out)
			for j := range out {
				var want, mag float64
				for c := 0; c < d; c++ {
					p := float64(q[c]) * float64(k[j*stride+c])
					want += p
					mag += math.Abs(p)
				}
				if math.Abs(float64(out[j])-want) > 1e-6*mag {
					t.Fatalf("%s n=%d: score %d = %v, want %v", name, n, j, out[j], want)
				}
			}
		}
	}
}

// TestEmbedFast checks that Embed from a packed Q8_0 table (the fast
// precision keeps no other copy) gives the exact precision's rows.
func TestEmbedFast(t *testing.T) {
	r := newRand(t)
	const in, out = 96, 21
	raw := edgyQ8(r, in, out)
	ids := []int32{0, 7, 8, 20, 13}
	var rows [2][]float32
	for i, prec := range []Precision{Exact, Fast} {
		b := newBackend(2, false, prec)
		w := must(b.Upload("w", tensor.Q8_0, []int{in, out}, raw))
		dst := poisoned(t, b, len(ids), in)
		b.Embed(dst, w, ints(t, b, ids))
		rows[i] = read(t, b, dst)
	}
	want := make([]float32, len(ids)*in)
	for i, id := range ids {
		decodeRow(tensor.Q8_0, raw[int(id)*in/32*34:], want[i*in:(i+1)*in])
	}
	for i := range want {
		if rows[0][i] != want[i] || rows[1][i] != want[i] {
			t.Fatalf("element %d: exact %v, fast %v, want %v", i, rows[0][i], rows[1][i], want[i])
		}
	}
}

// TestMaxFast checks the softmax's max (Go and assembly) against a plain
// loop, for lengths around the assembly's 16 and 32 at a time, with the
// largest value at every position in turn.
func TestMaxFast(t *testing.T) {
	r := newRand(t)
	for name, k := range q8Sets() {
		for n := 1; n <= 70; n++ {
			for at := 0; at < n; at++ {
				x := randF32(r, n, 1)
				for i := range x {
					x[i] -= 2 // all negative, so a max stuck at 0 fails
				}
				x[at] = 5
				if got := k.max(x); got != 5 {
					t.Fatalf("%s: max of %d values with 5 at %d = %v", name, n, at, got)
				}
			}
		}
	}
}
