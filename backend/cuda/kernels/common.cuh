// Shared definitions for every orcd kernel. Each kernel file includes it
// (directly or through mq.cuh) and NVRTC compiles each file as its own
// module, with no CUDA headers: half conversions use PTX directly.

#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

#define NEG_INF __int_as_float(0xff800000)

// Weight type ids, numbered as ggml's (tensor.Type).
#define T_F32 0
#define T_F16 1
#define T_Q8_0 8
#define T_Q4_K 12
#define T_Q6_K 14
#define T_BF16 30
#define T_MXFP4 39

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float bf2f(u16 h) { return __int_as_float(((u32)h) << 16); }

__device__ __forceinline__ u16 f2bf(float f) {
    u16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// pack2 packs two floats as a half2 (lo in the low 16 bits).
__device__ __forceinline__ u32 pack2(float lo, float hi) { return (u32)f2h(lo) | ((u32)f2h(hi) << 16); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum for blockDim.x a multiple of 32 and at most 1024. Every
// thread gets the total. sh must hold 32 floats.
__device__ float block_sum(float v, float* sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float t = lane < nw ? sh[lane] : 0.f;
    return warp_sum(t);
}

// mx4 decodes an MXFP4 (E2M1) code to its value doubled ({0, 1, 2, 3, 4,
// 6, 8, 12} and negatives), so the block scale is 2^(e-128) and products
// are exact. A byte permute looks the magnitude up in registers: a table in
// constant memory would serialize a warp's 16 different addresses. (Building
// the float's bits with two permutes instead of the int-to-float conversion
// measured slower: the MoE decode kernels are bound by integer issue.)
__device__ __forceinline__ float mx4(u32 c) {
    float v = (float)(__byte_perm(0x03020100u, 0x0C080604u, c & 7) & 0xff);
    return (c & 8) ? -v : v;
}

// i8f converts byte j of w, a word of int8 values, to float without an
// int-to-float instruction: 0x4B0000uu is 2^23 + uu as a float, and uu is
// the byte with its sign bit flipped (the int8 value + 128).
__device__ __forceinline__ float i8f(u32 w, int j) {
    u32 b = __byte_perm(w ^ 0x80808080u, 0x4B000000u, 0x7440 | j);
    return __int_as_float(b) - 8388736.f; // 2^23 + 128
}

// e8m0_half is 2^(e-128), the MXFP4 block scale matching mx4.
__device__ __forceinline__ float e8m0_half(u32 e) {
    return e < 2 ? __int_as_float(0x00200000u << e) : __int_as_float((e - 1) << 23);
}

// A weight matrix as stored in VRAM. Rows are output features; the row
// length in elements is in. Q8_0 and MXFP4 are repacked at upload into a
// plane of quants (q) and a plane of per-32 scales (s); other types keep
// their file layout in q.
struct WView {
    const u8* q;
    const u8* s;
    i64 in;
};

// get_scale_min_k4 decodes the 6-bit scale and min of Q4_K sub-block j.
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int& d, int& m) {
    if (j < 4) {
        d = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// RawChunk is one 32-element chunk of a repacked Q8_0 or MXFP4 row as
// loaded (quants and scale), so a lane can issue the loads of several chunks
// before decoding any: decode is bound by bytes in flight.
struct RawChunk {
    uint4 a, b; // Q8_0: 32 int8; MXFP4: 32 nibbles in a
    u32 s;      // Q8_0: f16 scale bits; MXFP4: E8M0 byte
};

template <int T>
__device__ __forceinline__ void load_raw(const WView& w, i64 row, int blk, RawChunk& c) {
    if (T == T_Q8_0) {
        const uint4* p = (const uint4*)(w.q + row * w.in + blk * 32);
        c.a = __ldg(p);
        c.b = __ldg(p + 1);
        c.s = __ldg((const unsigned short*)w.s + row * (w.in / 32) + blk);
    } else {
        c.a = __ldg((const uint4*)(w.q + row * (w.in / 2) + blk * 16));
        c.s = __ldg(w.s + row * (w.in / 32) + blk);
    }
}

// decode_raw_q stores the chunk's quants (MXFP4 doubled) as floats in o and
// returns the block scale they are to be multiplied by.
template <int T>
__device__ __forceinline__ float decode_raw_q(const RawChunk& c, float* o) {
    if (T == T_Q8_0) {
        u32 a[8] = {c.a.x, c.a.y, c.a.z, c.a.w, c.b.x, c.b.y, c.b.z, c.b.w};
#pragma unroll
        for (int j = 0; j < 32; j++) o[j] = i8f(a[j / 4], j % 4);
        return h2f((u16)c.s);
    } else {
        u32 a[4] = {c.a.x, c.a.y, c.a.z, c.a.w};
#pragma unroll
        for (int j = 0; j < 16; j++) {
            u32 b = (a[j / 4] >> (8 * (j % 4))) & 0xff;
            o[j] = mx4(b & 0xf);
            o[j + 16] = mx4(b >> 4);
        }
        return e8m0_half(c.s);
    }
}

// decode_raw dequantizes the chunk into o.
template <int T>
__device__ __forceinline__ void decode_raw(const RawChunk& c, float* o) {
    float d = decode_raw_q<T>(c, o);
#pragma unroll
    for (int j = 0; j < 32; j++) o[j] *= d;
}

// dot32 returns w[0..31]·x[0..31] for 16-byte aligned x.
__device__ __forceinline__ float dot32(const float* w, const float* x) {
    const float4* xp = (const float4*)x;
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float4 v = xp[i];
        s += w[4 * i] * v.x + w[4 * i + 1] * v.y + w[4 * i + 2] * v.z + w[4 * i + 3] * v.w;
    }
    return s;
}

// load_chunk dequantizes elements 32*blk..32*blk+31 of row into o.
template <int T>
__device__ __forceinline__ void load_chunk(const WView& w, i64 row, int blk, float* o) {
    if (T == T_F32) {
        const float4* p = (const float4*)(w.q + (row * w.in + blk * 32) * 4);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float4 v = p[i];
            o[4 * i] = v.x; o[4 * i + 1] = v.y; o[4 * i + 2] = v.z; o[4 * i + 3] = v.w;
        }
    } else if (T == T_F16 || T == T_BF16) {
        const uint4* p = (const uint4*)(w.q + (row * w.in + blk * 32) * 2);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint4 v = p[i];
            u32 a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                if (T == T_F16) {
                    o[8 * i + 2 * j] = h2f((u16)(a[j] & 0xffff));
                    o[8 * i + 2 * j + 1] = h2f((u16)(a[j] >> 16));
                } else {
                    o[8 * i + 2 * j] = bf2f((u16)(a[j] & 0xffff));
                    o[8 * i + 2 * j + 1] = bf2f((u16)(a[j] >> 16));
                }
            }
        }
    } else if (T == T_Q8_0 || T == T_MXFP4) {
        RawChunk c;
        load_raw<T>(w, row, blk, c);
        decode_raw<T>(c, o);
    } else if (T == T_Q4_K) {
        const u8* base = w.q + (row * (w.in / 256) + blk / 8) * 144;
        int j = blk % 8, sc, m;
        float d = h2f(base[0] | (base[1] << 8)), dmin = h2f(base[2] | (base[3] << 8));
        scale_min_k4(j, base + 4, sc, m);
        const u8* qs = base + 16 + 32 * (j / 2);
        float d1 = d * sc, m1 = dmin * m;
#pragma unroll
        for (int l = 0; l < 32; l++) o[l] = d1 * (float)((j & 1) ? (qs[l] >> 4) : (qs[l] & 0xF)) - m1;
    } else if (T == T_Q6_K) {
        const u8* base = w.q + (row * (w.in / 256) + blk / 8) * 210;
        int c = blk % 8, h = c / 4, qq = c % 4;
        const u8* ql = base + h * 64 + (qq & 1) * 32;
        const u8* qh = base + 128 + h * 32;
        const signed char* sc = (const signed char*)(base + 192) + h * 8 + 2 * qq;
        float d = h2f(base[208] | (base[209] << 8));
#pragma unroll
        for (int l = 0; l < 32; l++) {
            int v = (qq >= 2 ? (ql[l] >> 4) : (ql[l] & 0xF)) | (((qh[l] >> (2 * qq)) & 3) << 4);
            o[l] = d * (float)sc[l / 16] * (float)(v - 32);
        }
    }
}

