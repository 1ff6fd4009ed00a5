// Elementwise and row-wise ops: residual add, column copy, GELU, norms,
// RoPE, the KV store, and the weight repacking done at upload.

#include "mq.cuh"

extern "C" __global__ void add_f32(float* dst, const float* a, const float* b, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        dst[i] = a[i] + b[i];
}

// copy_cols: dst (rows × cols) = src[:, col0 : col0+cols], src has scols columns.
extern "C" __global__ void copy_cols(float* dst, const float* src, int rows, int cols, int scols, int col0) {
    i64 n = (i64)rows * cols;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 r = i / cols, c = i % cols;
        dst[i] = src[r * scols + col0 + c];
    }
}

// split_h writes x as two f16 planes, hi = f16(x) and lo = f16(x − hi), and
// split_bf16 as two bf16 planes, for the prefill products (gemm.cu).
template <bool BF>
__device__ __forceinline__ void split_impl(u16* hi, u16* lo, const float* x, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float v = x[i];
        u16 h = BF ? f2bf(v) : f2h(v);
        hi[i] = h;
        lo[i] = BF ? f2bf(v - bf2f(h)) : f2h(v - h2f(h));
    }
}
extern "C" __global__ void split_h(u16* hi, u16* lo, const float* x, i64 n) { split_impl<false>(hi, lo, x, n); }
extern "C" __global__ void split_bf16(u16* hi, u16* lo, const float* x, i64 n) { split_impl<true>(hi, lo, x, n); }

extern "C" __global__ void gelu_tanh(float* dst, const float* x, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float v = x[i];
        dst[i] = 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
}

// add_rows adds row blockIdx.x of delta (if not NULL) into x's row xr in
// place and returns the thread's part of the row's sum of squares. A thread
// later reads back only the elements it wrote.
__device__ __forceinline__ float add_rows(float* xr, const float* delta, int cols) {
    const float* dr = delta ? delta + (i64)blockIdx.x * cols : 0;
    float ss = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = xr[c];
        if (dr) {
            v += dr[c];
            xr[c] = v;
        }
        ss += v * v;
    }
    return ss;
}

// rms_norm: one block per row. With delta, x += delta first (AddRMSNorm).
extern "C" __global__ void rms_norm(float* dst, float* x, const float* delta, const float* w, int cols, float eps) {
    __shared__ float sh[32];
    float* xr = x + (i64)blockIdx.x * cols;
    float* dr = dst + (i64)blockIdx.x * cols;
    float inv = rsqrtf(block_sum(add_rows(xr, delta, cols), sh) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dr[c] = xr[c] * inv * w[c];
}

// layer_norm: one block per row; the variance is taken around the mean in a
// second pass, as the reference does.
extern "C" __global__ void layer_norm(float* dst, const float* x, const float* w, const float* b, int cols,
                                      float eps) {
    __shared__ float sh[32];
    const float* xr = x + (i64)blockIdx.x * cols;
    float* dr = dst + (i64)blockIdx.x * cols;
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
    float mean = block_sum(s, sh) / cols;
    float sq = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float d = xr[c] - mean;
        sq += d * d;
    }
    float inv = rsqrtf(block_sum(sq, sh) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dr[c] = (xr[c] - mean) * inv * w[c] + b[c];
}

// rope rotates x (rows × heads*dim) in place: pair k of each head is
// elements (k, k+dim/2) (NeoX, normal = 0) or (2k, 2k+1) (normal = 1), at
// angle pos[row]·inv_freq[k]. The angle is the float32 product, as in the
// reference; its cosine and sine are taken in double.
extern "C" __global__ void rope(float* x, const int* pos, const float* inv_freq, int rows, int heads, int dim,
                                float mscale, int normal) {
    int half = dim / 2;
    int e1 = normal ? 1 : half, stride = normal ? 2 : 1;
    i64 n = (i64)rows * heads * half;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        int k = i % half;
        i64 rh = i / half;
        int r = rh / heads;
        float a = (float)pos[r] * inv_freq[k];
        double sd, cd;
        sincos((double)a, &sd, &cd);
        float c = (float)cd * mscale, s = (float)sd * mscale;
        float* p = x + rh * dim + k * stride;
        float x0 = p[0], x1 = p[e1];
        p[0] = x0 * c - x1 * s;
        p[e1] = x1 * c + x0 * s;
    }
}

