// MoE experts and dense products of the middle batch sizes (more than MQ_TOKENS and up to a few
// hundred tokens a step: continuous batching's decode steps) on the integer
// tensor cores, with mqvec.cu's formats: weights as int8 by byte permutes,
// activations as two int8 digits a column pair, mma.sync m16n8k32 s8.
//
// The assignments are first counting-sorted by expert (moe_group), so each
// selected expert's weights are read once a step, and a weight chunk, once
// decoded to int8, serves every token of its expert. A block owns 64 rows
// of one expert's matrices (gate and up together, or down) and up to 4·Q
// tokens of that expert (a pass; an expert with more tokens takes more
// passes, neighbouring blocks that find its weights in L2). Its four warps
// own 16 rows each and the whole inner dimension; dense products too small
// to fill the chip that way take 16-row blocks whose warps split the chunks.
//
// Weights and activations stream through shared memory by cp.async, a stage
// (MQG_STAGE chunks of 32 elements) at a time, MQG_STAGES stages in
// flight, so a block keeps tens of kilobytes of loads outstanding whatever
// its arithmetic is doing. The previous kernels held one load group a warp
// in registers and were latency-bound at a quarter occupancy (NOTES.md
// #21: 595 GB/s at 64 tokens a step). The block scales of the weights and
// of x are read into shared memory once, before the stream.
//
// x and h are quantized row-major (mq_store_row): chunk c of row r is 64
// bytes at q + (r·nblk + c)·64, the hi digits then the lo digits, and its
// scale d[r·nblk + c]. Lane (g, t) of an MMA needs B column g (token g/2,
// digit g&1) of a chunk: 8 bytes at (g&1)·32 + 8t, and the scale of token t.

#include "mq.cuh"

#ifndef MQG_STAGE // from Go as -DMQG_STAGE (kernelDefines); this default serves standalone checks
#define MQG_STAGE 4 // 32-element chunks a pipeline stage
#endif
#ifndef MQG_STAGES // from Go as -DMQG_STAGES (kernelDefines); this default serves standalone checks
#define MQG_STAGES 2 // pipeline stages in flight
#endif
#define MQG_THREADS 128 // four warps: row groups of 16 × slices of each stage's chunks

// Shared-memory row strides: 16 pad bytes after a weight row's stage and 64
// after a token's make the fragment loads of a warp free of bank conflicts.
#define MQG_WROW(T) (MQG_STAGE * ((T) == T_Q8_0 ? 32 : 16) + 16)
#define MQG_XROW (MQG_STAGE * 64 + 64)

// MqgSmem is a block's shared memory, carved from the dynamic allocation
// (mqgShmem in Go computes the same size): the weight scales (NP·16RG rows
// × nblk, 1 byte (MXFP4) or 2 (Q8_0) each), x's scales (4Q tokens × nblk
// floats), each token's x row, then the weight and x stages.
template <int T, int NP, int Q, int RG>
struct MqgSmem {
    u8 *ws, *w, *x;
    float* xs;
    int* xrow;
    __device__ MqgSmem(u8* base, int nblk) {
        ws = base;
        xs = (float*)(ws + NP * 16 * RG * nblk * (T == T_Q8_0 ? 2 : 1));
        xrow = (int*)(xs + 4 * Q * nblk);
        w = (u8*)(xrow + 4 * Q);
        x = w + MQG_STAGES * NP * 16 * RG * MQG_WROW(T);
    }
};

// MqgLoads is one thread's share of every stage's cp.async loads, worked
// out once a block: its 16-byte pieces of the weight rows and of the pass's
// tokens' x, each a source at stage 0, a destination in the stage buffer,
// and whether its row (or token) exists; a stage moves every source by
// MQG_STAGE chunks. (Computing each piece's address in the stage loop, with
// 64-bit products and divisions, took about half the kernel's instructions:
// NOTES.md #27.)
template <int T, int NP, int Q, int RG>
struct MqgLoads {
    static const int CB = T == T_Q8_0 ? 32 : 16, PR = MQG_STAGE * CB / 16, R = 16 * RG; // PR: pieces a row's stage
    static const int NW = NP * R * PR, NX = 4 * Q * MQG_STAGE * 4;                      // pieces a stage
    static const int WI = (NW + MQG_THREADS - 1) / MQG_THREADS, XI = (NX + MQG_THREADS - 1) / MQG_THREADS;
    const u8* wsrc[WI];
    const u8* xsrc[XI];
    int wdst[WI], xdst[XI], wc[WI], xc[XI]; // destinations (bytes into a stage) and chunks within a stage
    bool wok[WI], xok[XI];

