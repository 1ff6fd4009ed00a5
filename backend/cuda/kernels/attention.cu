// Attention over paged K/V caches of f16 or f32, split along the keys
// (flash-decoding), for the rows of a batch of sequences.
//
// Key position j of a sequence lives in cache row table[j/bs]*bs + j%bs,
// table being the sequence's row of the block table (maxblocks entries);
// seq[r] names the sequence of query row r, and a sequence's rows are
// consecutive.
//
// attn_partial: block (head group, R query rows, split). Each warp is one
// query head; the warps of a block share one KV head (GQA), so they read the same
// K and V rows and the block streams each of them once. The visible keys of
// a row at position p are lo..p (lo = max(0, p-window+1), or 0), read from
// pos on the device; split z takes an equal share of them, so the grid
// depends only on shapes and a captured graph stays valid as p grows. Keys
// go 32 at a time: the block stages the tile's keys and values in shared
// memory, lane j scores key j against the whole query, the tile's softmax
// is folded into a running max and sum, and each lane accumulates its own
// columns of V. The next tile's keys and values come in by cp.async while
// the warps work on this one: with plain loads each tile waited for its own
// loads (one DRAM latency a key per thread), 150 µs a layer for a decode
// step of 64 sequences of 512 tokens (NOTES.md #27).
//
// attn_combine merges the splits and the sink logit into dst.

#include "mq.cuh"

// Shared memory of attn_partial (attnShmem in Go computes the same size):
// the warps' queries (R rows each, f32), two stages of a 32-key tile of K
// and V as the cache stores them (KT), and for f16 caches the tile
// converted to f32. K rows of f32 are padded by 4 so lanes reading
// different keys with 16-byte loads hit different banks.
#define ATT_KROW(dim) ((dim) + 4)

// kv_row maps key position key of the sequence whose block table row is
// tbl to its cache row (paged cache: see backend.AttentionParams).
__device__ __forceinline__ i64 kv_row(const int* tbl, int key, int bs) {
    return (i64)tbl[key / bs] * bs + key % bs;
}

// seg_end returns the end of the run of rows from r on (below end) that
// belong to the same sequence as row r. Every thread of a block computes
// the same runs, so loops over them are uniform.
__device__ __forceinline__ int seg_end(const int* seq, int r, int end) {
    int s = seq[r], e = r + 1;
    while (e < end && seq[e] == s) e++;
    return e;
}

// att_load issues the cp.async loads of the 32-key tile from key kb into
// stage st (K rows kr elements apart, then V rows dim apart); keys from end
// on are zero-filled. Thread i takes the 16-byte pieces i, i + blockDim, …
// of the K rows and the same pieces of the V rows.
template <typename KT>
__device__ __forceinline__ void att_load(KT* st, const KT* kc, const KT* vc, const int* tbl, int kb, int end, int bs,
                                         i64 stride, i64 hoff, int dim, int kr) {
    const int VEC = 16 / sizeof(KT);
    int ppr = dim / VEC; // pieces a row
    for (int idx = threadIdx.x; idx < 32 * ppr; idx += blockDim.x) {
        int j = idx / ppr, c = (idx - j * ppr) * VEC;
        bool ok = kb + j < end;
        i64 off = ok ? kv_row(tbl, kb + j, bs) * stride + hoff + c : 0;
        cp_async16(st + j * kr + c, kc + off, ok);
        cp_async16(st + 32 * kr + j * dim + c, vc + off, ok);
    }
}

// att_widen converts an f16 stage (K rows dim apart, then V) into the f32
// tile the warps read (K rows krow apart, then V rows dim apart).
__device__ __forceinline__ void att_widen(float* Ks, const u16* st, int dim, int krow) {
    int ppr = dim / 8;
    for (int idx = threadIdx.x; idx < 64 * ppr; idx += blockDim.x) {
        int j = idx / ppr, c = (idx - j * ppr) * 8; // rows 0-31 K, 32-63 V
        uint4 v = *(const uint4*)(st + j * dim + c);
        float* d = j < 32 ? Ks + j * krow + c : Ks + 32 * krow + (j - 32) * dim + c;
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            d[2 * i] = h2f((u16)(w[i] & 0xffffu));
            d[2 * i + 1] = h2f((u16)(w[i] >> 16));
        }
    }
}

