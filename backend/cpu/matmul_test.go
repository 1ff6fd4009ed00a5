package cpu

import (
	"fmt"
	"math"
	"testing"

	"orcd/backend"
	"orcd/tensor"
)

// refMatMul is x·Wᵀ + bias in float64 from the weights dequantized by the
// tensor package, with the error bound scale Σ|x·w| for each output.
func refMatMul(x []float32, n, in int, w []float64, out int, bias []float32) (want, mag []float64) {
	want = make([]float64, n*out)
	mag = make([]float64, n*out)
	for i := 0; i < n; i++ {
		for o := 0; o < out; o++ {
			var s, m float64
			for k := 0; k < in; k++ {
				p := float64(x[i*in+k]) * w[o*in+k]
				s += p
				m += math.Abs(p)
			}
			if bias != nil {
				s += float64(bias[o])
				m += math.Abs(float64(bias[o]))
			}
			want[i*out+o], mag[i*out+o] = s, m
		}
	}
	return want, mag
}

// matmulTol allows float32 rounding of each product and of the sum.
func matmulTol(mag []float64) []float64 {
	tol := make([]float64, len(mag))
	for i, m := range mag {
		tol[i] = 2e-6*m + 1e-6
	}
	return tol
}

// testIn is an input width valid for typ that is not a multiple of the
// 8-wide unrolling unless the block size forces it.
func testIn(typ tensor.Type) int {
	switch typ.BlockSize() {
	case 1:
		return 43
	case 32:
		return 96
	default:
		return 2 * typ.BlockSize()
	}
}

func TestMatMulEveryType(t *testing.T) {
	for name, b := range backends() {
		for _, typ := range tensor.Types() {
			for _, n := range []int{1, 3, 17, 64} {
				for _, withBias := range []bool{false, true} {
					t.Run(fmt.Sprintf("%s/%s/n=%d/bias=%v", name, typ, n, withBias), func(t *testing.T) {
						r := newRand(t)
						in, out := testIn(typ), 37
						raw := randWeightBytes(r, typ, in*out)
						w := must(b.Upload("w", typ, []int{in, out}, raw))
						xv := randF32(r, n*in, 1)
						x := activation(t, b, n, in, xv)
						var biasV []float32
						dst := poisoned(t, b, n, out)
						if withBias {
							biasV = randF32(r, out, 1)
							bt := must(b.Upload("b", tensor.F32, []int{out}, f32Bytes(biasV)))
							b.MatMul(dst, x, w, bt)
						} else {
							b.MatMul(dst, x, w, nil)
						}
						want, mag := refMatMul(xv, n, in, dequant(t, typ, raw, in*out), out, biasV)
						compare(t, "dst", read(t, b, dst), want, matmulTol(mag))
					})
				}
			}
		}
	}
}

// TestMatMulQKV checks the three products against three MatMuls.
func TestMatMulQKV(t *testing.T) {
	for name, b := range backends() {
		t.Run(name, func(t *testing.T) {
			r := newRand(t)
			in, n := 64, 3
			x := activation(t, b, n, in, randF32(r, n*in, 1))
			var got, want [3]backend.Tensor
			var w, bias [3]backend.Tensor
			for i, out := range []int{48, 16, 16} {
				w[i] = must(b.Upload("w", tensor.Q8_0, []int{in, out}, randWeightBytes(r, tensor.Q8_0, in*out)))
				if i != 1 {
					bias[i] = must(b.Upload("b", tensor.F32, []int{out}, f32Bytes(randF32(r, out, 1))))
				}
				got[i], want[i] = poisoned(t, b, n, out), poisoned(t, b, n, out)
				b.MatMul(want[i], x, w[i], bias[i])
			}
			b.MatMulQKV(got[0], got[1], got[2], x, w[0], w[1], w[2], bias[0], bias[1], bias[2])
			for i := range got {
				g, wv := read(t, b, got[i]), read(t, b, want[i])
				for j := range wv {
					if g[j] != wv[j] {
						t.Fatalf("product %d [%d] = %v, MatMul gives %v", i, j, g[j], wv[j])
					}
				}
			}
		})
	}
}

func TestMatMulShapeErrors(t *testing.T) {
	b := New()
	r := newRand(t)
	w := must(b.Upload("w", tensor.Q8_0, []int{64, 10}, randWeightBytes(r, tensor.Q8_0, 640)))
	x := must(b.NewF32(2, 32))
	dst := must(b.NewF32(2, 10))
	b.MatMul(dst, x, w, nil)
	if b.Sync() == nil {
		t.Error("x with 32 columns against a 64-wide weight: no error")
	}
	x = must(b.NewF32(2, 64))
	b.MatMul(must(b.NewF32(2, 9)), x, w, nil)
	if b.Sync() == nil {
		t.Error("dst with 9 columns for 10 outputs: no error")
	}
	b.MatMul(dst, x, w, must(b.NewF32(1, 11)))
	if b.Sync() == nil {
		t.Error("bias of 11 for 10 outputs: no error")
	}
	sq := must(b.Upload("sq", tensor.F32, []int{64, 64}, make([]byte, 64*64*4)))
	b.MatMul(x, x, sq, nil)
	if b.Sync() == nil {
		t.Error("dst aliasing x: no error")
	}
	b.MatMul(dst, x, w, nil)
	if err := b.Sync(); err != nil {
		t.Errorf("valid MatMul after errors: %v", err)
	}
}

// TestMatMulRowsAlone checks that every row of a MatMul gets the same bits
// as when it is the only row of the call, for each kernel path (the decode
// path below 4 rows, dot4x2 with leftover rows and an odd last weight row,
// tiles of 64 rows) and weight type: the model batches the rows routed to
// an expert, so without this a token's output depends on which other
// tokens share its step.
func TestMatMulRowsAlone(t *testing.T) {
	for name, b := range backendsWithFast() {
		for _, typ := range []tensor.Type{tensor.F32, tensor.F16, tensor.BF16, tensor.Q8_0, tensor.MXFP4, tensor.Q4_K} {
			for _, in := range []int{testIn(typ), 256} {
				t.Run(fmt.Sprintf("%s/%s/in=%d", name, typ, in), func(t *testing.T) {
					const out, rows = 37, 70
					r := newRand(t)
					w := must(b.Upload("w", typ, []int{in, out}, randWeightBytes(r, typ, in*out)))
					bias := must(b.Upload("b", tensor.F32, []int{out}, f32Bytes(randF32(r, out, 1))))
					xv := randF32(r, rows*in, 1)
					alone := make([]float32, rows*out)
					for i := range rows {
						dst := poisoned(t, b, 1, out)
						b.MatMul(dst, activation(t, b, 1, in, xv[i*in:(i+1)*in]), w, bias)
						copy(alone[i*out:], read(t, b, dst))
					}
					for _, n := range []int{2, 3, 4, 5, 7, 9, 13, 70} {
						dst := poisoned(t, b, n, out)
						b.MatMul(dst, activation(t, b, n, in, xv[:n*in]), w, bias)
						for i, v := range read(t, b, dst) {
							if math.Float32bits(v) != math.Float32bits(alone[i]) {
								t.Fatalf("n=%d: row %d [%d] = %v, alone %v", n, i/out, i%out, v, alone[i])
							}
						}
					}
					if err := b.Sync(); err != nil {
						t.Fatal(err)
					}
				})
			}
		}
	}
}
