// Mixture-of-experts routing and the glue around the expert matmuls.

#include "common.cuh"

#ifndef MOE_MAX_K // from Go as -DMOE_MAX_K (kernelDefines); this default serves standalone checks
#define MOE_MAX_K 32
#endif

// topk_warp: the calling warp picks token t's k largest router logits
// (ties to the lower index), softmaxes them, and writes the (expert, weight)
// pairs sorted by expert so every later sum runs in ascending expert order.
__device__ void topk_warp(int* ids, float* wts, const float* logits, int t, int nexp, int k) {
    int lane = threadIdx.x & 31;
    const float* lg = logits + (i64)t * nexp;
    int chosen[MOE_MAX_K];
    float val[MOE_MAX_K];
    for (int j = 0; j < k; j++) {
        float best = NEG_INF;
        int bi = 0x7fffffff;
        for (int e = lane; e < nexp; e += 32) {
            bool taken = false;
            for (int c = 0; c < j; c++) taken |= chosen[c] == e;
            float v = lg[e];
            if (!taken && (v > best || (v == best && e < bi))) {
                best = v;
                bi = e;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, best, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > best || (ov == best && oi < bi)) {
                best = ov;
                bi = oi;
            }
        }
        chosen[j] = bi;
        val[j] = best;
    }
    if (lane != 0) return;
    float sum = 0.f, top = val[0];
    for (int j = 0; j < k; j++) {
        val[j] = expf(val[j] - top);
        sum += val[j];
    }
    // insertion sort by expert id
    for (int j = 1; j < k; j++)
        for (int c = j; c > 0 && chosen[c - 1] > chosen[c]; c--) {
            int ti = chosen[c]; chosen[c] = chosen[c - 1]; chosen[c - 1] = ti;
            float tv = val[c]; val[c] = val[c - 1]; val[c - 1] = tv;
        }
    for (int j = 0; j < k; j++) {
        ids[t * k + j] = chosen[j];
        wts[t * k + j] = val[j] / sum;
    }
}

// moe_topk: topk_warp with one warp per token.
extern "C" __global__ void moe_topk(int* ids, float* wts, const float* logits, int n, int nexp, int k) {
    int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t < n) topk_warp(ids, wts, logits, t, nexp, k);
}

#ifndef ROUTE_TOKENS // from Go as -DROUTE_TOKENS (kernelDefines); this default serves standalone checks
#define ROUTE_TOKENS 4 // tokens a block
#endif
#ifndef ROUTE_WARPS // from Go as -DROUTE_WARPS (kernelDefines); this default serves standalone checks
#define ROUTE_WARPS 8
#endif

__device__ __forceinline__ float ld_cg(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}

// moe_router: router logits and top-k of a decode step in one launch.
// Block (e, g) computes expert e's logit for tokens ROUTE_TOKENS·g.. in f32
// (F32 weights, in a multiple of 4), its ROUTE_WARPS warps splitting the
// row, so a logit's sum runs in the same order whatever the step's size;
// the last block to finish (a ticket on *done, which it resets) reads all
// logits back from L2 and runs topk_warp for each token, one a warp. With k
// = 0 it writes the logits only (steps of more tokens than the last block
// has warps, whose top-k moe_topk spreads over the chip). Replaces a matvec
// (one row a warp, its 8 tokens' loads waited on in turn: ≈ 20 µs a layer
// at 64 tokens) and, up to ROUTE_WARPS tokens, a second launch.
extern "C" __global__ void __launch_bounds__(32 * ROUTE_WARPS)
    moe_router(int* ids, float* wts, float* logits, unsigned* done, const float* x, const float* w,
               const float* bias, int n, int in, int nexp, int k) {
    __shared__ float part[ROUTE_WARPS][ROUTE_TOKENS];
    __shared__ bool last;
    extern __shared__ float lg[]; // n × nexp, in the last block
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, e = blockIdx.x, t0 = blockIdx.y * ROUTE_TOKENS;
    int nt = min(ROUTE_TOKENS, n - t0);
    const float4* wr = (const float4*)(w + (i64)e * in);
    const float* xt = x + (i64)t0 * in;
    float acc[ROUTE_TOKENS];
#pragma unroll
    for (int t = 0; t < ROUTE_TOKENS; t++) acc[t] = 0.f;
    for (int i = threadIdx.x; i < in / 4; i += blockDim.x) {
        float4 wv = __ldg(wr + i);
#pragma unroll
        for (int t = 0; t < ROUTE_TOKENS; t++)
            if (t < nt) {
                float4 xv = ((const float4*)(xt + (i64)t * in))[i];
                acc[t] += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
            }
    }
#pragma unroll
    for (int t = 0; t < ROUTE_TOKENS; t++) {
        float v = warp_sum(acc[t]);
        if (lane == 0) part[warp][t] = v;
    }
    __syncthreads();
    if (threadIdx.x < nt) {
        float v = bias ? bias[e] : 0.f;
        for (int j = 0; j < ROUTE_WARPS; j++) v += part[j][threadIdx.x];
        logits[(t0 + threadIdx.x) * nexp + e] = v;
    }
    if (k == 0) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x * gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int i = threadIdx.x; i < n * nexp; i += blockDim.x) lg[i] = ld_cg(logits + i);
    if (threadIdx.x == 0) *done = 0;
    __syncthreads();
    if (warp < n) topk_warp(ids, wts, lg, warp, nexp, k);
}

