// Prefill products of Q8_0 and MXFP4 weights (steps of more than MQG_TOKENS
// tokens: dense projections and the grouped MoE experts) on the tensor
// cores, fed by a cp.async pipeline.
//
// A block computes RW weight rows × TK tokens (128 × 128, or 256 × 64 for
// experts of few tokens). Its eight warps each own 64 rows (four m16
// tiles, the MMA's A) and 32 tokens (four n8 tiles, its B), so one
// ldmatrix of a weight fragment serves eight MMAs and one of an x fragment
// four. The inner dimension streams through shared memory a stage of GM_K
// = 64 elements (two 32-element chunks) at a time, GM_STAGES stages in
// flight: the raw quantized weight rows, and x as two 16-bit planes (hi =
// x rounded, lo = x − hi rounded; split_h and split_bf16 write them), so
// the result is close to an f32 product. Each stage's raw weights are
// decoded once a block into a 16-bit tile, exactly:
// - Q8_0 as f16 int8 values (x's planes f16: 22 bits of its mantissa), the
//   chunk's scale applied in f32 to the chunk's partial sums;
// - MXFP4 as bf16 values with the block scale folded in (an E2M1 value
//   times a power of two is a bf16 number for every E8M0 scale; x's planes
//   bf16: 16 bits), so products accumulate with no partial sums.
// Every weight scale of the block's rows comes in with the first stage.
//
// The previous path for these sizes (matmul.cu's tile kernel) held one
// chunk in flight, converted x in the loop and read every fragment with
// 32-bit shared loads: about 52 TFLOP/s on the MoE of a 2,048-token step.
//
// On Hopper, MXFP4's grouped kernels also come as _wg (the experts'
// default there, Options.NoWGMMA): 256-row blocks whose two warpgroups
// queue wgmma MMAs on the same shared tiles, in 128-byte swizzled rows,
// and decode the next stage while the tensor cores run (gw_stage). The
// module is built for sm_90a there.
//
// Grouped mode (MoE): with starts, blockIdx.z is an expert e, whose rows of
// the grouped order are starts[e]..starts[e+1]-1; grouped row r reads x row
// xrows[r] (or r when xrows is NULL) and writes output row r.

#include "common.cuh"

#ifndef GM_STAGES // from Go as -DGM_STAGES (kernelDefines); this default serves standalone checks
#define GM_STAGES 3 // stages of x and of raw weights in flight
#endif
#define GM_K 64          // inner elements a stage: two chunks
#define GM_THREADS 256   // eight warps: RW/64 row groups × TK/32 token groups
#define GM_LD (GM_K + 8) // f16 a shared row: 8 pad halves keep ldmatrix free of bank conflicts
#define GM_RAW 64        // bytes of a weight row's raw stage (Q8_0: 2 × 32; MXFP4 uses 32)

// GmSmem is the shared memory of a block of RW weight rows × TK tokens,
// carved from the dynamic allocation (gmShmem in Go computes the same
// size): x's hi and lo stages, the raw weight stages, two decoded 16-bit
// tiles with their chunk scales, the tokens' row offsets, and every weight
// scale of the block's rows. With CORE (wgmma's MXFP4 kernels) x and the
// tiles are swizzled rows without padding (gw_core; the allocation starts
// on a 1,024-byte boundary), a raw row's stage is MXFP4's 32 bytes and
// there are no chunk scales.
template <int RW, int TK, bool CORE = false>
struct GmSmem {
    static constexpr int LX = CORE ? GM_K : GM_LD, RAW = CORE ? 32 : GM_RAW; // halves a row of x or w, raw bytes a row
    u16 *xh, *xl, *w;
    u8 *raw, *sc;
    float* ws;
    i64* xoff; // element offset of each token's x row, -1 for none
    __device__ GmSmem(u8* base) {
        if (CORE) base += -(u32)__cvta_generic_to_shared(base) & 1023; // 128-byte swizzle atoms are 1,024-aligned
        xh = (u16*)base;
        xl = xh + GM_STAGES * TK * LX;
        raw = (u8*)(xl + GM_STAGES * TK * LX);
        w = (u16*)(raw + GM_STAGES * RW * RAW);
        ws = (float*)(w + 2 * RW * LX);
        xoff = (i64*)(ws + (CORE ? 0 : 4 * RW));
        sc = (u8*)(xoff + TK);
    }
};

