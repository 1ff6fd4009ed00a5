package cpu

import "unsafe"

//go:noescape
func quantQ8AVX2(x *float32, q *int8, meta *q8Meta, blocks int)

//go:noescape
func gemmQ8x8VNNI(wq *byte, wd *uint16, blocks int, xq *int8, meta *q8Meta, xstride, mstride int, bias, out *float32, ostride int)

//go:noescape
func gemmQ8x1VNNI(wq *byte, wd *uint16, blocks int, xq *int8, meta *q8Meta, groups int, bias *float32, bstride int, out *float32)

// haveVNNI reports whether the CPU and OS support the EVEX-encoded 256-bit
// VPDPBUSD: AVX-512 VNNI and VL, with the OS saving the AVX-512 state.
func haveVNNI() bool {
	if !haveAVX2() {
		return false
	}
	if xgetbv0()&0xe6 != 0xe6 { // XMM, YMM, opmask and both ZMM halves
		return false
	}
	_, b7, c7, _ := cpuid(7, 0)
	const avx512f, avx512vl, avx512vnni = 1 << 16, 1 << 31, 1 << 11
	return b7&(avx512f|avx512vl) == avx512f|avx512vl && c7&avx512vnni != 0
}

// simdQ8Kernels returns the VNNI fast-precision kernels when the CPU has
// them. Without VNNI the fast precision falls back to exact on amd64: the
// pure-Go integer loops are slower than the AVX2 float kernels.
func simdQ8Kernels() *q8Kernels {
	if !haveVNNI() {
		return nil
	}
	return &q8Kernels{
		expSum: expSumSIMD,
		max: func(x []float32) float32 {
			n := len(x) &^ 15
			if n == 0 {
				return maxF32(x)
			}
			m := maxAVX512(&x[0], n)
			if n < len(x) {
				m = max(m, maxF32(x[n:]))
			}
			return m
		},
		scores4q: func(q []float32, qstride, d int, k []float32, stride int, out [4][]float32) {
			// Runs whose keys scoresSIMD would all give to scores8AVX512.
			n := len(out[0])
			if d != 64 || n == 0 || n%8 != 0 {
				for i := range out {
					scoresSIMD(q[i*qstride:i*qstride+d], k, stride, out[i])
				}
				return
			}
			_, _ = q[3*qstride+63], k[(n-1)*stride+63]
			for i := range out {
				_ = out[i][n-1]
			}
			scores4qAVX512(&q[0], qstride, &k[0], stride, n, &out[0][0], &out[1][0], &out[2][0], &out[3][0])
		},
		weightedSum4: func(p [4][]float32, v []float32, stride int, out [4][]float32) {
			n := len(p[0])
			if len(out[0]) != 64 || n == 0 {
				for i := range p {
					weightedSumSIMD(p[i], v, stride, out[i])
				}
				return
			}
			_ = v[(n-1)*stride+63]
			for i := range p {
				_, _ = p[i][n-1], out[i][63]
			}
			weightedSum4AVX512(&p[0][0], &p[1][0], &p[2][0], &p[3][0], &v[0], stride, n, &out[0][0], &out[1][0], &out[2][0], &out[3][0])
		},
		scores:    scoresSIMD,
		scoresF16: scoresF16SIMD,
		scores4qF16: func(q []float32, qstride, d int, k []uint16, stride int, out [4][]float32) {
			n := len(out[0])
			if d != 64 || n == 0 || n%8 != 0 {
				for i := range out {
					scoresF16SIMD(q[i*qstride:i*qstride+d], k, stride, out[i])
				}
				return
			}
			_, _ = q[3*qstride+63], k[(n-1)*stride+63]
			for i := range out {
				_ = out[i][n-1]
			}
			scores4qF16AVX512(&q[0], qstride, &k[0], stride, n, &out[0][0], &out[1][0], &out[2][0], &out[3][0])
		},
		weightedSumF16: weightedSumF16SIMD,
		weightedSum4F16: func(p [4][]float32, v []uint16, stride int, out [4][]float32) {
			n := len(p[0])
			if len(out[0]) != 64 || n == 0 {
				for i := range p {
					weightedSumF16SIMD(p[i], v, stride, out[i])
				}
				return
			}
			_ = v[(n-1)*stride+63]
			for i := range p {
				_, _ = p[i][n-1], out[i][63]
			}
			weightedSum4F16AVX512(&p[0][0], &p[1][0], &p[2][0], &p[3][0], &v[0], stride, n, &out[0][0], &out[1][0], &out[2][0], &out[3][0])
		},
		encodeF16: func(x []float32, out []uint16) {
			n := len(out) &^ 7
			if n > 0 {
				_ = x[n-1]
				encodeF16AVX2(&x[0], &out[0], n)
			}
			encodeF16(x[n:len(out)], out[n:])
		},
		gelu: func(x, out []float32) {
			n := len(out) &^ 7
			if n > 0 {
				_ = x[n-1]
				geluAVX2(&x[0], &out[0], n)
			}
			geluF32s(x[n:len(out)], out[n:])
		},
		quant: func(x []float32, q []int8, meta []q8Meta) {
			if len(meta) == 0 {
				return
			}
			_, _ = x[32*len(meta)-1], q[32*len(meta)-1]
			quantQ8AVX2(&x[0], &q[0], &meta[0], len(meta))
		},
		gemm: func(p *packedQ8, g int, a *q8Act, row0, rows int, bias, out []float32, ostride int) {
			nb, qlen := p.blocks, p.blocks*64
			wq, wd := p.quants[g*nb*32*q8Group:(g+1)*nb*32*q8Group], p.scales[g*nb*q8Group:(g+1)*nb*q8Group]
			q, meta := a.q[row0*qlen:(row0+rows)*qlen], a.meta[row0*nb:(row0+rows)*nb]
			_, _ = bias[q8Group-1], out[(rows-1)*ostride+q8Group-1]
			if rows == q8Rows {
				gemmQ8x8VNNI(&wq[0], &wd[0], nb, &q[0], &meta[0], qlen, nb*int(unsafe.Sizeof(q8Meta{})), &bias[0], &out[0], 4*ostride)
				return
			}
			for r := 0; r < rows; r++ {
				gemmQ8x1VNNI(&wq[0], &wd[0], nb, &q[r*qlen], &meta[r*nb], 1, &bias[0], 0, &out[r*ostride])
			}
		},
		gemm1: func(p *packedQ8, g0, g1 int, a *q8Act, row int, bias, out []float32) {
			nb, qlen := p.blocks, p.blocks*64
			wq, wd := p.quants[g0*nb*32*q8Group:g1*nb*32*q8Group], p.scales[g0*nb*q8Group:g1*nb*q8Group]
			q, meta := a.q[row*qlen:(row+1)*qlen], a.meta[row*nb:(row+1)*nb]
			_ = out[q8Group*(g1-g0)-1]
			bp, bstride := &noBias[0], 0
			if bias != nil {
				_ = bias[q8Group*(g1-g0)-1]
				bp, bstride = &bias[0], 4*q8Group
			}
			gemmQ8x1VNNI(&wq[0], &wd[0], nb, &q[0], &meta[0], g1-g0, bp, bstride, &out[0])
		},
	}
}

