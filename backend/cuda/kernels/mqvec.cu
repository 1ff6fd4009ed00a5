// Decode (1 to 4 tokens) products of Q8_0 and MXFP4 weights on the integer
// tensor cores (mma.sync m16n8k32 s8·s8 → s32), so that no weight is ever
// converted to a float: that conversion made the float kernels in matvec.cu
// bound by instruction issue (Nsight: 64% issue, 25% DRAM on MoE decode).
// The weight and activation formats and the fragment layout are mq.cuh's.

#include "mq.cuh"

// mq_quant: one warp per 32-element chunk c of x (n ≤ 4 rows of in). Writes
// qx[c] (8 columns × 32 bytes; columns of rows ≥ n are zero) and the chunk
// scales dx[c*4 + t] = max|x|/32639.
extern "C" __global__ void mq_quant(u8* qx, float* dx, const float* x, int n, int in) {
    int lane = threadIdx.x & 31;
    int c = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (c >= in / 32) return;
    for (int t = 0; t < MQ_TOKENS; t++) {
        if (t < n) {
            mq_store(x[(i64)t * in + c * 32 + lane], c, t, qx, dx);
            continue;
        }
        u8* o = qx + (i64)c * MQ_CHUNK + 2 * t * 32 + lane;
        o[0] = 0;
        o[32] = 0;
        if (lane == 0) dx[c * MQ_TOKENS + t] = 0.f;
    }
}

template <int T>
__device__ __forceinline__ void mq_load(const u8* q, const u8* s, int in, i64 row, int c, int t, MqRaw& r) {
    if (T == T_Q8_0) {
        const u8* p = q + row * in + c * 32 + 4 * t;
        r.w0 = __ldg((const u32*)p);
        r.w1 = __ldg((const u32*)(p + 16));
        r.s = __ldg((const u16*)s + row * (in / 32) + c);
    } else {
        r.w0 = __ldg((const u32*)(q + row * (in / 2) + c * 16 + 4 * t));
        r.w1 = 0;
        r.s = __ldg(s + row * (in / 32) + c);
    }
}

// mq_rows16 adds one chunk of rows ra (g) and rb (g+8) against B (bx) to
// acc0/acc1, for the token of lane t (scale xd).
template <int T>
__device__ __forceinline__ void mq_rows16(const MqRaw& ka, const MqRaw& kb, uint2 bx, float xd, float& acc0,
                                          float& acc1) {
    u32 a0, a1, a2, a3;
    float sa = mq_frag<T>(ka, a0, a2), sb = mq_frag<T>(kb, a1, a3);
    int d[4];
    mma_s8(d, a0, a1, a2, a3, bx.x, bx.y);
    acc0 += (float)(d[0] * 256 + d[1]) * (sa * xd);
    acc1 += (float)(d[2] * 256 + d[3]) * (sb * xd);
}

// quad_transpose exchanges words within each quad of lanes: on entry lane t
// holds row t of a 4×4 matrix of words, on exit its column t.
__device__ __forceinline__ void quad_transpose(u32* w) {
    int t = threadIdx.x & 3;
    bool hi = t & 2, odd = t & 1;
    // Swap the off-diagonal 2×2 blocks with lane t^2 …
    u32 r0 = __shfl_xor_sync(0xffffffffu, hi ? w[0] : w[2], 2);
    u32 r1 = __shfl_xor_sync(0xffffffffu, hi ? w[1] : w[3], 2);
    if (hi) {
        w[0] = r0;
        w[1] = r1;
    } else {
        w[2] = r0;
        w[3] = r1;
    }
    // … then transpose each 2×2 block with lane t^1.
    r0 = __shfl_xor_sync(0xffffffffu, odd ? w[0] : w[1], 1);
    r1 = __shfl_xor_sync(0xffffffffu, odd ? w[2] : w[3], 1);
    if (odd) {
        w[0] = r0;
        w[2] = r1;
    } else {
        w[1] = r0;
        w[3] = r1;
    }
}

// MqPair names rows ra and ra+8's counterpart rb (a lane's rows g and g+8)
// of one weight matrix.
struct MqPair {
    const u8* q;
    const u8* s;
    i64 ra, rb;
};

// MqX is a lane's view of the quantized activations: q and d point at
// column g's bytes for lane t and at lane t's scale in chunk 0; live is
// false for a column that holds nothing (B is then zero).
struct MqX {
    const u8* q;
    const float* d;
    int qstride, dstride; // bytes and floats from one chunk to the next
    bool live;
};

__device__ __forceinline__ void mq_xload(const MqX& x, int c, uint2& b, float& d) {
    b = uint2{0u, 0u};
    if (x.live) b = *(const uint2*)(x.q + (i64)c * x.qstride);
    d = x.d[(i64)c * x.dstride];
}