// attn_partial_impl: block (KV head × head group, R consecutive query rows,
// split). Each warp is one query head and keeps R rows' running softmax
// state, so one staged key/value tile serves R rows (prefill) and every
// head of the group (GQA). The block's rows may belong to several
// sequences: it takes each run of rows of one sequence in turn, over the
// union of that run's visible keys, read through that sequence's block
// table; each row masks the keys outside its own range (and all keys in
// the other runs' passes).
template <typename KT, int R, int PER>
__device__ void attn_partial_impl(const float* q, const KT* kc, const KT* vc, const int* pos, const int* seq,
                                  const int* table, int n, int heads, int kvheads, int dim, float scale, int window,
                                  int bs, int maxblocks, int hgroups, int fixed, float* pm, float* pl, float* pacc) {
    extern __shared__ float sm[];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int group = heads / kvheads;
    int kvh = blockIdx.x / hgroups;
    int hin = (blockIdx.x % hgroups) * warps + warp;
    int row0 = blockIdx.y * R, split = blockIdx.z, splits = gridDim.z;
    bool active = hin < group;
    int h = kvh * group + hin;
    // Stages of KT: K rows kr apart (f32: padded, read in place), then V.
    const int krow = ATT_KROW(dim), kr = sizeof(KT) == 4 ? krow : dim, stage = 32 * (kr + dim);
    float* qw = sm + warp * R * dim;
    KT* st0 = (KT*)(sm + warps * R * dim);
    float* wide = (float*)(st0 + 2 * stage); // f16 caches: the tile in f32

    int rlo[R], rhi[R]; // each row's visible keys rlo..rhi (empty for rows past n)
#pragma unroll
    for (int r = 0; r < R; r++) {
        rlo[r] = 0;
        rhi[r] = -1;
        if (row0 + r < n) {
            int p = pos[row0 + r];
            rlo[r] = window > 0 ? max(0, p - window + 1) : 0;
            rhi[r] = p;
        }
        for (int d = lane; d < dim; d += 32)
            qw[r * dim + d] = active && row0 + r < n ? q[((i64)(row0 + r) * heads + h) * dim + d] * scale : 0.f;
    }

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
    i64 stride = (i64)kvheads * dim, hoff = (i64)kvh * dim;

    const int rend = min(row0 + R, n);
    for (int s0 = row0; s0 < rend;) {
        const int s1 = seg_end(seq, s0, rend);
        const int* tbl = table + (i64)seq[s0] * maxblocks;
        int ulo = 0x7fffffff, uhi = -1;
#pragma unroll
        for (int r = 0; r < R; r++)
            if (row0 + r >= s0 && row0 + r < s1) {
                ulo = min(ulo, rlo[r]);
                uhi = max(uhi, rhi[r]);
            }
        int len = uhi - ulo + 1;
        // A split's share: equal parts of the keys, or (batch-invariant
        // mode) a fixed number of them.
        int chunk = fixed > 0 ? fixed : (len + splits - 1) / splits;
        int start = ulo + split * chunk, end = min(uhi + 1, start + chunk);

        __syncthreads(); // the previous run's last tile is consumed (and q is written)
        if (start < end) att_load(st0, kc, vc, tbl, start, end, bs, stride, hoff, dim, kr);
        cp_async_commit();
        for (int kb = start, t = 0; kb < end; kb += 32, t++) {
            int nk = min(32, end - kb);
            cp_async_wait<0>();
            __syncthreads(); // tile t landed for every thread; tile t-1 is consumed
            if (kb + 32 < end) att_load(st0 + ((t + 1) & 1) * stage, kc, vc, tbl, kb + 32, end, bs, stride, hoff, dim, kr);
            cp_async_commit();
            const float* Ks = (const float*)(st0 + (t & 1) * stage);
            if (sizeof(KT) == 2) {
                att_widen(wide, (const u16*)(st0 + (t & 1) * stage), dim, krow);
                __syncthreads();
                Ks = wide;
            }
            const float* Vs = Ks + 32 * krow;
            if (!active) continue;
            int key = kb + lane;
            float pk[R];
#pragma unroll
            for (int r = 0; r < R; r++) {
                float s = NEG_INF;
                bool mine = row0 + r >= s0 && row0 + r < s1;
                if (mine && lane < nk && key >= rlo[r] && key <= rhi[r]) {
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
        s0 = s1;
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
#define ATTN_PARTIAL(KT, NAME, R, D)                                                                               \
    extern "C" __global__ void attn_partial_##NAME##_r##R##_d##D(                                                   \
        const float* q, const KT* kc, const KT* vc, const int* pos, const int* seq, const int* table, int n,        \
        int heads, int kvheads, int dim, float scale, int window, int bs, int maxblocks, int hgroups, int fixed,    \
        float* pm, float* pl, float* pacc) {                                                                        \
        attn_partial_impl<KT, R, D / 32>(q, kc, vc, pos, seq, table, n, heads, kvheads, dim, scale, window, bs,     \
                                         maxblocks, hgroups, fixed, pm, pl, pacc);                                  \
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

// attn_combine_mq is attn_combine (attention.cu) for n ≤ 4 rows with a head
// dim that is a multiple of 32, also writing the rows quantized for the
// output projection, as rms_norm_mq does for the q, k and v projections.
extern "C" __global__ void attn_combine_mq(float* dst, const float* pm, const float* pl, const float* pacc,
                                           const float* sinks, int heads, int dim, int splits, u8* qx, float* dx) {
    i64 col = (i64)blockIdx.x * dim + threadIdx.x;
    float v = attn_combined(pm, pl, pacc, sinks, heads, dim, splits);
    dst[(i64)blockIdx.y * heads * dim + col] = v;
    mq_store(v, col >> 5, blockIdx.y, qx, dx);
}

// ---- Prefill: flash attention on the tensor cores ----
//
// attn_flash_<cache>_d64: block (head, 64 query rows), 4 warps of 16 rows.
// The block streams its key range (the union of its rows' visible keys) in
// tiles of 64 keys, staged in shared memory as f16: K key-major, V
// transposed (dim-major), so both mma B fragments are single 32-bit reads.
// Each warp computes its 16×64 scores with mma.sync m16n8k16 (f32
// accumulators), masks them by the rows' absolute positions, folds the tile
// into a running max and sum per row (online softmax), and adds P·V into
// 16×64 f32 output accumulators; the sink joins the denominator at the end,
// so no partial results go through global memory (the split-K kernels above
// remain for decode and short batches).
//
// Accuracy: q and the probabilities are split into two f16 terms (hi + the
// rounded residual) and each product runs twice, so they keep ~22 bits; one
// f16 term would leave ~3e-4 relative error in the output. K and V are f16:
// exact for f16 caches, a rounding of f32 ones (the precision the backend
// already uses for long contexts).

#ifndef FA_ROWS // from Go as -DFA_ROWS (kernelDefines); this default serves standalone checks
#define FA_ROWS 64 // query rows per block, 16 per warp
#endif
#define FA_KEYS 64 // keys per staged tile
#ifndef FA_D // from Go as -DFA_D (kernelDefines); this default serves standalone checks
#define FA_D 64    // head dim these kernels are built for
#endif
#ifndef FA_THREADS // from Go as -DFA_THREADS (kernelDefines); this default serves standalone checks
#define FA_THREADS 128 // 4 warps
#endif
// Shared row length in halves: 64 plus 8 of padding, so the 32 lanes of a
// fragment read (8 rows × 4 words) land in 32 different banks.
#define FA_LD 72

// split2 returns x and y as packed f16 (x in the low half) and their
// rounding residuals, also packed, in lo.
__device__ __forceinline__ u32 split2(float x, float y, u32& lo) {
    u16 hx = f2h(x), hy = f2h(y);
    lo = pack2(x - h2f(hx), y - h2f(hy));
    return (u32)hx | ((u32)hy << 16);
}

// kv_load4 reads 4 consecutive cache elements as 4 packed halves.
__device__ __forceinline__ uint2 kv_load4(const u16* p, i64 i) { return *(const uint2*)(p + i); }
__device__ __forceinline__ uint2 kv_load4(const float* p, i64 i) {
    float4 v = *(const float4*)(p + i);
    return make_uint2(pack2(v.x, v.y), pack2(v.z, v.w));
}

__device__ __forceinline__ int warp_min_i(int v) {
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ int warp_max_i(int v) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// fa_softmax folds one tile of masked scores (NJ n8 C fragments: rows g
// and g+8, keys 2t and 2t+1 of each; masked keys NEG_INF) into an online
// softmax: a row's keys are spread over the 4 lanes of a quad, so the max
// is reduced across the quad; the running max m, the per-lane partial sum
// l and the 8 output fragments o are rescaled, and s is left holding the
// tile's probabilities.
template <int NJ>
__device__ __forceinline__ void fa_softmax(float (*s)[4], float* m, float* l, float (*o)[4]) {
    float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
    for (int j = 0; j < NJ; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
    float corr[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        float mn = fmaxf(m[i], mx[i]);
        corr[i] = m[i] == NEG_INF ? 0.f : expf(m[i] - mn);
        m[i] = mn;
        l[i] *= corr[i];
    }
#pragma unroll
    for (int j = 0; j < 8; j++) {
        o[j][0] *= corr[0];
        o[j][1] *= corr[0];
        o[j][2] *= corr[1];
        o[j][3] *= corr[1];
        if (j < NJ)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float pv = s[j][e] == NEG_INF ? 0.f : expf(s[j][e] - m[e >> 1]);
                l[e >> 1] += pv;
                s[j][e] = pv;
            }
    }
}

// p_frag writes P's A fragment of keys 16kk..16kk+15 (the probabilities'
// C fragments 2kk and 2kk+1) as two f16 terms.
__device__ __forceinline__ void p_frag(const float (*s)[4], int kk, u32* ah, u32* al) {
    ah[0] = split2(s[2 * kk][0], s[2 * kk][1], al[0]);
    ah[1] = split2(s[2 * kk][2], s[2 * kk][3], al[1]);
    ah[2] = split2(s[2 * kk + 1][0], s[2 * kk + 1][1], al[2]);
    ah[3] = split2(s[2 * kk + 1][2], s[2 * kk + 1][3], al[3]);
}

template <typename KT>
__device__ void attn_flash_impl(float* dst, const float* q, const KT* kc, const KT* vc, const int* pos,
                                const int* seq, const int* table, const float* sinks, int n, int heads, int kvheads,
                                float scale, int window, int bs, int maxblocks) {
    __shared__ __align__(16) u16 Ks[FA_KEYS * FA_LD]; // [key][dim]
    __shared__ __align__(16) u16 Vt[FA_D * FA_LD];    // [dim][key]
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3; // mma fragment coordinates
    const int h = blockIdx.x, kvh = h / (heads / kvheads);
    const int row0 = blockIdx.y * FA_ROWS, wrow = row0 + warp * 16;
    const int rend = min(row0 + FA_ROWS, n);
    if (row0 >= n) return; // uniform over the block

    // q as A fragments (rows g, g+8; dims 2t, 2t+1 and +8 of each 16),
    // scaled, in two f16 terms.
    u32 qh[4][4], ql[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = wrow + g + ((i & 1) ? 8 : 0);
            int c = kk * 16 + 2 * t + ((i & 2) ? 8 : 0);
            float x = 0.f, y = 0.f;
            if (r < n) {
                const float* qp = q + ((i64)r * heads + h) * FA_D + c;
                x = qp[0] * scale;
                y = qp[1] * scale;
            }
            qh[kk][i] = split2(x, y, ql[kk][i]);
        }
    }

    float o[8][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[j][e] = 0.f;

    const i64 stride = (i64)kvheads * FA_D;
    const KT* kbase = kc + (i64)kvh * FA_D;
    const KT* vbase = vc + (i64)kvh * FA_D;
    const u32* ks32 = (const u32*)Ks;
    u32* vt32 = (u32*)Vt;

    // The block's rows may span the end of one sequence's chunk and the
    // start of the next: each run of rows of one sequence is a pass over
    // that sequence's keys, in which the other rows see nothing. The
    // softmax state of a row carries over passes it takes no part in.
    for (int s0 = row0; s0 < rend;) {
        const int s1 = seg_end(seq, s0, rend);
        const int* tbl = table + (i64)seq[s0] * maxblocks;
        // Visible keys lo..hi of this thread's two rows (g and g+8 of the
        // warp's 16); a row outside the run sees none (lo > hi).
        int lo[2], hi[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int r = wrow + g + 8 * i;
            lo[i] = 0x7fffffff;
            hi[i] = -1;
            if (r >= s0 && r < s1) {
                int p = pos[r];
                hi[i] = p;
                lo[i] = window > 0 ? max(0, p - window + 1) : 0;
            }
        }
        // The warp's key range (to skip tiles it sees nothing of) and the
        // run's: every warp reduces the run's positions itself, so the
        // range needs no shared memory or barrier.
        const int wlo = warp_min_i(min(lo[0], lo[1])), whi = warp_max_i(max(hi[0], hi[1]));
        int blo = 0x7fffffff, bhi = -1;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int r = row0 + lane + 32 * i;
            if (r >= s0 && r < s1) {
                int p = pos[r];
                bhi = max(bhi, p);
                blo = min(blo, window > 0 ? max(0, p - window + 1) : 0);
            }
        }
        blo = warp_min_i(blo);
        bhi = warp_max_i(bhi);

        // Tiles start at multiples of FA_KEYS, whatever rows share the
        // block, so a row's sums run in the same order in any batch.
        for (int kb = blo / FA_KEYS * FA_KEYS; kb <= bhi; kb += FA_KEYS) {
            __syncthreads(); // every warp is done with the previous tile
            // K: unit u is 4 dims (u & 15) of key u >> 4, so a warp reads
            // two whole key rows. Keys outside the run's range are zeros
            // (their cache rows may hold anything or have no block, and
            // 0 × NaN would poison P·V). V, transposed: unit u is keys 2jp, 2jp+1 (jp = u & 31) ×
            // 4 dims (u >> 5); it writes one word (the two keys' halves)
            // into each of 4 rows of Vt, and the lanes of a warp write
            // consecutive words. Every load of a thread is issued before its
            // first store.
            const int KU = FA_KEYS * FA_D / 4 / FA_THREADS, VU = FA_KEYS * FA_D / 8 / FA_THREADS;
            uint2 kw[KU], va[VU], vb[VU];
#pragma unroll
            for (int it = 0; it < KU; it++) {
                int u = threadIdx.x + it * FA_THREADS, key = kb + (u >> 4);
                kw[it] = key >= blo && key <= bhi ? kv_load4(kbase, kv_row(tbl, key, bs) * stride + (u & 15) * 4) : make_uint2(0u, 0u);
            }
#pragma unroll
            for (int it = 0; it < VU; it++) {
                int u = threadIdx.x + it * FA_THREADS, key = kb + 2 * (u & 31), c = (u >> 5) * 4;
                va[it] = key >= blo && key <= bhi ? kv_load4(vbase, kv_row(tbl, key, bs) * stride + c) : make_uint2(0u, 0u);
                vb[it] = key + 1 >= blo && key + 1 <= bhi ? kv_load4(vbase, kv_row(tbl, key + 1, bs) * stride + c) : make_uint2(0u, 0u);
            }
#pragma unroll
            for (int it = 0; it < KU; it++) {
                int u = threadIdx.x + it * FA_THREADS;
                *(uint2*)(Ks + (u >> 4) * FA_LD + (u & 15) * 4) = kw[it];
            }
#pragma unroll
            for (int it = 0; it < VU; it++) {
                int u = threadIdx.x + it * FA_THREADS, jp = u & 31, c = (u >> 5) * 4;
                vt32[(c + 0) * (FA_LD / 2) + jp] = __byte_perm(va[it].x, vb[it].x, 0x5410);
                vt32[(c + 1) * (FA_LD / 2) + jp] = __byte_perm(va[it].x, vb[it].x, 0x7632);
                vt32[(c + 2) * (FA_LD / 2) + jp] = __byte_perm(va[it].y, vb[it].y, 0x5410);
                vt32[(c + 3) * (FA_LD / 2) + jp] = __byte_perm(va[it].y, vb[it].y, 0x7632);
            }
            __syncthreads();
            if (kb > whi || kb + FA_KEYS - 1 < wlo) continue; // nothing visible to this warp's rows

            // Scores: s[j] is keys 8j..8j+7 (C fragment: rows g, g+8; keys 2t, 2t+1).
            float s[8][4];
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[j][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const u32* kp = ks32 + (8 * j + g) * (FA_LD / 2) + kk * 8 + t;
                    u32 b0 = kp[0], b1 = kp[4];
                    mma16816(s[j], qh[kk][0], qh[kk][1], qh[kk][2], qh[kk][3], b0, b1);
                    mma16816(s[j], ql[kk][0], ql[kk][1], ql[kk][2], ql[kk][3], b0, b1);
                }
            }
            // Mask, then the online softmax.
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int i = e >> 1, key = kb + 8 * j + 2 * t + (e & 1);
                    if (key < lo[i] || key > hi[i]) s[j][e] = NEG_INF;
                }
            fa_softmax<8>(s, m, l, o);
            // O += P·V: the probabilities of keys 16kk..16kk+15 are the A
            // fragment of P; B is read from the transposed V.
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                u32 ah[4], al[4];
                p_frag(s, kk, ah, al);
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const u32* vp = vt32 + (8 * j + g) * (FA_LD / 2) + kk * 8 + t;
                    u32 b0 = vp[0], b1 = vp[4];
                    mma16816(o[j], ah[0], ah[1], ah[2], ah[3], b0, b1);
                    mma16816(o[j], al[0], al[1], al[2], al[3], b0, b1);
                }
            }
        }
        s0 = s1;
    }

    // The sink is one more logit in each row's denominator.
    float f[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
        float sink = sinks ? sinks[h] : NEG_INF;
        float M = fmaxf(m[i], sink);
        float e = m[i] == NEG_INF ? 0.f : expf(m[i] - M);
        float L = l[i] * e + (sinks ? expf(sink - M) : 0.f);
        f[i] = e / L;
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int r = wrow + g + 8 * i;
        if (r >= n) continue;
        float* dp = dst + ((i64)r * heads + h) * FA_D + 2 * t;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            dp[8 * j] = o[j][2 * i] * f[i];
            dp[8 * j + 1] = o[j][2 * i + 1] * f[i];
        }
    }
}