    __device__ MqgLoads(const MqgSmem<T, NP, Q, RG>& sm, const WView* w, i64 base, int valid, const u8* qx, int nblk) {
#pragma unroll
        for (int i = 0; i < WI; i++) {
            int p = i * MQG_THREADS + threadIdx.x, rr = p / PR, c = (p % PR) * 16 / CB, part = (p % PR) * 16 % CB;
            int m = min(rr / R, NP - 1), r = rr % R;
            wok[i] = p < NW && r < valid;
            wsrc[i] = w[m].q + (wok[i] ? (base + r) * nblk * CB + c * CB + part : 0);
            wdst[i] = rr * MQG_WROW(T) + c * CB + part;
            wc[i] = c;
        }
#pragma unroll
        for (int i = 0; i < XI; i++) {
            int p = i * MQG_THREADS + threadIdx.x, j = min(p / (MQG_STAGE * 4), 4 * Q - 1);
            int c = p / 4 % MQG_STAGE, part = p % 4 * 16, xr = sm.xrow[j];
            xok[i] = p < NX && xr >= 0;
            xsrc[i] = qx + (xok[i] ? ((i64)xr * nblk + c) * 64 + part : 0);
            xdst[i] = j * MQG_XROW + c * 64 + part;
            xc[i] = c;
        }
    }

    // issue queues stage s (chunks s·MQG_STAGE..) into buffer s %
    // MQG_STAGES; chunks past nblk, absent rows and tokens are zero-filled.
    __device__ __forceinline__ void issue(const MqgSmem<T, NP, Q, RG>& sm, int nblk, int s) const {
        int c0 = s * MQG_STAGE, buf = s % MQG_STAGES;
        u8* wb = sm.w + buf * NP * R * MQG_WROW(T);
        u8* xb = sm.x + buf * 4 * Q * MQG_XROW;
#pragma unroll
        for (int i = 0; i < WI; i++) {
            bool ok = wok[i] && c0 + wc[i] < nblk;
            if (NW % MQG_THREADS == 0 || i * MQG_THREADS + (int)threadIdx.x < NW)
                cp_async16(wb + wdst[i], ok ? wsrc[i] + (i64)c0 * CB : wsrc[i], ok);
        }
#pragma unroll
        for (int i = 0; i < XI; i++) {
            bool ok = xok[i] && c0 + xc[i] < nblk;
            if (NX % MQG_THREADS == 0 || i * MQG_THREADS + (int)threadIdx.x < NX)
                cp_async16(xb + xdst[i], ok ? xsrc[i] + (i64)c0 * 64 : xsrc[i], ok);
        }
    }
};