// gw_core is the offset in halves of row r's 8 elements of group kg (k
// 8kg..8kg+7) in a tile of GM_K columns laid out for wgmma with 128-byte
// swizzling: a row's 128 bytes contiguous, its 16-byte groups permuted by
// the row's place in its 8-row atom (kg ^ r%8), so the MMAs' reads of 8
// rows' same group fall in different banks.
__device__ __forceinline__ int gw_core(int r, int kg) { return r * GM_K + ((kg ^ (r & 7)) << 3); }

__device__ __forceinline__ u32 prmt(u32 a, u32 b, u32 s) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(s));
    return r;
}

// e2m1_pair decodes two E2M1 codes to a bf16 pair times scale2 (the block
// scale as a bf16 pair: exact). The codes are bits 4-7 of bytes j and j+1
// of v (j = 0 or 2; sel = 0x9080 or 0xB0A0 picks them). Permutes look each
// magnitude's bf16 bytes up in registers (0, .5, 1, 1.5, 2, 3, 4, 6: high
// bytes 00 3F 3F 3F 40 40 40 40, low bytes 00 00 80 C0 00 40 80 C0), and
// the permute's sign-replicating mode copies each code's sign bit.
__device__ __forceinline__ u32 e2m1_pair(u32 v, u32 sel, u32 scale2) {
    u32 idx = (sel == 0x9080u ? v : v >> 16) & 0x7070u;
    u32 mag = prmt(0x3F3F3F00u, 0x40404040u, idx) | prmt(0xC0800000u, 0xC0804000u, idx >> 4);
    u32 r = mag | (prmt(v, 0u, sel) & 0x80008000u);
    // An fma with −0 (exact: the product is a bf16 number), since mul.bf16x2
    // needs sm_90 and this file serves sm_80 too.
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(r), "r"(scale2), "r"(0x80008000u));
    return r;
}

