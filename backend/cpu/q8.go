package cpu

import (
	"encoding/binary"
	"math"
	"sync"

	"orcd/tensor"
)

// The fast precision (Options.Precision = Fast) multiplies Q8_0 weights by
// quantized activations: each 32-element block of an x row becomes two
// int8 digits per value (about 15 bits; one digit, as ggml's Q8_0, moved
// random models' logits by up to 0.6 of their largest) and a float32
// scale, so a block's dot product is an exact integer sum times two
// scales. On amd64 with AVX-512 VNNI the sums are VPDPBUSD instructions,
// 64 multiply-adds each; everywhere else the pure-Go loops below define
// the same result. Every other weight type, and
// every op but MatMul, runs as in the exact precision.

// Precision selects how MatMul multiplies Q8_0 weights.
type Precision int

const (
	// Exact keeps activations in float32: the reference the conformance
	// fixtures check.
	Exact Precision = iota
	// Fast quantizes activations to two int8 digits per value, per
	// 32-element block, for Q8_0 weights (relative error below 1e-3 on
	// the logits of the test models).
	Fast
)

// q8Meta is one quantized 32-element block's float32 scale d (x ≈ d·q) and
// c = -128·Σq, the correction that turns the unsigned-by-signed sum the
// VNNI instruction computes into Σ w·q.
type q8Meta struct {
	d float32
	c int32
}

// q8Group is how many output rows a packed group holds: one 512-bit
// register of int32 sums, 16 lanes.
const q8Group = 16

// packedQ8 is a Q8_0 matrix repacked for the integer kernels, in groups of
// q8Group output rows (the last group padded with zero rows). For group g
// and block b, scales[(g·blocks+b)·16+l] is row l's f16 scale and the 512
// bytes at quants[(g·blocks+b)·512:] hold the block's quants plus 128 (as
// unsigned bytes, the operand VPDPBUSD takes unsigned) ordered
// [k/4][l][k%4]: one 64-byte load gives 4 quants of each of the 16 rows,
// which a VPDPBUSD multiplies by 4 broadcast bytes of x.
type packedQ8 struct {
	groups, blocks int
	scales         []uint16 // binary16, as in the file: decode streams 34 bytes per 32 weights
	quants         []byte
}

// packQ8 repacks raw (out rows of in/32 Q8_0 blocks).
func packQ8(raw []byte, in, out int) *packedQ8 {
	blocks := in / 32
	p := &packedQ8{groups: (out + q8Group - 1) / q8Group, blocks: blocks}
	p.scales = make([]uint16, p.groups*blocks*q8Group)
	p.quants = make([]byte, p.groups*blocks*32*q8Group)
	for i := range p.quants {
		p.quants[i] = 0x80 // padding rows: quant 0
	}
	for o := 0; o < out; o++ {
		g, l := o/q8Group, o%q8Group
		for b := 0; b < blocks; b++ {
			src := raw[(o*blocks+b)*34:]
			gb := g*blocks + b
			p.scales[gb*q8Group+l] = binary.LittleEndian.Uint16(src)
			for k := 0; k < 32; k++ {
				p.quants[gb*32*q8Group+(k/4)*4*q8Group+l*4+k%4] = src[2+k] ^ 0x80
			}
		}
	}
	return p
}

// row dequantizes row r into dst (in values): the quant times the scale in
// float32, as decodeRow does for the file's bytes.
func (p *packedQ8) row(r int, dst []float32) {
	g, l := r/q8Group, r%q8Group
	for b := 0; b < p.blocks; b++ {
		gb := g*p.blocks + b
		d, q := tensor.F16ToF32(p.scales[gb*q8Group+l]), p.quants[gb*32*q8Group:]
		for k := 0; k < 32; k++ {
			dst[32*b+k] = float32(int32(q[(k/4)*4*q8Group+l*4+k%4])-128) * d
		}
	}
}