// mqg_stage adds stage s (in its buffer) to acc[j][2i] (row g of this
// warp's 16 of matrix i) and acc[j][2i+1] (row g+8) for token t of quad j.
// With RG row groups the 4/RG warps of a group take every (4/RG)-th chunk
// of the stage. No branches, so the chunks' dependency chains interleave:
// a chunk past nblk has zero weights (its products are exactly 0 against
// the last chunk's scales, which are finite wherever the real sums are),
// an absent token zero digits and scale 0, so they add nothing.
template <int T, int NP, int Q, int RG>
__device__ __forceinline__ void mqg_stage(const MqgSmem<T, NP, Q, RG>& sm, int nblk, int s, float (*acc)[2 * NP]) {
    const int CB = T == T_Q8_0 ? 32 : 16, KS = 4 / RG, R = 16 * RG;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    int rg = warp / KS, ks = warp % KS, c0 = s * MQG_STAGE, buf = s % MQG_STAGES;
    const u8* wb = sm.w + buf * NP * R * MQG_WROW(T);
    const u8* xb = sm.x + buf * 4 * Q * MQG_XROW + (g >> 1) * MQG_XROW + (g & 1) * 32 + 8 * t;
#pragma unroll
    for (int u = 0; u < MQG_STAGE / KS; u++) {
        int c = u * KS + ks, cg = min(c0 + c, nblk - 1);
        u32 a[NP][4];
        float sa[NP], sb[NP];
#pragma unroll
        for (int i = 0; i < NP; i++) {
            int ra = i * R + rg * 16 + g, rb = ra + 8;
            const u8* pa = wb + ra * MQG_WROW(T) + c * CB + 4 * t;
            const u8* pb = wb + rb * MQG_WROW(T) + c * CB + 4 * t;
            MqRaw ka, kb;
            if (T == T_Q8_0) {
                ka = MqRaw{*(const u32*)pa, *(const u32*)(pa + 16), ((const u16*)sm.ws)[ra * nblk + cg]};
                kb = MqRaw{*(const u32*)pb, *(const u32*)(pb + 16), ((const u16*)sm.ws)[rb * nblk + cg]};
            } else {
                ka = MqRaw{*(const u32*)pa, 0u, sm.ws[ra * nblk + cg]};
                kb = MqRaw{*(const u32*)pb, 0u, sm.ws[rb * nblk + cg]};
            }
            sa[i] = mq_frag<T>(ka, a[i][0], a[i][2]);
            sb[i] = mq_frag<T>(kb, a[i][1], a[i][3]);
        }
#pragma unroll
        for (int j = 0; j < Q; j++) {
            uint2 bx = *(const uint2*)(xb + 4 * j * MQG_XROW + c * 64);
            float xd = sm.xs[(4 * j + t) * nblk + cg];
#pragma unroll
            for (int i = 0; i < NP; i++) {
                int d[4];
                mma_s8(d, a[i][0], a[i][1], a[i][2], a[i][3], bx.x, bx.y);
                acc[j][2 * i] += (float)(d[0] * 256 + d[1]) * (sa[i] * xd);
                acc[j][2 * i + 1] += (float)(d[2] * 256 + d[3]) * (sb[i] * xd);
            }
        }
    }
}

// mqg_block computes, for the grouped rows r0..r0+nr-1 (nr ≤ 4Q; row r
// reads row xrows[r] of x, or row r when xrows is NULL), NP matrices' rows
// base..base+valid-1 (valid ≤ 16RG) into acc (this warp's share of the
// chunks), streaming the scales, weights and x through shared memory. On
// return the shared memory is free.
template <int T, int NP, int Q, int RG>
__device__ __forceinline__ void mqg_block(const MqgSmem<T, NP, Q, RG>& sm, const WView* w, i64 base, int valid,
                                          const u8* qx, const float* dx, const int* xrows, int r0, int nr,
                                          float (*acc)[2 * NP]) {
    const int SB = T == T_Q8_0 ? 2 : 1, R = 16 * RG;
    int nblk = (int)(w[0].in / 32), nst = (nblk + MQG_STAGE - 1) / MQG_STAGE;
    for (int j = threadIdx.x; j < 4 * Q; j += MQG_THREADS)
        sm.xrow[j] = j < nr ? (xrows ? xrows[r0 + j] : r0 + j) : -1;
    // The scales join the first stage's group; rows past valid get zeros.
#pragma unroll
    for (int i = 0; i < NP; i++) {
        u8* d = sm.ws + i * R * nblk * SB;
        copy_async(d, w[i].s + base * nblk * SB, valid * nblk * SB);
        for (int p = valid * nblk * SB + threadIdx.x; p < R * nblk * SB; p += MQG_THREADS) d[p] = 0;
    }
    __syncthreads(); // xrow
    for (int j = threadIdx.x >> 5; j < 4 * Q; j += MQG_THREADS / 32) {
        int xr = sm.xrow[j];
        for (int c = threadIdx.x & 31; c < nblk; c += 32)
            if (xr >= 0)
                cp_async4(sm.xs + j * nblk + c, dx + (i64)xr * nblk + c);
            else
                sm.xs[j * nblk + c] = 0.f;
    }
    const MqgLoads<T, NP, Q, RG> ld(sm, w, base, valid, qx, nblk);
#pragma unroll
    for (int s = 0; s < MQG_STAGES - 1; s++) {
        if (s < nst) ld.issue(sm, nblk, s);
        cp_async_commit();
    }
#pragma unroll
    for (int j = 0; j < Q; j++)
#pragma unroll
        for (int i = 0; i < 2 * NP; i++) acc[j][i] = 0.f;
    for (int s = 0; s < nst; s++) {
        cp_async_wait<MQG_STAGES - 2>();
        __syncthreads(); // stage s landed for every thread; stage s-1's buffer is free
        if (s + MQG_STAGES - 1 < nst) ld.issue(sm, nblk, s + MQG_STAGES - 1);
        cp_async_commit();
        mqg_stage<T, NP, Q, RG>(sm, nblk, s, acc);
    }
    cp_async_wait<0>();
    __syncthreads();
}