// A group is 4 MXFP4 chunks (64 bytes of a row) or 2 Q8_0 chunks (64
// bytes): the 4 lanes of a quad load it with one 16-byte load each (lane t:
// MXFP4 chunk c0+t, Q8_0 bytes 16t..16t+15) and a quad transpose hands each
// lane the words it owns in the MMA. Loading those words directly (4 bytes
// a lane, 8 rows a warp instruction) made the kernels bound by L1 wavefronts
// rather than by DRAM. Lane t also loads one block scale of the group (MXFP4:
// chunk c0+t of both rows; Q8_0: chunk c0+(t&1) of row a for t < 2, of row b
// otherwise), shared by shuffles.
#define MQ_GC(T) ((T) == T_MXFP4 ? 4 : 2)

struct MqGroup {
    uint4 a, b;
    u32 s;
};

template <int T>
__device__ __forceinline__ void mq_gload(const MqPair& p, int in, int c0, int t, MqGroup& g) {
    if (T == T_MXFP4) {
        g.a = __ldg((const uint4*)(p.q + p.ra * (in / 2) + (c0 + t) * 16));
        g.b = __ldg((const uint4*)(p.q + p.rb * (in / 2) + (c0 + t) * 16));
        g.s = (u32)__ldg(p.s + p.ra * (in / 32) + c0 + t) | ((u32)__ldg(p.s + p.rb * (in / 32) + c0 + t) << 8);
    } else {
        g.a = __ldg((const uint4*)(p.q + p.ra * in + c0 * 32 + 16 * t));
        g.b = __ldg((const uint4*)(p.q + p.rb * in + c0 * 32 + 16 * t));
        g.s = __ldg((const u16*)p.s + (t < 2 ? p.ra : p.rb) * (in / 32) + c0 + (t & 1));
    }
}

// mq_gdot adds a loaded group to acc0 (row g) and acc1 (row g+8).
template <int T>
__device__ __forceinline__ void mq_gdot(const MqGroup& g, const uint2* bx, const float* xd, float& acc0,
                                        float& acc1) {
    u32 a[4] = {g.a.x, g.a.y, g.a.z, g.a.w}, b[4] = {g.b.x, g.b.y, g.b.z, g.b.w};
    quad_transpose(a);
    quad_transpose(b);
    int quad = threadIdx.x & 28;
    if (T == T_MXFP4) {
#pragma unroll
        for (int j = 0; j < 4; j++) { // a[j], b[j]: chunk c0+j
            u32 sj = __shfl_sync(0xffffffffu, g.s, quad | j);
            mq_rows16<T>(MqRaw{a[j], 0u, sj & 0xff}, MqRaw{b[j], 0u, sj >> 8}, bx[j], xd[j], acc0, acc1);
        }
    } else {
#pragma unroll
        for (int j = 0; j < 2; j++) { // a[2j], a[2j+1]: bytes 4t.. and 16+4t.. of chunk c0+j
            u32 sa = __shfl_sync(0xffffffffu, g.s, quad | j), sb = __shfl_sync(0xffffffffu, g.s, quad | 2 | j);
            mq_rows16<T>(MqRaw{a[2 * j], a[2 * j + 1], sa}, MqRaw{b[2 * j], b[2 * j + 1], sb}, bx[j], xd[j], acc0,
                         acc1);
        }
    }
}

// mq_dot adds NP row pairs p[i]·x to acc[2i] (row g) and acc[2i+1] (row
// g+8) over this warp's share of the inner dimension: groups first,
// first+stride, …, GPI at a time (loaded before any is used: bytes in flight
// bound decode; more cost registers, and registers bound occupancy), then
// the chunks after the last whole group, one at a time.
template <int T, int NP, int GPI>
__device__ __forceinline__ void mq_dot(const MqPair* p, int in, const MqX& x, int first, int stride, float* acc) {
    const int GC = MQ_GC(T);
    int t = threadIdx.x & 3, nblk = in / 32, ngrp = nblk / GC;
    for (int g0 = first; g0 < ngrp; g0 += GPI * stride) {
        MqGroup gr[GPI][NP];
        uint2 bx[GPI][GC];
        float xd[GPI][GC];
#pragma unroll
        for (int j = 0; j < GPI; j++) {
            int grp = g0 + j * stride;
            if (grp < ngrp) {
#pragma unroll
                for (int i = 0; i < NP; i++) mq_gload<T>(p[i], in, grp * GC, t, gr[j][i]);
#pragma unroll
                for (int k = 0; k < GC; k++) mq_xload(x, grp * GC + k, bx[j][k], xd[j][k]);
            }
        }
#pragma unroll
        for (int j = 0; j < GPI; j++)
            if (g0 + j * stride < ngrp)
#pragma unroll
                for (int i = 0; i < NP; i++) mq_gdot<T>(gr[j][i], bx[j], xd[j], acc[2 * i], acc[2 * i + 1]);
    }
    for (int c = ngrp * GC + first; c < nblk; c += stride) {
        uint2 b;
        float d;
        mq_xload(x, c, b, d);
#pragma unroll
        for (int i = 0; i < NP; i++) {
            MqRaw ka, kb;
            mq_load<T>(p[i].q, p[i].s, in, p[i].ra, c, t, ka);
            mq_load<T>(p[i].q, p[i].s, in, p[i].rb, c, t, kb);
            mq_rows16<T>(ka, kb, b, d, acc[2 * i], acc[2 * i + 1]);
        }
    }
}

