package cuda

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"orcd/backend"
	"orcd/backend/cpu"
	"orcd/tensor"
)

// Every op is compared with the cpu backend (the reference) on fresh random
// inputs. Tolerances are relative L2 errors: 1e-4 where the GPU computes in
// f32 (which includes the tensor-core matmul of quantized weights, whose
// activations are split into two f16 terms, and the decode products of
// Q8_0 and MXFP4, whose activations are quantized to two int8 digits), 2e-3
// where it rounds F32 weights to f16, 3e-4 for the grouped MoE. Attention gets keys and values
// already rounded to f16, so the f16 caches of long contexts compare at 1e-4.

// pair is the cuda backend under test and the cpu reference.
type pair struct {
	t   *testing.T
	gpu *Backend
	ref *cpu.Backend
}

var shared *Backend

func newPair(t *testing.T) *pair {
	t.Helper()
	if !Available() {
		t.Skip("no CUDA driver or device: cuda tests run on the GPU machine")
	}
	if shared == nil {
		b, err := New(Options{})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		shared = b
	}
	if err := shared.Sync(); err != nil {
		t.Fatalf("error left by an earlier test: %v", err)
	}
	return &pair{t: t, gpu: shared, ref: cpu.New()}
}

// tensors is one logical tensor in both backends.
type tensors struct{ g, c backend.Tensor }

func (p *pair) upload(typ tensor.Type, dims []int, data []byte) tensors {
	p.t.Helper()
	g, err := p.gpu.Upload("w", typ, dims, data)
	if err != nil {
		p.t.Fatalf("cuda upload %s %v: %v", typ, dims, err)
	}
	c, err := p.ref.Upload("w", typ, dims, data)
	if err != nil {
		p.t.Fatalf("cpu upload %s %v: %v", typ, dims, err)
	}
	p.t.Cleanup(func() { p.gpu.Free(g) })
	return tensors{g, c}
}

func (p *pair) f32(rows, cols int, v []float32) tensors {
	p.t.Helper()
	g, err := p.gpu.NewF32(rows, cols)
	if err != nil {
		p.t.Fatal(err)
	}
	c, _ := p.ref.NewF32(rows, cols)
	if v != nil {
		p.gpu.WriteF32(g, v)
		p.ref.WriteF32(c, v)
	} else {
		// Poison outputs so an unwritten element shows.
		nan := make([]float32, rows*cols)
		for i := range nan {
			nan[i] = float32(math.NaN())
		}
		p.gpu.WriteF32(g, nan)
	}
	p.t.Cleanup(func() { p.gpu.Free(g) })
	return tensors{g, c}
}

func (p *pair) i32(v []int32) tensors {
	p.t.Helper()
	g, err := p.gpu.NewI32(len(v))
	if err != nil {
		p.t.Fatal(err)
	}
	c, _ := p.ref.NewI32(len(v))
	p.gpu.WriteI32(g, v)
	p.ref.WriteI32(c, v)
	p.t.Cleanup(func() { p.gpu.Free(g) })
	return tensors{g, c}
}

func (p *pair) kv(rows, cols int) tensors {
	p.t.Helper()
	g, err := p.gpu.NewKVCache(rows, cols)
	if err != nil {
		p.t.Fatal(err)
	}
	c, _ := p.ref.NewKVCache(rows, cols)
	p.t.Cleanup(func() { p.gpu.Free(g) })
	return tensors{g, c}
}

// check reads n values of out from both backends and compares them.
func (p *pair) check(what string, out tensors, n int, tol float64) {
	p.t.Helper()
	got, want := make([]float32, n), make([]float32, n)
	if err := p.gpu.ReadF32(out.g, got); err != nil {
		p.t.Fatalf("%s: cuda: %v", what, err)
	}
	if err := p.gpu.Sync(); err != nil {
		p.t.Fatalf("%s: cuda: %v", what, err)
	}
	if err := p.ref.ReadF32(out.c, want); err != nil {
		p.t.Fatalf("%s: cpu: %v", what, err)
	}
	if err := p.ref.Sync(); err != nil {
		p.t.Fatalf("%s: cpu: %v", what, err)
	}
	if e := relErr(got, want); !(e <= tol) {
		p.t.Errorf("%s: relative error %.3g > %.3g (got[:4] %v want[:4] %v)", what, e, tol, got[:min(4, n)], want[:min(4, n)])
	}
}

// relErr is ‖got−want‖/‖want‖; NaN anywhere makes it NaN.
func relErr(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func randF32(r *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * scale)
	}
	return v
}

// randWeights returns n elements of typ, random but valid.
func randWeights(t *testing.T, r *rand.Rand, typ tensor.Type, n int) []byte {
	t.Helper()
	switch typ {
	case tensor.Q4_K, tensor.Q6_K:
		size, _ := typ.RowSize(int64(n))
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		for off := 0; off < len(b); off += typ.TypeSize() {
			blk := b[off : off+typ.TypeSize()]
			if typ == tensor.Q4_K {
				binary.LittleEndian.PutUint16(blk, tensor.F32ToF16(float32(0.002+0.01*r.Float64())))
				binary.LittleEndian.PutUint16(blk[2:], tensor.F32ToF16(float32(0.002+0.01*r.Float64())))
			} else {
				binary.LittleEndian.PutUint16(blk[208:], tensor.F32ToF16(float32(0.0005+0.002*r.Float64())))
			}
		}
		return b
	}
	b, err := tensor.Quantize(typ, randF32(r, n, 1))
	if err != nil {
		t.Fatalf("quantize %s: %v", typ, err)
	}
	return b
}