// mq_quant_rows: x's n rows quantized row-major (mq_store_row), one warp a
// (chunk, row): blockIdx.y is the row.
extern "C" __global__ void mq_quant_rows(u8* q, float* d, const float* x, int in) {
    int nblk = in / 32, c = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), r = blockIdx.y;
    if (c < nblk) mq_store_row(x[(i64)r * in + c * 32 + (threadIdx.x & 31)], (i64)r * nblk + c, q, d);
}

// mqg_gateup: block (pass, row tile blockIdx.y, expert e = blockIdx.z)
// computes rows 64·blockIdx.y.. of gate and up of expert e for the pass's
// grouped rows r0..r0+nr-1 (token xrows[r]), applies the SwiGLU and writes
// h's chunks of those rows quantized (qh, dh: row-major, ff/32 chunks a
// row) for mqg_down.
template <int T, int Q>
__device__ void mqg_gateup_impl(u8* qh, float* dh, const u8* qx, const float* dx, WView gw, WView uw,
                                const float* gb, const float* ub, const int* xrows, int ff, SwiGLU act, int r0,
                                int nr) {
    extern __shared__ __align__(16) u8 mqg_shmem[];
    int e = blockIdx.z, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int R = 64;
    int row0 = blockIdx.y * R, valid = min(R, ff - row0);
    i64 base = (i64)e * ff + row0;
    MqgSmem<T, 2, Q, 4> sm(mqg_shmem, (int)(gw.in / 32));
    WView w[2] = {gw, uw};
    float acc[Q][4];
    mqg_block<T, 2, Q, 4>(sm, w, base, valid, qx, dx, xrows, r0, nr, acc);
    // Gate and up of (token, row) meet in shared memory, free again.
    float2* red = (float2*)mqg_shmem; // [4Q tokens][R rows]
#pragma unroll
    for (int j = 0; j < Q; j++) {
        red[(4 * j + t) * R + warp * 16 + g] = make_float2(acc[j][0], acc[j][2]);
        red[(4 * j + t) * R + warp * 16 + g + 8] = make_float2(acc[j][1], acc[j][3]);
    }
    __syncthreads();
    for (int p = warp; p < nr * (R / 32); p += MQG_THREADS / 32) {
        int j = p / (R / 32), half = p % (R / 32), row = half * 32 + lane;
        if (half * 32 >= valid) continue;
        float2 v = red[j * R + row];
        float gv = v.x + (gb ? gb[base + row] : 0.f), uv = v.y + (ub ? ub[base + row] : 0.f);
        mq_store_row(swiglu_act(gv, uv, act), (i64)(r0 + j) * (ff / 32) + (row0 + half * 32) / 32, qh, dh);
    }
}