// MqMat is one matrix of mq_matvec: its output, weights, bias and rows.
struct MqMat {
    float* dst;
    const u8* q;
    const u8* s;
    const float* bias;
    int out;
};

// mq_matvec: dst[t][r] = x[t]·w[r] + bias[r] for t < n ≤ 4 and rows r0..r0+15.
// A block of MQ_WARPS warps owns 16 rows; the warps split the inner
// dimension and the block sums their parts.
template <int T>
__device__ void mq_matvec_impl(MqMat m, int r0, const u8* qx, const float* dx, int in, int n) {
    __shared__ float red[MQ_WARPS][16][MQ_TOKENS];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    float* dst = m.dst;
    const float* bias = m.bias;
    int out = m.out;
    MqPair p = {m.q, m.s, min(r0 + g, out - 1), min(r0 + g + 8, out - 1)}; // rows past the end repeat the last
    MqX x = {qx + g * 32 + t * 8, dx + t, MQ_CHUNK, MQ_TOKENS, true};
    float acc[2] = {0.f, 0.f};
    mq_dot<T, 1, 2>(&p, in, x, warp, MQ_WARPS, acc);
    red[warp][g][t] = acc[0];
    red[warp][g + 8][t] = acc[1];
    __syncthreads();
    if (threadIdx.x < 16 * MQ_TOKENS) {
        int row = threadIdx.x >> 2, tok = threadIdx.x & 3, r = r0 + row;
        if (tok < n && r < out) {
            float sum = 0.f;
            for (int w = 0; w < MQ_WARPS; w++) sum += red[w][row][tok];
            dst[(i64)tok * out + r] = sum + (bias ? bias[r] : 0.f);
        }
    }
}

// mq_gateup: MoE decode, first half. Block (blockIdx.x, assignment a =
// token·k + slot) computes rows 32·blockIdx.x.. +31 of gate and up of expert
// ids[a] (two groups of 16 rows × MQ_KSPLIT warps), applies the
// SwiGLU and writes them as chunk blockIdx.x of h for assignment a,
// quantized for mq_down: qh[a][chunk] is 2 columns × 32 bytes (hi, lo) and
// dh[a][chunk] its scale. ff is a multiple of 32.
template <int T>
__device__ void mq_gateup_impl(u8* qh, float* dh, const u8* qx, const float* dx, WView gw, WView uw,
                               const float* gb, const float* ub, const int* ids, int k, int ff, SwiGLU act) {
    __shared__ float red[MQ_KSPLIT][32][2];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    int rg = warp / MQ_KSPLIT, ks = warp % MQ_KSPLIT;
    int a = blockIdx.y, tok = a / k, in = (int)gw.in;
    i64 base = (i64)ids[a] * ff + blockIdx.x * 32;
    i64 ra = base + rg * 16 + g;
    MqPair p[2] = {{gw.q, gw.s, ra, ra + 8}, {uw.q, uw.s, ra, ra + 8}};
    MqX x = {qx + g * 32 + t * 8, dx + t, MQ_CHUNK, MQ_TOKENS, true};
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    mq_dot<T, 2, 1>(p, in, x, ks, MQ_KSPLIT, acc);
    if (t == tok) {
        red[ks][rg * 16 + g][0] = acc[0];
        red[ks][rg * 16 + g + 8][0] = acc[1];
        red[ks][rg * 16 + g][1] = acc[2];
        red[ks][rg * 16 + g + 8][1] = acc[3];
    }
    __syncthreads();
    if (warp != 0) return;
    float gv = 0.f, uv = 0.f;
#pragma unroll
    for (int j = 0; j < MQ_KSPLIT; j++) {
        gv += red[j][lane][0];
        uv += red[j][lane][1];
    }
    gv += gb ? gb[base + lane] : 0.f;
    uv += ub ? ub[base + lane] : 0.f;
    mq_store_row(swiglu_act(gv, uv, act), (i64)a * (ff / 32) + blockIdx.x, qh, dh);
}