func newRand() *rand.Rand { return rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) }

var allTypes = []tensor.Type{tensor.F32, tensor.F16, tensor.BF16, tensor.Q8_0, tensor.MXFP4, tensor.Q4_K, tensor.Q6_K}

// TestMatMul compares MatMul with the cpu backend's for every weight type,
// from matrix-vector sizes to gemm.cu's (dense products are on mma.sync).
func TestMatMul(t *testing.T) {
	p := newPair(t)
	r := newRand()
	for _, typ := range allTypes {
		for _, shape := range [][2]int{{256, 96}, {512, 200}, {2880, 130}, {256, 4500}} {
			in, out := shape[0], shape[1]
			if in%typ.BlockSize() != 0 {
				continue
			}
			w := p.upload(typ, []int{in, out}, randWeights(t, r, typ, in*out))
			bias := p.f32(1, out, randF32(r, out, 1))
			for _, n := range []int{1, 3, 8, 9, 70, 130, 300} { // 300: gemm.cu, three token tiles
				x := p.f32(n, in, randF32(r, n*in, 1))
				dst := p.f32(n, out, nil)
				bb := bias
				if n%2 == 1 {
					bb = tensors{}
				}
				p.gpu.MatMul(dst.g, x.g, w.g, bb.g)
				p.ref.MatMul(dst.c, x.c, w.c, bb.c)
				tol := 1e-4
				if n > mvTokens && typ == tensor.F32 {
					tol = 2e-3 // the tensor-core kernel rounds F32 weights to f16
				}
				p.check(fmt.Sprintf("%s in=%d out=%d n=%d", typ, in, out, n), dst, n*out, tol)
			}
		}
	}
	// An LM head's shape: from gmDenseTokens rows its blocks fill the chip
	// four times, so gemm.cu takes it (63: the grouped kernels).
	in, out := 64, 4*p.gpu.sms*256+100
	for _, typ := range []tensor.Type{tensor.Q8_0, tensor.MXFP4} {
		w := p.upload(typ, []int{in, out}, randWeights(t, r, typ, in*out))
		for _, n := range []int{gmDenseTokens - 1, gmDenseTokens, 100} {
			if _, gemm := p.gpu.denseGemm(typ, n, in, out); gemm != (n >= gmDenseTokens) {
				t.Fatalf("%s n=%d out=%d: gemm.cu %v", typ, n, out, gemm)
			}
			x := p.f32(n, in, randF32(r, n*in, 1))
			dst := p.f32(n, out, nil)
			p.gpu.MatMul(dst.g, x.g, w.g, nil)
			p.ref.MatMul(dst.c, x.c, w.c, nil)
			p.check(fmt.Sprintf("%s in=%d out=%d n=%d", typ, in, out, n), dst, n*out, 1e-4)
		}
	}
}

// TestMatMulQKV checks the three-product op, one launch for a decode step
// of one quantized type and three MatMuls otherwise (mixed types).
func TestMatMulQKV(t *testing.T) {
	p := newPair(t)
	r := newRand()
	in := 2880
	for _, types := range [][3]tensor.Type{{tensor.Q8_0, tensor.Q8_0, tensor.Q8_0}, {tensor.MXFP4, tensor.MXFP4, tensor.MXFP4}, {tensor.Q8_0, tensor.F16, tensor.Q8_0}} {
		var w, bias, dst [3]tensors
		outs := [3]int{4096, 512, 500}
		for i := range w {
			w[i] = p.upload(types[i], []int{in, outs[i]}, randWeights(t, r, types[i], in*outs[i]))
			bias[i] = p.f32(1, outs[i], randF32(r, outs[i], 1))
		}
		for _, n := range []int{1, 4, 9, 70, 200, 300} { // 9, 70: mqg_matmul3_16; 200: mqg_matmul3
			x := p.f32(n, in, randF32(r, n*in, 1))
			for i := range dst {
				dst[i] = p.f32(n, outs[i], nil)
			}
			for _, be := range []backend.Backend{p.gpu, p.ref} {
				pick := func(tt tensors) backend.Tensor {
					if be == backend.Backend(p.gpu) {
						return tt.g
					}
					return tt.c
				}
				be.MatMulQKV(pick(dst[0]), pick(dst[1]), pick(dst[2]), pick(x), pick(w[0]), pick(w[1]), pick(w[2]),
					pick(bias[0]), nil, pick(bias[2]))
			}
			for i := range dst {
				p.check(fmt.Sprintf("MatMulQKV %v n=%d product %d", types, n, i), dst[i], n*outs[i], 1e-4)
			}
		}
	}
}

func TestEmbed(t *testing.T) {
	p := newPair(t)
	r := newRand()
	for _, typ := range allTypes {
		in, rows := 512, 50
		table := p.upload(typ, []int{in, rows}, randWeights(t, r, typ, in*rows))
		ids := p.i32([]int32{3, 0, 49, 17, 3})
		dst := p.f32(5, in, nil)
		p.gpu.Embed(dst.g, table.g, ids.g)
		p.ref.Embed(dst.c, table.c, ids.c)
		p.check("Embed "+typ.String(), dst, 5*in, 1e-6)
	}
}