// quantQ8 quantizes x (a multiple of 32 values) into two int8 digits per
// value and one meta per block: with id = 127/amax (0 for an all-zero
// block) and t = x·id in float32, q1 = round-half-even(t) and q2 =
// round-half-even((t-q1)·256), saturated to int8, so x ≈ (256·q1+q2)·d
// with d = amax/127/256: about 15 bits a value where one digit gives 8
// (issue 13's 1e-2 bound on the fixtures needs them). Block b's digits are
// q[64b:64b+32] (q1) and q[64b+32:64b+64] (q2); c = -128·(256·Σq1+Σq2).
// The assembly version computes exactly the same.
func quantQ8(x []float32, q []int8, meta []q8Meta) {
	for b := range meta {
		xb := x[32*b : 32*b+32]
		var amax float32
		for _, v := range xb {
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		var id float32
		if amax != 0 {
			id = 127 / amax
		}
		var s1, s2 int32
		for k, v := range xb {
			t := v * id
			q1 := float32(math.RoundToEven(float64(t)))
			q2 := min(math.RoundToEven(float64((t-q1)*256)), 127) // t-q1 and ·256 are exact
			q[64*b+k], q[64*b+32+k] = int8(q1), int8(q2)
			s1 += int32(q1)
			s2 += int32(q2)
		}
		meta[b] = q8Meta{d: amax / 127 / 256, c: -128 * (256*s1 + s2)}
	}
}

// gemmQ8 sets out[r·ostride+l] to bias[l] plus the dot product of packed
// group g's row l with quantized x row row0+r, for r < rows and l <
// q8Group: Σ_b (Σ_k w·(256·q1+q2))·wd·d_r, each block's integer sum (exact
// in int32: |Σ| < 2^28) times wd rounded
// to float32, then times d_r added with one rounding as the assembly's FMA
// does (here in float64 then rounded, which can differ from a fused
// float32 add in the last bit).
func gemmQ8(p *packedQ8, g int, a *q8Act, row0, rows int, bias, out []float32, ostride int) {
	qlen := p.blocks * 64
	for r := 0; r < rows; r++ {
		q, meta := a.q[(row0+r)*qlen:], a.meta[(row0+r)*p.blocks:]
		for l := 0; l < q8Group; l++ {
			acc := bias[l]
			for b := 0; b < p.blocks; b++ {
				gb := g*p.blocks + b
				w := p.quants[gb*32*q8Group:]
				var s int32
				for k := 0; k < 32; k++ {
					s += (int32(w[(k/4)*4*q8Group+l*4+k%4]) - 128) * (256*int32(q[64*b+k]) + int32(q[64*b+32+k]))
				}
				t := float32(s) * tensor.F16ToF32(p.scales[gb*q8Group+l])
				acc = float32(math.FMA(float64(t), float64(meta[b].d), float64(acc)))
			}
			out[r*ostride+l] = acc
		}
	}
}

// gemmQ8Groups is gemmQ8 of x row row against the groups g0..g1-1, their
// q8Group outputs each in turn in out, plus bias (the same length as out)
// unless it is nil.
func gemmQ8Groups(p *packedQ8, g0, g1 int, a *q8Act, row int, bias, out []float32) {
	for g := g0; g < g1; g++ {
		o := out[q8Group*(g-g0) : q8Group*(g-g0+1)]
		gb := noBias[:]
		if bias != nil {
			gb = bias[q8Group*(g-g0) : q8Group*(g-g0+1)]
		}
		gemmQ8(p, g, a, row, 1, gb, o, q8Group)
	}
}

// noBias is the bias of a MatMul without one, for gemmQ8.
var noBias [q8Group]float32

// q8Act is n rows of activations quantized by quantQ8: row r's digits are
// q[r·2·in:(r+1)·2·in] (64 bytes a block), its metas meta[r·in/32:].
type q8Act struct {
	q    []int8
	meta []q8Meta
}

// q8Acts recycles activation buffers: MatMul needs one per call, and ops
// may run from several goroutines.
var q8Acts = sync.Pool{New: func() any { return new(q8Act) }}

// quantize returns x (n rows of in values) quantized; put it back in
// q8Acts when done.
func (b *Backend) quantize(x []float32, n, in int) *q8Act {
	a := q8Acts.Get().(*q8Act)
	blocks := in / 32
	if cap(a.q) < 2*n*in {
		a.q = make([]int8, 2*n*in)
	}
	if cap(a.meta) < n*blocks {
		a.meta = make([]q8Meta, n*blocks)
	}
	a.q, a.meta = a.q[:2*n*in], a.meta[:n*blocks]
	b.parallel(n, max(1, 4096/in), func(_, lo, hi int) {
		for r := lo; r < hi; r++ {
			b.k.q8.quant(x[r*in:(r+1)*in], a.q[2*r*in:2*(r+1)*in], a.meta[r*blocks:(r+1)*blocks])
		}
	})
	return a
}

// q8Kernels are the fast precision's loops: quant is quantQ8, gemm is
// gemmQ8 (rows ≤ q8Rows), gemm1 is gemmQ8Groups, expSum is expSum
// (attention's softmax), gelu is geluF32s, and scores is kernels.scores
// summed in another order.
type q8Kernels struct {
	quant  func(x []float32, q []int8, meta []q8Meta)
	gemm   func(p *packedQ8, g int, a *q8Act, row0, rows int, bias, out []float32, ostride int)
	gemm1  func(p *packedQ8, g0, g1 int, a *q8Act, row int, bias, out []float32)
	expSum func(x []float32, scale, sub float32, out []float32) float32
	gelu   func(x, out []float32)
	scores func(q, k []float32, stride int, out []float32)
	// scores4q is scores for the four queries of d values at q[i·qstride:]
	// over the same keys, into out[i], each score computed as scores
	// computes it in a run of len(out[i]) keys.
	scores4q func(q []float32, qstride, d int, k []float32, stride int, out [4][]float32)
	// max is the largest of x (len(x) ≥ 1), for the softmax.
	max func(x []float32) float32
	// weightedSum4 is kernels.weightedSum for four rows of probabilities
	// over the same values, with the same result for each row.
	weightedSum4 func(p [4][]float32, v []float32, stride int, out [4][]float32)
	// scoresF16, scores4qF16, weightedSumF16 and weightedSum4F16 are
	// scores, scores4q, kernels.weightedSum and weightedSum4 over the
	// binary16 KV caches of the fast precision: each gives, bit for bit,
	// what its float32 twin gives for the widened (exact) values.
	scoresF16       func(q []float32, k []uint16, stride int, out []float32)
	scores4qF16     func(q []float32, qstride, d int, k []uint16, stride int, out [4][]float32)
	weightedSumF16  func(p []float32, v []uint16, stride int, out []float32)
	weightedSum4F16 func(p [4][]float32, v []uint16, stride int, out [4][]float32)
	// encodeF16 is encodeF16 (StoreKV into a binary16 cache).
	encodeF16 func(x []float32, out []uint16)
}

// goQ8Kernels are the pure-Go fast-precision loops.
var goQ8Kernels = &q8Kernels{quant: quantQ8, gemm: gemmQ8, gemm1: gemmQ8Groups, expSum: expSum, gelu: geluF32s, scores: scores,
	max: maxF32, scores4q: func(q []float32, qstride, d int, k []float32, stride int, out [4][]float32) {
		for i := range out {
			scores(q[i*qstride:i*qstride+d], k, stride, out[i])
		}
	}, weightedSum4: func(p [4][]float32, v []float32, stride int, out [4][]float32) {
		for i := range p {
			weightedSum(p[i], v, stride, out[i])
		}
	}, scoresF16: scoresF16, scores4qF16: func(q []float32, qstride, d int, k []uint16, stride int, out [4][]float32) {
		for i := range out {
			scoresF16(q[i*qstride:i*qstride+d], k, stride, out[i])
		}
	}, weightedSumF16: weightedSumF16, weightedSum4F16: func(p [4][]float32, v []uint16, stride int, out [4][]float32) {
		for i := range p {
			weightedSumF16(p[i], v, stride, out[i])
		}
	}, encodeF16: encodeF16}

// scoresF16 is scores over binary16 keys, each widened exactly and then
// summed as dot sums it.
func scoresF16(q []float32, k []uint16, stride int, out []float32) {
	var buf [64]float32
	w := buf[:]
	if len(q) > len(buf) {
		w = make([]float32, len(q))
	}
	w = w[:len(q)]
	t := f16Table()
	for j := range out {
		for c, h := range k[j*stride : j*stride+len(q)] {
			w[c] = t[h]
		}
		out[j] = dot(q, w)
	}
}

// weightedSumF16 is weightedSum over binary16 values.
func weightedSumF16(p []float32, v []uint16, stride int, out []float32) {
	t := f16Table()
	for j, pj := range p {
		for c, h := range v[j*stride : j*stride+len(out)] {
			out[c] += pj * t[h]
		}
	}
}

// encodeF16 rounds x to binary16 into out (len(out) values), to nearest
// with ties to even.
func encodeF16(x []float32, out []uint16) {
	for i := range out {
		out[i] = tensor.F32ToF16(x[i])
	}
}

// maxF32 is the largest of x.
func maxF32(x []float32) float32 {
	m := x[0]
	for _, v := range x[1:] {
		m = max(m, v)
	}
	return m
}

// q8Rows is how many rows of x the prefill kernel runs against a group at
// once: 8 accumulators of 16 int32 sums and 8 of float32 sums, with the
// weights loaded once per 8 VPDPBUSDs.
const q8Rows = 8

// q8Tile is how many rows of x a worker runs against its chunk of weight
// groups before the next rows: 32 rows of a 3072-wide input (96 KiB) stay
// in L2 while each group's weights are reused from L1 or L2.
const q8Tile = 32

// matmulQ8 is matmul for a packed Q8_0 weight in the fast precision: x is
// quantized once, then the groups are split over the workers.
func (b *Backend) matmulQ8(dst, x []float32, n int, w *weight, bias []float32) {
	p, out := w.q8, w.out
	a := b.quantize(x, n, w.in)
	defer q8Acts.Put(a)
	b.parallel(p.groups, 2, func(_, lo, hi int) {
		// res takes a last group that dst cuts short; most matrices have
		// none, and a decode step would otherwise allocate one per op.
		var res []float32
		if out%q8Group != 0 && hi == p.groups {
			res = make([]float32, q8Rows*q8Group)
		}
		if n < 4 {
			// Decode: each row against the whole chunk in one call, straight
			// into dst but for a last group that dst cuts short.
			full := max(lo, min(hi, out/q8Group))
			var gb, lastBias []float32
			if bias != nil && full < hi {
				// The kernel starts the sums from the bias, as for n ≥ 4:
				// adding it afterwards would round differently.
				lastBias = make([]float32, q8Group)
				copy(lastBias, bias[q8Group*full:])
			}
			for i := 0; i < n; i++ {
				d := dst[i*out : (i+1)*out]
				if full > lo {
					if bias != nil {
						gb = bias[q8Group*lo : q8Group*full]
					}
					b.k.q8.gemm1(p, lo, full, a, i, gb, d[q8Group*lo:q8Group*full])
				}
				for g := full; g < hi; g++ {
					b.k.q8.gemm1(p, g, g+1, a, i, lastBias, res[:q8Group])
					copy(d[q8Group*g:], res[:out-q8Group*g])
				}
			}
			return
		}
		for t0 := 0; t0 < n; t0 += q8Tile {
			t1 := min(t0+q8Tile, n)
			for g := lo; g < hi; g++ {
				// Whole groups go straight into dst, the bias added by the
				// kernel; a last partial group goes through res.
				cols, gb := min(q8Group, out-q8Group*g), noBias[:]
				if bias != nil && cols == q8Group {
					gb = bias[q8Group*g : q8Group*(g+1)]
				} else if bias != nil {
					gb = make([]float32, q8Group)
					copy(gb, bias[q8Group*g:])
				}
				for i := t0; i < t1; i += q8Rows {
					rows := min(q8Rows, t1-i)
					if cols == q8Group {
						b.k.q8.gemm(p, g, a, i, rows, gb, dst[i*out+q8Group*g:], out)
						continue
					}
					b.k.q8.gemm(p, g, a, i, rows, gb, res, q8Group)
					for r := 0; r < rows; r++ {
						copy(dst[(i+r)*out+q8Group*g:(i+r)*out+q8Group*g+cols], res[q8Group*r:])
					}
				}
			}
		}
	})
}

// expF32 is e^t for t ≤ 0 in float32 arithmetic, for the fast precision's
// softmax: t = k·ln2 + r with |r| ≤ ln2/2, e^r by its degree-6 Taylor
// polynomial (relative error below 2e-7), times 2^k put into the exponent
// bits. t is floored at -80 (e^-80 ≈ 2e-35, nothing next to the softmax's
// largest term, 1) so that 2^k stays a normal float32.
func expF32(t float32) float32 {
	t = max(t, -80)
	k := float32(math.RoundToEven(float64(t * 1.4426950408889634)))
	r := t - k*0.693359375 - k*-2.12194440e-4
	p := ((((((1.0/720)*r+1.0/120)*r+1.0/24)*r+1.0/6)*r+0.5)*r+1)*r + 1
	return math.Float32frombits(math.Float32bits(p) + uint32(int32(k))<<23)
}

// expSum sets out[i] = expF32(x[i]·scale - sub) for i < len(out) and
// returns their sum.
func expSum(x []float32, scale, sub float32, out []float32) float32 {
	var s float32
	for i := range out {
		out[i] = expF32(x[i]*scale - sub)
		s += out[i]
	}
	return s
}

// geluF32 is gelu in float32 arithmetic through expF32: x·σ(2u) with
// e = e^(-2|u|), x/(1+e) for u ≥ 0 and x·e/(1+e) below (no cancellation in
// the negative tail). math.Tanh was 15% of a fast GPT-2 prefill.
func geluF32(x float32) float32 {
	u := x + 0.044715*x*x*x
	e := expF32(-1.5957691216057308 * float32(math.Abs(float64(u))))
	if u >= 0 {
		return x / (1 + e)
	}
	return x * e / (1 + e)
}

// geluF32s sets out[i] = geluF32(x[i]).
func geluF32s(x, out []float32) {
	for i := range out {
		out[i] = geluF32(x[i])
	}
}
