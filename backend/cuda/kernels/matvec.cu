// Matrix-vector products for small batches (decode). Weights are read once
// per launch, which is what bounds decode. A lane works on whole 32-element
// chunks; the warp covers a row's chunks with its 32 lanes.
//
// Q8_0 and MXFP4 (the formats of gpt-oss) go through "streams": a warp
// reads the same chunk position of several rows at once (MV_ROWS rows, or
// gate and up rows), loads the matching 32 activations once, and decodes
// each row's chunk against them. Loading x per row made the first version
// bound by L1 traffic (four bytes of x per byte of Q8_0 weight; Nsight:
// 88% L1/shared throughput, 21% DRAM). Other formats keep one row per warp.

#include "common.cuh"

#ifndef MV_WARPS // from Go as -DMV_WARPS (kernelDefines); this default serves standalone checks
#define MV_WARPS 4
#endif
#ifndef MV_TOKENS // from Go as -DMV_TOKENS (kernelDefines); this default serves standalone checks
#define MV_TOKENS 8
#endif
#ifndef MV_ROWS // from Go as -DMV_ROWS (kernelDefines); this default serves standalone checks
#define MV_ROWS 4 // rows per warp for Q8_0 and MXFP4
#endif

// load_x32 copies 32 activations (16-byte aligned) into registers.
__device__ __forceinline__ void load_x32(const float* x, float* o) {
    const float4* p = (const float4*)x;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float4 v = p[i];
        o[4 * i] = v.x; o[4 * i + 1] = v.y; o[4 * i + 2] = v.z; o[4 * i + 3] = v.w;
    }
}

__device__ __forceinline__ float dot32r(const float* w, const float* x) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 32; i++) s += w[i] * x[i];
    return s;
}

// RowRef names one weight row: the planes of its matrix and its index.
struct RowRef {
    const u8* q;
    const u8* s;
    i64 row;
};

// dot_streams sets out[i] = W_i[row_i]·x for NS rows of one Q8_0 or MXFP4
// format (in elements each, a multiple of 32), summed across the warp. A
// stream with q == NULL is skipped (and gives 0).
template <int T, int NS>
__device__ __forceinline__ void dot_streams(const RowRef* rr, i64 in, const float* x, float* out) {
    int lane = threadIdx.x & 31;
    int nblk = (int)(in / 32);
    float acc[NS];
#pragma unroll
    for (int i = 0; i < NS; i++) acc[i] = 0.f;
    for (int blk = lane; blk < nblk; blk += 32) {
        RawChunk c[NS];
#pragma unroll
        for (int i = 0; i < NS; i++)
            if (rr[i].q) load_raw<T>(WView{rr[i].q, rr[i].s, in}, rr[i].row, blk, c[i]);
        float xv[32], wv[32];
        load_x32(x + blk * 32, xv);
#pragma unroll
        for (int i = 0; i < NS; i++)
            if (rr[i].q) {
                float d = decode_raw_q<T>(c[i], wv);
                acc[i] += d * dot32r(wv, xv);
            }
    }
#pragma unroll
    for (int i = 0; i < NS; i++) out[i] = warp_sum(acc[i]);
}

// dot_row is W[row]·x for any format (one row per warp), summed across the warp.
template <int T>
__device__ __forceinline__ float dot_row(const WView& w, i64 row, const float* x) {
    if (T == T_Q8_0 || T == T_MXFP4) {
        RowRef r = {w.q, w.s, row};
        float o;
        dot_streams<T, 1>(&r, w.in, x, &o);
        return o;
    }
    int lane = threadIdx.x & 31;
    float wv[32], acc = 0.f;
    for (int blk = lane; blk < w.in / 32; blk += 32) {
        load_chunk<T>(w, row, blk, wv);
        acc += dot32(wv, x + blk * 32);
    }
    return warp_sum(acc);
}