func TestRowOps(t *testing.T) {
	p := newPair(t)
	r := newRand()
	for _, shape := range [][2]int{{1, 64}, {7, 2880}, {33, 768}, {3, 100}} {
		rows, cols := shape[0], shape[1]
		name := fmt.Sprintf("%d×%d", rows, cols)
		a := p.f32(rows, cols, randF32(r, rows*cols, 2))
		bb := p.f32(rows, cols, randF32(r, rows*cols, 2))
		w := p.f32(1, cols, randF32(r, cols, 1))
		bias := p.f32(1, cols, randF32(r, cols, 1))

		dst := p.f32(rows, cols, nil)
		p.gpu.Add(dst.g, a.g, bb.g)
		p.ref.Add(dst.c, a.c, bb.c)
		p.check("Add "+name, dst, rows*cols, 1e-6)

		p.gpu.GELU(dst.g, a.g)
		p.ref.GELU(dst.c, a.c)
		p.check("GELU "+name, dst, rows*cols, 1e-5)

		p.gpu.LayerNorm(dst.g, a.g, w.g, bias.g, 1e-5)
		p.ref.LayerNorm(dst.c, a.c, w.c, bias.c, 1e-5)
		p.check("LayerNorm "+name, dst, rows*cols, 1e-5)

		// AddRMSNorm: x += delta, then dst = RMSNorm(x).
		x := p.f32(rows, cols, randF32(r, rows*cols, 2))
		p.gpu.AddRMSNorm(dst.g, x.g, a.g, w.g, 1e-5)
		p.ref.AddRMSNorm(dst.c, x.c, a.c, w.c, 1e-5)
		p.check("AddRMSNorm "+name, dst, rows*cols, 1e-5)
		p.check("AddRMSNorm residual "+name, x, rows*cols, 1e-6)

		// RMSNorm in place (dst aliases x).
		p.gpu.RMSNorm(bb.g, bb.g, w.g, 1e-5)
		p.ref.RMSNorm(bb.c, bb.c, w.c, 1e-5)
		p.check("RMSNorm in place "+name, bb, rows*cols, 1e-5)

		if cols >= 40 {
			half := p.f32(rows, 24, nil)
			p.gpu.CopyCols(half.g, a.g, 13)
			p.ref.CopyCols(half.c, a.c, 13)
			p.check("CopyCols "+name, half, rows*24, 0)
		}
	}
}

func TestRoPE(t *testing.T) {
	p := newPair(t)
	r := newRand()
	rows, heads, dim := 6, 4, 64
	x := p.f32(rows, heads*dim, randF32(r, rows*heads*dim, 1))
	pos := p.i32([]int32{0, 1, 7, 4095, 65536, 131071})
	freq := make([]float32, dim/2)
	for i := range freq {
		freq[i] = float32(math.Pow(150000, -2*float64(i)/float64(dim)))
	}
	f := p.f32(1, dim/2, freq)
	for _, mode := range []backend.RoPEMode{backend.RoPENeoX, backend.RoPENormal} {
		rp := backend.RoPEParams{HeadDim: dim, Mode: mode, MScale: 1.35}
		p.gpu.RoPE(x.g, pos.g, f.g, rp)
		p.ref.RoPE(x.c, pos.c, f.c, rp)
		p.check(fmt.Sprintf("RoPE mode %d", mode), x, rows*heads*dim, 1e-5)
	}
}

// TestActivations compares SiLU, SwiGLU (plain and gpt-oss's clamped form)
// and RMSNormHeads (Qwen3-style QK-norm) with the cpu backend.
func TestActivations(t *testing.T) {
	p := newPair(t)
	r := newRand()
	for _, shape := range [][2]int{{1, 4864}, {7, 896}, {130, 128}} {
		rows, cols := shape[0], shape[1]
		g := p.f32(rows, cols, randF32(r, rows*cols, 3))
		u := p.f32(rows, cols, randF32(r, rows*cols, 3))
		dst := p.f32(rows, cols, nil)
		p.gpu.SiLU(dst.g, g.g)
		p.ref.SiLU(dst.c, g.c)
		p.check(fmt.Sprintf("SiLU %dx%d", rows, cols), dst, rows*cols, 1e-6)
		for _, act := range []backend.SwiGLUParams{{Alpha: 1}, {Alpha: 1.702, Limit: 7, UpShift: 1}} {
			p.gpu.SwiGLU(dst.g, g.g, u.g, act)
			p.ref.SwiGLU(dst.c, g.c, u.c, act)
			p.check(fmt.Sprintf("SwiGLU %+v %dx%d", act, rows, cols), dst, rows*cols, 1e-6)
		}
		for _, dim := range []int{64, 128} {
			w := p.f32(1, dim, randF32(r, dim, 1))
			p.gpu.RMSNormHeads(dst.g, g.g, w.g, dim, 1e-6)
			p.ref.RMSNormHeads(dst.c, g.c, w.c, dim, 1e-6)
			p.check(fmt.Sprintf("RMSNormHeads dim %d %dx%d", dim, rows, cols), dst, rows*cols, 1e-5)
		}
	}
}

