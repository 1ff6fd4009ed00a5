// MoE experts and dense products of the middle batch sizes (more than MQ_TOKENS and up to a few
// hundred tokens a step: continuous batching's decode steps) on the integer
// tensor cores, with mqvec.cu's formats: weights as int8 by byte permutes,
// activations as two int8 digits a column pair, mma.sync m16n8k32 s8.
//
// The assignments are first counting-sorted by expert (moe_group), so each
// selected expert's weights are read once a step, and a weight chunk, once
// decoded to int8, serves every token of its expert: a block owns 32 rows of
// one expert's matrix (two row groups of 16 × MQ_KSPLIT warps splitting the
// inner dimension) and walks its expert's tokens MQG_QUADS quads (4 tokens,
// 8 MMA columns) at a time. The grouped f16 tile kernel (matmul.cu), which
// these replace below the prefill sizes, read each expert's rows once per 64
// tokens too, but with one 32-element chunk in flight a thread, so at a few
// tokens an expert it was bound by DRAM latency, not bandwidth.
//
// x and h are quantized row-major (mq_store_row): chunk c of row r is 64
// bytes at q + (r·nblk + c)·64, the hi digits then the lo digits, and its
// scale d[r·nblk + c]. Lane (g, t) of an MMA needs B column g (token g/2,
// digit g&1) of chunk c: 8 bytes at q + (row·nblk + c)·64 + (g&1)·32 + 8t,
// and the scale of token t.

#define MQG_QUADS 8 // token quads a pass keeps in registers (32 tokens)

// MqgCols is a lane's view of the current pass's tokens: for quad j, the
// byte offset of its B column in chunk 0 (-1: no token, B is zero) and the
// scale index of its token t in chunk 0 (-1: none).
struct MqgCols {
    int b[MQG_QUADS], d[MQG_QUADS];
};

// mqg_chunk adds chunk c of NP row pairs (ka: rows g, kb: rows g+8, as
// loaded) times the pass's nq quads of x to acc[j][2i] (row g) and
// acc[j][2i+1] (row g+8) for token t of quad j.
template <int T, int NP>
__device__ __forceinline__ void mqg_chunk(const MqRaw* ka, const MqRaw* kb, const u8* qx, const float* dx, int c,
                                          const MqgCols& col, int nq, float (*acc)[2 * NP]) {
    u32 a[NP][4];
    float sa[NP], sb[NP];
#pragma unroll
    for (int i = 0; i < NP; i++) {
        sa[i] = mq_frag<T>(ka[i], a[i][0], a[i][2]);
        sb[i] = mq_frag<T>(kb[i], a[i][1], a[i][3]);
    }
    uint2 bx[MQG_QUADS];
    float xd[MQG_QUADS];
#pragma unroll
    for (int j = 0; j < MQG_QUADS; j++) {
        bx[j] = uint2{0u, 0u};
        xd[j] = 0.f;
        if (j < nq) {
            if (col.b[j] >= 0) bx[j] = __ldg((const uint2*)(qx + col.b[j] + (i64)c * 64));
            if (col.d[j] >= 0) xd[j] = __ldg(dx + col.d[j] + c);
        }
    }
#pragma unroll
    for (int j = 0; j < MQG_QUADS; j++)
        if (j < nq)
#pragma unroll
            for (int i = 0; i < NP; i++) {
                int d[4];
                mma_s8(d, a[i][0], a[i][1], a[i][2], a[i][3], bx[j].x, bx[j].y);
                acc[j][2 * i] += (float)(d[0] * 256 + d[1]) * (sa[i] * xd[j]);
                acc[j][2 * i + 1] += (float)(d[2] * 256 + d[3]) * (sb[i] * xd[j]);
            }
}

