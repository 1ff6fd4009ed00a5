// Decode (1 to 4 tokens) products of Q8_0 and MXFP4 weights on the integer
// tensor cores (mma.sync m16n8k32 s8·s8 → s32), so that no weight is ever
// converted to a float: that conversion made the float kernels in matvec.cu
// bound by instruction issue (Nsight: 64% issue, 25% DRAM on MoE decode).
//
// Weights as int8: Q8_0 quants are int8 already; an MXFP4 code becomes its
// value doubled ({0, 1, 2, 3, 4, 6, 8, 12} and negatives) through byte
// permutes of two 8-entry tables, four codes at a time, and the block scale
// is 2^(e-128) (e8m0_half).
//
// Activations as two int8 digits: a 32-element chunk of x is scaled to
// integers q = rint(x·32639/max|x|) and q is split into hi·256 + lo with
// hi, lo in int8. The two digits are two columns of the B operand; the
// products are combined exactly in int32 (hi·256 + lo) before one float
// multiply by the weight's and the chunk's scales. This keeps about 15 bits
// of each activation relative to its chunk's largest (relative L2 error near
// 2e-5 on random inputs): one int8 digit alone (q8-style) moved the tiny
// conformance models' logits by up to 0.76 relative to the cpu backend and
// flipped MoE routing, measured with an emulation on the cpu backend.
//
// Fragments (PTX ISA, m16n8k32 .s8): lane = 4g + t; A regs a0/a2 hold row g,
// k = 4t..4t+3 and 16+4t..16+4t+3; a1/a3 the same for row g+8; B regs b0/b1
// hold column g at those k; D holds (row g, columns 2t and 2t+1) and (row
// g+8, same columns). B column 2j is token j's hi digit and 2j+1 its lo
// digit, so lane t ends with token t's two partial products.
//
// The order of k within a chunk is free as long as weights and activations
// agree. A lane's 4 MXFP4 bytes (8 codes) decode most cheaply into the order
// (4t, 4t+16, 4t+1, 4t+17 | 4t+2, 4t+18, 4t+3, 4t+19); the Q8_0 quants are
// permuted into the same order, and mq_quant writes activations in it.

#define MQ_TOKENS 4
#define MQ_CHUNK 256     // bytes of quantized x per 32-element chunk: 8 columns × 32
#define MQ_QMAX 32639.f  // 127·256 + 127: hi and lo both fit int8
#define MQ_WARPS 8       // warps splitting the inner dimension in mq_matvec
#define MQ_KSPLIT 4      // warps splitting the inner dimension in mq_gateup
#define MQ_CPI 4         // chunks a warp loads before computing any: bytes in flight bound decode

// Doubled E2M1 magnitudes as int8, and their negatives.
#define MX_POS0 0x03020100u
#define MX_POS1 0x0C080604u
#define MX_NEG0 0xFDFEFF00u
#define MX_NEG1 0xF4F8FAFCu

// mq_offset is the byte of element e (0..31) within a column's 32 bytes:
// lane t's b0 then b1, in the order above.
__device__ __forceinline__ int mq_offset(int e) {
    int low = e & 15, i = low & 3;
    return (low >> 2) * 8 + (i >> 1) * 4 + (i & 1) * 2 + (e >> 4);
}

__device__ __forceinline__ int rint_s32(float v) {
    int q;
    asm("cvt.rni.s32.f32 %0, %1;" : "=r"(q) : "f"(v));
    return q;
}

// mq_digits quantizes v of a chunk whose largest magnitude is amax (> 0)
// into the digits hi and lo.
__device__ __forceinline__ void mq_digits(float v, float amax, int& hi, int& lo) {
    int q = max(-32639, min(32639, rint_s32(v * (MQ_QMAX / amax))));
    hi = (q + 128) >> 8;
    lo = q - (hi << 8);
}