#define ATTN_FLASH(KT, NAME)                                                                                    \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) attn_flash_##NAME##_d64(                           \
        float* dst, const float* q, const KT* kc, const KT* vc, const int* pos, const int* seq, const int* table, \
        const float* sinks, int n, int heads, int kvheads, float scale, int window, int bs, int maxblocks) {    \
        attn_flash_impl<KT>(dst, q, kc, vc, pos, seq, table, sinks, n, heads, kvheads, scale, window, bs,       \
                            maxblocks);                                                                         \
    }
ATTN_FLASH(u16, f16)
ATTN_FLASH(float, f32)

// ---- Decode: split-K attention on the tensor cores ----
//
// attn_gqa_f16_d64: block (4 KV heads, one decode row, split); warp w takes
// KV head 4·blockIdx.x + w, with the query heads of its group as the 16
// rows of an mma tile (a group of 8, as gpt-oss's, leaves rows 8-15 zero),
// so one staged key tile serves the whole group and a score is one MMA
// lane, not a 64-long dot product a lane: attn_partial spent its time in
// shared-memory reads of K and V as f32 (Nsight: L1 77% busy, 14% of DRAM
// bandwidth at 64 sequences; NOTES.md #30). The warp streams its split's
// keys in 32-key tiles of K and V (f16, as the cache stores them), two
// stages by cp.async, scores them with mma.sync m16n8k16 against q, folds
// each tile into a running max and sum (online softmax) and adds P·V, V's
// fragments read transposed by ldmatrix. q and P keep two f16 terms each,
// as in attn_flash, so products hold ~22 bits. It writes attn_partial's
// partial results (pm, pl, pacc), which attn_combine merges with the sink.
// Warps never wait for each other: each has its own stages.

