package cpu

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"orcd/backend"
	"orcd/tensor"
)

// BenchmarkMatMul times x·wᵀ for the GPT-2 124M shapes. The reported MB/s
// is weight bytes per second, so for n=1 (decode) it is the weight
// streaming rate that bounds tokens/s.
func BenchmarkMatMul(b *testing.B) {
	shapes := []struct{ in, out int }{{768, 768}, {768, 3072}, {768, 50257}}
	for _, typ := range []tensor.Type{tensor.F32, tensor.F16, tensor.BF16, tensor.Q8_0, tensor.MXFP4, tensor.Q4_K, tensor.Q6_K} {
		for _, s := range shapes {
			for _, n := range []int{1, 64} {
				b.Run(fmt.Sprintf("%s/%dx%d/n=%d", typ, s.out, s.in, n), func(b *testing.B) {
					benchMatMul(b, New(), typ, s.in, s.out, n)
				})
			}
		}
	}
}

// benchMatMul times MatMul of n random rows by a random in×out weight of
// typ on be, which it closes.
func benchMatMul(b *testing.B, be *Backend, typ tensor.Type, in, out, n int) {
	defer be.Close()
	r := rand.New(rand.NewPCG(1, 2))
	raw := randWeightBytes(r, typ, in*out)
	w := must(be.Upload("w", typ, []int{in, out}, raw))
	x := must(be.NewF32(n, in))
	be.WriteF32(x, randF32(r, n*in, 1))
	dst := must(be.NewF32(n, out))
	b.SetBytes(int64(len(raw)))
	b.ResetTimer()
	for range b.N {
		be.MatMul(dst, x, w, nil)
	}
	if err := be.Sync(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkMatMulQ8Layers runs the products of GPT-2 124M's 12 layers
// (q·k·v, o, up, down: 85 M Q8_0 weights, more than the caches hold) in
// the fast precision, one after another as a decode step does, so the
// weights stream from memory; BenchmarkMatMulQ8 repeats one matrix, which
// then stays in cache. GMAC/s counts weight-by-row products.
func BenchmarkMatMulQ8Layers(b *testing.B) {
	shapes := []struct{ in, out int }{{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}}
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			be := NewWithOptions(Options{Precision: Fast})
			defer be.Close()
			r := rand.New(rand.NewPCG(1, 2))
			xs := map[int]backend.Tensor{}
			dsts := map[int]backend.Tensor{}
			for _, s := range shapes {
				for _, size := range []int{s.in, s.out} {
					if xs[size] == nil {
						xs[size] = must(be.NewF32(n, size))
						be.WriteF32(xs[size], randF32(r, n*size, 1))
						dsts[size] = must(be.NewF32(n, size))
					}
				}
			}
			type product struct {
				w       backend.Tensor
				in, out int
			}
			var ps []product
			macs := 0
			for range 12 {
				for _, s := range shapes {
					w := must(be.Upload("w", tensor.Q8_0, []int{s.in, s.out}, randWeightBytes(r, tensor.Q8_0, s.in*s.out)))
					ps = append(ps, product{w, s.in, s.out})
					macs += s.in * s.out
				}
			}
			b.ResetTimer()
			for range b.N {
				for _, p := range ps {
					be.MatMul(dsts[p.out], xs[p.in], p.w, nil)
				}
			}
			if err := be.Sync(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)*float64(macs)*float64(n)/b.Elapsed().Seconds()/1e9, "GMAC/s")
		})
	}
}