// mqg_rows: block (pass, row tile blockIdx.y, ·) computes y[r][row] =
// w_e[row]·x[r] + bias_e[row] for rows 16RG·blockIdx.y.. of expert e's out
// rows and the pass's grouped rows r0..r0+nr-1; a dense product (e = 0)
// takes x's n rows. mqg_down, mqg_matmul and mqg_matmul3.
template <int T, int Q, int RG>
__device__ void mqg_rows_impl(float* y, const u8* qx, const float* dx, WView w, const float* bias, int out, int e,
                              int r0, int nr) {
    extern __shared__ __align__(16) u8 mqg_shmem[];
    const int KS = 4 / RG, R = 16 * RG;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    int row0 = blockIdx.y * R, valid = min(R, out - row0);
    i64 base = (i64)e * out + row0;
    MqgSmem<T, 1, Q, RG> sm(mqg_shmem, (int)(w.in / 32));
    float acc[Q][2];
    mqg_block<T, 1, Q, RG>(sm, &w, base, valid, qx, dx, 0, r0, nr, acc);
    // The warps' chunk slices meet in shared memory: red[ks][token][row].
    float* red = (float*)mqg_shmem;
    int ra = (warp / KS) * 16 + g, ks = warp % KS;
#pragma unroll
    for (int j = 0; j < Q; j++) {
        red[(ks * 4 * Q + 4 * j + t) * R + ra] = acc[j][0];
        red[(ks * 4 * Q + 4 * j + t) * R + ra + 8] = acc[j][1];
    }
    __syncthreads();
    for (int p = threadIdx.x; p < nr * R; p += MQG_THREADS) {
        int j = p / R, row = p % R;
        if (row >= valid) continue;
        float v = bias ? bias[base + row] : 0.f;
#pragma unroll
        for (int k = 0; k < KS; k++) v += red[(k * 4 * Q + j) * R + row];
        y[(i64)(r0 + j) * out + row0 + row] = v;
    }
}

// mqg_pass is the pass of block (blockIdx.x, ·, expert blockIdx.z) of a
// launch of Q quads: its first grouped row r0 and its row count nr (0 for a
// pass past the expert's rows; without starts, the n rows of a dense
// product).
template <int Q>
__device__ __forceinline__ int mqg_pass(const int* starts, int n, int& r0) {
    int lo = starts ? starts[blockIdx.z] : 0, hi = starts ? starts[blockIdx.z + 1] : n;
    r0 = lo + 4 * Q * blockIdx.x;
    return max(0, min(hi - r0, 4 * Q));
}

// Quads carries a pass's quad count to mqg_fit's callback as a type.
template <int Q>
struct Quads {
    static constexpr int q = Q;
};

// mqg_fit calls f(Quads<q>()) with the fewest quads q ≤ Q that hold the
// pass's nr rows (nothing when nr is 0): a launch's Q fits its experts'
// typical share of the tokens, and the pass of an expert with fewer (or a
// last, partial pass) skips the arithmetic of the empty quads. nr is the
// same in the whole block, so the branch is uniform; the kernel keeps the
// registers of its largest instance.
template <int Q, class F>
__device__ __forceinline__ void mqg_fit(int nr, F f) {
    if (nr <= 0) return;
    if constexpr (Q >= 8)
        if (nr > 16) return f(Quads<8>());
    if constexpr (Q >= 4)
        if (nr > 8) return f(Quads<4>());
    f(Quads<2>());
}