// mq_down: MoE decode, second half: dst[t][r] = Σ_slot wts[a]·(down_e[r]·h[a] + db_e[r])
// with a = t·k + slot. Block (16 rows, token t) has k × ksplit warps: warp
// w works on slot w / ksplit and its share of the inner dimension; thread r
// then sums the slots in ascending expert order (ids are sorted per token),
// as the reference does.
template <int T>
__device__ void mq_down_impl(float* dst, const u8* qh, const float* dh, WView dw, const float* db, const int* ids,
                             const float* wts, int k, int hidden, int ksplit) {
    __shared__ float red[MQ_DOWN_WARPS][16];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    int slot = warp / ksplit, ks = warp % ksplit;
    int r0 = blockIdx.x * 16, tok = blockIdx.y, a = tok * k + slot;
    int in = (int)dw.in, nblk = in / 32;
    i64 base = (i64)ids[a] * hidden;
    MqPair p = {dw.q, dw.s, base + min(r0 + g, hidden - 1), base + min(r0 + g + 8, hidden - 1)};
    // Only columns 0 and 1 (this slot's h, hi and lo) hold data.
    MqX x = {qh + (i64)a * nblk * 64 + g * 32 + t * 8, dh + (i64)a * nblk, 64, 1, g < 2};
    float acc[2] = {0.f, 0.f};
    mq_dot<T, 1, 1>(&p, in, x, ks, ksplit, acc);
    if (t == 0) {
        red[warp][g] = acc[0];
        red[warp][g + 8] = acc[1];
    }
    __syncthreads();
    int row = threadIdx.x;
    if (row >= 16 || r0 + row >= hidden) return;
    float sum = 0.f;
    for (int j = 0; j < k; j++) {
        float y = 0.f;
        for (int s2 = 0; s2 < ksplit; s2++) y += red[j * ksplit + s2][row];
        int aj = tok * k + j;
        sum += wts[aj] * (y + (db ? db[(i64)ids[aj] * hidden + r0 + row] : 0.f));
    }
    dst[(i64)tok * hidden + r0 + row] = sum;
}

#define MQ_KERNELS(T, NAME)                                                                                    \
    extern "C" __global__ void __launch_bounds__(32 * MQ_WARPS)                                                \
        mq_matvec_##NAME(float* dst, const u8* qx, const float* dx, const u8* q, const u8* s, int in,          \
                         const float* bias, int n, int out) {                                                  \
        mq_matvec_impl<T>(MqMat{dst, q, s, bias, out}, blockIdx.x * 16, qx, dx, in, n);                        \
    }                                                                                                          \
    /* mq_matvec3: three matrices of one x; the first's row blocks come first, then the second's. */          \
    extern "C" __global__ void __launch_bounds__(32 * MQ_WARPS)                                                \
        mq_matvec3_##NAME(const u8* qx, const float* dx, int in, int n, float* d0, const u8* q0, const u8* s0, \
                          const float* b0, int o0, float* d1, const u8* q1, const u8* s1, const float* b1,     \
                          int o1, float* d2, const u8* q2, const u8* s2, const float* b2, int o2) {            \
        int blk = blockIdx.x, n0 = (o0 + 15) / 16, n1 = (o1 + 15) / 16;                                        \
        if (blk < n0)                                                                                          \
            mq_matvec_impl<T>(MqMat{d0, q0, s0, b0, o0}, blk * 16, qx, dx, in, n);                             \
        else if (blk < n0 + n1)                                                                                \
            mq_matvec_impl<T>(MqMat{d1, q1, s1, b1, o1}, (blk - n0) * 16, qx, dx, in, n);                      \
        else                                                                                                   \
            mq_matvec_impl<T>(MqMat{d2, q2, s2, b2, o2}, (blk - n0 - n1) * 16, qx, dx, in, n);                 \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(64 * MQ_KSPLIT, 3)                                            \
        mq_gateup_##NAME(u8* qh, float* dh, const u8* qx, const float* dx, const u8* gq, const u8* gs,         \
                         const u8* uq, const u8* us, int in, const float* gb, const float* ub, const int* ids, \
                         int k, int ff, float alpha, float limit, float shift) {                               \
        mq_gateup_impl<T>(qh, dh, qx, dx, WView{gq, gs, in}, WView{uq, us, in}, gb, ub, ids, k, ff,            \
                          SwiGLU{alpha, limit, shift});                                                        \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(32 * MQ_DOWN_WARPS, 2)                                        \
        mq_down_##NAME(float* dst, const u8* qh, const float* dh, const u8* q, const u8* s, int in,            \
                       const float* db, const int* ids, const float* wts, int k, int hidden, int ksplit) {     \
        mq_down_impl<T>(dst, qh, dh, WView{q, s, in}, db, ids, wts, k, hidden, ksplit);                        \
    }

MQ_KERNELS(T_Q8_0, q8_0)
MQ_KERNELS(T_MXFP4, mxfp4)