// attnBatch fills a paged cache, whose blocks are handed out in a shuffled
// order, with lens[s] keys of each sequence s, and attends one batch in
// which sequence s brings its last rows[s] positions (none when 0), the
// one-row sequences first as the model orders them.
func attnBatch(t *testing.T, p *pair, r *rand.Rand, ap backend.AttentionParams, lens, rows []int, sinks bool) {
	kvCols := ap.KVHeads * ap.HeadDim
	bs := ap.BlockSize
	ap.MaxBlocks = 1
	total := 0
	for _, n := range lens {
		ap.MaxBlocks = max(ap.MaxBlocks, (n+bs-1)/bs)
		total += (n + bs - 1) / bs
	}
	free := r.Perm(total + 2)
	kc, vc := p.kv((total+2)*bs, kvCols), p.kv((total+2)*bs, kvCols)
	table := make([]int32, len(lens)*ap.MaxBlocks)
	var slots []int32
	for s, n := range lens {
		for b := 0; b < ap.MaxBlocks; b++ {
			table[s*ap.MaxBlocks+b] = -1
			if b*bs < n {
				table[s*ap.MaxBlocks+b] = int32(free[0])
				free = free[1:]
			}
		}
		for j := 0; j < n; j++ {
			slots = append(slots, table[s*ap.MaxBlocks+j/bs]*int32(bs)+int32(j%bs))
		}
	}
	nk := len(slots)
	// Keys and values pass through f16 on the GPU; give the reference the
	// same rounded values so only the attention itself is compared.
	kv := func() []float32 {
		v := randF32(r, nk*kvCols, 1)
		for i := range v {
			v[i] = tensor.F16ToF32(tensor.F32ToF16(v[i]))
		}
		return v
	}
	k, v := p.f32(nk, kvCols, kv()), p.f32(nk, kvCols, kv())
	sl := p.i32(slots)
	p.gpu.StoreKV(kc.g, vc.g, k.g, v.g, sl.g)
	p.ref.StoreKV(kc.c, vc.c, k.c, v.c, sl.c)
	var order []int // sequences in the batch, one-row ones first
	for _, single := range []bool{true, false} {
		for s, n := range rows {
			if n > 0 && (n == 1) == single {
				order = append(order, s)
			}
		}
	}
	var pos, seq []int32
	ap.Singles = 0
	for i, s := range order {
		if rows[s] == 1 && ap.Singles == i {
			ap.Singles++
		}
		for j := lens[s] - rows[s]; j < lens[s]; j++ {
			pos, seq = append(pos, int32(j)), append(seq, int32(s))
		}
	}
	n := len(pos)
	q := p.f32(n, ap.Heads*ap.HeadDim, randF32(r, n*ap.Heads*ap.HeadDim, 1))
	ps, sq, tb := p.i32(pos), p.i32(seq), p.i32(table)
	var sk tensors
	if sinks {
		sk = p.f32(1, ap.Heads, randF32(r, ap.Heads, 2))
	}
	cols := ap.Heads * ap.HeadDim
	dst := p.f32(n, cols, nil)
	p.gpu.Attention(dst.g, q.g, kc.g, vc.g, ps.g, sq.g, tb.g, sk.g, ap)
	p.ref.Attention(dst.c, q.c, kc.c, vc.c, ps.c, sq.c, tb.c, sk.c, ap)
	p.check(fmt.Sprintf("Attention %+v lens=%v rows=%v sinks=%v", ap, lens, rows, sinks), dst, n*cols, 1e-4)
	if n > mqTokens || cols%32 != 0 {
		return
	}
	// Into an output with a quantized copy (decode steps, mixed or not),
	// which the output projection then reads.
	qd, err := p.gpu.NewF32Quantized(n, cols)
	if err != nil {
		t.Fatal(err)
	}
	defer p.gpu.Free(qd)
	p.gpu.Attention(qd, q.g, kc.g, vc.g, ps.g, sq.g, tb.g, sk.g, ap)
	w := p.upload(tensor.Q8_0, []int{cols, 96}, randWeights(t, r, tensor.Q8_0, cols*96))
	proj := p.f32(n, 96, nil)
	p.gpu.MatMul(proj.g, qd, w.g, nil)
	p.ref.MatMul(proj.c, dst.c, w.c, nil)
	p.check(fmt.Sprintf("Attention into a quantized output, then MatMul, rows=%v", rows), proj, n*96, 1e-4)
}

// TestAttention runs every case twice: with the caches the backend picks
// (f32 for the small ones), and with f16 caches throughout, so the decode
// rows of head dim 64 also take attn_gqa with windows, sinks and odd block
// sizes.
func TestAttention(t *testing.T) {
	t.Run("cache=auto", func(t *testing.T) { testAttention(t, newPair(t)) })
	t.Run("cache=f16", func(t *testing.T) {
		p := newPair(t)
		p.gpu = opened(t, &sharedF16, Options{KVF16: true})
		testAttention(t, p)
	})
}

// Second device backends of the tests, each opened once (opened): one
// whose KV caches are all f16, and one without wgmma.
var sharedF16, sharedMMA *Backend

// opened returns *b, opening it with opts first if it is nil.
func opened(t *testing.T, b **Backend, opts Options) *Backend {
	t.Helper()
	if *b == nil {
		nb, err := New(opts)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		*b = nb
	}
	return *b
}