// load_elem dequantizes element k of row (used where rows are not whole
// 32-element chunks, only for the plain float types).
template <int T>
__device__ __forceinline__ float load_elem(const WView& w, i64 row, i64 k) {
    if (T == T_F32) return ((const float*)w.q)[row * w.in + k];
    if (T == T_F16) return h2f(((const u16*)w.q)[row * w.in + k]);
    return bf2f(((const u16*)w.q)[row * w.in + k]);
}

// swiglu_act is g·σ(alpha·g)·(u + shift), g and u first clamped to limit
// when limit > 0 (gpt-oss: alpha 1.702, limit 7, shift 1; plain SwiGLU:
// alpha 1, no limit, shift 0). SwiGLU below bundles the three settings.
struct SwiGLU {
    float alpha, limit, shift;
};

__device__ __forceinline__ float swiglu_act(float g, float u, SwiGLU p) {
    if (p.limit > 0.f) {
        g = fminf(g, p.limit);
        u = fmaxf(-p.limit, fminf(u, p.limit));
    }
    return g / (1.f + expf(-p.alpha * g)) * (u + p.shift);
}

// mma16816 is mma.sync m16n8k16 with f32 accumulators in c and row-major
// A (a0-a3), column-major B (b0, b1): f16 inputs, or bf16 when BF.
template <bool BF = false>
__device__ __forceinline__ void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    if (BF)
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// cp.async: copies global memory to shared memory without passing through
// registers, so a block keeps many loads in flight while it computes.
// ldsm_x4 loads four 8×8 matrices of 16-bit elements from shared memory
// (lanes 8i..8i+7 give the row addresses of matrix i) as mma fragments:
// lane 4g+t gets row g, elements 2t and 2t+1 of each. ldsm_x4_t loads them
// transposed (element g of rows 2t and 2t+1).
__device__ __forceinline__ void ldsm_x4(u32* r, const u16* p) {
    u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t(u32* r, const u16* p) {
    u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// cp_async16 with valid false zero-fills its 16 bytes and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    u32 d = (u32)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    u32 d = (u32)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(d), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

// copy_async copies n bytes to dst (16-byte aligned), the block's threads
// sharing the work, by cp.async in 16- or 4-byte pieces as src and n
// allow, else byte by byte with plain loads. (A loop of dependent plain
// loads of every weight scale cost tens of µs a block.)
__device__ __forceinline__ void copy_async(u8* dst, const u8* src, int n) {
    if ((((size_t)src | n) & 15) == 0)
        for (int p = threadIdx.x * 16; p < n; p += blockDim.x * 16) cp_async16(dst + p, src + p, true);
    else if ((((size_t)src | n) & 3) == 0)
        for (int p = threadIdx.x * 4; p < n; p += blockDim.x * 4) cp_async4(dst + p, src + p);
    else
        for (int p = threadIdx.x; p < n; p += blockDim.x) dst[p] = __ldg(src + p);
}