//go:noescape
func weightedSum4AVX512(p0, p1, p2, p3, v *float32, stride, n int, o0, o1, o2, o3 *float32)

//go:noescape
func maxAVX512(x *float32, n int) float32

//go:noescape
func expSumAVX2(x *float32, n int, scale, sub float32, out *float32) float32

// weightedSumF16SIMD is weightedSumF16 in weightedSumF16AVX512 where out's
// length is a multiple of 8.
func weightedSumF16SIMD(p []float32, v []uint16, stride int, out []float32) {
	d := len(out)
	if d%8 != 0 || len(p) == 0 {
		weightedSumF16(p, v, stride, out)
		return
	}
	_ = v[(len(p)-1)*stride+d-1]
	weightedSumF16AVX512(&p[0], &v[0], stride, len(p), d, &out[0])
}

//go:noescape
func weightedSumF16AVX512(p *float32, v *uint16, stride, n, d int, out *float32)

// expSumSIMD is expSum with the 8-wide part in assembly.
func expSumSIMD(x []float32, scale, sub float32, out []float32) float32 {
	n := len(out) &^ 7
	var s float32
	if n > 0 {
		_ = x[n-1]
		s = expSumAVX2(&x[0], n, scale, sub, &out[0])
	}
	return s + expSum(x[n:len(out)], scale, sub, out[n:])
}