// matvec_raw: dst[t][r] = x[t]·w[r] + bias[r] for Q8_0/MXFP4, ROWS rows per
// warp and the tokens of blockIdx.y's group. (One row a warp, for more warps
// in flight on small matrices, measured slower: 30 vs 15 µs on 4096×2880.)
template <int T, int ROWS>
__device__ void matvec_raw(float* dst, const float* x, WView w, const float* bias, int n, int out) {
    int lane = threadIdx.x & 31;
    int r0 = (blockIdx.x * MV_WARPS + (threadIdx.x >> 5)) * ROWS;
    int t0 = blockIdx.y * MV_TOKENS;
    if (r0 >= out) return;
    int nt = min(MV_TOKENS, n - t0);
    int nblk = (int)(w.in / 32);
    float acc[MV_TOKENS][ROWS];
#pragma unroll
    for (int t = 0; t < MV_TOKENS; t++)
#pragma unroll
        for (int i = 0; i < ROWS; i++) acc[t][i] = 0.f;
    for (int blk = lane; blk < nblk; blk += 32) {
        RawChunk c[ROWS];
#pragma unroll
        for (int i = 0; i < ROWS; i++)
            if (r0 + i < out) load_raw<T>(w, r0 + i, blk, c[i]);
#pragma unroll
        for (int t = 0; t < MV_TOKENS; t++) {
            if (t >= nt) break;
            float xv[32], wv[32];
            load_x32(x + (i64)(t0 + t) * w.in + blk * 32, xv);
#pragma unroll
            for (int i = 0; i < ROWS; i++)
                if (r0 + i < out) {
                    float d = decode_raw_q<T>(c[i], wv);
                    acc[t][i] += d * dot32r(wv, xv);
                }
        }
    }
#pragma unroll
    for (int t = 0; t < MV_TOKENS; t++)
#pragma unroll
        for (int i = 0; i < ROWS; i++) {
            float s = warp_sum(acc[t][i]);
            if (lane == 0 && t < nt && r0 + i < out) dst[(i64)(t0 + t) * out + r0 + i] = s + (bias ? bias[r0 + i] : 0.f);
        }
}

// matvec_impl: dst[t][r] = x[t]·w[r] + bias[r], one row per warp (formats
// other than Q8_0 and MXFP4).
template <int T>
__device__ void matvec_impl(float* dst, const float* x, WView w, const float* bias, int n, int out) {
    int lane = threadIdx.x & 31;
    int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    int t0 = blockIdx.y * MV_TOKENS;
    if (r >= out) return;
    int nt = min(MV_TOKENS, n - t0);
    int in = (int)w.in;
    float acc[MV_TOKENS];
#pragma unroll
    for (int t = 0; t < MV_TOKENS; t++) acc[t] = 0.f;
    if (in % 32 == 0) {
        float wv[32];
        for (int blk = lane; blk < in / 32; blk += 32) {
            load_chunk<T>(w, r, blk, wv);
#pragma unroll
            for (int t = 0; t < MV_TOKENS; t++)
                if (t < nt) acc[t] += dot32(wv, x + (i64)(t0 + t) * in + blk * 32);
        }
    } else if (T == T_F32 || T == T_F16 || T == T_BF16) {
        for (int k = lane; k < in; k += 32) {
            float wk = load_elem<T>(w, r, k);
#pragma unroll
            for (int t = 0; t < MV_TOKENS; t++)
                if (t < nt) acc[t] += wk * x[(i64)(t0 + t) * in + k];
        }
    }
    float b = bias ? bias[r] : 0.f;
#pragma unroll
    for (int t = 0; t < MV_TOKENS; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0 && t < nt) dst[(i64)(t0 + t) * out + r] = s + b;
    }
}

// MoE decode, first half: for assignment a = t*k + slot (blockIdx.y), the
// selected expert e = ids[a] computes gate and up rows r and r+1 (one warp)
// and stores the clamped SwiGLU in h[a][r]. Only the selected experts' rows
// are read.
template <int T>
__device__ void moe_gateup_impl(float* h, const float* x, WView g, WView u, const float* gb, const float* ub,
                                const int* ids, int k, int ff, SwiGLU act) {
    int lane = threadIdx.x & 31;
    int r = (blockIdx.x * MV_WARPS + (threadIdx.x >> 5)) * 2;
    int a = blockIdx.y;
    if (r >= ff) return;
    int e = ids[a];
    const float* xt = x + (i64)(a / k) * g.in;
    i64 row = (i64)e * ff + r;
    bool two = r + 1 < ff;
    float v[4];
    if (T == T_Q8_0 || T == T_MXFP4) {
        RowRef rr[4] = {{g.q, g.s, row}, {u.q, u.s, row}, {two ? g.q : 0, g.s, row + 1}, {two ? u.q : 0, u.s, row + 1}};
        dot_streams<T, 4>(rr, g.in, xt, v);
    } else {
        v[0] = dot_row<T>(g, row, xt);
        v[1] = dot_row<T>(u, row, xt);
        v[2] = two ? dot_row<T>(g, row + 1, xt) : 0.f;
        v[3] = two ? dot_row<T>(u, row + 1, xt) : 0.f;
    }
    if (lane == 0) {
        for (int j = 0; j < (two ? 2 : 1); j++) {
            float gv = v[2 * j] + (gb ? gb[row + j] : 0.f), uv = v[2 * j + 1] + (ub ? ub[row + j] : 0.f);
            h[(i64)a * ff + r + j] = swiglu_act(gv, uv, act);
        }
    }
}

