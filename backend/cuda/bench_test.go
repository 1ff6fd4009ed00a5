package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"orcd/backend"
	"orcd/tensor"
)

// Kernel benchmarks at gpt-oss-20b's decode and prefill shapes, on random
// weights. They report the weight bytes streamed per second (GB/s), the
// number to hold against the ~3.0 TB/s device copy of an H100; run with
// `cuda.test -test.run NONE -test.bench .` on the GPU machine.

func benchBackend(b *testing.B) *Backend {
	b.Helper()
	if !Available() {
		b.Skip("no CUDA driver or device")
	}
	if shared == nil {
		be, err := New(Options{})
		if err != nil {
			b.Fatal(err)
		}
		shared = be
	}
	return shared
}

func benchWeights(b *testing.B, be *Backend, typ tensor.Type, dims []int) backend.Tensor {
	b.Helper()
	n := 1
	for _, d := range dims {
		n *= d
	}
	r := rand.New(rand.NewPCG(1, 2))
	var data []byte
	if typ == tensor.MXFP4 || typ == tensor.Q8_0 {
		// Random codes with scales near 2^-4 (MXFP4's E8M0 byte) or 2^-7
		// (Q8_0's f16, little-endian): valid blocks without the cost of
		// quantizing hundreds of millions of floats (an LM head took ~10 s
		// of device time a benchmark).
		size, _ := typ.RowSize(int64(n))
		data = make([]byte, size)
		for i := range data {
			data[i] = byte(r.UintN(256))
		}
		for i := 0; i < len(data); i += typ.TypeSize() {
			if typ == tensor.MXFP4 {
				data[i] = byte(120 + r.UintN(6))
			} else {
				data[i+1] = byte(0x20 + r.UintN(4)) // f16 0x20xx-0x23xx: 2^-7 to 2^-6
			}
		}
	} else {
		var err error
		if data, err = tensor.Quantize(typ, randF32(r, n, 1)); err != nil {
			b.Fatal(err)
		}
	}
	w, err := be.Upload("bench", typ, dims, data)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Free(w) })
	return w
}

func benchMatMul(b *testing.B, typ tensor.Type, in, out, n int) {
	be := benchBackend(b)
	w := benchWeights(b, be, typ, []int{in, out})
	x, _ := be.NewF32(n, in)
	dst, _ := be.NewF32(n, out)
	defer be.Free(x)
	defer be.Free(dst)
	be.WriteF32(x, randF32(rand.New(rand.NewPCG(3, 4)), n*in, 1))
	be.MatMul(dst, x, w, nil)
	if err := be.Sync(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		be.MatMul(dst, x, w, nil)
	}
	if err := be.Sync(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer() // the deferred frees wait for the device: not part of ns/op
	size, _ := typ.RowSize(int64(in) * int64(out))
	sec := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(float64(size)/sec/1e9, "GB/s")
	b.ReportMetric(2*float64(in)*float64(out)*float64(n)/sec/1e12, "TFLOP/s")
}

func BenchmarkMatVecQ8LMHead(b *testing.B) { benchMatMul(b, tensor.Q8_0, 2880, 201088, 1) }
func BenchmarkMatVecQ8QProj(b *testing.B)  { benchMatMul(b, tensor.Q8_0, 2880, 4096, 1) }
func BenchmarkMatMulQ8N2048(b *testing.B)  { benchMatMul(b, tensor.Q8_0, 2880, 4096, 2048) }

// The dense products of a 64-sequence decode step (continuous batching).
// BenchmarkMatMulQ8LMHead is the LM head of steps of n sequences at the
// middle sizes (where gemm.cu takes over from the grouped kernels).
func BenchmarkMatMulQ8LMHead(b *testing.B) {
	for _, n := range []int{32, 63, 64, 128, 256} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) { benchMatMul(b, tensor.Q8_0, 2880, 201088, n) })
	}
}
func BenchmarkMatMulQ8QProjN64(b *testing.B) { benchMatMul(b, tensor.Q8_0, 2880, 4096, 64) }
func BenchmarkMatMulMXFP4N2048(b *testing.B) {
	benchMatMul(b, tensor.MXFP4, 2880, 2880, 2048)
}