// mq_quant: one warp per 32-element chunk c of x (n ≤ 4 rows of in). Writes
// qx[c] (8 columns × 32 bytes; columns of rows ≥ n are zero) and the chunk
// scales dx[c*4 + t] = max|x|/32639.
extern "C" __global__ void mq_quant(u8* qx, float* dx, const float* x, int n, int in) {
    int lane = threadIdx.x & 31;
    int c = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (c >= in / 32) return;
    u8* o = qx + (i64)c * MQ_CHUNK + mq_offset(lane);
    for (int t = 0; t < MQ_TOKENS; t++) {
        int hi = 0, lo = 0;
        float d = 0.f;
        if (t < n) {
            float v = x[(i64)t * in + c * 32 + lane];
            float amax = warp_max(fabsf(v));
            if (amax > 0.f) {
                mq_digits(v, amax, hi, lo);
                d = amax / MQ_QMAX;
            }
        }
        o[2 * t * 32] = (u8)hi;
        o[(2 * t + 1) * 32] = (u8)lo;
        if (lane == 0) dx[c * MQ_TOKENS + t] = d;
    }
}

// MqRaw is lane t's share of one weight row's chunk, as loaded.
struct MqRaw {
    u32 w0, w1; // Q8_0: quants 4t..4t+3 and 16+4t..; MXFP4: bytes 4t..4t+3 in w0
    u32 s;      // Q8_0: f16 scale bits; MXFP4: E8M0 byte
};

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

// mq_frag turns a loaded chunk share into the A registers of k 0..15 (lo)
// and 16..31 (hi) and returns the block scale.
template <int T>
__device__ __forceinline__ float mq_frag(const MqRaw& r, u32& lo, u32& hi) {
    if (T == T_Q8_0) {
        lo = __byte_perm(r.w0, r.w1, 0x5140);
        hi = __byte_perm(r.w0, r.w1, 0x7362);
        return h2f((u16)r.s);
    } else {
        // Each nibble's low 3 bits pick its magnitude from both tables; its
        // sign bit then picks the positive or the negative byte.
        u32 m = r.w0 & 0x77777777u;
        u32 sel = ((r.w0 >> 1) & 0x44444444u) | 0x32103210u;
        lo = __byte_perm(__byte_perm(MX_POS0, MX_POS1, m), __byte_perm(MX_NEG0, MX_NEG1, m), sel);
        hi = __byte_perm(__byte_perm(MX_POS0, MX_POS1, m >> 16), __byte_perm(MX_NEG0, MX_NEG1, m >> 16), sel >> 16);
        return e8m0_half(r.s);
    }
}

__device__ __forceinline__ void mma_s8(int* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    int z = 0;
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(z), "r"(z), "r"(z), "r"(z));
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