// BenchmarkGPT2Decode runs the ops of one GPT-2 124M decode step (12
// layers, hidden 768, 12 heads, 50257-token head) at a 256-token context,
// in the exact precision (F16 and Q8_0 weights) and the fast one (Q8_0).
// ns/op is the time per token.
func BenchmarkGPT2Decode(b *testing.B) {
	for _, c := range []struct {
		typ  tensor.Type
		prec Precision
		name string
	}{{tensor.F16, Exact, "F16"}, {tensor.Q8_0, Exact, "Q8_0"}, {tensor.Q8_0, Fast, "Q8_0-fast"}} {
		typ := c.typ
		b.Run(c.name, func(b *testing.B) {
			const hidden, ff, layers, heads, vocab, ctx = 768, 3072, 12, 12, 50257, 256
			be := NewWithOptions(Options{Precision: c.prec})
			defer be.Close()
			r := rand.New(rand.NewPCG(1, 2))
			weight := func(in, out int) backend.Tensor {
				return must(be.Upload("w", typ, []int{in, out}, randWeightBytes(r, typ, in*out)))
			}
			vec := func(n int) backend.Tensor {
				return must(be.Upload("v", tensor.F32, []int{n}, f32Bytes(randF32(r, n, 0.1))))
			}
			type layer struct {
				ln1w, ln1b, qkvB, oB, ln2w, ln2b, upB, downB backend.Tensor
				qkv, o, up, down, kc, vc                     backend.Tensor
			}
			ls := make([]layer, layers)
			for i := range ls {
				ls[i] = layer{
					ln1w: vec(hidden), ln1b: vec(hidden), qkvB: vec(3 * hidden), oB: vec(hidden),
					ln2w: vec(hidden), ln2b: vec(hidden), upB: vec(ff), downB: vec(hidden),
					qkv: weight(hidden, 3*hidden), o: weight(hidden, hidden),
					up: weight(hidden, ff), down: weight(ff, hidden),
					kc: must(be.NewKVCache(ctx, hidden)), vc: must(be.NewKVCache(ctx, hidden)),
				}
			}
			head := weight(hidden, vocab)
			x := must(be.NewF32(1, hidden))
			be.WriteF32(x, randF32(r, hidden, 1))
			h, qkv, q, k, v := must(be.NewF32(1, hidden)), must(be.NewF32(1, 3*hidden)),
				must(be.NewF32(1, hidden)), must(be.NewF32(1, hidden)), must(be.NewF32(1, hidden))
			att, up, logits := must(be.NewF32(1, hidden)), must(be.NewF32(1, ff)), must(be.NewF32(1, vocab))
			pos := must(be.NewI32(1))
			be.WriteI32(pos, []int32{ctx - 1})
			seq, table, ap := contiguousTable(be, 1, ctx)
			ap.Heads, ap.KVHeads, ap.HeadDim, ap.Scale = heads, heads, 64, 0.125
			b.ResetTimer()
			for range b.N {
				for _, l := range ls {
					be.LayerNorm(h, x, l.ln1w, l.ln1b, 1e-5)
					be.MatMul(qkv, h, l.qkv, l.qkvB)
					be.CopyCols(q, qkv, 0)
					be.CopyCols(k, qkv, hidden)
					be.CopyCols(v, qkv, 2*hidden)
					be.StoreKV(l.kc, l.vc, k, v, pos)
					be.Attention(att, q, l.kc, l.vc, pos, seq, table, nil, ap)
					be.MatMul(h, att, l.o, l.oB)
					be.Add(x, x, h)
					be.LayerNorm(h, x, l.ln2w, l.ln2b, 1e-5)
					be.MatMul(up, h, l.up, l.upB)
					be.GELU(up, up)
					be.MatMul(h, up, l.down, l.downB)
					be.Add(x, x, h)
				}
				be.MatMul(logits, x, head, nil)
			}
			if err := be.Sync(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tok/s")
		})
	}
}

// BenchmarkAttention times GPT-2-shaped attention (12 heads of 64) over a
// 1024-token cache, for one decode row, a 64-row prefill chunk and a
// 512-row one, with the pure-Go and the assembly kernels, and the fast
// precision's with its binary16 caches and with float32 ones.
func BenchmarkAttention(b *testing.B) {
	const heads, headDim, ctx = 12, 64, 1024
	for _, c := range []struct {
		simd, f32KV bool
		prec        Precision
		name        string
	}{{false, false, Exact, "simd=false"}, {true, false, Exact, "simd=true"}, {true, false, Fast, "fast"}, {true, true, Fast, "fast/f32kv"}} {
		for _, n := range []int{1, 64, 512} {
			b.Run(fmt.Sprintf("%s/n=%d", c.name, n), func(b *testing.B) {
				be := newBackend(2, c.simd, c.prec)
				defer be.Close()
				r := rand.New(rand.NewPCG(1, 2))
				cols := heads * headDim
				newCache := be.NewKVCache
				if c.f32KV {
					newCache = be.NewF32
				}
				kc, vc := must(newCache(ctx, cols)), must(newCache(ctx, cols))
				slots := make([]int32, ctx)
				for i := range slots {
					slots[i] = int32(i)
				}
				kv, vv := must(be.NewF32(ctx, cols)), must(be.NewF32(ctx, cols))
				be.WriteF32(kv, randF32(r, ctx*cols, 1))
				be.WriteF32(vv, randF32(r, ctx*cols, 1))
				st := must(be.NewI32(ctx))
				be.WriteI32(st, slots)
				be.StoreKV(kc, vc, kv, vv, st)
				q, dst := must(be.NewF32(n, cols)), must(be.NewF32(n, cols))
				be.WriteF32(q, randF32(r, n*cols, 1))
				pos := make([]int32, n)
				for i := range pos {
					pos[i] = int32(ctx - n + i)
				}
				pt := must(be.NewI32(n))
				be.WriteI32(pt, pos)
				seq, table, ap := contiguousTable(be, n, ctx)
				ap.Heads, ap.KVHeads, ap.HeadDim, ap.Scale = heads, heads, headDim, 0.125
				b.ResetTimer()
				for range b.N {
					be.Attention(dst, q, kc, vc, pt, seq, table, nil, ap)
				}
				if err := be.Sync(); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

// contiguousTable returns the sequence ids (all 0) of n rows and the block
// table of one sequence whose ctx keys fill a cache of ctx rows in order,
// with the paging fields of AttentionParams set.
func contiguousTable(be *Backend, n, ctx int) (seq, table backend.Tensor, ap backend.AttentionParams) {
	const blockSize = 16
	ap.BlockSize, ap.MaxBlocks = blockSize, (ctx+blockSize-1)/blockSize
	ids := make([]int32, ap.MaxBlocks)
	for i := range ids {
		ids[i] = int32(i)
	}
	seq, table = must(be.NewI32(n)), must(be.NewI32(ap.MaxBlocks))
	be.WriteI32(table, ids)
	return seq, table, ap
}

// BenchmarkMatMulQ8 compares the exact and fast precisions on Q8_0
// weights of the GPT-2 124M shapes: n=1 is decode (MB/s is weight bytes
// per second), n=512 a prefill chunk.
func BenchmarkMatMulQ8(b *testing.B) {
	shapes := []struct{ in, out int }{{768, 2304}, {3072, 768}, {768, 50257}}
	for _, prec := range []Precision{Exact, Fast} {
		for _, s := range shapes {
			for _, n := range []int{1, 8, 512} {
				name := map[Precision]string{Exact: "exact", Fast: "fast"}[prec]
				b.Run(fmt.Sprintf("%s/%dx%d/n=%d", name, s.out, s.in, n), func(b *testing.B) {
					benchMatMul(b, NewWithOptions(Options{Precision: prec}), tensor.Q8_0, s.in, s.out, n)
					b.ReportMetric(float64(b.N)*float64(n)*float64(s.in)*float64(s.out)/b.Elapsed().Seconds()/1e9, "GMAC/s")
				})
			}
		}
	}
}