// gm_decode decodes stage s's raw weights (buffer s % GM_STAGES) into
// 16-bit tile s & 1 at w (Q8_0: and their chunk scales): each thread a
// (row, chunk) item at a time. Chunks past nblk (zero-filled) get scale 0.
// The tile is row-major (GM_LD halves a row) for ldmatrix, or with CORE in
// wgmma's swizzled rows (gw_core).
template <int T, int RW, int TK, bool CORE>
__device__ __forceinline__ void gm_decode(const GmSmem<RW, TK, CORE>& sm, u16* w, int nblk, int s) {
    const int CB = T == T_Q8_0 ? 32 : 16;
#pragma unroll
    for (int it = 0; it < 2 * RW / GM_THREADS; it++) {
        int item = it * GM_THREADS + threadIdx.x, rr = item >> 1, c = item & 1, cg = 2 * s + c;
        const uint4* src = (const uint4*)(sm.raw + ((s % GM_STAGES) * RW + rr) * sm.RAW + c * CB);
        u32 o[16];
        float scale = 0.f; // Q8_0's chunk scale (MXFP4's is folded into o)
        if (T == T_Q8_0) {
            float d = h2f(((const u16*)sm.sc)[rr * nblk + min(cg, nblk - 1)]);
            scale = cg < nblk ? d : 0.f;
            uint4 a = src[0], b = src[1];
            u32 q[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
            for (int j = 0; j < 8; j++) {
                // 0x64uu is the f16 1024 + uu; uu is the int8 with its sign flipped (+128).
                u32 u = q[j] ^ 0x80808080u;
                u32 lo = prmt(u, 0x64646464u, 0x4140u), hi = prmt(u, 0x64646464u, 0x4342u);
                asm("sub.f16x2 %0, %1, %2;" : "=r"(o[2 * j]) : "r"(lo), "r"(0x64806480u)); // − (1024 + 128)
                asm("sub.f16x2 %0, %1, %2;" : "=r"(o[2 * j + 1]) : "r"(hi), "r"(0x64806480u));
            }
        } else {
            u32 e = sm.sc[rr * nblk + min(cg, nblk - 1)];
            u32 s2 = cg < nblk ? (e == 0 ? 0x00400040u : e << 7 | e << 23) : 0u; // 2^(e-127) as a bf16 pair
            uint4 a = src[0];
            u32 q[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
            for (int m = 0; m < 4; m++) {
                // Byte 4m+i holds element 4m+i (low nibble) and 16+4m+i (high).
                u32 v4 = q[m] << 4;
                o[2 * m] = e2m1_pair(v4, 0x9080u, s2);
                o[2 * m + 1] = e2m1_pair(v4, 0xB0A0u, s2);
                o[8 + 2 * m] = e2m1_pair(q[m], 0x9080u, s2);
                o[8 + 2 * m + 1] = e2m1_pair(q[m], 0xB0A0u, s2);
            }
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u16* d = CORE ? w + (s & 1) * RW * GM_K + gw_core(rr, 4 * c + j) : w + ((s & 1) * RW + rr) * GM_LD + c * 32 + 8 * j;
            *(uint4*)d = make_uint4(o[4 * j], o[4 * j + 1], o[4 * j + 2], o[4 * j + 3]);
        }
        if (T == T_Q8_0) sm.ws[((s & 1) * 2 + c) * RW + rr] = scale;
    }
}

// gm_load_w issues the cp.async loads of stage s's raw weights: NP
// matrices' RW/NP rows from base[0] and base[NP-1] (rows from valid on, and
// chunks past nblk, are zero: a stage past the last loads nothing).
template <int T, int NP, int RW, int TK, bool CORE>
__device__ __forceinline__ void gm_load_w(const GmSmem<RW, TK, CORE>& sm, const WView* w, const i64* base, int valid, int nblk,
                                          int s) {
    const int CB = T == T_Q8_0 ? 32 : 16, PR = 2 * CB / 16, RM = RW / NP;
    u8* rb = sm.raw + (s % GM_STAGES) * RW * sm.RAW;
#pragma unroll
    for (int i = 0; i < RW * PR / GM_THREADS; i++) {
        int p = i * GM_THREADS + threadIdx.x, rr = p / PR, piece = p % PR, r = rr % RM;
        bool second = rr >= RM; // selects rather than indexes, so w and base stay in registers
        bool ok = r < valid && 2 * s + piece * 16 / CB < nblk;
        i64 row = (second ? base[NP - 1] : base[0]) + r;
        const u8* src = (second ? w[NP - 1].q : w[0].q) + (ok ? (row * nblk + 2 * s) * CB + piece * 16 : 0);
        cp_async16(rb + rr * sm.RAW + piece * 16, src, ok);
    }
}

// gm_load_x issues the cp.async loads of stage s of the block's tokens' x
// (absent tokens and chunks past nblk are zero): row-major, GM_LD halves a
// token, or with CORE in wgmma's swizzled rows (gw_core). A thread copies
// one 16-byte piece of one term of every 16th token.
template <int RW, int TK, bool CORE>
__device__ __forceinline__ void gm_load_x(const GmSmem<RW, TK, CORE>& sm, const u16* xh, const u16* xl, int nblk, int s) {
    int j0 = threadIdx.x >> 4, term = (threadIdx.x >> 3) & 1, piece = threadIdx.x & 7;
    const u16* src = (term ? xl : xh) + s * GM_K + piece * 8;
    u16* dst = (term ? sm.xl : sm.xh) + (s % GM_STAGES) * TK * sm.LX + (CORE ? gw_core(j0, piece) : j0 * GM_LD + piece * 8);
    bool chunk = 2 * s + piece / 4 < nblk;
#pragma unroll
    for (int i = 0; i < TK / 16; i++) {
        i64 off = sm.xoff[j0 + 16 * i];
        bool ok = off >= 0 && chunk;
        cp_async16(dst + (CORE ? 2 * GM_K * 8 : 16 * GM_LD) * i, src + (ok ? off : 0), ok);
    }
}

// gm_zero clears a thread's N sums.
template <int N>
__device__ __forceinline__ void gm_zero(float* a) {
#pragma unroll
    for (int i = 0; i < N; i++) a[i] = 0.f;
}

// gm_mma multiplies an A fragment by a B fragment into c: bf16 for MXFP4's
// tiles, f16 for Q8_0's.
template <int T>
__device__ __forceinline__ void gm_mma(float* c, const u32* a, const u32* b) {
    mma16816<T == T_MXFP4>(c, a[0], a[1], a[2], a[3], b[0], b[1]);
}

// gm_frags loads k16 step ks (0-3) of stage s's fragments: a warp's four
// m16 weight tiles and its x's four n8 tiles, hi and lo terms.
template <int RW, int TK>
__device__ __forceinline__ void gm_frags(const GmSmem<RW, TK>& sm, int s, int ks, u32 (*a)[4], u32 (*bh)[2],
                                         u32 (*bl)[2]) {
    const int WT = TK / 32;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp / WT, wn = warp % WT;
    const u16* wa = sm.w + ((s & 1) * RW + wm * 64 + (lane & 15)) * GM_LD + (lane >> 4) * 8 + ks * 16;
    int tok = (s % GM_STAGES) * TK + wn * 32 + (lane & 7) + ((lane >> 4) << 3);
    int off = tok * GM_LD + ((lane >> 3) & 1) * 8 + ks * 16;
#pragma unroll
    for (int mi = 0; mi < 4; mi++) ldsm_x4(a[mi], wa + mi * 16 * GM_LD);
#pragma unroll
    for (int nj = 0; nj < 2; nj++) {
        u32 r[4];
        ldsm_x4(r, sm.xh + off + nj * 16 * GM_LD);
        bh[2 * nj][0] = r[0], bh[2 * nj][1] = r[1], bh[2 * nj + 1][0] = r[2], bh[2 * nj + 1][1] = r[3];
        ldsm_x4(r, sm.xl + off + nj * 16 * GM_LD);
        bl[2 * nj][0] = r[0], bl[2 * nj][1] = r[1], bl[2 * nj + 1][0] = r[2], bl[2 * nj + 1][1] = r[3];
    }
}

// gm_stage adds stage s's products to acc. Q8_0: per chunk, its two k16
// steps with x's hi and lo terms into tmp, then tmp times the chunk's row
// scales; MXFP4 (scales folded): every step straight into acc. The next
// step's fragments load while this step's MMAs run, and the MMAs of one
// tile are 16 apart (all hi terms, then all lo terms), so no MMA waits for
// the one before.
template <int T, int RW, int TK>
__device__ __forceinline__ void gm_stage(const GmSmem<RW, TK>& sm, int s, float (*acc)[4][4]) {
    const int WT = TK / 32;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp / WT, g = lane >> 2;
    const float* ws = sm.ws + (s & 1) * 2 * RW + wm * 64 + g;
    u32 a[2][4][4], bh[2][4][2], bl[2][4][2];
    float tmp[4][4][4];
    float(*sum)[4][4] = T == T_Q8_0 ? tmp : acc;
    gm_frags(sm, s, 0, a[0], bh[0], bl[0]);
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
        int f = ks & 1;
        if (ks < 3) gm_frags(sm, s, ks + 1, a[f ^ 1], bh[f ^ 1], bl[f ^ 1]);
        if (T == T_Q8_0 && f == 0) gm_zero<64>(&tmp[0][0][0]);
#pragma unroll
        for (int mi = 0; mi < 4; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++) gm_mma<T>(sum[mi][ni], a[f][mi], bh[f][ni]);
#pragma unroll
        for (int mi = 0; mi < 4; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++) gm_mma<T>(sum[mi][ni], a[f][mi], bl[f][ni]);
        if (T == T_Q8_0 && f == 1) {
            int c = ks >> 1;
#pragma unroll
            for (int mi = 0; mi < 4; mi++) {
                float sa = ws[c * RW + mi * 16], sb = ws[c * RW + mi * 16 + 8];
#pragma unroll
                for (int ni = 0; ni < 4; ni++) {
                    acc[mi][ni][0] += sa * tmp[mi][ni][0];
                    acc[mi][ni][1] += sa * tmp[mi][ni][1];
                    acc[mi][ni][2] += sb * tmp[mi][ni][2];
                    acc[mi][ni][3] += sb * tmp[mi][ni][3];
                }
            }
        }
    }
}

// GM_ACC is the number of sums a thread holds: 64 on mma.sync; with WG
// (256 threads) a share of the RW × TK tile.
#define GM_ACC(RW, TK, WG) ((WG) ? (RW) * (TK) / GM_THREADS : 64)

// Hopper's warpgroup MMA (sm_90a; kernels with the _wg suffix). A
// warpgroup (4 warps) multiplies a 64 × 16 tile A by a 16 × 128 tile B
// into 64 × 128 f32 sums held across its threads (64 each), both tiles
// read from shared memory (gw_core's layout) through descriptors.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// gw_desc is the descriptor of a K-major tile with 128-byte swizzling
// whose k16 step starts at p (an atom's start plus 32 bytes a step): 8-row
// atoms 1,024 bytes apart.
__device__ __forceinline__ u64 gw_desc(const u16* p) {
    u64 a = (u32)__cvta_generic_to_shared(p);
    return (a & 0x3FFFF) >> 4 | (u64)1 << 16 | (u64)(1024 >> 4) << 32 | (u64)1 << 62;
}

#define GW_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
// gw_mma queues d = A·B + (keep ? d : 0) (bf16, m64n128k16) for the
// warpgroup.
__device__ __forceinline__ void gw_mma(float* d, u64 da, u64 db, int keep) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "%64, %65, p, 1, 1, 0, 0;\n}\n"
        : GW_D8(0), GW_D8(8), GW_D8(16), GW_D8(24), GW_D8(32), GW_D8(40), GW_D8(48), GW_D8(56)
        : "l"(da), "l"(db), "r"(keep));
}