func testAttention(t *testing.T, p *pair) {
	r := newRand()
	gptoss := backend.AttentionParams{Heads: 8, KVHeads: 2, HeadDim: 64, Scale: 0.125, BlockSize: 16}
	gpt2 := backend.AttentionParams{Heads: 3, KVHeads: 3, HeadDim: 64, Scale: 0.125, BlockSize: 16}
	one := func(n int) []int { return []int{n} }
	for _, sinks := range []bool{false, true} {
		w := gptoss
		w.Window = 16
		for _, ap := range []backend.AttentionParams{gptoss, w} {
			attnBatch(t, p, r, ap, one(100), one(100), sinks) // prefill: flash
			attnBatch(t, p, r, ap, one(201), one(1), sinks)   // decode: split-K
			attnBatch(t, p, r, ap, one(301), one(3), sinks)   // a short chunk: split-K, 4 rows a block
			// Two decode rows, then chunks whose 64-row flash tiles span
			// the end of one sequence and the start of the next.
			attnBatch(t, p, r, ap, []int{300, 57, 1000, 17}, []int{1, 1, 40, 17}, sinks)
			// Small chunks of several sequences share split-K blocks.
			attnBatch(t, p, r, ap, []int{30, 9, 77, 5}, []int{1, 5, 3, 2}, sinks)
			// Two decode rows and a chunk of two: a decode-sized batch that
			// two split-K calls cover.
			attnBatch(t, p, r, ap, []int{40, 60, 9}, []int{1, 1, 2}, sinks)
		}
	}
	attnBatch(t, p, r, gpt2, one(50), one(50), false)
	// Groups of 16 heads (the MMA's 16 rows, all used) and of 2 with 5 KV
	// heads (attn_gqa blocks of 4 KV heads with idle warps), decode rows.
	wideGroup := backend.AttentionParams{Heads: 32, KVHeads: 2, HeadDim: 64, Scale: 0.125, BlockSize: 16, Window: 40}
	attnBatch(t, p, r, wideGroup, []int{300, 7, 90}, []int{1, 1, 1}, true)
	fiveKV := backend.AttentionParams{Heads: 10, KVHeads: 5, HeadDim: 64, Scale: 0.125, BlockSize: 16}
	attnBatch(t, p, r, fiveKV, []int{70, 33}, []int{1, 1}, true)
	odd := gptoss
	odd.BlockSize = 5 // blocks that do not divide the tiles
	attnBatch(t, p, r, odd, []int{123, 64, 8}, []int{1, 64, 8}, true)
	// Head dim 128 (the Llama family): the split-K kernels built for dims
	// up to attnMaxDim, whose K/V stages hold 16 or 32 pieces a row; an f32
	// cache, then one over 32 MiB (f16).
	wide := backend.AttentionParams{Heads: 8, KVHeads: 2, HeadDim: 128, Scale: 0.088, BlockSize: 16}
	attnBatch(t, p, r, wide, []int{200, 70, 9}, []int{1, 1, 3}, true)
	wide.Heads, wide.KVHeads = 16, 4
	attnBatch(t, p, r, wide, one(20000), one(1), false)
	small := backend.AttentionParams{Heads: 4, KVHeads: 2, HeadDim: 16, Scale: 0.25, BlockSize: 16, Window: 8}
	attnBatch(t, p, r, small, []int{41, 12}, []int{11, 2}, true) // the fixtures' head_dim
	attnBatch(t, p, r, small, []int{20, 9}, []int{1, 2}, true)   // head dim 16 with a quantized output
	long := backend.AttentionParams{Heads: 64, KVHeads: 8, HeadDim: 64, Scale: 0.125, BlockSize: 16}
	attnBatch(t, p, r, long, one(20000), one(1), true) // split-K decode over a long cache
	attnBatch(t, p, r, long, one(5001), one(6), true)  // 4 rows a block, split keys
	attnBatch(t, p, r, long, one(5001), one(65), true) // flash kernel, f16 cache, 79 key tiles, a partial row tile
	// A decode batch of 64 sequences of different lengths.
	lens, rows := make([]int, 64), make([]int, 64)
	for i := range lens {
		lens[i], rows[i] = 1+r.IntN(3000), 1
	}
	attnBatch(t, p, r, long, lens, rows, true)
}

// splitMoE runs Route and Experts on both backends from the same router
// logits, the device's. The router's product is a MatMul, whose tile kernel
// rounds F32 weights to f16 above a few rows (TestMatMul covers it): from
// its own logits each backend would pick different experts for a token
// whose top k are nearly tied, a change of routing no tolerance of the
// experts' arithmetic can absorb.
func splitMoE(t *testing.T, p *pair, dst, x tensors, w, ref *backend.MoEWeights, mp backend.MoEParams) {
	n, nExp := backend.Rows(x.g), w.Router.Dims()[1]
	logits, weights := p.f32(n, nExp, nil), p.f32(n, mp.TopK, nil)
	ids := p.i32(make([]int32, n*mp.TopK))
	p.gpu.MatMul(logits.g, x.g, w.Router, w.RouterBias)
	lv := make([]float32, n*nExp)
	if err := p.gpu.ReadF32(logits.g, lv); err != nil {
		t.Fatal(err)
	}
	p.ref.WriteF32(logits.c, lv)
	for _, side := range []struct {
		be                           backend.Backend
		dst, x, ids, weights, logits backend.Tensor
		w                            *backend.MoEWeights
	}{{p.gpu, dst.g, x.g, ids.g, weights.g, logits.g, w}, {p.ref, dst.c, x.c, ids.c, weights.c, logits.c, ref}} {
		side.be.Route(side.ids, side.weights, side.logits, mp.TopK)
		side.be.Experts(side.dst, side.x, side.ids, side.weights, &side.w.ExpertWeights, mp.SwiGLU)
	}
}