// mqg_dot runs this warp's share of the inner dimension (groups ks,
// ks + MQ_KSPLIT, …, the next group's loads issued before the current one
// is used; then the chunks after the last whole group) for NP row pairs.
template <int T, int NP>
__device__ __forceinline__ void mqg_dot(const MqPair* p, int in, const u8* qx, const float* dx, const MqgCols& col,
                                        int nq, int ks, float (*acc)[2 * NP]) {
    const int GC = MQ_GC(T);
    int t = threadIdx.x & 3, quad = threadIdx.x & 28, nblk = in / 32, ngrp = nblk / GC;
    MqGroup cur[NP], nxt[NP];
    if (ks < ngrp)
#pragma unroll
        for (int i = 0; i < NP; i++) mq_gload<T>(p[i], in, ks * GC, t, cur[i]);
    for (int grp = ks; grp < ngrp; grp += MQ_KSPLIT) {
        if (grp + MQ_KSPLIT < ngrp)
#pragma unroll
            for (int i = 0; i < NP; i++) mq_gload<T>(p[i], in, (grp + MQ_KSPLIT) * GC, t, nxt[i]);
        u32 wa[NP][4], wb[NP][4];
#pragma unroll
        for (int i = 0; i < NP; i++) {
            wa[i][0] = cur[i].a.x, wa[i][1] = cur[i].a.y, wa[i][2] = cur[i].a.z, wa[i][3] = cur[i].a.w;
            wb[i][0] = cur[i].b.x, wb[i][1] = cur[i].b.y, wb[i][2] = cur[i].b.z, wb[i][3] = cur[i].b.w;
            quad_transpose(wa[i]);
            quad_transpose(wb[i]);
        }
#pragma unroll
        for (int j = 0; j < GC; j++) { // as mq_gdot hands the words out
            MqRaw ka[NP], kb[NP];
#pragma unroll
            for (int i = 0; i < NP; i++) {
                if (T == T_MXFP4) {
                    u32 s = __shfl_sync(0xffffffffu, cur[i].s, quad | j);
                    ka[i] = MqRaw{wa[i][j], 0u, s & 0xff};
                    kb[i] = MqRaw{wb[i][j], 0u, s >> 8};
                } else {
                    u32 s0 = __shfl_sync(0xffffffffu, cur[i].s, quad | j);
                    u32 s1 = __shfl_sync(0xffffffffu, cur[i].s, quad | 2 | j);
                    ka[i] = MqRaw{wa[i][2 * j], wa[i][2 * j + 1], s0};
                    kb[i] = MqRaw{wb[i][2 * j], wb[i][2 * j + 1], s1};
                }
            }
            mqg_chunk<T, NP>(ka, kb, qx, dx, grp * GC + j, col, nq, acc);
        }
#pragma unroll
        for (int i = 0; i < NP; i++) cur[i] = nxt[i];
    }
    for (int c = ngrp * GC + ks; c < nblk; c += MQ_KSPLIT) {
        MqRaw ka[NP], kb[NP];
#pragma unroll
        for (int i = 0; i < NP; i++) {
            mq_load<T>(p[i].q, p[i].s, in, p[i].ra, c, t, ka[i]);
            mq_load<T>(p[i].q, p[i].s, in, p[i].rb, c, t, kb[i]);
        }
        mqg_chunk<T, NP>(ka, kb, qx, dx, c, col, nq, acc);
    }
}

// mqg_pass computes, for the tokens in grouped rows r0..r0+nr-1 (nr ≤
// 4·MQG_QUADS; row r reads row xrows[r] of x, or row r when xrows is NULL),
// NP matrices' rows base..base+31 (rows past last repeat it) and leaves
// red[ks][row][token][i] for the block to sum over ks.
template <int T, int NP>
__device__ __forceinline__ void mqg_pass(const WView* w, i64 base, i64 last, const u8* qx, const float* dx,
                                         const int* xrows, int r0, int nr, float (*red)[32][4 * MQG_QUADS][NP]) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    int rg = warp / MQ_KSPLIT, ks = warp % MQ_KSPLIT;
    int in = (int)w[0].in, nblk = in / 32, nq = (nr + 3) / 4;
    MqgCols col;