// silu: dst = x·σ(x) over n values.
extern "C" __global__ void silu(float* dst, const float* x, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float v = x[i];
        dst[i] = v / (1.f + expf(-v));
    }
}

// swiglu: dst = swiglu_act(g, u) over n values (dst may alias g or u).
extern "C" __global__ void swiglu(float* dst, const float* g, const float* u, i64 n, float alpha, float limit,
                                  float shift) {
    SwiGLU p = {alpha, limit, shift};
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        dst[i] = swiglu_act(g[i], u[i], p);
}

// rms_norm_heads: block (head, row) normalizes one head of dim values of a
// row of cols and scales it by w (dim values). dst may alias x.
extern "C" __global__ void rms_norm_heads(float* dst, const float* x, const float* w, int cols, int dim, float eps) {
    __shared__ float sh[32];
    i64 off = (i64)blockIdx.y * cols + (i64)blockIdx.x * dim;
    const float* xr = x + off;
    float ss = 0.f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) ss += xr[c] * xr[c];
    float inv = rsqrtf(block_sum(ss, sh) / dim + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x) dst[off + c] = xr[c] * inv * w[c];
}

// store_kv writes row i of k and v into row slots[i] of the caches, rounded
// to f16 in an f16 cache.
__device__ __forceinline__ void kv_put(u16* p, i64 i, float v) { p[i] = f2h(v); }
__device__ __forceinline__ void kv_put(float* p, i64 i, float v) { p[i] = v; }

template <typename KT>
__device__ void store_kv_impl(KT* kc, KT* vc, const float* k, const float* v, const int* slots, int cols) {
    int i = blockIdx.x;
    i64 dst = (i64)slots[i] * cols, src = (i64)i * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        kv_put(kc, dst + c, k[src + c]);
        kv_put(vc, dst + c, v[src + c]);
    }
}
extern "C" __global__ void store_kv_f16(u16* kc, u16* vc, const float* k, const float* v, const int* slots, int cols) {
    store_kv_impl(kc, vc, k, v, slots, cols);
}
extern "C" __global__ void store_kv_f32(float* kc, float* vc, const float* k, const float* v, const int* slots,
                                        int cols) {
    store_kv_impl(kc, vc, k, v, slots, cols);
}

// repack_q8_0 splits n file blocks (f16 scale, 32 int8) into a plane of
// quants and a plane of scales.
extern "C" __global__ void repack_q8_0(u8* q, u16* s, const u8* raw, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const u8* b = raw + i * 34;
        s[i] = b[0] | (b[1] << 8);
        for (int j = 0; j < 32; j++) q[i * 32 + j] = b[2 + j];
    }
}

// repack_mxfp4 splits n file blocks (E8M0 scale, 16 bytes of nibbles) into
// a plane of nibbles and a plane of scales.
extern "C" __global__ void repack_mxfp4(u8* q, u8* s, const u8* raw, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const u8* b = raw + i * 17;
        s[i] = b[0];
        for (int j = 0; j < 16; j++) q[i * 16 + j] = b[1 + j];
    }
}

// rms_norm_mq is rms_norm (elementwise.cu) for n ≤ 4 rows of a multiple of
// 32 columns that also writes the rows quantized as mq_quant does, saving
// its launch before the q, k and v projections and the MoE (columns of rows
// ≥ n are left as they are: only lanes of rows < n use them). blockDim.x is
// a multiple of 32, so each warp's elements are whole chunks.
extern "C" __global__ void rms_norm_mq(float* dst, float* x, const float* delta, const float* w, int cols, float eps,
                                       u8* qx, float* dx) {
    __shared__ float sh[32];
    int row = blockIdx.x;
    float* xr = x + (i64)row * cols;
    float* dr = dst + (i64)row * cols;
    float inv = rsqrtf(block_sum(add_rows(xr, delta, cols), sh) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = xr[c] * inv * w[c];
        dr[c] = v;
        mq_store(v, c >> 5, row, qx, dx);
    }
}