// gw_pin keeps the compiler from touching the sums around the asynchronous
// MMAs (it does not know they are in flight).
template <int N>
__device__ __forceinline__ void gw_pin(float* d) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}

// gw_fence makes the shared memory this thread wrote (decoded tiles,
// landed cp.async copies) visible to the next MMAs.
__device__ __forceinline__ void gw_fence() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// gw_wait waits for this warpgroup's queued MMAs, then gw_fence.
template <int N>
__device__ __forceinline__ void gw_wait(float* d) {
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    gw_pin<N>(d);
    gw_fence();
}

// gw_stage queues stage s's MMAs (4 k16 steps, x's hi and lo terms). A
// warpgroup owns RW/2 weight rows: with 64 tokens, the tokens (A) × 128
// rows (B); with 128, m64 tiles of the rows (A) × the tokens (B).
// The first stage's first MMAs clear the sums (FIRST, a constant: with
// a run-time choice, or sums cleared by other instructions, ptxas
// serializes every wgmma of the kernel).
template <bool FIRST, int RW, int TK>
__device__ __forceinline__ void gw_stage(const GmSmem<RW, TK, true>& sm, int s, float* acc) {
    const int N = GM_ACC(RW, TK, true);
    int wg = threadIdx.x >> 7;
    const u16* w = sm.w + (s & 1) * RW * GM_K + wg * RW / 2 * GM_K;
    int xo = (s % GM_STAGES) * TK * GM_K;
    gw_pin<N>(acc);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int ks = 0; ks < GM_K / 16; ks++) {
        int keep = !FIRST || ks > 0;
        u64 dh = gw_desc(sm.xh + xo + ks * 16), dl = gw_desc(sm.xl + xo + ks * 16);
        if (TK != 64) {
#pragma unroll
            for (int mb = 0; mb < RW / 128; mb++) {
                u64 dw = gw_desc(w + 64 * mb * GM_K + ks * 16);
                gw_mma(acc + 64 * mb, dw, dh, keep);
                gw_mma(acc + 64 * mb, dw, dl, 1);
            }
        } else {
            u64 dw = gw_desc(w + ks * 16);
            gw_mma(acc, dh, dw, keep);
            gw_mma(acc, dl, dw, 1);
        }
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
#endif

// gm_at is tile row and token of a thread's sum i: with WG as gw_stage
// lays them out (64 sums an m64 tile: with 128 tokens tile i/64 of rows,
// in wgmma's order), else
// acc[mi][ni][q] (i = 16mi + 4ni + q) is row 64wm + 16mi + g + 8(q/2) and
// token 32wn + 8ni + 2t + q%2.
template <int RW, int TK, bool WG>
__device__ __forceinline__ void gm_at(int i, int& row, int& tok) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3, q = i & 3;
    if (WG) {
        int a = (warp & 3) * 16 + g + (q >> 1) * 8, b = (i % 64 >> 2) * 8 + 2 * t + (q & 1);
        row = (warp >> 2) * (RW / 2) + (TK != 64 ? i / 64 * 64 + a : b);
        tok = TK != 64 ? b : a;
    } else {
        const int WT = TK / 32;
        row = warp / WT * 64 + (i >> 4) * 16 + g + (q >> 1) * 8;
        tok = warp % WT * 32 + ((i >> 2) & 3) * 8 + 2 * t + (q & 1);
    }
}

