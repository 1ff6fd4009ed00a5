package cpu

import (
	"encoding/binary"
	"sync"

	"orcd/tensor"
)

// MatMul decodes weight rows to float32 (assembly decoders for F16, BF16,
// Q8_0 and MXFP4 on amd64; pure-Go ones here for F16, Q8_0 and MXFP4, a
// table lookup and no call per block, faster than tensor.Dequantize; BF16
// and the other formats go through tensor.Dequantize) and runs float32 dot
// products that sum every output in one order, whatever the number of rows
// (see matmul).

// kernels are the inner loops a backend runs (see the Go versions below for
// each one's definition). dot4x2 is the float32 dot products of four rows
// of x with two weight rows and dot1x4 those of one row of x with four
// weight rows: every output of either is summed in the same order, so that
// MatMul gives a row the same bits whatever rows share the call. scores and
// weightedSum are attention's two loops over keys. decode, where it has an
// entry for a weight type, replaces decodeRow for it. fused, where it has
// an entry for a weight type, is dot1x4 of x with the four weight rows in
// that format at w[j·rowBytes:] (rowBytes may be 0), decoding as it goes,
// for len(x) a multiple of 8: the decode path's kernel, where each weight
// byte is used once. q8, when not nil, are the fast precision's integer
// loops.
type kernels struct {
	scores      func(q, k []float32, stride int, out []float32)
	weightedSum func(p, v []float32, stride int, out []float32)
	dot4x2      func(x []float32, xstride int, w0, w1 []float32, out *[8]float32)
	dot1x4      func(x, w0, w1, w2, w3 []float32, out *[4]float32)
	decode      map[tensor.Type]func(row []byte, dst []float32)
	fused       map[tensor.Type]func(w []byte, rowBytes int, x []float32, out *[4]float32)
	q8          *q8Kernels
}

// goKernels are the pure-Go loops, used where no assembly version exists
// and in tests as the second implementation to check the assembly against.
var goKernels = kernels{dot4x2: dot4x2, dot1x4: dot1x4, scores: scores, weightedSum: weightedSum, q8: goQ8Kernels}

// f16Table holds every binary16 bit pattern widened to float32, so an F16
// weight costs one table load instead of a branchy conversion.
var f16Table = sync.OnceValue(func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for i := range t {
		t[i] = tensor.F16ToF32(uint16(i))
	}
	return &t
})

// mxfp4Values are tensor.MXFP4DoubledValues as float32: the E2M1 values
// doubled, indexed by the 4-bit code. A block's scale is then taken as
// 2^(e-128) (tensor.E8M0ToF32Half), which keeps every product exact.
var mxfp4Values = func() (t [16]float32) {
	for i, v := range tensor.MXFP4DoubledValues() {
		t[i] = float32(v)
	}
	return t
}()

// decodeRow dequantizes one weight row of typ from src into dst.
func decodeRow(typ tensor.Type, src []byte, dst []float32) {
	switch typ {
	case tensor.F16:
		t := f16Table()
		for i := range dst {
			dst[i] = t[binary.LittleEndian.Uint16(src[2*i:])]
		}
	case tensor.Q8_0:
		for blk := 0; blk < len(dst)/32; blk++ {
			b, y := src[34*blk:34*blk+34], dst[32*blk:32*blk+32]
			d := tensor.F16ToF32(binary.LittleEndian.Uint16(b))
			for j, q := range b[2:34] {
				y[j] = float32(int8(q)) * d
			}
		}
	case tensor.MXFP4:
		for blk := 0; blk < len(dst)/32; blk++ {
			b, y := src[17*blk:17*blk+17], dst[32*blk:32*blk+32]
			d := tensor.E8M0ToF32Half(b[0])
			for j, q := range b[1:17] {
				y[j] = mxfp4Values[q&0xf] * d
				y[j+16] = mxfp4Values[q>>4] * d
			}
		}
	default:
		// The row is a whole number of blocks (checked at Upload), so
		// decoding cannot fail.
		_ = tensor.Dequantize(typ, src, dst)
	}
}

// dot returns Σ a[i]·b[i] over len(a) elements, accumulated in eight float32
// partial sums.
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	i := 0
	for ; i+8 <= len(a); i += 8 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
		s4 += a[i+4] * b[i+4]
		s5 += a[i+5] * b[i+5]
		s6 += a[i+6] * b[i+6]
		s7 += a[i+7] * b[i+7]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
}

// dot4x2 sets out[2i+j] to the dot product of row i of x (rows xstride
// apart, len(w0) elements each) with wj, for i < 4 and j < 2.
func dot4x2(x []float32, xstride int, w0, w1 []float32, out *[8]float32) {
	for i := 0; i < 4; i++ {
		xi := x[i*xstride : i*xstride+len(w0)]
		out[2*i], out[2*i+1] = dot(xi, w0), dot(xi, w1)
	}
}

// dot1x4 sets out[j] to the dot product of x with wj (len(w0) elements),
// for j < 4.
func dot1x4(x, w0, w1, w2, w3 []float32, out *[4]float32) {
	for j, w := range [4][]float32{w0, w1, w2, w3} {
		out[j] = dot(x[:len(w)], w)
	}
}

// scores sets out[j] to the dot product of q with the len(q) elements of k
// starting at j·stride, for each j < len(out).
func scores(q, k []float32, stride int, out []float32) {
	for j := range out {
		out[j] = dot(q, k[j*stride:j*stride+len(q)])
	}
}

// weightedSum adds p[j] times the len(out) elements of v starting at
// j·stride to out, for each j < len(p).
func weightedSum(p, v []float32, stride int, out []float32) {
	for j, pj := range p {
		row := v[j*stride : j*stride+len(out)]
		for c, x := range row {
			out[c] += pj * x
		}
	}
}
