// Tiled matrix-matrix product for prefill on the tensor cores
// (mma.sync m16n8k16, f16 inputs, f32 accumulation).
//
// A block computes a 64-token × 64-output tile, stepping through the inner
// dimension one 32-element chunk at a time: 64 threads dequantize one weight
// chunk each (its quants as f16, exact for Q8_0 and MXFP4, and its block
// scale kept in f32), the other 64 load one token's 32 activations each and
// split each into two f16 terms, hi = f16(x) and lo = f16(x - hi), which
// together carry 22 bits of its mantissa; the products with hi and with lo
// are both accumulated. The scale is applied in f32 to each chunk's partial
// product, so quantized weights lose nothing to the f16 inputs and the
// result is close to an f32 product (rounding activations to f16 alone was
// enough to flip a near-tie in MoE routing against the f32 reference).
//
// Grouped mode (MoE): with starts != NULL, blockIdx.z is an expert e that
// owns rows starts[e]..starts[e+1]-1 of dst; x row i of that range is
// x[xrows[i]] (or x[i] when xrows is NULL) and the weights are expert e's
// out rows of the stacked tensor.

#include "common.cuh"

#ifndef MM_BM // from Go as -DMM_BM (kernelDefines); this default serves standalone checks
#define MM_BM 64
#endif
#ifndef MM_BN // from Go as -DMM_BN (kernelDefines); this default serves standalone checks
#define MM_BN 64
#endif
#define MM_LD 40 // f16 per shared row: 32 + 8 padding keeps fragment loads conflict-free

// raw_h converts a loaded Q8_0 or MXFP4 chunk to f16 quants in o (16 words,
// exact) and returns the block scale they must be multiplied by.
template <int T>
__device__ __forceinline__ float raw_h(const RawChunk& c, u32* o) {
    if (T == T_Q8_0) {
        u32 a[8] = {c.a.x, c.a.y, c.a.z, c.a.w, c.b.x, c.b.y, c.b.z, c.b.w};
#pragma unroll
        for (int j = 0; j < 16; j++) {
            o[j] = pack2(i8f(a[j / 2], (2 * j) % 4), i8f(a[j / 2], (2 * j + 1) % 4));
        }
        return h2f((u16)c.s);
    } else {
        u32 a[4] = {c.a.x, c.a.y, c.a.z, c.a.w};
#pragma unroll
        for (int j = 0; j < 8; j++) {
            u32 b0 = (a[j / 2] >> (16 * (j % 2))) & 0xff, b1 = (a[j / 2] >> (16 * (j % 2) + 8)) & 0xff;
            o[j] = pack2(mx4(b0 & 0xf), mx4(b1 & 0xf));   // elements 2j, 2j+1
            o[8 + j] = pack2(mx4(b0 >> 4), mx4(b1 >> 4)); // elements 16+2j, 16+2j+1
        }
        return e8m0_half(c.s);
    }
}

// load_chunk_h stores elements 32*blk.. of row of a plain float weight as
// f16 into o (16 words) and returns 1, the scale.
template <int T>
__device__ __forceinline__ float load_chunk_h(const WView& w, i64 row, int blk, u32* o) {
    if (T == T_F16) {
        const uint4* p = (const uint4*)(w.q + (row * w.in + blk * 32) * 2);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint4 v = p[i];
            o[4 * i] = v.x; o[4 * i + 1] = v.y; o[4 * i + 2] = v.z; o[4 * i + 3] = v.w;
        }
    } else {
        float v[32];
        load_chunk<T>(w, row, blk, v);
#pragma unroll
        for (int j = 0; j < 16; j++) o[j] = pack2(v[2 * j], v[2 * j + 1]);
    }
    return 1.f;
}