// moe_logits: the router logits of a step of many tokens, in f32:
// logits[t][e] = x[t]·w[e] + bias[e] (F32 weights, in a multiple of 32).
// A block takes 8 tokens × 32 experts, a thread one (token, expert) summed
// in a fixed order; 32-element chunks of both stage through shared memory,
// the next chunk's loads issued before the current one is used. (The
// matvec kernels re-read the weights for every 8 tokens with one row a
// warp: 247 µs a layer at 2,048 tokens.)
extern "C" __global__ void __launch_bounds__(256)
    moe_logits(float* logits, const float* x, const float* w, const float* bias, int n, int in, int nexp) {
    __shared__ float xs[8][33], ws[32][33];
    int tok = threadIdx.x >> 5, col = threadIdx.x & 31, t = blockIdx.x * 8 + tok, e = blockIdx.y * 32 + col;
    // Thread (tok, col) loads x[t][k0 + col] and w rows 8i + tok, element col.
    const float* xp = x + (i64)min(t, n - 1) * in + col;
    const float* wp[4];
#pragma unroll
    for (int i = 0; i < 4; i++) wp[i] = w + (i64)min(blockIdx.y * 32 + 8 * i + tok, nexp - 1) * in + col;
    float xv = xp[0], wv[4];
#pragma unroll
    for (int i = 0; i < 4; i++) wv[i] = wp[i][0];
    float a = 0.f;
    for (int k0 = 0; k0 < in; k0 += 32) {
        __syncthreads();
        xs[tok][col] = xv;
#pragma unroll
        for (int i = 0; i < 4; i++) ws[8 * i + tok][col] = wv[i];
        __syncthreads();
        if (k0 + 32 < in) {
            xv = xp[k0 + 32];
#pragma unroll
            for (int i = 0; i < 4; i++) wv[i] = wp[i][k0 + 32];
        }
#pragma unroll
        for (int c = 0; c < 32; c++) a += xs[tok][c] * ws[col][c];
    }
    if (t < n && e < nexp) logits[(i64)t * nexp + e] = a + (bias ? bias[e] : 0.f);
}

// moe_group: one block. Counting-sorts the n*k assignments by expert:
// starts[e]..starts[e+1]-1 are expert e's rows of the grouped buffers,
// xrows[r] is the token of grouped row r, and slot_row[a] the grouped row of
// assignment a = t*k + slot. counts must hold nexp ints.
extern "C" __global__ void moe_group(int* starts, int* xrows, int* slot_row, int* counts, const int* ids, int n,
                                     int k, int nexp) {
    int na = n * k;
    for (int e = threadIdx.x; e < nexp; e += blockDim.x) counts[e] = 0;
    __syncthreads();
    for (int a = threadIdx.x; a < na; a += blockDim.x) atomicAdd(&counts[ids[a]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int s = 0;
        for (int e = 0; e < nexp; e++) {
            starts[e] = s;
            s += counts[e];
            counts[e] = starts[e]; // becomes the fill cursor
        }
        starts[nexp] = s;
    }
    __syncthreads();
    for (int a = threadIdx.x; a < na; a += blockDim.x) {
        int r = atomicAdd(&counts[ids[a]], 1);
        xrows[r] = a / k;
        slot_row[a] = r;
    }
}

// moe_combine: dst[t] = Σ_slot wts[t][slot]·y[slot_row[t*k+slot]], one block per token.
extern "C" __global__ void moe_combine(float* dst, const float* y, const float* wts, const int* slot_row, int k,
                                       int hidden) {
    int t = blockIdx.x;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        float s = 0.f;
        for (int j = 0; j < k; j++) s += wts[t * k + j] * y[(i64)slot_row[t * k + j] * hidden + c];
        dst[(i64)t * hidden + c] = s;
    }
}
