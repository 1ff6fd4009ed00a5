package cpu

import (
	"unsafe"

	"orcd/tensor"
)

// AVX2+FMA versions of the inner loops, in kernels_amd64.s. They need AVX2,
// FMA and F16C, checked once with CPUID; without them the backend uses the
// pure-Go loops.

//go:noescape
func scoresAVX2(q, k *float32, stride, n, d int, out *float32)

//go:noescape
func weightedSumAVX2(p, v *float32, stride, n, d int, out *float32)

//go:noescape
func dot4x2AVX2(x *float32, xstride int, w0, w1 *float32, n int, out *[8]float32)

//go:noescape
func dot1x4AVX2(x, w0, w1, w2, w3 *float32, n int, out *[4]float32)

//go:noescape
func dotQ8_0x4AVX2(w *byte, rowBytes int, x *float32, blocks int, out *[4]float32)

//go:noescape
func dotMXFP4x4AVX2(w *byte, rowBytes int, x *float32, blocks int, out *[4]float32, scales *float32, values *byte)

//go:noescape
func dotF16x4AVX2(w *byte, rowBytes int, x *float32, n int, out *[4]float32)

//go:noescape
func dotBF16x4AVX2(w *byte, rowBytes int, x *float32, n int, out *[4]float32)

//go:noescape
func decodeQ8_0AVX2(w *byte, out *float32, blocks int)

//go:noescape
func decodeF16AVX2(w *byte, out *float32, n int)

//go:noescape
func decodeBF16AVX2(w *byte, out *float32, n int)

//go:noescape
func decodeMXFP4AVX2(w *byte, out *float32, blocks int, scales *float32, values *byte)

func cpuid(leaf, sub uint32) (a, b, c, d uint32)

func xgetbv0() uint32

// haveAVX2 reports whether the CPU and OS support AVX2, FMA and F16C.
func haveAVX2() bool {
	maxLeaf, _, _, _ := cpuid(0, 0)
	if maxLeaf < 7 {
		return false
	}
	_, _, c1, _ := cpuid(1, 0)
	const fma, osxsave, avx, f16c = 1 << 12, 1 << 27, 1 << 28, 1 << 29
	if c1&(fma|osxsave|avx|f16c) != fma|osxsave|avx|f16c {
		return false
	}
	if xgetbv0()&6 != 6 { // the OS saves XMM and YMM state
		return false
	}
	_, b7, _, _ := cpuid(7, 0)
	return b7&(1<<5) != 0
}

// mxfp4HalfScales maps an E8M0 byte to 2^(e-128), for the AVX2 MXFP4 loop.
var mxfp4HalfScales = func() (t [256]float32) {
	for i := range t {
		t[i] = tensor.E8M0ToF32Half(uint8(i))
	}
	return t
}()

// mxfp4Codes are tensor.MXFP4DoubledValues, the VPSHUFB lookup table.
var mxfp4Codes = tensor.MXFP4DoubledValues()

// simdKernels returns the AVX2 kernels when the CPU has them.
func simdKernels() (kernels, bool) {
	if !haveAVX2() {
		return kernels{}, false
	}
	return kernels{
		scores: func(q, k []float32, stride int, out []float32) {
			d := len(q)
			if d%8 != 0 || len(out) == 0 {
				scores(q, k, stride, out)
				return
			}
			_ = k[(len(out)-1)*stride+d-1]
			scoresAVX2(&q[0], &k[0], stride, len(out), d, &out[0])
		},
		weightedSum: weightedSumSIMD,
		dot4x2: func(x []float32, xstride int, w0, w1 []float32, out *[8]float32) {
			n := len(w0)
			if n%8 != 0 || n == 0 {
				dot4x2(x, xstride, w0, w1, out)
				return
			}
			_, _ = x[3*xstride+n-1], w1[n-1]
			dot4x2AVX2(&x[0], xstride, &w0[0], &w1[0], n, out)
		},
		dot1x4: func(x, w0, w1, w2, w3 []float32, out *[4]float32) {
			// The same fallback as dot4x2's, so both always sum alike.
			n := len(w0)
			if n%8 != 0 || n == 0 {
				dot1x4(x, w0, w1, w2, w3, out)
				return
			}
			_, _, _, _ = x[n-1], w1[n-1], w2[n-1], w3[n-1]
			dot1x4AVX2(&x[0], &w0[0], &w1[0], &w2[0], &w3[0], n, out)
		},
		decode: map[tensor.Type]func(row []byte, dst []float32){
			tensor.F16: func(row []byte, dst []float32) {
				n := len(dst) &^ 7
				if n > 0 {
					decodeF16AVX2(&row[:2*n][0], &dst[0], n)
				}
				decodeRow(tensor.F16, row[2*n:], dst[n:])
			},
			tensor.BF16: func(row []byte, dst []float32) {
				n := len(dst) &^ 7
				if n > 0 {
					decodeBF16AVX2(&row[:2*n][0], &dst[0], n)
				}
				decodeRow(tensor.BF16, row[2*n:], dst[n:])
			},
			tensor.Q8_0: func(row []byte, dst []float32) {
				blocks := len(dst) / 32
				_ = row[34*blocks-1]
				decodeQ8_0AVX2(&row[0], &dst[0], blocks)
			},
			tensor.MXFP4: func(row []byte, dst []float32) {
				blocks := len(dst) / 32
				_ = row[17*blocks-1]
				decodeMXFP4AVX2(&row[0], &dst[0], blocks, &mxfp4HalfScales[0], (*byte)(unsafe.Pointer(&mxfp4Codes[0])))
			},
		},
		fused: map[tensor.Type]func(w []byte, rowBytes int, x []float32, out *[4]float32){
			tensor.F16: func(w []byte, rowBytes int, x []float32, out *[4]float32) {
				_ = w[3*rowBytes+2*len(x)-1]
				dotF16x4AVX2(&w[0], rowBytes, &x[0], len(x), out)
			},
			tensor.BF16: func(w []byte, rowBytes int, x []float32, out *[4]float32) {
				_ = w[3*rowBytes+2*len(x)-1]
				dotBF16x4AVX2(&w[0], rowBytes, &x[0], len(x), out)
			},
			tensor.Q8_0: func(w []byte, rowBytes int, x []float32, out *[4]float32) {
				blocks := len(x) / 32
				_ = w[3*rowBytes+34*blocks-1]
				dotQ8_0x4AVX2(&w[0], rowBytes, &x[0], blocks, out)
			},
			tensor.MXFP4: func(w []byte, rowBytes int, x []float32, out *[4]float32) {
				blocks := len(x) / 32
				_ = w[3*rowBytes+17*blocks-1]
				dotMXFP4x4AVX2(&w[0], rowBytes, &x[0], blocks, out, &mxfp4HalfScales[0], (*byte)(unsafe.Pointer(&mxfp4Codes[0])))
			},
		},
		q8: simdQ8Kernels(),
	}, true
}

// weightedSumSIMD is weightedSum in weightedSumAVX2 where out's length is a
// multiple of 8.
func weightedSumSIMD(p, v []float32, stride int, out []float32) {
	d := len(out)
	if d%8 != 0 || len(p) == 0 {
		weightedSum(p, v, stride, out)
		return
	}
	_ = v[(len(p)-1)*stride+d-1]
	weightedSumAVX2(&p[0], &v[0], stride, len(p), d, &out[0])
}