template <int T>
__device__ void matmul_impl(float* dst, const float* x, WView w, const float* bias, int n, int out,
                            const int* starts, const int* xrows) {
    __shared__ __align__(16) u16 Xs[MM_BM * MM_LD]; // hi terms
    __shared__ __align__(16) u16 Xl[MM_BM * MM_LD]; // lo terms
    __shared__ __align__(16) u16 Ws[MM_BN * MM_LD];
    __shared__ float Ss[MM_BN];

    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int g = lane >> 2, t4 = lane & 3;
    int wm = warp >> 1, wn = warp & 1;
    int n0 = blockIdx.x * MM_BN, m0 = blockIdx.y * MM_BM;
    int first = 0, count = n;
    i64 wrow0 = 0;
    if (starts) {
        int e = blockIdx.z;
        first = starts[e];
        count = starts[e + 1] - first;
        wrow0 = (i64)e * out;
    }
    if (m0 >= count) return;
    int in = (int)w.in;

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][j][c] = 0.f;

    // The x row each loader thread reads, fixed for the whole k loop.
    const float* xrow = 0;
    if (tid >= 64) {
        int m = m0 + tid - 64;
        if (m < count) {
            int src = first + m;
            if (xrows) src = xrows[src];
            xrow = x + (i64)src * in;
        }
    }

    // Software pipeline: the global loads of chunk blk+1 are issued before
    // the tensor-core work of chunk blk, so their latency hides behind it.
    // Quantized weights and activations wait in registers.
    const bool raw = T == T_Q8_0 || T == T_MXFP4;
    const int nblk = in / 32;
    const int wr = n0 + tid; // the weight row a thread < 64 loads
    RawChunk wraw;
    float4 xv[8];
    if (tid < 64) {
        if (raw && wr < out) load_raw<T>(w, wrow0 + wr, 0, wraw);
    } else if (xrow) {
#pragma unroll
        for (int j = 0; j < 8; j++) xv[j] = ((const float4*)xrow)[j];
    }

    for (int blk = 0; blk < nblk; blk++) {
        if (tid < 64) {
            u32 v[16];
            float s = 0.f;
            if (wr < out) {
                s = raw ? raw_h<T>(wraw, v) : load_chunk_h<T>(w, wrow0 + wr, blk, v);
            } else {
#pragma unroll
                for (int j = 0; j < 16; j++) v[j] = 0;
            }
            uint4* d = (uint4*)(Ws + tid * MM_LD);
#pragma unroll
            for (int j = 0; j < 4; j++) d[j] = make_uint4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
            Ss[tid] = s;
        } else {
            u32 v[16], lo[16];
            if (xrow) {
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    float4 f = xv[j];
                    float e[4] = {f.x, f.y, f.z, f.w};
                    u16 hb[4];
                    float r[4];
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        hb[i] = f2h(e[i]);
                        r[i] = e[i] - h2f(hb[i]);
                    }
                    v[2 * j] = hb[0] | ((u32)hb[1] << 16);
                    v[2 * j + 1] = hb[2] | ((u32)hb[3] << 16);
                    lo[2 * j] = pack2(r[0], r[1]);
                    lo[2 * j + 1] = pack2(r[2], r[3]);
                }
            } else {
#pragma unroll
                for (int j = 0; j < 16; j++) v[j] = lo[j] = 0;
            }
            uint4* d = (uint4*)(Xs + (tid - 64) * MM_LD);
            uint4* dl = (uint4*)(Xl + (tid - 64) * MM_LD);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                d[j] = make_uint4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
                dl[j] = make_uint4(lo[4 * j], lo[4 * j + 1], lo[4 * j + 2], lo[4 * j + 3]);
            }
        }
        if (blk + 1 < nblk) {
            if (tid < 64) {
                if (raw && wr < out) load_raw<T>(w, wrow0 + wr, blk + 1, wraw);
            } else if (xrow) {
                const float4* p = (const float4*)(xrow + (blk + 1) * 32);
#pragma unroll
                for (int j = 0; j < 8; j++) xv[j] = p[j];
            }
        }
        __syncthreads();

        // A warp's 16-row subtiles past the block's rows hold nothing (an
        // expert of a small batch gets a few rows): their products are
        // skipped. live is the same for the whole warp.
        bool live[2];
#pragma unroll
        for (int mi = 0; mi < 2; mi++) live[mi] = m0 + wm * 32 + mi * 16 < count;
        float tmp[2][4][4];
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int c = 0; c < 4; c++) tmp[i][j][c] = 0.f;
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            u32 a[2][4], al[2][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                int off = (wm * 32 + mi * 16 + g) * MM_LD + ks * 16 + t4 * 2;
                const u16* p = Xs + off;
                a[mi][0] = *(const u32*)p;
                a[mi][1] = *(const u32*)(p + 8 * MM_LD);
                a[mi][2] = *(const u32*)(p + 8);
                a[mi][3] = *(const u32*)(p + 8 * MM_LD + 8);
                p = Xl + off;
                al[mi][0] = *(const u32*)p;
                al[mi][1] = *(const u32*)(p + 8 * MM_LD);
                al[mi][2] = *(const u32*)(p + 8);
                al[mi][3] = *(const u32*)(p + 8 * MM_LD + 8);
            }
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                const u16* p = Ws + (wn * 32 + ni * 8 + g) * MM_LD + ks * 16 + t4 * 2;
                b[ni][0] = *(const u32*)p;
                b[ni][1] = *(const u32*)(p + 8);
            }
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
                if (live[mi])
#pragma unroll
                    for (int ni = 0; ni < 4; ni++) {
                        mma16816(tmp[mi][ni], a[mi][0], a[mi][1], a[mi][2], a[mi][3], b[ni][0], b[ni][1]);
                        mma16816(tmp[mi][ni], al[mi][0], al[mi][1], al[mi][2], al[mi][3], b[ni][0], b[ni][1]);
                    }
        }
#pragma unroll
        for (int ni = 0; ni < 4; ni++) {
            float s0 = Ss[wn * 32 + ni * 8 + t4 * 2], s1 = Ss[wn * 32 + ni * 8 + t4 * 2 + 1];
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                acc[mi][ni][0] += s0 * tmp[mi][ni][0];
                acc[mi][ni][1] += s1 * tmp[mi][ni][1];
                acc[mi][ni][2] += s0 * tmp[mi][ni][2];
                acc[mi][ni][3] += s1 * tmp[mi][ni][3];
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int m = m0 + wm * 32 + mi * 16 + g + (c >= 2 ? 8 : 0);
                int col = n0 + wn * 32 + ni * 8 + t4 * 2 + (c & 1);
                if (m < count && col < out)
                    dst[(i64)(first + m) * out + col] = acc[mi][ni][c] + (bias ? bias[wrow0 + col] : 0.f);
            }
}

#define MATMUL_KERNEL(T, NAME)                                                                              \
    extern "C" __global__ void __launch_bounds__(128)                                                       \
        matmul_##NAME(float* dst, const float* x, const u8* q, const u8* s, int in, const float* bias, int n, \
                      int out, const int* starts, const int* xrows) {                                       \
        matmul_impl<T>(dst, x, WView{q, s, in}, bias, n, out, starts, xrows);                               \
    }

MATMUL_KERNEL(T_F32, f32)
MATMUL_KERNEL(T_F16, f16)
MATMUL_KERNEL(T_BF16, bf16)
MATMUL_KERNEL(T_Q8_0, q8_0)
MATMUL_KERNEL(T_MXFP4, mxfp4)