//go:noescape
func geluAVX2(x, out *float32, n int)

//go:noescape
func scores4AVX2(q, k *float32, stride, n, d int, out *float32)

//go:noescape
func scores4qAVX512(q *float32, qstride int, k *float32, kstride, n int, o0, o1, o2, o3 *float32)

//go:noescape
func scores8AVX512(q, k *float32, stride, n int, out *float32)

// scoresSIMD is scores with every key's score computed by one kernel
// whatever run of keys it is in, so that a row's scores do not depend on
// how its keys fall into blocks (the block size, a window's start, a
// prompt's chunks): scores8AVX512 for heads of 64 values, scores4AVX2 for
// other multiples of 8 (in both, each key's sum is its own), the pure-Go
// loop otherwise (see scoreGroups for the keys after the last whole group).
func scoresSIMD(q, k []float32, stride int, out []float32) {
	d := len(q)
	if d%8 != 0 || d == 0 || len(out) == 0 {
		scores(q, k, stride, out)
		return
	}
	if d == 64 {
		scoreGroups(k, stride, d, out, 8, func(k []float32, stride, n int, out []float32) { scores8AVX512(&q[0], &k[0], stride, n, &out[0]) })
		return
	}
	scoreGroups(k, stride, d, out, 4, func(k []float32, stride, n int, out []float32) { scores4AVX2(&q[0], &k[0], stride, n, d, &out[0]) })
}

// scoresF16SIMD is scoresSIMD over binary16 keys: scores8F16AVX512 and
// scores4F16AVX2 give what scores8AVX512 and scores4AVX2 give for the
// widened keys.
func scoresF16SIMD(q []float32, k []uint16, stride int, out []float32) {
	d := len(q)
	if d%8 != 0 || d == 0 || len(out) == 0 {
		scoresF16(q, k, stride, out)
		return
	}
	if d == 64 {
		scoreGroups(k, stride, d, out, 8, func(k []uint16, stride, n int, out []float32) { scores8F16AVX512(&q[0], &k[0], stride, n, &out[0]) })
		return
	}
	scoreGroups(k, stride, d, out, 4, func(k []uint16, stride, n int, out []float32) { scores4F16AVX2(&q[0], &k[0], stride, n, d, &out[0]) })
}

// scoreGroups runs kernel, which scores keys of d values in groups of g
// (n a multiple of g), over the len(out) keys at k. The keys after the
// last whole group go through the kernel as a group of g with the cache
// rows after them, where k holds them (their scores are dropped); else as
// the run's last g keys, or, in a run shorter than g, one at a time as a
// group of copies (stride 0).
func scoreGroups[E float32 | uint16](k []E, stride, d int, out []float32, g int, kernel func(k []E, stride, n int, out []float32)) {
	_ = k[(len(out)-1)*stride+d-1]
	n := len(out) / g * g
	if n > 0 {
		kernel(k, stride, n, out)
	}
	if n == len(out) {
		return
	}
	var tmp [8]float32
	if len(k) >= (n+g-1)*stride+d {
		kernel(k[n*stride:], stride, g, tmp[:])
		copy(out[n:], tmp[:])
		return
	}
	if n > 0 {
		last := len(out) - g
		kernel(k[last*stride:], stride, g, tmp[:])
		copy(out[n:], tmp[n-last:g])
		return
	}
	for j := range out {
		kernel(k[j*stride:], 0, g, tmp[:])
		out[j] = tmp[0]
	}
}

//go:noescape
func scores8F16AVX512(q *float32, k *uint16, stride, n int, out *float32)

//go:noescape
func scores4F16AVX2(q *float32, k *uint16, stride, n, d int, out *float32)

//go:noescape
func scores4qF16AVX512(q *float32, qstride int, k *uint16, kstride, n int, o0, o1, o2, o3 *float32)

//go:noescape
func weightedSum4F16AVX512(p0, p1, p2, p3 *float32, v *uint16, stride, n int, o0, o1, o2, o3 *float32)

//go:noescape
func encodeF16AVX2(x *float32, out *uint16, n int)