#define MQG_KERNELS(T, NAME, Q)                                                                                  \
    extern "C" __global__ void __launch_bounds__(MQG_THREADS, 2)                                                 \
        mqg_gateup_##NAME##_q##Q(u8* qh, float* dh, const u8* qx, const float* dx, const u8* gq, const u8* gs,   \
                                 const u8* uq, const u8* us, int in, const float* gb, const float* ub,           \
                                 const int* starts, const int* xrows, int ff, float alpha, float limit,          \
                                 float shift) {                                                                  \
        int r0, nr = mqg_pass<Q>(starts, 0, r0);                                                                 \
        WView g{gq, gs, in}, u{uq, us, in};                                                                      \
        SwiGLU act{alpha, limit, shift};                                                                         \
        mqg_fit<Q>(nr, [&](auto k) {                                                                             \
            mqg_gateup_impl<T, decltype(k)::q>(qh, dh, qx, dx, g, u, gb, ub, xrows, ff, act, r0, nr);            \
        });                                                                                                      \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(MQG_THREADS, 2)                                                 \
        mqg_down_##NAME##_q##Q(float* y, const u8* qh, const float* dh, const u8* q, const u8* s, int in,        \
                               const float* db, const int* starts, int hidden) {                                 \
        int r0, nr = mqg_pass<Q>(starts, 0, r0);                                                                 \
        WView w{q, s, in};                                                                                       \
        mqg_fit<Q>(nr, [&](auto k) {                                                                             \
            mqg_rows_impl<T, decltype(k)::q, 4>(y, qh, dh, w, db, hidden, blockIdx.z, r0, nr);                   \
        });                                                                                                      \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(MQG_THREADS, 2)                                                 \
        mqg_matmul_##NAME##_q##Q(float* dst, const u8* qx, const float* dx, const u8* q, const u8* s, int in,    \
                                 const float* bias, int n, int out) {                                            \
        int r0, nr = mqg_pass<Q>(0, n, r0);                                                                      \
        WView w{q, s, in};                                                                                       \
        mqg_fit<Q>(nr, [&](auto k) { mqg_rows_impl<T, decltype(k)::q, 4>(dst, qx, dx, w, bias, out, 0, r0, nr); }); \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(MQG_THREADS, 2)                                                 \
        mqg_matmul16_##NAME##_q##Q(float* dst, const u8* qx, const float* dx, const u8* q, const u8* s, int in,  \
                                   const float* bias, int n, int out) {                                          \
        int r0, nr = mqg_pass<Q>(0, n, r0);                                                                      \
        WView w{q, s, in};                                                                                       \
        mqg_fit<Q>(nr, [&](auto k) { mqg_rows_impl<T, decltype(k)::q, 1>(dst, qx, dx, w, bias, out, 0, r0, nr); }); \
    }                                                                                                            \
    MQG_MATMUL3(T, NAME, Q, 4, mqg_matmul3)                                                                      \
    MQG_MATMUL3(T, NAME, Q, 1, mqg_matmul3_16)

// mqg_matmul3 (64-row tiles) and mqg_matmul3_16 (16-row): the three dense
// products of one x (q, k and v) in one launch, grid z picking the product
// (row tiles past its out return at once): k's and v's launches alone left
// most of the chip idle.
#define MQG_MATMUL3(T, NAME, Q, RG, KERNEL)                                                                      \
    extern "C" __global__ void __launch_bounds__(MQG_THREADS, 2) KERNEL##_##NAME##_q##Q(                         \
        const u8* qx, const float* dx, int in, int n, float* d0, const u8* q0, const u8* s0, const float* b0,    \
        int out0, float* d1, const u8* q1, const u8* s1, const float* b1, int out1, float* d2, const u8* q2,    \
        const u8* s2, const float* b2, int out2) {                                                              \
        int z = blockIdx.z, out = z == 0 ? out0 : z == 1 ? out1 : out2;                                         \
        if (blockIdx.y * 16 * RG >= out) return;                                                                \
        WView w = z == 0 ? WView{q0, s0, in} : z == 1 ? WView{q1, s1, in} : WView{q2, s2, in};                 \
        float* dst = z == 0 ? d0 : z == 1 ? d1 : d2;                                                            \
        const float* bias = z == 0 ? b0 : z == 1 ? b1 : b2;                                                     \
        int r0, nr = mqg_pass<Q>(0, n, r0);                                                                     \
        mqg_fit<Q>(nr, [&](auto k) { mqg_rows_impl<T, decltype(k)::q, RG>(dst, qx, dx, w, bias, out, 0, r0, nr); }); \
    }

MQG_KERNELS(T_Q8_0, q8_0, 2)
MQG_KERNELS(T_Q8_0, q8_0, 4)
MQG_KERNELS(T_Q8_0, q8_0, 8)
MQG_KERNELS(T_MXFP4, mxfp4, 2)
MQG_KERNELS(T_MXFP4, mxfp4, 4)
MQG_KERNELS(T_MXFP4, mxfp4, 8)