// cpuMoE is the mixture of experts as the model runs it on the cpu
// backend: the router's product, Route and Experts.
func cpuMoE(t *testing.T, be backend.Backend, dst, x backend.Tensor, w *backend.MoEWeights, mp backend.MoEParams) {
	n, nExp := backend.Rows(x), w.Router.Dims()[1]
	logits, err1 := be.NewF32(n, nExp)
	weights, err2 := be.NewF32(n, mp.TopK)
	ids, err3 := be.NewI32(n * mp.TopK)
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatal(err)
	}
	be.MatMul(logits, x, w.Router, w.RouterBias)
	be.Route(ids, weights, logits, mp.TopK)
	be.Experts(dst, x, ids, weights, &w.ExpertWeights, mp.SwiGLU)
}

// TestMoE compares the fused MoE (gpt-oss's clamped SwiGLU) and the split
// Route and Experts (plain SwiGLU too) with the cpu backend's ops, on both
// of gemm.cu's paths.
func TestMoE(t *testing.T) {
	gemmPaths(t, func(t *testing.T, p *pair) {
		r := newRand()
		cases := []struct {
			hidden, ff, nExp, topK int
			ns                     []int
		}{
			// 8, 24, 70: grouped passes of 2, 4, 8 quads; 300, 700: gemm.cu, one and several token tiles an expert
			{128, 96, 8, 3, []int{1, 4, 8, 24, 70, 200, 300, 700}},
			{128, 96, 32, 2, []int{300}}, // gemm.cu's 256×64 blocks (about 19 tokens an expert)
			// The same blocks over 8 and 5 pipeline stages, the last row tile part-full.
			{512, 320, 32, 2, []int{300}},
		}
		for _, typ := range []tensor.Type{tensor.MXFP4, tensor.Q8_0, tensor.BF16} {
			for _, c := range cases {
				testMoE(t, p, r, typ, c.hidden, c.ff, c.nExp, c.topK, c.ns)
			}
		}
	})
}

// gemmPaths runs f on the shared backend and, on a card with wgmma
// (whose MXFP4 experts take gemm.cu's wgmma kernels by default), also on
// one that keeps them on mma.sync (Options.NoWGMMA).
func gemmPaths(t *testing.T, f func(t *testing.T, p *pair)) {
	p := newPair(t)
	if p.gpu.arch != 90 {
		t.Run("gemm=mma.sync", func(t *testing.T) { f(t, p) })
		return
	}
	if !p.gpu.wgmma && os.Getenv("ORCD_CUDA_WGMMA") != "0" {
		t.Fatal("an sm_90 card: the default backend has no wgmma")
	}
	t.Run("gemm=wgmma", func(t *testing.T) { f(t, p) })
	t.Run("gemm=mma.sync", func(t *testing.T) {
		p := newPair(t)
		p.gpu = opened(t, &sharedMMA, Options{NoWGMMA: true})
		f(t, p)
	})
}

// testMoE is TestMoE's comparison for one weight type and expert count.
func testMoE(t *testing.T, p *pair, r *rand.Rand, typ tensor.Type, hidden, ff, nExp, topK int, ns []int) {
	w := &backend.MoEWeights{}
	var ref backend.MoEWeights
	set := func(g, c *backend.Tensor, tt tensors) { *g, *c = tt.g, tt.c }
	set(&w.Router, &ref.Router, p.upload(tensor.F32, []int{hidden, nExp}, randWeights(t, r, tensor.F32, hidden*nExp)))
	set(&w.RouterBias, &ref.RouterBias, p.f32(1, nExp, randF32(r, nExp, 1)))
	set(&w.Gate, &ref.Gate, p.upload(typ, []int{hidden, ff, nExp}, randWeights(t, r, typ, hidden*ff*nExp)))
	set(&w.Up, &ref.Up, p.upload(typ, []int{hidden, ff, nExp}, randWeights(t, r, typ, hidden*ff*nExp)))
	set(&w.Down, &ref.Down, p.upload(typ, []int{ff, hidden, nExp}, randWeights(t, r, typ, hidden*ff*nExp)))
	set(&w.GateBias, &ref.GateBias, p.f32(nExp, ff, randF32(r, ff*nExp, 1)))
	set(&w.UpBias, &ref.UpBias, p.f32(nExp, ff, randF32(r, ff*nExp, 1)))
	set(&w.DownBias, &ref.DownBias, p.f32(nExp, hidden, randF32(r, hidden*nExp, 1)))
	for _, act := range []backend.SwiGLUParams{{Alpha: 1.702, Limit: 7, UpShift: 1}, {Alpha: 1}} {
		mp := backend.MoEParams{TopK: topK, SwiGLU: act}
		for _, n := range ns {
			x := p.f32(n, hidden, randF32(r, n*hidden, 0.2))
			dst := p.f32(n, hidden, nil)
			tol := 1e-4
			if n > mqTokens && (n > mqgTokens || !mqTypes[typ]) {
				tol = 3e-4 // grouped f16 tensor-core path
			}
			cpuMoE(t, p.ref, dst.c, x.c, &ref, mp)
			p.gpu.MoE(dst.g, x.g, w, mp)
			p.check(fmt.Sprintf("MoE %s %d experts %+v n=%d", typ, nExp, act, n), dst, n*hidden, tol)
			splitMoE(t, p, dst, x, w, &ref, mp)
			p.check(fmt.Sprintf("Route+Experts %s %d experts %+v n=%d", typ, nExp, act, n), dst, n*hidden, tol)
		}
	}
}