#define AG_KEYS 32   // keys a staged tile
#define AG_LD 72     // halves a staged row: 64 + 8 of padding, so ldmatrix rows hit distinct banks
#ifndef AG_WARPS // from Go as -DAG_WARPS (kernelDefines); this default serves standalone checks
#define AG_WARPS 4   // KV heads (warps) a block
#endif
#define AG_STAGE (2 * AG_KEYS * AG_LD) // halves of a stage: K rows, then V rows

// ag_load queues the cp.async loads of the tile of keys kb.. (below end;
// later keys are zero-filled) of one KV head into stage st: lane takes
// 16-byte pieces lane, lane + 32, … of the tile's 32 rows × 8 pieces, of K
// and of V.
__device__ __forceinline__ void ag_load(u16* st, const u16* kc, const u16* vc, const int* tbl, int kb, int end,
                                        int bs, i64 stride, i64 hoff, int lane) {
#pragma unroll
    for (int i = 0; i < AG_KEYS * 8 / 32; i++) {
        int u = lane + 32 * i, j = u >> 3, part = (u & 7) * 8;
        bool ok = kb + j < end;
        i64 off = ok ? kv_row(tbl, kb + j, bs) * stride + hoff + part : 0;
        cp_async16(st + j * AG_LD + part, kc + off, ok);
        cp_async16(st + (AG_KEYS + j) * AG_LD + part, vc + off, ok);
    }
}

