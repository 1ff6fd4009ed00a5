// Attention over K/V caches of f16 or f32, split along the keys
// (flash-decoding).
//
// attn_partial: block (head group, R query rows, split). Each warp is one
// query head; the warps of a block share one KV head (GQA), so they read the same
// K and V rows and the block streams each of them once. The visible keys of
// a row at position p are lo..p (lo = max(0, p-window+1), or 0), read from
// pos on the device; split z takes an equal share of them, so the grid
// depends only on shapes and a captured graph stays valid as p grows. Keys
// go 32 at a time: the block stages the tile's keys and values in shared
// memory (coalesced loads, shared by the warps), lane j scores key j
// against the whole query, the tile's softmax is folded into a running max
// and sum, and each lane accumulates its own columns of V.
//
// attn_combine merges the splits and the sink logit into dst.

// KV element access for the two cache precisions.
__device__ __forceinline__ float kv_get(const u16* p, i64 i) { return h2f(p[i]); }
__device__ __forceinline__ float kv_get(const float* p, i64 i) { return p[i]; }

// Shared memory of attn_partial, in floats: the warps' queries (R rows
// each), then a tile of 32 keys (rows padded by 4 so lanes reading
// different keys with 16-byte loads hit different banks) and its 32 values.
#define ATT_KROW(dim) ((dim) + 4)

// attn_partial_impl: block (KV head × head group, R consecutive query rows,
// split). Each warp is one query head and keeps R rows' running softmax
// state, so one staged key/value tile serves R rows (prefill) and every
// head of the group (GQA). The block's key range is the union of its rows'
// visible ranges; each row masks the keys outside its own.
template <typename KT, int R, int PER>
__device__ void attn_partial_impl(const float* q, const KT* kc, const KT* vc, const int* pos, int n, int heads,
                                  int kvheads, int dim, float scale, int window, int cap, int hgroups, float* pm,
                                  float* pl, float* pacc) {
    extern __shared__ float sm[];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int group = heads / kvheads;
    int kvh = blockIdx.x / hgroups;
    int hin = (blockIdx.x % hgroups) * warps + warp;
    int row0 = blockIdx.y * R, split = blockIdx.z, splits = gridDim.z;
    bool active = hin < group;
    int h = kvh * group + hin;
    const int krow = ATT_KROW(dim);
    float* qw = sm + warp * R * dim;
    float* Ks = sm + warps * R * dim;
    float* Vs = Ks + 32 * krow;

    int rlo[R], rhi[R]; // each row's visible keys rlo..rhi (empty for rows past n)
    int ulo = 0x7fffffff, uhi = -1;
#pragma unroll
    for (int r = 0; r < R; r++) {
        rlo[r] = 0;
        rhi[r] = -1;
        if (row0 + r < n) {
            int p = pos[row0 + r];
            rlo[r] = window > 0 ? max(0, p - window + 1) : 0;
            rhi[r] = p;
            ulo = min(ulo, rlo[r]);
            uhi = max(uhi, p);
        }
        for (int d = lane; d < dim; d += 32)
            qw[r * dim + d] = active && row0 + r < n ? q[((i64)(row0 + r) * heads + h) * dim + d] * scale : 0.f;
    }
    int len = uhi - ulo + 1;
    int chunk = (len + splits - 1) / splits;
    int start = ulo + split * chunk, end = min(uhi + 1, start + chunk);

    // PER (a template parameter, so the arrays stay in registers) bounds
    // the columns of V per lane; per is the count for this dim.
    const int per = (dim + 31) / 32;
    float acc[R][PER], m[R], l[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        m[r] = NEG_INF;
        l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < PER; i++) acc[r][i] = 0.f;
    }
    i64 stride = (i64)kvheads * dim;
    // Tile loading: a thread always fills the same column of every
    // (blockDim/dim)-th key row, so its column offset is computed once.
    const int c0 = threadIdx.x % dim, j0 = threadIdx.x / dim, jstep = blockDim.x / dim;
    const i64 coff = (i64)kvh * dim + c0;

    for (int kb = start; kb < end; kb += 32) {
        int nk = min(32, end - kb);
        __syncthreads(); // the previous tile is consumed (and q is written)
        if (j0 < 32 && jstep > 0) {
            for (int j = j0; j < 32; j += jstep) {
                float kv = 0.f, vv = 0.f;
                if (j < nk) {
                    int key = kb + j;
                    i64 off = (i64)(key < cap ? key : key % cap) * stride + coff;
                    kv = kv_get(kc, off);
                    vv = kv_get(vc, off);
                }
                Ks[j * krow + c0] = kv;
                Vs[j * dim + c0] = vv;
            }
        }
        for (int idx = threadIdx.x; jstep == 0 && idx < 32 * dim; idx += blockDim.x) {
            // blocks narrower than a head (dim > blockDim): plain loop
            int j = idx / dim, c = idx - j * dim;
            float kv = 0.f, vv = 0.f;
            if (j < nk) {
                i64 off = (i64)((kb + j) % cap) * stride + kvh * dim + c;
                kv = kv_get(kc, off);
                vv = kv_get(vc, off);
            }
            Ks[j * krow + c] = kv;
            Vs[j * dim + c] = vv;
        }
        __syncthreads();
        if (!active) continue;
        int key = kb + lane;
        float pk[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            float s = NEG_INF;
            if (lane < nk && key >= rlo[r] && key <= rhi[r]) {
                const float4* kp = (const float4*)(Ks + lane * krow);
                const float4* qp = (const float4*)(qw + r * dim);
                float dot = 0.f;
                for (int c = 0; c < dim / 4; c++) {
                    float4 a = kp[c], b = qp[c];
                    dot += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
                }
                s = dot;
            }
            float tmax = warp_max(s);
            if (tmax == NEG_INF) { // no visible key in this tile for row r
                pk[r] = 0.f;
                continue;
            }
            float mn = fmaxf(m[r], tmax);
            float corr = m[r] == NEG_INF ? 0.f : expf(m[r] - mn);
            pk[r] = s == NEG_INF ? 0.f : expf(s - mn);
            l[r] = l[r] * corr + warp_sum(pk[r]);
#pragma unroll
            for (int i = 0; i < PER; i++) acc[r][i] *= corr;
            m[r] = mn;
        }
        for (int j = 0; j < nk; j++) {
            const float* vp = Vs + j * dim;
            float vj[PER];
#pragma unroll
            for (int i = 0; i < PER; i++) vj[i] = i < per && lane + 32 * i < dim ? vp[lane + 32 * i] : 0.f;
#pragma unroll
            for (int r = 0; r < R; r++) {
                float pj = __shfl_sync(0xffffffffu, pk[r], j);
#pragma unroll
                for (int i = 0; i < PER; i++)
                    if (i < per) acc[r][i] += pj * vj[i];
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (row0 + r >= n) break;
        i64 o = ((i64)(row0 + r) * heads + h) * splits + split;
        if (lane == 0) {
            pm[o] = m[r];
            pl[o] = l[r];
        }
#pragma unroll
        for (int i = 0; i < PER; i++)
            if (i < per && lane + 32 * i < dim) pacc[o * dim + lane + 32 * i] = acc[r][i];
    }
}

// Kernels attn_partial_<cache>_r<rows per block>_d<max head dim>.
#define ATTN_PARTIAL(KT, NAME, R, D)                                                                           \
    extern "C" __global__ void attn_partial_##NAME##_r##R##_d##D(                                               \
        const float* q, const KT* kc, const KT* vc, const int* pos, int n, int heads, int kvheads, int dim,     \
        float scale, int window, int cap, int hgroups, float* pm, float* pl, float* pacc) {                     \
        attn_partial_impl<KT, R, D / 32>(q, kc, vc, pos, n, heads, kvheads, dim, scale, window, cap, hgroups, pm, \
                                         pl, pacc);                                                             \
    }