#pragma unroll
    for (int j = 0; j < MQG_QUADS; j++) {
        int rb = 4 * j + (g >> 1), rd = 4 * j + t;
        int xb = rb < nr ? (xrows ? xrows[r0 + rb] : r0 + rb) : -1;
        int xdr = rd < nr ? (xrows ? xrows[r0 + rd] : r0 + rd) : -1;
        col.b[j] = xb < 0 ? -1 : xb * nblk * 64 + (g & 1) * 32 + t * 8;
        col.d[j] = xdr < 0 ? -1 : xdr * nblk;
    }
    i64 ra = min(base + rg * 16 + g, last), rb = min(base + rg * 16 + g + 8, last);
    MqPair p[NP];
#pragma unroll
    for (int i = 0; i < NP; i++) p[i] = MqPair{w[i].q, w[i].s, ra, rb};
    float acc[MQG_QUADS][2 * NP];
#pragma unroll
    for (int j = 0; j < MQG_QUADS; j++)
#pragma unroll
        for (int i = 0; i < 2 * NP; i++) acc[j][i] = 0.f;
    mqg_dot<T, NP>(p, in, qx, dx, col, nq, ks, acc);
#pragma unroll
    for (int j = 0; j < MQG_QUADS; j++)
        if (j < nq)
#pragma unroll
            for (int i = 0; i < NP; i++) {
                red[ks][rg * 16 + g][4 * j + t][i] = acc[j][2 * i];
                red[ks][rg * 16 + g + 8][4 * j + t][i] = acc[j][2 * i + 1];
            }
}

// mq_quant_rows: x's n rows quantized row-major (mq_store_row), one warp a
// (chunk, row): blockIdx.y is the row.
extern "C" __global__ void mq_quant_rows(u8* q, float* d, const float* x, int in) {
    int nblk = in / 32, c = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), r = blockIdx.y;
    if (c < nblk) mq_store_row(x[(i64)r * in + c * 32 + (threadIdx.x & 31)], (i64)r * nblk + c, q, d);
}

// mqg_gateup: block (blockIdx.x, expert e = blockIdx.y) computes rows
// 32·blockIdx.x.. of gate and up of expert e for each of its grouped rows r
// (starts[e] ≤ r < starts[e+1], token xrows[r]), applies the SwiGLU and
// writes h's chunk blockIdx.x of row r quantized (qh, dh: row-major, ff/32
// chunks a row) for mqg_down.
template <int T>
__device__ void mqg_gateup_impl(u8* qh, float* dh, const u8* qx, const float* dx, WView gw, WView uw,
                                const float* gb, const float* ub, const int* starts, const int* xrows, int ff,
                                SwiGLU act) {
    __shared__ float red[MQ_KSPLIT][32][4 * MQG_QUADS][2];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, e = blockIdx.y;
    int lo = starts[e], hi = starts[e + 1];
    i64 base = (i64)e * ff + blockIdx.x * 32;
    WView w[2] = {gw, uw};
    for (int r0 = lo; r0 < hi; r0 += 4 * MQG_QUADS) {
        int nr = min(hi - r0, 4 * MQG_QUADS);
        mqg_pass<T, 2>(w, base, base + 31, qx, dx, xrows, r0, nr, red);
        __syncthreads();
        for (int j = warp; j < nr; j += blockDim.x >> 5) {
            float gv = gb ? gb[base + lane] : 0.f, uv = ub ? ub[base + lane] : 0.f;
#pragma unroll
            for (int s = 0; s < MQ_KSPLIT; s++) {
                gv += red[s][lane][j][0];
                uv += red[s][lane][j][1];
            }
            mq_store_row(swiglu_act(gv, uv, act), (i64)(r0 + j) * (ff / 32) + blockIdx.x, qh, dh);
        }
        __syncthreads();
    }
}