extern "C" __global__ void __launch_bounds__(32 * AG_WARPS)
    attn_gqa_f16_d64(const float* q, const u16* kc, const u16* vc, const int* pos, const int* seq, const int* table,
                     int heads, int kvheads, float scale, int window, int bs, int maxblocks, float* pm, float* pl,
                     float* pacc) {
    extern __shared__ __align__(16) u16 ag_sm[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int kvh = blockIdx.x * AG_WARPS + warp, r = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    if (kvh >= kvheads) return; // warps never meet at a barrier
    const int group = heads / kvheads, h0 = kvh * group;
    u16* st0 = ag_sm + warp * 2 * AG_STAGE;

    // This split's share of the row's visible keys lo..p.
    const int p = pos[r], lo = window > 0 ? max(0, p - window + 1) : 0;
    const int chunk = (p - lo + splits) / splits, start = lo + split * chunk, end = min(p + 1, start + chunk);
    const int* tbl = table + (i64)seq[r] * maxblocks;
    const i64 stride = (i64)kvheads * 64, hoff = (i64)kvh * 64;
    if (start < end) ag_load(st0, kc, vc, tbl, start, end, bs, stride, hoff, lane);
    cp_async_commit();

    // q as A fragments (heads g and g+8 of the group; dims 2t, 2t+1 and +8
    // of each 16), scaled, in two f16 terms. attn_flash's loop with other
    // row addresses: shared as a helper, it made ptxas spill here.
    u32 qh[4][4], ql[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int hh = g + ((i & 1) ? 8 : 0), c = kk * 16 + 2 * t + ((i & 2) ? 8 : 0);
            float x = 0.f, y = 0.f;
            if (hh < group) {
                const float* qp = q + ((i64)r * heads + h0 + hh) * 64 + c;
                x = qp[0] * scale;
                y = qp[1] * scale;
            }
            qh[kk][i] = split2(x, y, ql[kk][i]);
        }

    float o[8][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[j][e] = 0.f;

    for (int kb = start, tt = 0; kb < end; kb += AG_KEYS, tt++) {
        if (kb + AG_KEYS < end)
            ag_load(st0 + ((tt + 1) & 1) * AG_STAGE, kc, vc, tbl, kb + AG_KEYS, end, bs, stride, hoff, lane);
        cp_async_commit();
        cp_async_wait<1>();
        __syncwarp(); // every lane's pieces of tile tt have landed
        const u16* Ks = st0 + (tt & 1) * AG_STAGE;
        const u16* Vs = Ks + AG_KEYS * AG_LD;

        // Scores: s[j] is keys 8j..8j+7 (C fragment: heads g, g+8; keys
        // 2t, 2t+1). Matrix i of an ldmatrix is dims 8i.. of 32 (kk pair).
        float s[4][4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) s[j][e] = 0.f;
#pragma unroll
            for (int k2 = 0; k2 < 2; k2++) {
                u32 b[4];
                ldsm_x4(b, Ks + (8 * j + (lane & 7)) * AG_LD + k2 * 32 + (lane >> 3) * 8);
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    int kk = 2 * k2 + h;
                    mma16816(s[j], qh[kk][0], qh[kk][1], qh[kk][2], qh[kk][3], b[2 * h], b[2 * h + 1]);
                    mma16816(s[j], ql[kk][0], ql[kk][1], ql[kk][2], ql[kk][3], b[2 * h], b[2 * h + 1]);
                }
            }
        }
        // Keys past the split's end (zero-filled) are masked; then the
        // online softmax (m stays finite: the tile's first key is visible).
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (kb + 8 * j + 2 * t + (e & 1) >= end) s[j][e] = NEG_INF;
        fa_softmax<4>(s, m, l, o);
        // O += P·V: V's B fragments (keys 2t, 2t+1 and +8 of dim g) come
        // from ldmatrix.trans of the key-major tile: matrix i is keys 16kk
        // + 8(i&1).., dims 8(2jp + i/2)...
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            u32 ah[4], al[4];
            p_frag(s, kk, ah, al);
#pragma unroll
            for (int jp = 0; jp < 4; jp++) {
                u32 b[4];
                int mi = lane >> 3;
                ldsm_x4_t(b, Vs + (16 * kk + (mi & 1) * 8 + (lane & 7)) * AG_LD + 8 * (2 * jp + (mi >> 1)));
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    mma16816(o[2 * jp + h], ah[0], ah[1], ah[2], ah[3], b[2 * h], b[2 * h + 1]);
                    mma16816(o[2 * jp + h], al[0], al[1], al[2], al[3], b[2 * h], b[2 * h + 1]);
                }
            }
        }
        __syncwarp(); // tile tt is consumed before the next iteration refills its stage
    }
    cp_async_wait<0>();

#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
        int hh = g + 8 * i;
        if (hh >= group) continue;
        i64 ix = ((i64)r * heads + h0 + hh) * splits + split;
        if (t == 0) {
            pm[ix] = m[i];
            pl[ix] = l[i];
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            pacc[ix * 64 + 8 * j + 2 * t] = o[j][2 * i];
            pacc[ix * 64 + 8 * j + 2 * t + 1] = o[j][2 * i + 1];
        }
    }
}
