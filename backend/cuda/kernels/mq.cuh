// The integer tensor-core formats of mqvec.cu and mqvec_grouped.cu, also
// used by the kernels that write activations quantized (elementwise.cu's
// rms_norm_mq, attention.cu's attn_combine_mq).
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

#pragma once
#include "common.cuh"

#ifndef MQ_TOKENS // from Go as -DMQ_TOKENS (kernelDefines); this default serves standalone checks
#define MQ_TOKENS 4
#endif
#ifndef MQ_CHUNK // from Go as -DMQ_CHUNK (kernelDefines); this default serves standalone checks
#define MQ_CHUNK 256     // bytes of quantized x per 32-element chunk: 8 columns × 32
#endif
#define MQ_QMAX 32639.f  // 127·256 + 127: hi and lo both fit int8
#ifndef MQ_WARPS // from Go as -DMQ_WARPS (kernelDefines); this default serves standalone checks
#define MQ_WARPS 8       // warps splitting the inner dimension in mq_matvec
#endif
#ifndef MQ_KSPLIT // from Go as -DMQ_KSPLIT (kernelDefines); this default serves standalone checks
#define MQ_KSPLIT 4      // warps splitting the inner dimension in mq_gateup
#endif
#ifndef MQ_DOWN_WARPS // from Go as -DMQ_DOWN_WARPS (kernelDefines); this default serves standalone checks
#define MQ_DOWN_WARPS 16 // most warps of an mq_down block: k slots × ksplit
#endif

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

// mq_store quantizes v into row `row` of chunk `chunk` of qx and dx
// (mq_quant's layout). The warp's 32 lanes hold the chunk's 32 elements,
// lane = element.
__device__ __forceinline__ void mq_store(float v, i64 chunk, int row, u8* qx, float* dx) {
    int lane = threadIdx.x & 31;
    float amax = warp_max(fabsf(v));
    int hi = 0, lo = 0;
    if (amax > 0.f) mq_digits(v, amax, hi, lo);
    u8* o = qx + chunk * MQ_CHUNK + 2 * row * 32 + mq_offset(lane);
    o[0] = (u8)hi;
    o[32] = (u8)lo;
    if (lane == 0) dx[chunk * MQ_TOKENS + row] = amax / MQ_QMAX;
}

// mq_store_row quantizes v into chunk `chunk` of a row-major quantized
// activation (q: 64 bytes a chunk, the hi digits then the lo digits, in
// mq_offset order; d: its scale), as mq_gateup writes h and mq_quant_rows
// writes x. The warp's 32 lanes hold the chunk's 32 elements, lane = element.
__device__ __forceinline__ void mq_store_row(float v, i64 chunk, u8* q, float* d) {
    int lane = threadIdx.x & 31;
    float amax = warp_max(fabsf(v));
    int hi = 0, lo = 0;
    if (amax > 0.f) mq_digits(v, amax, hi, lo);
    u8* o = q + chunk * 64 + mq_offset(lane);
    o[0] = (u8)hi;
    o[32] = (u8)lo;
    if (lane == 0) d[chunk] = amax / MQ_QMAX;
}

// MqRaw is lane t's share of one weight row's chunk, as loaded.
struct MqRaw {
    u32 w0, w1; // Q8_0: quants 4t..4t+3 and 16+4t..; MXFP4: bytes 4t..4t+3 in w0
    u32 s;      // Q8_0: f16 scale bits; MXFP4: E8M0 byte
};

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
        // A permute takes one table word as an immediate but the other from
        // a register. As constants, ptxas rebuilt that register before every
        // permute (a move each: ~1 in 10 instructions of the grouped
        // kernels' stage loops); mixed with threadIdx (always < 2^16) they
        // are computed once and stay in two registers.
        u32 pos0 = MX_POS0 | (threadIdx.x >> 16), neg0 = MX_NEG0 | (threadIdx.x >> 16);
        lo = __byte_perm(__byte_perm(pos0, MX_POS1, m), __byte_perm(neg0, MX_NEG1, m), sel);
        hi = __byte_perm(__byte_perm(pos0, MX_POS1, m >> 16), __byte_perm(neg0, MX_NEG1, m >> 16), sel >> 16);
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