// Flag carries a constant to a generic lambda as a type.
template <bool B>
struct Flag {
    static constexpr bool v = B;
};

// gm_block computes the block's tile into acc: NP matrices' rows base[i]..
// base[i]+valid-1 (valid ≤ RW/NP; tile row i·RW/NP + r is row base[i] + r)
// against the grouped rows r0..r0+ntok-1 (row r reads x row xrows[r], or r
// when xrows is NULL); gm_at says which sum is which. On return the shared
// memory is free.
//
// The pipeline has one barrier a stage: iteration s issues the loads of
// raw weights s+3 and x s+2 (one commit group), multiplies stage s, and
// decodes weights s+1 into the 16-bit tile that stage s's products do not
// read, so warps past their MMAs decode while others multiply. The body
// has no branches (loads past the end are zero-fills, a decode past the
// end writes a tile no one reads): with them it took ~955 instructions a
// warp a stage, without ~575 (NOTES.md #25). With WG the MMAs are
// wgmma's, queued before the decode and waited for before the barrier, so
// the tensor cores run while the same warps decode.
template <int T, int NP, int RW, int TK, bool WG = false>
__device__ __forceinline__ void gm_block(const GmSmem<RW, TK, WG>& sm, const WView* w, const i64* base, int valid,
                                         const u16* xh, const u16* xl, const int* xrows, int r0, int ntok,
                                         float* acc) {
    const int SB = T == T_Q8_0 ? 2 : 1, RM = RW / NP;
    int in = (int)w[0].in, nblk = in / 32, nst = (nblk + 1) / 2;
    for (int j = threadIdx.x; j < TK; j += GM_THREADS)
        sm.xoff[j] = j < ntok ? (i64)(xrows ? xrows[r0 + j] : r0 + j) * in : -1;
#pragma unroll
    for (int i = 0; i < NP; i++) {
        u8* d = sm.sc + i * RM * nblk * SB;
        copy_async(d, w[i].s + base[i] * nblk * SB, valid * nblk * SB);
        for (int p = valid * nblk * SB + threadIdx.x; p < RM * nblk * SB; p += GM_THREADS) d[p] = 0;
    }
    __syncthreads(); // xoff
    // Groups before the loop: {scales, raw 0, raw 1, x 0}, {raw 2, x 1}.
    gm_load_w<T, NP>(sm, w, base, valid, nblk, 0);
    gm_load_w<T, NP>(sm, w, base, valid, nblk, 1);
    gm_load_x(sm, xh, xl, nblk, 0);
    cp_async_commit();
    gm_load_w<T, NP>(sm, w, base, valid, nblk, 2);
    gm_load_x(sm, xh, xl, nblk, 1);
    cp_async_commit();
    if constexpr (!WG) gm_zero<GM_ACC(RW, TK, WG)>(acc); // wgmma's first MMAs clear theirs
    cp_async_wait<1>();
    __syncthreads();
    gm_decode<T>(sm, sm.w, nblk, 0);
    auto stage = [&](int s, auto first) {
        cp_async_wait<1>(); // raw s+1 and x s (the group before last) landed
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (WG) {
            if constexpr (first.v)
                gw_fence();
            else
                gw_wait<GM_ACC(RW, TK, WG)>(acc); // stage s-1's MMAs are done
        }
#endif
        __syncthreads(); // for every thread; stage s-1's buffers and 16-bit tile are free
        gm_load_w<T, NP>(sm, w, base, valid, nblk, s + 3);
        gm_load_x(sm, xh, xl, nblk, s + 2);
        cp_async_commit();
        if constexpr (WG) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
            gw_stage<first.v>(sm, s, acc);
#endif
        } else {
            gm_stage<T>(sm, s, (float(*)[4][4])acc);
        }
        gm_decode<T>(sm, sm.w, nblk, s + 1); // after the MMAs' shared loads, so its stores need not wait for them
    };
    // wgmma's first stage is peeled: its MMAs clear the sums (gw_stage).
    int s0 = 0;
    if constexpr (WG) stage(s0++, Flag<true>());
    for (int s = s0; s < nst; s++) stage(s, Flag<false>());
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if constexpr (WG) gw_wait<GM_ACC(RW, TK, WG)>(acc);
#endif
    cp_async_wait<0>();
    __syncthreads();
}