// BenchmarkMoEDecode is one token through a 32-expert top-4 block; the
// bytes are those of the 4 selected experts' three matrices.
func BenchmarkMoEDecode(b *testing.B) { benchMoE(b, 1) }

// benchMoE runs n tokens of random activations through a 32-expert top-4
// block of gpt-oss-20b's shape and reports the bytes of the experts the
// router selected (at least one token each) per second.
func benchMoE(b *testing.B, n int) {
	be := benchBackend(b)
	const hidden, ff, nExp, topK = 2880, 2880, 32, 4
	r := rand.New(rand.NewPCG(3, 4))
	router := randF32(r, hidden*nExp, 1)
	rb, err := tensor.Quantize(tensor.F32, router)
	if err != nil {
		b.Fatal(err)
	}
	rt, err := be.Upload("router", tensor.F32, []int{hidden, nExp}, rb)
	if err != nil {
		b.Fatal(err)
	}
	defer be.Free(rt)
	w := &backend.MoEWeights{
		Router: rt,
		ExpertWeights: backend.ExpertWeights{
			Gate: benchWeights(b, be, tensor.MXFP4, []int{hidden, ff, nExp}),
			Up:   benchWeights(b, be, tensor.MXFP4, []int{hidden, ff, nExp}),
			Down: benchWeights(b, be, tensor.MXFP4, []int{ff, hidden, nExp}),
		},
	}
	xs := randF32(r, n*hidden, 1)
	x, _ := be.NewF32(n, hidden)
	dst, _ := be.NewF32(n, hidden)
	defer be.Free(x)
	defer be.Free(dst)
	be.WriteF32(x, xs)
	// The experts the step touches, from the router's top-k on the host.
	used := map[int]bool{}
	for i := 0; i < n; i++ {
		logit := make([]float64, nExp)
		for e := range logit {
			for k := 0; k < hidden; k++ {
				logit[e] += float64(xs[i*hidden+k]) * float64(router[e*hidden+k])
			}
		}
		for range topK {
			best := 0
			for e := range logit {
				if logit[e] > logit[best] {
					best = e
				}
			}
			used[best], logit[best] = true, math.Inf(-1)
		}
	}
	p := backend.MoEParams{TopK: topK, SwiGLU: backend.SwiGLUParams{Alpha: 1.702, Limit: 7, UpShift: 1}}
	be.MoE(dst, x, w, p)
	if err := be.Sync(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		be.MoE(dst, x, w, p)
	}
	if err := be.Sync(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	size, _ := tensor.MXFP4.RowSize(int64(3 * len(used) * hidden * ff))
	b.ReportMetric(float64(size)/(b.Elapsed().Seconds()/float64(b.N))/1e9, "GB/s")
}

// BenchmarkMoEStep is a batched step of n tokens through a 32-expert
// top-4 block (the grouped kernels of mqvec_grouped.cu from 5 tokens);
// the bytes are those of every expert the step selects.
func BenchmarkMoEStep(b *testing.B) {
	for _, n := range []int{8, 32, 64, 128, 256, 512, 2048} { // 512, 2048: prefill (gemm.cu)
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) { benchMoE(b, n) })
	}
}

// BenchmarkAttentionDecode is one decode step of n sequences of 640 cached
// tokens each (a 512-token prompt half way through 256 new ones) at
// gpt-oss-20b's attention shape (64 query heads, 8 KV heads of 64, sinks),
// with full attention and with the 128-token window. It reports the cache
// bytes a step reads (K and V of every visible key).
func BenchmarkAttentionDecode(b *testing.B) {
	for _, n := range []int{1, 8, 32, 64, 128, 256} {
		for _, window := range []int{0, 128} {
			b.Run(fmt.Sprintf("n=%d/window=%d", n, window), func(b *testing.B) { benchAttention(b, n, 640, 1, window) })
		}
	}
}