// mqg_down: block (blockIdx.x, expert e) computes rows 32·blockIdx.x.. of
// down of expert e for its grouped rows r: y[r][row] = down_e[row]·h[r] +
// db_e[row] (moe_combine then sums each token's slots).
template <int T>
__device__ void mqg_down_impl(float* y, const u8* qh, const float* dh, WView dw, const float* db, const int* starts,
                              int hidden) {
    __shared__ float red[MQ_KSPLIT][32][4 * MQG_QUADS][1];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, e = blockIdx.y;
    int lo = starts[e], hi = starts[e + 1], row = blockIdx.x * 32 + lane;
    i64 base = (i64)e * hidden + blockIdx.x * 32;
    for (int r0 = lo; r0 < hi; r0 += 4 * MQG_QUADS) {
        int nr = min(hi - r0, 4 * MQG_QUADS);
        mqg_pass<T, 1>(&dw, base, base + 31, qh, dh, 0, r0, nr, red);
        __syncthreads();
        for (int j = warp; j < nr; j += blockDim.x >> 5) {
            float v = db ? db[base + lane] : 0.f;
#pragma unroll
            for (int s = 0; s < MQ_KSPLIT; s++) v += red[s][lane][j][0];
            y[(i64)(r0 + j) * hidden + row] = v;
        }
        __syncthreads();
    }
}

// mqg_matmul: the dense product of the same sizes, dst[r][row] = w[row]·x[r]
// + bias[row] for x's n rows (mq_quant_rows): block (blockIdx.x, blockIdx.y)
// takes x's rows 32·blockIdx.x.. and w's rows 32·blockIdx.y... The token
// passes of one row range are consecutive blocks, so all but the first
// find the weights in L2.
template <int T>
__device__ void mqg_matmul_impl(float* dst, const u8* qx, const float* dx, WView w, const float* bias, int n,
                                int out) {
    __shared__ float red[MQ_KSPLIT][32][4 * MQG_QUADS][1];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, row = blockIdx.y * 32 + lane;
    int r0 = blockIdx.x * 4 * MQG_QUADS, nr = min(n - r0, 4 * MQG_QUADS);
    mqg_pass<T, 1>(&w, blockIdx.y * 32, out - 1, qx, dx, 0, r0, nr, red);
    __syncthreads();
    if (row >= out) return;
    float b = bias ? bias[row] : 0.f;
    for (int j = warp; j < nr; j += blockDim.x >> 5) {
        float v = b;
#pragma unroll
        for (int s = 0; s < MQ_KSPLIT; s++) v += red[s][lane][j][0];
        dst[(i64)(r0 + j) * out + row] = v;
    }
}

#define MQG_KERNELS(T, NAME)                                                                                   \
    extern "C" __global__ void __launch_bounds__(64 * MQ_KSPLIT, 2)                                            \
        mqg_gateup_##NAME(u8* qh, float* dh, const u8* qx, const float* dx, const u8* gq, const u8* gs,        \
                          const u8* uq, const u8* us, int in, const float* gb, const float* ub,                \
                          const int* starts, const int* xrows, int ff, float alpha, float limit, float shift) { \
        mqg_gateup_impl<T>(qh, dh, qx, dx, WView{gq, gs, in}, WView{uq, us, in}, gb, ub, starts, xrows, ff,    \
                           SwiGLU{alpha, limit, shift});                                                       \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(64 * MQ_KSPLIT, 2)                                            \
        mqg_down_##NAME(float* y, const u8* qh, const float* dh, const u8* q, const u8* s, int in,             \
                        const float* db, const int* starts, int hidden) {                                      \
        mqg_down_impl<T>(y, qh, dh, WView{q, s, in}, db, starts, hidden);                                      \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(64 * MQ_KSPLIT, 2)                                            \
        mqg_matmul_##NAME(float* dst, const u8* qx, const float* dx, const u8* q, const u8* s, int in,         \
                          const float* bias, int n, int out) {                                                 \
        mqg_matmul_impl<T>(dst, qx, dx, WView{q, s, in}, bias, n, out);                                        \
    }

MQG_KERNELS(T_Q8_0, q8_0)
MQG_KERNELS(T_MXFP4, mxfp4)