// gemm_rows: y[r][row] = w_e[row]·x[xrows[r]] + bias_e[row] for the block's
// grouped rows r (see the top) and weight rows RW·blockIdx.y..; without
// starts, the dense product of x's n rows (one "expert", xrows NULL). The
// prefill path of MatMul and the experts' down projection.
template <int T, int RW, int TK, bool WG>
__device__ void gemm_rows_impl(float* y, const u16* xh, const u16* xl, WView w, const float* bias, const int* starts,
                               const int* xrows, int n, int out) {
    extern __shared__ __align__(16) u8 gm_shmem[];
    int e = starts ? blockIdx.z : 0, lo = starts ? starts[e] : 0, hi = starts ? starts[e + 1] : n;
    int r0 = lo + TK * blockIdx.x, ntok = min(hi - r0, TK);
    if (ntok <= 0) return;
    int row0 = blockIdx.y * RW, valid = min(RW, out - row0);
    i64 base = (i64)e * out + row0;
    GmSmem<RW, TK, WG> sm(gm_shmem);
    float acc[GM_ACC(RW, TK, WG)];
    gm_block<T, 1, RW, TK, WG>(sm, &w, &base, valid, xh, xl, xrows, r0, ntok, acc);
#pragma unroll
    for (int i = 0; i < GM_ACC(RW, TK, WG); i++) {
        int row, tok;
        gm_at<RW, TK, WG>(i, row, tok);
        if (row < valid && tok < ntok) y[(i64)(r0 + tok) * out + row0 + row] = acc[i] + (bias ? bias[base + row] : 0.f);
    }
}