// MoE decode, second half: dst[t][r] = Σ_slot wts[t][slot]·(down_e[r]·h[t*k+slot] + db_e[r]).
// Block (rows r0..r0+MV_ROWS-1, token t) has one warp per slot, so the k
// selected experts' rows are read at once; thread 0 then sums the slots in
// ascending expert order (ids are sorted per token), as the reference does.
template <int T>
__device__ void moe_down_impl(float* dst, const float* h, WView d, const float* db, const int* ids,
                              const float* wts, int k, int hidden) {
    __shared__ float ys[32][MV_ROWS];
    int lane = threadIdx.x & 31, s = threadIdx.x >> 5;
    int r0 = blockIdx.x * MV_ROWS, t = blockIdx.y;
    int a = t * k + s;
    i64 row0 = (i64)ids[a] * hidden + r0;
    const float* x = h + (i64)a * d.in;
    float y[MV_ROWS];
    if (T == T_Q8_0 || T == T_MXFP4) {
        RowRef rr[MV_ROWS];
#pragma unroll
        for (int i = 0; i < MV_ROWS; i++) rr[i] = RowRef{r0 + i < hidden ? d.q : 0, d.s, row0 + i};
        dot_streams<T, MV_ROWS>(rr, d.in, x, y);
    } else {
#pragma unroll
        for (int i = 0; i < MV_ROWS; i++) y[i] = r0 + i < hidden ? dot_row<T>(d, row0 + i, x) : 0.f;
    }
    if (lane == 0)
        for (int i = 0; i < MV_ROWS; i++)
            ys[s][i] = r0 + i < hidden ? wts[a] * (y[i] + (db ? db[row0 + i] : 0.f)) : 0.f;
    __syncthreads();
    if (threadIdx.x < MV_ROWS && r0 + threadIdx.x < hidden) {
        float sum = 0.f;
        for (int j = 0; j < k; j++) sum += ys[j][threadIdx.x];
        dst[(i64)t * hidden + r0 + threadIdx.x] = sum;
    }
}

// An id outside the table's rows gives a row of NaN rather than a read out
// of bounds (the model validates ids; this keeps a bug visible).
template <int T>
__device__ void embed_impl(float* dst, WView w, const int* ids, int rows) {
    int i = blockIdx.x;
    i64 row = ids[i];
    int in = (int)w.in;
    float* o = dst + (i64)i * in;
    if (row < 0 || row >= rows) {
        for (int k = threadIdx.x; k < in; k += blockDim.x) o[k] = __int_as_float(0x7fc00000);
        return;
    }
    if (in % 32 == 0) {
        float v[32];
        for (int blk = threadIdx.x; blk < in / 32; blk += blockDim.x) {
            load_chunk<T>(w, row, blk, v);
#pragma unroll
            for (int j = 0; j < 32; j++) o[blk * 32 + j] = v[j];
        }
    } else if (T == T_F32 || T == T_F16 || T == T_BF16) {
        for (int k = threadIdx.x; k < in; k += blockDim.x) o[k] = load_elem<T>(w, row, k);
    }
}

#define MATVEC_KERNELS(T, NAME)                                                                              \
    extern "C" __global__ void __launch_bounds__(128) matvec_##NAME(float* dst, const float* x, const u8* q, \
                                                                    const u8* s, int in, const float* bias,  \
                                                                    int n, int out) {                        \
        if (T == T_Q8_0 || T == T_MXFP4)                                                                     \
            matvec_raw<T, MV_ROWS>(dst, x, WView{q, s, in}, bias, n, out);                                   \
        else                                                                                                 \
            matvec_impl<T>(dst, x, WView{q, s, in}, bias, n, out);                                           \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(128)                                                        \
        moe_gateup_##NAME(float* h, const float* x, const u8* gq, const u8* gs, const u8* uq, const u8* us,  \
                          int in, const float* gb, const float* ub, const int* ids, int k, int ff, float alpha, \
                          float limit, float shift) {                                                        \
        moe_gateup_impl<T>(h, x, WView{gq, gs, in}, WView{uq, us, in}, gb, ub, ids, k, ff,                   \
                           SwiGLU{alpha, limit, shift});                                                     \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(1024)                                                       \
        moe_down_##NAME(float* dst, const float* h, const u8* q, const u8* s, int in, const float* db,       \
                        const int* ids, const float* wts, int k, int hidden) {                               \
        moe_down_impl<T>(dst, h, WView{q, s, in}, db, ids, wts, k, hidden);                                  \
    }                                                                                                        \
    extern "C" __global__ void embed_##NAME(float* dst, const u8* q, const u8* s, int in, const int* ids,   \
                                         int rows) {                                                         \
        embed_impl<T>(dst, WView{q, s, in}, ids, rows);                                                      \
    }

MATVEC_KERNELS(T_F32, f32)
MATVEC_KERNELS(T_F16, f16)
MATVEC_KERNELS(T_BF16, bf16)
MATVEC_KERNELS(T_Q8_0, q8_0)
MATVEC_KERNELS(T_MXFP4, mxfp4)
MATVEC_KERNELS(T_Q4_K, q4_k)
MATVEC_KERNELS(T_Q6_K, q6_k)