ATTN_PARTIAL(u16, f16, 1, 64)
ATTN_PARTIAL(float, f32, 1, 64)
ATTN_PARTIAL(u16, f16, 4, 64)
ATTN_PARTIAL(float, f32, 4, 64)
ATTN_PARTIAL(u16, f16, 1, 256)
ATTN_PARTIAL(float, f32, 1, 256)
ATTN_PARTIAL(u16, f16, 4, 256)
ATTN_PARTIAL(float, f32, 4, 256)

// attn_combined is element threadIdx.x of head blockIdx.x, row blockIdx.y of
// the attention output.
__device__ float attn_combined(const float* pm, const float* pl, const float* pacc, const float* sinks, int heads,
                               int dim, int splits) {
    int h = blockIdx.x, row = blockIdx.y, d = threadIdx.x;
    i64 base = ((i64)row * heads + h) * splits;
    float M = sinks ? sinks[h] : NEG_INF;
    for (int s = 0; s < splits; s++) M = fmaxf(M, pm[base + s]);
    float L = sinks ? expf(sinks[h] - M) : 0.f, acc = 0.f;
    for (int s = 0; s < splits; s++) {
        float ms = pm[base + s];
        if (ms == NEG_INF) continue;
        float f = expf(ms - M);
        L += pl[base + s] * f;
        acc += pacc[(base + s) * dim + d] * f;
    }
    return acc / L;
}

// attn_combine: block (head, row), dim threads.
extern "C" __global__ void attn_combine(float* dst, const float* pm, const float* pl, const float* pacc,
                                        const float* sinks, int heads, int dim, int splits) {
    dst[((i64)blockIdx.y * heads + blockIdx.x) * dim + threadIdx.x] = attn_combined(pm, pl, pacc, sinks, heads, dim, splits);
}