// gemm_gateup: the block's tile rows are RW/2 rows of expert e's gate (the
// first half of the warps' row groups) and the same rows of its up (the
// second), rows RW/2·blockIdx.y.. of ff. Gate and up of a (token, row) meet
// in shared memory; the SwiGLU output is written as the hi and lo planes
// (hh, hl: row-major, ff a row; bf16 for MXFP4, f16 for Q8_0) that
// gemm_rows reads for the down projection.
template <int T, int RW, int TK, bool WG>
__device__ void gemm_gateup_impl(u16* hh, u16* hl, const u16* xh, const u16* xl, WView gw, WView uw, const float* gb,
                                 const float* ub, const int* starts, const int* xrows, int ff, SwiGLU act) {
    extern __shared__ __align__(16) u8 gm_shmem[];
    const int RM = RW / 2, LD = RM + 4; // LD: red's row stride, free of bank conflicts
    int e = blockIdx.z, r0 = starts[e] + TK * blockIdx.x, ntok = min(starts[e + 1] - r0, TK);
    if (ntok <= 0) return;
    int row0 = blockIdx.y * RM, valid = min(RM, ff - row0);
    i64 base[2] = {(i64)e * ff + row0, (i64)e * ff + row0};
    GmSmem<RW, TK, WG> sm(gm_shmem);
    WView w[2] = {gw, uw};
    float acc[GM_ACC(RW, TK, WG)];
    gm_block<T, 2, RW, TK, WG>(sm, w, base, valid, xh, xl, xrows, r0, ntok, acc);
    int row, tok;
    gm_at<RW, TK, WG>(0, row, tok);
    bool up = row >= RM; // a warp's rows are all gate rows or all up rows
    float* red = (float*)gm_shmem; // [TK tokens][LD]: the up products
    if (up) {
#pragma unroll
        for (int i = 0; i < GM_ACC(RW, TK, WG); i++) {
            gm_at<RW, TK, WG>(i, row, tok);
            red[tok * LD + row - RM] = acc[i];
        }
    }
    __syncthreads();
    if (up) return;
#pragma unroll
    for (int i = 0; i < GM_ACC(RW, TK, WG); i++) {
        gm_at<RW, TK, WG>(i, row, tok);
        if (row >= valid || tok >= ntok) continue;
        float h = swiglu_act(acc[i] + (gb ? gb[base[0] + row] : 0.f), red[tok * LD + row] + (ub ? ub[base[1] + row] : 0.f), act);
        i64 at = (i64)(r0 + tok) * ff + row0 + row;
        if (T == T_MXFP4) {
            u16 hb = f2bf(h);
            hh[at] = hb;
            hl[at] = f2bf(h - bf2f(hb));
        } else {
            u16 hb = f2h(h);
            hh[at] = hb;
            hl[at] = f2h(h - h2f(hb));
        }
    }
}