// TestGraphReplay records a decode-like step once and replays it as the
// position advances; every step must equal the same ops run eagerly.
func TestGraphReplay(t *testing.T) {
	p := newPair(t)
	r := newRand()
	ap := backend.AttentionParams{Heads: 4, KVHeads: 2, HeadDim: 64, Scale: 0.125, BlockSize: 16, MaxBlocks: 4, Singles: 1}
	kvCols := ap.KVHeads * ap.HeadDim
	hidden := ap.Heads * ap.HeadDim
	const cacheRows = 64
	table, seq := p.i32([]int32{3, 1, 0, 2}), p.i32([]int32{0})
	wq := p.upload(tensor.Q8_0, []int{hidden, hidden}, randWeights(t, r, tensor.Q8_0, hidden*hidden))
	wk := p.upload(tensor.Q8_0, []int{hidden, kvCols}, randWeights(t, r, tensor.Q8_0, hidden*kvCols))
	freq := p.f32(1, ap.HeadDim/2, randF32(r, ap.HeadDim/2, 0.1))
	x := p.f32(1, hidden, nil)
	q, k := p.f32(1, hidden, nil), p.f32(1, kvCols, nil)
	out := p.f32(1, hidden, nil)
	kc, vc := p.kv(cacheRows, kvCols), p.kv(cacheRows, kvCols)
	pos, slot := p.i32([]int32{0}), p.i32([]int32{0})
	step := func(b backend.Backend, x, q, k, kc, vc, pos, slot, out, wq, wk, freq, seq, table backend.Tensor) {
		b.MatMul(q, x, wq, nil)
		b.MatMul(k, x, wk, nil)
		b.RoPE(q, pos, freq, backend.RoPEParams{HeadDim: ap.HeadDim, MScale: 1})
		b.RoPE(k, pos, freq, backend.RoPEParams{HeadDim: ap.HeadDim, MScale: 1})
		b.StoreKV(kc, vc, k, k, slot)
		b.Attention(out, q, kc, vc, pos, seq, table, nil, ap)
	}
	blocks := []int32{3, 1, 0, 2}
	for i := 0; i < cacheRows; i++ {
		xv := randF32(r, hidden, 0.3)
		for _, tt := range []tensors{x} {
			p.gpu.WriteF32(tt.g, xv)
			p.ref.WriteF32(tt.c, xv)
		}
		pv := []int32{int32(i)}
		sv := []int32{blocks[i/ap.BlockSize]*int32(ap.BlockSize) + int32(i%ap.BlockSize)}
		p.gpu.WriteI32(pos.g, pv)
		p.ref.WriteI32(pos.c, pv)
		p.gpu.WriteI32(slot.g, sv)
		p.ref.WriteI32(slot.c, sv)
		p.gpu.Graph("step", func() {
			step(p.gpu, x.g, q.g, k.g, kc.g, vc.g, pos.g, slot.g, out.g, wq.g, wk.g, freq.g, seq.g, table.g)
		})
		step(p.ref, x.c, q.c, k.c, kc.c, vc.c, pos.c, slot.c, out.c, wq.c, wk.c, freq.c, seq.c, table.c)
		// 1e-3: the decode products quantize q's and k's input to about 15
		// bits (mqvec.cu), and the softmax over q·k amplifies that (random
		// draws on an H200 reached 6.1e-4).
		p.check(fmt.Sprintf("graph step %d", i), out, hidden, 1e-3)
	}
	if len(p.gpu.graphs) == 0 {
		t.Errorf("no graph was recorded")
	}
}

