// Matrix-vector products for small batches (decode): one warp per output
// row, each lane dequantizing whole 32-element chunks of the row and
// reusing them for up to MV_TOKENS rows of x. Weights are read once per
// launch, which is what bounds decode.

#define MV_WARPS 4
#define MV_TOKENS 8
#define MV_UNROLL 4 // chunks a lane loads before decoding (Q8_0, MXFP4)

// dst[t][r] = x[t]·w[r] + bias[r] for t in blockIdx.y's group of tokens.
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
    if (T == T_Q8_0 || T == T_MXFP4) {
        int nblk = in / 32;
        for (int base = lane; base < nblk; base += 32 * MV_UNROLL) {
            RawChunk c[MV_UNROLL];
#pragma unroll
            for (int u = 0; u < MV_UNROLL; u++)
                if (base + 32 * u < nblk) load_raw<T>(w, r, base + 32 * u, c[u]);
#pragma unroll
            for (int u = 0; u < MV_UNROLL; u++) {
                int blk = base + 32 * u;
                if (blk < nblk) {
                    float wv[32];
                    decode_raw<T>(c[u], wv);
#pragma unroll
                    for (int t = 0; t < MV_TOKENS; t++)
                        if (t < nt) acc[t] += dot32(wv, x + (i64)(t0 + t) * in + blk * 32);
                }
            }
        }
    } else if (in % 32 == 0) {
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

// dot_rows returns wa[row]·x and, when wb is given, wb[row]·x, over w.in
// elements (a multiple of 32), summed across the warp. For Q8_0 and MXFP4
// the loads of both rows' chunks are issued before any is decoded.
template <int T>
__device__ __forceinline__ void dot_rows(const WView& wa, const WView* wb, i64 row, const float* x, float& da,
                                         float& db) {
    int lane = threadIdx.x & 31;
    int nblk = (int)(wa.in / 32);
    float sa = 0.f, sb = 0.f, wv[32];
    if (T == T_Q8_0 || T == T_MXFP4) {
        for (int base = lane; base < nblk; base += 32 * MV_UNROLL) {
            RawChunk ca[MV_UNROLL], cb[MV_UNROLL];
#pragma unroll
            for (int u = 0; u < MV_UNROLL; u++)
                if (base + 32 * u < nblk) {
                    load_raw<T>(wa, row, base + 32 * u, ca[u]);
                    if (wb) load_raw<T>(*wb, row, base + 32 * u, cb[u]);
                }
#pragma unroll
            for (int u = 0; u < MV_UNROLL; u++) {
                int blk = base + 32 * u;
                if (blk < nblk) {
                    decode_raw<T>(ca[u], wv);
                    sa += dot32(wv, x + blk * 32);
                    if (wb) {
                        decode_raw<T>(cb[u], wv);
                        sb += dot32(wv, x + blk * 32);
                    }
                }
            }
        }
    } else {
        for (int blk = lane; blk < nblk; blk += 32) {
            load_chunk<T>(wa, row, blk, wv);
            sa += dot32(wv, x + blk * 32);
            if (wb) {
                load_chunk<T>(*wb, row, blk, wv);
                sb += dot32(wv, x + blk * 32);
            }
        }
    }
    da = warp_sum(sa);
    db = wb ? warp_sum(sb) : 0.f;
}

// MoE decode, first half: for assignment a = t*k + slot (blockIdx.y), the
// selected expert e = ids[a] computes gate and up row r and stores the
// clamped SwiGLU in h[a][r]. Only the selected experts' rows are read.
template <int T>
__device__ void moe_gateup_impl(float* h, const float* x, WView g, WView u, const float* gb, const float* ub,
                                const int* ids, int k, int ff, float alpha, float limit) {
    int lane = threadIdx.x & 31;
    int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    int a = blockIdx.y;
    if (r >= ff) return;
    int e = ids[a];
    const float* xt = x + (i64)(a / k) * g.in;
    i64 row = (i64)e * ff + r;
    float gv, uv;
    dot_rows<T>(g, &u, row, xt, gv, uv);
    gv += gb ? gb[row] : 0.f;
    uv += ub ? ub[row] : 0.f;
    if (lane == 0) h[(i64)a * ff + r] = clamped_swiglu(gv, uv, alpha, limit);
}

// MoE decode, second half: dst[t][r] = Σ_slot wts[t][slot]·(down_e[r]·h[t*k+slot] + db_e[r]).
// Block (r, t) has one warp per slot, so the k selected rows are read at
// once; warp 0 then sums the slots in ascending expert order (ids are
// sorted per token), as the reference does.
template <int T>
__device__ void moe_down_impl(float* dst, const float* h, WView d, const float* db, const int* ids,
                              const float* wts, int k, int hidden) {
    __shared__ float ys[32];
    int lane = threadIdx.x & 31, s = threadIdx.x >> 5;
    int r = blockIdx.x, t = blockIdx.y;
    int a = t * k + s;
    i64 row = (i64)ids[a] * hidden + r;
    float y, unused;
    dot_rows<T>(d, 0, row, h + (i64)a * d.in, y, unused);
    if (lane == 0) ys[s] = wts[a] * (y + (db ? db[row] : 0.f));
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.f;
        for (int j = 0; j < k; j++) sum += ys[j];
        dst[(i64)t * hidden + r] = sum;
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
        matvec_impl<T>(dst, x, WView{q, s, in}, bias, n, out);                                              \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(128)                                                        \
        moe_gateup_##NAME(float* h, const float* x, const u8* gq, const u8* gs, const u8* uq, const u8* us,  \
                          int in, const float* gb, const float* ub, const int* ids, int k, int ff, float alpha, \
                          float limit) {                                                                     \
        moe_gateup_impl<T>(h, x, WView{gq, gs, in}, WView{uq, us, in}, gb, ub, ids, k, ff, alpha, limit);    \
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