// Each kernel in two block shapes: 128 rows × 128 tokens, and 256 × 64
// for experts of few tokens (a 128-token tile would leave half its warps
// idle); MXFP4's also on wgmma (SFX _wg) where the card has it.
#define GEMM_KERNELS(T, NAME, RW, TK, WG, SFX)                                                                         \
    extern "C" __global__ void __launch_bounds__(GM_THREADS, 1)                                                  \
        gemm_rows_##NAME##_##RW##x##TK##SFX(float* y, const u16* xh, const u16* xl, const u8* q, const u8* s, int in, \
                                       const float* bias, const int* starts, const int* xrows, int n, int out) { \
        gemm_rows_impl<T, RW, TK, WG>(y, xh, xl, WView{q, s, in}, bias, starts, xrows, n, out);                      \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(GM_THREADS, 1) gemm_gateup_##NAME##_##RW##x##TK##SFX(              \
        u16* hh, u16* hl, const u16* xh, const u16* xl, const u8* gq, const u8* gs, const u8* uq, const u8* us,  \
        int in, const float* gb, const float* ub, const int* starts, const int* xrows, int ff, float alpha,      \
        float limit, float shift) {                                                                              \
        gemm_gateup_impl<T, RW, TK, WG>(hh, hl, xh, xl, WView{gq, gs, in}, WView{uq, us, in}, gb, ub, starts, xrows, \
                                    ff, SwiGLU{alpha, limit, shift});                                            \
    }

// gemm_rows3: three dense products of one x (q, k and v), grid z picking
// the product; row tiles past a product's out return at once.
#define GEMM_ROWS3(T, NAME, RW, TK)                                                                               \
    extern "C" __global__ void __launch_bounds__(GM_THREADS, 1) gemm_rows3_##NAME##_##RW##x##TK(                  \
        const u16* xh, const u16* xl, int in, int n, float* y0, const u8* q0, const u8* s0, const float* b0,     \
        int out0, float* y1, const u8* q1, const u8* s1, const float* b1, int out1, float* y2, const u8* q2,     \
        const u8* s2, const float* b2, int out2) {                                                               \
        int z = blockIdx.z, out = z == 0 ? out0 : z == 1 ? out1 : out2;                                          \
        if (blockIdx.y * RW >= out) return;                                                                      \
        WView w = z == 0 ? WView{q0, s0, in} : z == 1 ? WView{q1, s1, in} : WView{q2, s2, in};                  \
        gemm_rows_impl<T, RW, TK, false>(z == 0 ? y0 : z == 1 ? y1 : y2, xh, xl, w, z == 0 ? b0 : z == 1 ? b1 : b2, 0,  \
                                  0, n, out);                                                                    \
    }

GEMM_ROWS3(T_Q8_0, q8_0, 128, 128)
GEMM_ROWS3(T_MXFP4, mxfp4, 128, 128)
GEMM_KERNELS(T_Q8_0, q8_0, 128, 128, false, )
GEMM_KERNELS(T_Q8_0, q8_0, 256, 64, false, )
GEMM_KERNELS(T_MXFP4, mxfp4, 128, 128, false, )
GEMM_KERNELS(T_MXFP4, mxfp4, 256, 64, false, )
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
GEMM_KERNELS(T_MXFP4, mxfp4, 256, 128, true, _wg)
GEMM_KERNELS(T_MXFP4, mxfp4, 256, 64, true, _wg)
#endif