func TestOutOfMemoryRecovery(t *testing.T) {
	if !Available() {
		t.Skip("no CUDA driver or device: cuda tests run on the GPU machine")
	}
	b, err := New(Options{MemLimit: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	base := b.DeviceBytes()
	var held []backend.Tensor
	for i := 0; ; i++ {
		x, err := b.NewF32(1024, 1024) // 4 MiB
		if err != nil {
			if !errors.Is(err, ErrOutOfMemory) {
				t.Fatalf("allocation %d: %v is not ErrOutOfMemory", i, err)
			}
			break
		}
		held = append(held, x)
		if i > 100 {
			t.Fatal("the 64 MiB cap was never hit")
		}
	}
	// An op whose workspace does not fit fails with ErrOutOfMemory (head
	// dim 32 keeps attention on the split-K kernels, which need a
	// workspace; the flash kernel for head dim 64 needs none)...
	ap := backend.AttentionParams{Heads: 128, KVHeads: 16, HeadDim: 32, Scale: 0.125, BlockSize: 16, MaxBlocks: 4}
	for _, x := range held[:5] {
		b.Free(x)
	}
	held = held[5:]
	q, err1 := b.NewF32(1024, 64*64)
	kc, err2 := b.NewKVCache(64, 512)
	vc, err3 := b.NewKVCache(64, 512)
	pos, err4 := b.NewI32(1024)
	table, err5 := b.NewI32(4)
	if err := errors.Join(err1, err2, err3, err4, err5, b.Sync()); err != nil {
		t.Fatal(err)
	}
	b.WriteI32(table, []int32{0, 1, 2, 3})
	b.Attention(q, q, kc, vc, pos, pos, table, nil, ap)
	if err := b.Sync(); !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("attention over the cap: got %v, want ErrOutOfMemory", err)
	}
	// ...and after freeing, the next request works.
	for _, x := range held {
		b.Free(x)
	}
	for _, x := range []backend.Tensor{q, kc, vc, pos, table} {
		b.Free(x)
	}
	if got := b.DeviceBytes(); got != base {
		t.Errorf("device bytes %d after freeing everything, want %d", got, base)
	}
	x, err := b.NewF32(1024, 1024)
	if err != nil {
		t.Fatalf("allocation after recovery: %v", err)
	}
	b.GELU(x, x)
	if err := b.Sync(); err != nil {
		t.Fatalf("op after recovery: %v", err)
	}
	b.Free(x)
}

func TestResidentAndMemory(t *testing.T) {
	p := newPair(t)
	x := p.f32(16, 16, nil)
	_ = x
	ok, err := p.gpu.Resident()
	if err != nil || !ok {
		t.Fatalf("Resident() = %v, %v", ok, err)
	}
	free, err := p.gpu.FreeMemory()
	if err != nil || free <= 0 || free > p.gpu.TotalMemory() {
		t.Fatalf("FreeMemory() = %d, %v (total %d)", free, err, p.gpu.TotalMemory())
	}
}

// TestQuantizedActivations runs decode-sized rows (1 to 4, and 9, which
// takes the float path) through an activation with a quantized copy: RMSNorm
// and AddRMSNorm write it, and MatMul, MatMulQKV, MoE and Experts read it;
// each result must equal the cpu backend's, as for plain tensors. Then the
// ops that do not keep the copy current refuse such a tensor.
func TestQuantizedActivations(t *testing.T) {
	p := newPair(t)
	r := newRand()
	const hidden, out, ff, nExp = 256, 320, 96, 8
	norm := p.f32(1, hidden, randF32(r, hidden, 1))
	wq := p.upload(tensor.Q8_0, []int{hidden, out}, randWeights(t, r, tensor.Q8_0, hidden*out))
	wm := p.upload(tensor.MXFP4, []int{hidden, out}, randWeights(t, r, tensor.MXFP4, hidden*out))
	w := &backend.MoEWeights{}
	var ref backend.MoEWeights
	set := func(g, c *backend.Tensor, tt tensors) { *g, *c = tt.g, tt.c }
	set(&w.Router, &ref.Router, p.upload(tensor.F32, []int{hidden, nExp}, randWeights(t, r, tensor.F32, hidden*nExp)))
	set(&w.Gate, &ref.Gate, p.upload(tensor.MXFP4, []int{hidden, ff, nExp}, randWeights(t, r, tensor.MXFP4, hidden*ff*nExp)))
	set(&w.Up, &ref.Up, p.upload(tensor.MXFP4, []int{hidden, ff, nExp}, randWeights(t, r, tensor.MXFP4, hidden*ff*nExp)))
	set(&w.Down, &ref.Down, p.upload(tensor.MXFP4, []int{ff, hidden, nExp}, randWeights(t, r, tensor.MXFP4, hidden*ff*nExp)))
	mp := backend.MoEParams{TopK: 2, SwiGLU: backend.SwiGLUParams{Alpha: 1.702, Limit: 7, UpShift: 1}}
	for _, n := range []int{1, 3, 4, 9} {
		hq, err := p.gpu.NewF32Quantized(n, hidden)
		if err != nil {
			t.Fatal(err)
		}
		h := tensors{g: hq, c: p.f32(n, hidden, nil).c}
		xv := randF32(r, n*hidden, 1)
		x := p.f32(n, hidden, xv)
		delta := p.f32(n, hidden, randF32(r, n*hidden, 1))
		for step := range 2 {
			if step == 0 {
				p.gpu.RMSNorm(h.g, x.g, norm.g, 1e-5)
				p.ref.RMSNorm(h.c, x.c, norm.c, 1e-5)
			} else {
				p.gpu.AddRMSNorm(h.g, x.g, delta.g, norm.g, 1e-5)
				p.ref.AddRMSNorm(h.c, x.c, delta.c, norm.c, 1e-5)
			}
			p.check(fmt.Sprintf("norm into a quantized activation n=%d step %d", n, step), h, n*hidden, 1e-5)
			for _, wt := range []tensors{wq, wm} {
				d := p.f32(n, out, nil)
				p.gpu.MatMul(d.g, h.g, wt.g, nil)
				p.ref.MatMul(d.c, h.c, wt.c, nil)
				p.check(fmt.Sprintf("MatMul of a quantized activation n=%d", n), d, n*out, 1e-4)
			}
			d1, d2, d3 := p.f32(n, out, nil), p.f32(n, out, nil), p.f32(n, out, nil)
			p.gpu.MatMulQKV(d1.g, d2.g, d3.g, h.g, wq.g, wq.g, wq.g, nil, nil, nil)
			p.ref.MatMulQKV(d1.c, d2.c, d3.c, h.c, wq.c, wq.c, wq.c, nil, nil, nil)
			p.check(fmt.Sprintf("MatMulQKV of a quantized activation n=%d", n), d3, n*out, 1e-4)
			md := p.f32(n, hidden, nil)
			p.gpu.MoE(md.g, h.g, w, mp)
			cpuMoE(t, p.ref, md.c, h.c, &ref, mp)
			// 3e-4: the 15-bit activations pass through two products and the
			// SwiGLU between them (random draws on an H200 reached 1.07e-4 at n=1).
			p.check(fmt.Sprintf("MoE of a quantized activation n=%d", n), md, n*hidden, 3e-4)
		}
		p.gpu.Add(h.g, x.g, x.g)
		if err := p.gpu.Sync(); err == nil || !strings.Contains(err.Error(), "quantized copy") {
			t.Errorf("Add into a tensor with a quantized copy: %v", err)
		}
		p.gpu.Free(hq)
	}
}