// mq_matvec: dst[t][r] = x[t]·w[r] + bias[r] for t < n ≤ 4. A block of
// MQ_WARPS warps owns 16 rows; warp w takes chunks w, w+MQ_WARPS, … and the
// block sums the warps' parts.
template <int T>
__device__ void mq_matvec_impl(float* dst, const u8* qx, const float* dx, const u8* q, const u8* s, int in,
                               const float* bias, int n, int out) {
    __shared__ float red[MQ_WARPS][16][MQ_TOKENS];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    int r0 = blockIdx.x * 16;
    i64 ra = min(r0 + g, out - 1), rb = min(r0 + g + 8, out - 1); // rows past the end repeat the last
    int nblk = in / 32;
    const u8* xb = qx + g * 32 + t * 8;
    float acc0 = 0.f, acc1 = 0.f;
    for (int c0 = warp; c0 < nblk; c0 += MQ_CPI * MQ_WARPS) {
        MqRaw ka[MQ_CPI], kb[MQ_CPI];
        uint2 bx[MQ_CPI];
        float xd[MQ_CPI];
#pragma unroll
        for (int j = 0; j < MQ_CPI; j++) {
            int c = c0 + j * MQ_WARPS;
            if (c < nblk) {
                mq_load<T>(q, s, in, ra, c, t, ka[j]);
                mq_load<T>(q, s, in, rb, c, t, kb[j]);
                bx[j] = *(const uint2*)(xb + (i64)c * MQ_CHUNK);
                xd[j] = dx[c * MQ_TOKENS + t];
            }
        }
#pragma unroll
        for (int j = 0; j < MQ_CPI; j++)
            if (c0 + j * MQ_WARPS < nblk) mq_rows16<T>(ka[j], kb[j], bx[j], xd[j], acc0, acc1);
    }
    red[warp][g][t] = acc0;
    red[warp][g + 8][t] = acc1;
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
// ids[a] (two groups of 16 rows × MQ_KSPLIT warps), applies the clamped
// SwiGLU and writes them as chunk blockIdx.x of h for assignment a,
// quantized for mq_down: qh[a][chunk] is 2 columns × 32 bytes (hi, lo) and
// dh[a][chunk] its scale. ff is a multiple of 32.
template <int T>
__device__ void mq_gateup_impl(u8* qh, float* dh, const u8* qx, const float* dx, WView gw, WView uw,
                               const float* gb, const float* ub, const int* ids, int k, int ff, float alpha,
                               float limit) {
    __shared__ float red[MQ_KSPLIT][32][2];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    int rg = warp / MQ_KSPLIT, ks = warp % MQ_KSPLIT;
    int a = blockIdx.y, tok = a / k, in = (int)gw.in, nblk = in / 32;
    i64 base = (i64)ids[a] * ff + blockIdx.x * 32;
    i64 ra = base + rg * 16 + g, rb = ra + 8;
    const u8* xb = qx + g * 32 + t * 8;
    float g0 = 0.f, g1 = 0.f, u0 = 0.f, u1 = 0.f;
    for (int c0 = ks; c0 < nblk; c0 += MQ_CPI * MQ_KSPLIT) {
        MqRaw ga[MQ_CPI], gb2[MQ_CPI], ua[MQ_CPI], ub2[MQ_CPI];
        uint2 bx[MQ_CPI];
        float xd[MQ_CPI];
#pragma unroll
        for (int j = 0; j < MQ_CPI; j++) {
            int c = c0 + j * MQ_KSPLIT;
            if (c < nblk) {
                mq_load<T>(gw.q, gw.s, in, ra, c, t, ga[j]);
                mq_load<T>(gw.q, gw.s, in, rb, c, t, gb2[j]);
                mq_load<T>(uw.q, uw.s, in, ra, c, t, ua[j]);
                mq_load<T>(uw.q, uw.s, in, rb, c, t, ub2[j]);
                bx[j] = *(const uint2*)(xb + (i64)c * MQ_CHUNK);
                xd[j] = dx[c * MQ_TOKENS + t];
            }
        }
#pragma unroll
        for (int j = 0; j < MQ_CPI; j++)
            if (c0 + j * MQ_KSPLIT < nblk) {
                mq_rows16<T>(ga[j], gb2[j], bx[j], xd[j], g0, g1);
                mq_rows16<T>(ua[j], ub2[j], bx[j], xd[j], u0, u1);
            }
    }
    if (t == tok) {
        red[ks][rg * 16 + g][0] = g0;
        red[ks][rg * 16 + g + 8][0] = g1;
        red[ks][rg * 16 + g][1] = u0;
        red[ks][rg * 16 + g + 8][1] = u1;
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
    float h = clamped_swiglu(gv, uv, alpha, limit);
    float amax = warp_max(fabsf(h));
    int hi = 0, lo = 0;
    if (amax > 0.f) mq_digits(h, amax, hi, lo);
    i64 chunk = (i64)a * (ff / 32) + blockIdx.x;
    u8* o = qh + chunk * 64 + mq_offset(lane);
    o[0] = (u8)hi;
    o[32] = (u8)lo;
    if (lane == 0) dh[chunk] = amax / MQ_QMAX;
}

// mq_down: MoE decode, second half: dst[t][r] = Σ_slot wts[a]·(down_e[r]·h[a] + db_e[r])
// with a = t·k + slot. Block (16 rows, token t) has k × ksplit warps: warp
// w works on slot w / ksplit and every ksplit-th chunk; thread r then sums
// the slots in ascending expert order (ids are sorted per token), as the
// reference does.
template <int T>
__device__ void mq_down_impl(float* dst, const u8* qh, const float* dh, WView dw, const float* db, const int* ids,
                             const float* wts, int k, int hidden, int ksplit) {
    __shared__ float red[32][16];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    int slot = warp / ksplit, ks = warp % ksplit;
    int r0 = blockIdx.x * 16, tok = blockIdx.y, a = tok * k + slot;
    int in = (int)dw.in, nblk = in / 32;
    i64 base = (i64)ids[a] * hidden;
    i64 ra = base + min(r0 + g, hidden - 1), rb = base + min(r0 + g + 8, hidden - 1);
    const u8* hb = qh + (i64)a * nblk * 64 + g * 32 + t * 8;
    const float* hd = dh + (i64)a * nblk;
    float acc0 = 0.f, acc1 = 0.f;
    for (int c0 = ks; c0 < nblk; c0 += MQ_CPI * ksplit) {
        MqRaw ka[MQ_CPI], kb[MQ_CPI];
        uint2 bx[MQ_CPI];
        float xd[MQ_CPI];
#pragma unroll
        for (int j = 0; j < MQ_CPI; j++) {
            int c = c0 + j * ksplit;
            bx[j] = uint2{0u, 0u}; // only columns 0 and 1 (this slot's h) are used
            if (c < nblk) {
                mq_load<T>(dw.q, dw.s, in, ra, c, t, ka[j]);
                mq_load<T>(dw.q, dw.s, in, rb, c, t, kb[j]);
                if (g < 2) bx[j] = *(const uint2*)(hb + (i64)c * 64);
                xd[j] = hd[c];
            }
        }
#pragma unroll
        for (int j = 0; j < MQ_CPI; j++)
            if (c0 + j * ksplit < nblk) mq_rows16<T>(ka[j], kb[j], bx[j], xd[j], acc0, acc1);
    }
    if (t == 0) {
        red[warp][g] = acc0;
        red[warp][g + 8] = acc1;
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
        mq_matvec_impl<T>(dst, qx, dx, q, s, in, bias, n, out);                                               \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(64 * MQ_KSPLIT)                                               \
        mq_gateup_##NAME(u8* qh, float* dh, const u8* qx, const float* dx, const u8* gq, const u8* gs,         \
                         const u8* uq, const u8* us, int in, const float* gb, const float* ub, const int* ids, \
                         int k, int ff, float alpha, float limit) {                                            \
        mq_gateup_impl<T>(qh, dh, qx, dx, WView{gq, gs, in}, WView{uq, us, in}, gb, ub, ids, k, ff, alpha,     \
                          limit);                                                                              \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(1024)                                                         \
        mq_down_##NAME(float* dst, const u8* qh, const float* dh, const u8* q, const u8* s, int in,            \
                       const float* db, const int* ids, const float* wts, int k, int hidden, int ksplit) {     \
        mq_down_impl<T>(dst, qh, dh, WView{q, s, in}, db, ids, wts, k, hidden, ksplit);                        \
    }

MQ_KERNELS(T_Q8_0, q8_0)
MQ_KERNELS(T_MXFP4, mxfp4)

// rms_norm_mq is rms_norm (elementwise.cu) for n ≤ 4 rows of a multiple of
// 32 columns that also writes the rows quantized as mq_quant does, saving
// its launch before the q, k and v projections and the MoE (columns of rows
// ≥ n are left as they are: only lanes of rows < n use them). blockDim.x is
// a multiple of 32, so each warp's elements are whole chunks.
extern "C" __global__ void rms_norm_mq(float* dst, float* x, const float* delta, const float* w, int cols, float eps,
                                       u8* qx, float* dx) {
    __shared__ float sh[32];
    int row = blockIdx.x, lane = threadIdx.x & 31;
    float* xr = x + (i64)row * cols;
    float* dr = dst + (i64)row * cols;
    float inv = rsqrtf(block_sum(add_rows(xr, delta, cols), sh) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = xr[c] * inv * w[c];
        dr[c] = v;
        float amax = warp_max(fabsf(v));
        int hi = 0, lo = 0;
        if (amax > 0.f) mq_digits(v, amax, hi, lo);
        int chunk = c >> 5;
        u8* o = qx + (i64)chunk * MQ_CHUNK + 2 * row * 32 + mq_offset(lane);
        o[0] = (u8)hi;
        o[32] = (u8)lo;
        if (lane == 0) dx[chunk * MQ_TOKENS + row] = amax / MQ_QMAX;
    }
}