// BenchmarkAttentionPrefill is one n-token prompt from position 0 (the
// flash kernel) at the same shape; it reports the tensor FLOP of the
// visible (causal) scores and products.
func BenchmarkAttentionPrefill(b *testing.B) {
	for _, n := range []int{512, 2048} {
		for _, window := range []int{0, 128} {
			b.Run(fmt.Sprintf("n=%d/window=%d", n, window), func(b *testing.B) { benchAttention(b, 1, n, n, window) })
		}
	}
}

// benchAttention times attention for the last rows positions of each of n
// sequences of length tokens.
func benchAttention(b *testing.B, n, length, rows, window int) {
	be := benchBackend(b)
	ap := backend.AttentionParams{Heads: 64, KVHeads: 8, HeadDim: 64, Scale: 0.125, Window: window, BlockSize: 16}
	if rows == 1 {
		ap.Singles = n
	}
	ap.MaxBlocks = (length + ap.BlockSize - 1) / ap.BlockSize
	kvCols, qCols, cache := ap.KVHeads*ap.HeadDim, ap.Heads*ap.HeadDim, n*ap.MaxBlocks*ap.BlockSize
	r := rand.New(rand.NewPCG(5, 6))
	table := make([]int32, n*ap.MaxBlocks)
	for i := range table {
		table[i] = int32(i) // sequence s owns blocks s·MaxBlocks..
	}
	var pos, seq []int32
	for s := range n {
		for j := length - rows; j < length; j++ {
			pos, seq = append(pos, int32(j)), append(seq, int32(s))
		}
	}
	slots := make([]int32, cache)
	for i := range slots {
		slots[i] = int32(i)
	}
	var free []backend.Tensor
	defer func() {
		for _, t := range free {
			be.Free(t)
		}
	}()
	f32 := func(r0, c int, v []float32) backend.Tensor {
		t, err := be.NewF32(r0, c)
		if err != nil {
			b.Fatal(err)
		}
		free = append(free, t)
		if v != nil {
			be.WriteF32(t, v)
		}
		return t
	}
	i32 := func(v []int32) backend.Tensor {
		t, err := be.NewI32(len(v))
		if err != nil {
			b.Fatal(err)
		}
		free = append(free, t)
		be.WriteI32(t, v)
		return t
	}
	kc, err := be.NewKVCache(cache, kvCols)
	if err != nil {
		b.Fatal(err)
	}
	vc, err := be.NewKVCache(cache, kvCols)
	if err != nil {
		b.Fatal(err)
	}
	free = append(free, kc, vc)
	be.StoreKV(kc, vc, f32(cache, kvCols, randF32(r, cache*kvCols, 1)), f32(cache, kvCols, randF32(r, cache*kvCols, 1)), i32(slots))
	q, dst := f32(len(pos), qCols, randF32(r, len(pos)*qCols, 1)), f32(len(pos), qCols, nil)
	sinks := f32(1, ap.Heads, randF32(r, ap.Heads, 2))
	ps, sq, tb := i32(pos), i32(seq), i32(table)
	be.Attention(dst, q, kc, vc, ps, sq, tb, sinks, ap)
	if err := be.Sync(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		be.Attention(dst, q, kc, vc, ps, sq, tb, sinks, ap)
	}
	if err := be.Sync(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	sec := b.Elapsed().Seconds() / float64(b.N)
	// Visible keys: a decode row sees min(length, window); a prompt row at
	// position j sees min(j+1, window).
	keys := 0
	for j := length - rows; j < length; j++ {
		if window > 0 {
			keys += min(j+1, window)
		} else {
			keys += j + 1
		}
	}
	if rows == 1 {
		b.ReportMetric(float64(2*n*keys*kvCols*kc.Type().TypeSize())/sec/1e9, "GB/s")
		return
	}
	b.ReportMetric(4*float64(n*keys*qCols)/sec/1e12, "TFLOP/s")
}

// BenchmarkMatMulQ8QKV is gpt-oss-20b's fused q, k and v projection (2880
// → 4096 + 512 + 512) at the tokens-per-step of the kernel table in
// docs/PERFORMANCE.md.
func BenchmarkMatMulQ8QKV(b *testing.B) {
	for _, n := range []int{1, 8, 32, 128, 512, 2048} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) { benchMatMul(b, tensor.Q8_0, 2880, 5120, n) })
	}
}
