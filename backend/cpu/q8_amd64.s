//go:build amd64

#include "textflag.h"

// Integer kernels of the fast precision (see q8.go for the layouts and the
// pure-Go definitions they must match).

// func quantQ8AVX2(x *float32, q *int8, meta *q8Meta, blocks int)
// Per 32 floats: amax = max |x|, id = 127/amax (0 when amax is 0), t =
// x·id, q1 = round-to-even(t), q2 = round-to-even((t-q1)·256) saturated to
// 127, stored as 32 int8 of q1 then 32 of q2; d = amax/127/256 and c =
// -128·(256·Σq1+Σq2).
TEXT ·quantQ8AVX2(SB), NOSPLIT, $0-32
	MOVQ         x+0(FP), SI
	MOVQ         q+8(FP), DI
	MOVQ         meta+16(FP), DX
	MOVQ         blocks+24(FP), CX
	MOVL         $0x7fffffff, AX
	MOVQ         AX, X15
	VPBROADCASTD X15, Y15             // |.| mask
	MOVL         $0x42fe0000, AX      // 127.0
	MOVQ         AX, X14
	VXORPS       X13, X13, X13
	MOVQ         $·q8Perm(SB), AX
	VMOVDQU      (AX), Y12
	MOVL         $0x43800000, AX      // 256.0
	MOVQ         AX, X11
	VBROADCASTSS X11, Y11
	MOVL         $127, AX
	MOVQ         AX, X10
	VPBROADCASTD X10, Y10

qloop:
	TESTQ        CX, CX
	JZ           qdone
	VMOVUPS      (SI), Y0
	VMOVUPS      32(SI), Y1
	VMOVUPS      64(SI), Y2
	VMOVUPS      96(SI), Y3
	VANDPS       Y15, Y0, Y4
	VANDPS       Y15, Y1, Y5
	VANDPS       Y15, Y2, Y6
	VANDPS       Y15, Y3, Y7
	VMAXPS       Y5, Y4, Y4
	VMAXPS       Y7, Y6, Y6
	VMAXPS       Y6, Y4, Y4
	VEXTRACTF128 $1, Y4, X5
	VMAXPS       X5, X4, X4
	VPERMILPS    $0x4e, X4, X5
	VMAXPS       X5, X4, X4
	VPERMILPS    $0xb1, X4, X5
	VMAXPS       X5, X4, X4           // amax in every lane
	VDIVSS       X14, X4, X6          // amax/127
	VDIVSS       X11, X6, X6          // d = amax/127/256
	VMOVSS       X6, (DX)
	VDIVSS       X4, X14, X7          // id = 127/amax
	VCMPSS       $4, X13, X4, X8      // amax != 0
	VANDPS       X8, X7, X7
	VBROADCASTSS X7, Y7
	VMULPS       Y7, Y0, Y0           // t
	VMULPS       Y7, Y1, Y1
	VMULPS       Y7, Y2, Y2
	VMULPS       Y7, Y3, Y3
	VROUNDPS     $0, Y0, Y4           // q1
	VROUNDPS     $0, Y1, Y5
	VROUNDPS     $0, Y2, Y6
	VROUNDPS     $0, Y3, Y8
	VSUBPS       Y4, Y0, Y0           // t-q1, exact
	VSUBPS       Y5, Y1, Y1
	VSUBPS       Y6, Y2, Y2
	VSUBPS       Y8, Y3, Y3
	VMULPS       Y11, Y0, Y0
	VMULPS       Y11, Y1, Y1
	VMULPS       Y11, Y2, Y2
	VMULPS       Y11, Y3, Y3
	VCVTPS2DQ    Y4, Y4
	VCVTPS2DQ    Y5, Y5
	VCVTPS2DQ    Y6, Y6
	VCVTPS2DQ    Y8, Y8
	VCVTPS2DQ    Y0, Y0
	VCVTPS2DQ    Y1, Y1
	VCVTPS2DQ    Y2, Y2
	VCVTPS2DQ    Y3, Y3
	VPMINSD      Y10, Y0, Y0          // q2 = 128 only at t-q1 = 1/2
	VPMINSD      Y10, Y1, Y1
	VPMINSD      Y10, Y2, Y2
	VPMINSD      Y10, Y3, Y3
	VPADDD       Y5, Y4, Y9
	VPADDD       Y8, Y6, Y7
	VPADDD       Y7, Y9, Y9
	VPSLLD       $8, Y9, Y9           // 256·Σq1 (by lane)
	VPADDD       Y1, Y0, Y7
	VPADDD       Y7, Y9, Y9
	VPADDD       Y3, Y2, Y7
	VPADDD       Y7, Y9, Y9
	VEXTRACTI128 $1, Y9, X7
	VPADDD       X7, X9, X9
	VPSHUFD      $0x4e, X9, X7
	VPADDD       X7, X9, X9
	VPSHUFD      $0xb1, X9, X7
	VPADDD       X7, X9, X9
	VMOVD        X9, AX
	IMULL        $-128, AX
	MOVL         AX, 4(DX)
	VPACKSSDW    Y5, Y4, Y4
	VPACKSSDW    Y8, Y6, Y6
	VPACKSSWB    Y6, Y4, Y4
	VPERMD       Y4, Y12, Y4
	VMOVDQU      Y4, (DI)
	VPACKSSDW    Y1, Y0, Y0
	VPACKSSDW    Y3, Y2, Y2
	VPACKSSWB    Y2, Y0, Y0
	VPERMD       Y0, Y12, Y0
	VMOVDQU      Y0, 32(DI)
	ADDQ         $128, SI
	ADDQ         $64, DI
	ADDQ         $8, DX
	DECQ         CX
	JMP          qloop

qdone:
	VZEROUPPER
	RET

// VPACKSSDW/VPACKSSWB work within 128-bit lanes; this VPERMD order puts
// the 32 bytes back in element order.
DATA ·q8Perm+0(SB)/4, $0
DATA ·q8Perm+4(SB)/4, $4
DATA ·q8Perm+8(SB)/4, $1
DATA ·q8Perm+12(SB)/4, $5
DATA ·q8Perm+16(SB)/4, $2
DATA ·q8Perm+20(SB)/4, $6
DATA ·q8Perm+24(SB)/4, $3
DATA ·q8Perm+28(SB)/4, $7
GLOBL ·q8Perm(SB), RODATA|NOPTR, $32

// One step of 4 quants of a block: the weights of 16 rows (stored plus 128,
// unsigned) in Z8, against 4 bytes of each digit of each of the 8 x rows
// broadcast, into the int32 accumulators Z16..Z23 (q1) and Z24..Z31 (q2,
// 32 bytes on). The x rows are at BX, BX+s, BX+2s, R9 = BX+3s, BX+4s,
// R9+2s, R10 = BX+6s, R9+4s (s = R8).
#define STEP8(off) \
	VMOVDQU32     (64*off)(SI), Z8; \
	VPDPBUSD.BCST (4*off)(BX), Z8, Z16; \
	VPDPBUSD.BCST (4*off)(BX)(R8*1), Z8, Z17; \
	VPDPBUSD.BCST (4*off)(BX)(R8*2), Z8, Z18; \
	VPDPBUSD.BCST (4*off)(R9), Z8, Z19; \
	VPDPBUSD.BCST (4*off)(BX)(R8*4), Z8, Z20; \
	VPDPBUSD.BCST (4*off)(R9)(R8*2), Z8, Z21; \
	VPDPBUSD.BCST (4*off)(R10), Z8, Z22; \
	VPDPBUSD.BCST (4*off)(R9)(R8*4), Z8, Z23; \
	VPDPBUSD.BCST (32+4*off)(BX), Z8, Z24; \
	VPDPBUSD.BCST (32+4*off)(BX)(R8*1), Z8, Z25; \
	VPDPBUSD.BCST (32+4*off)(BX)(R8*2), Z8, Z26; \
	VPDPBUSD.BCST (32+4*off)(R9), Z8, Z27; \
	VPDPBUSD.BCST (32+4*off)(BX)(R8*4), Z8, Z28; \
	VPDPBUSD.BCST (32+4*off)(R9)(R8*2), Z8, Z29; \
	VPDPBUSD.BCST (32+4*off)(R10), Z8, Z30; \
	VPDPBUSD.BCST (32+4*off)(R9)(R8*4), Z8, Z31

// PREFETCH8 asks for the weights 8 blocks (4 KiB) ahead. A block is 128
// VPDPBUSDs of work, so out-of-order execution alone keeps only a block or
// two of loads in flight, and when the weights stream from memory (every
// layer of a batched decode step) the kernel waited on them: 12 layers of
// GPT-2's products at 8 rows went from 4.8 to 2.6 ms (NOTES.md §15). The
// lines past a group are the next group's, which the same worker runs next.
#define PREFETCH8 \
	PREFETCHT0 4096(SI); \
	PREFETCHT0 4160(SI); \
	PREFETCHT0 4224(SI); \
	PREFETCHT0 4288(SI); \
	PREFETCHT0 4352(SI); \
	PREFETCHT0 4416(SI); \
	PREFETCHT0 4480(SI); \
	PREFETCHT0 4544(SI)

// SCALE8(acc, s1, s2, m) adds x row's block sum 256·s1+s2 (int32, exact)
// times the weights' scales (Z9) times the row's d (at m) to acc.
#define SCALE8(acc, s1, s2, m) \
	VPSLLD           $8, s1, s1; \
	VPADDD           s2, s1, s1; \
	VCVTDQ2PS        s1, s1; \
	VMULPS           Z9, s1, s1; \
	VFMADD231PS.BCST m, s1, acc

// func gemmQ8x8VNNI(wq *byte, wd *uint16, blocks int, xq *int8, meta *q8Meta, xstride, mstride int, bias, out *float32, ostride int)
// out[r·ostride/4+l] = bias[l] + Σ_b (Σ_k w_l[32b+k]·(256·q1_r+q2_r)[32b+k])·wd[16b+l]·d_r[b]
// (wd in f16) for 8 rows r of x (xstride bytes apart, their metadata
// mstride bytes apart) and the 16 weight rows l of one packed group.
// (w+128)·q summed by VPDPBUSD, the q2 sum started from c, is the exact
// integer sum. Each 64-byte load of weights feeds 16 VPDPBUSDs (two digits
// of 8 x rows), whose chains are independent, and per block each row needs
// a shift and add, one conversion, one multiply and one FMA.
TEXT ·gemmQ8x8VNNI(SB), NOSPLIT, $0-80
	MOVQ         wq+0(FP), SI
	MOVQ         wd+8(FP), DI
	MOVQ         blocks+16(FP), CX
	MOVQ         xq+24(FP), BX
	MOVQ         meta+32(FP), DX
	MOVQ         xstride+40(FP), R8
	MOVQ         mstride+48(FP), R12
	LEAQ         (BX)(R8*2), R9
	ADDQ         R8, R9               // x row 3
	LEAQ         (R9)(R8*2), R10
	ADDQ         R8, R10              // x row 6
	LEAQ         (DX)(R12*2), R13
	ADDQ         R12, R13             // meta row 3
	LEAQ         (R13)(R12*2), R11
	ADDQ         R12, R11             // meta row 6
	MOVQ         bias+56(FP), AX
	VMOVUPS      (AX), Z0
	VMOVAPS      Z0, Z1
	VMOVAPS      Z0, Z2
	VMOVAPS      Z0, Z3
	VMOVAPS      Z0, Z4
	VMOVAPS      Z0, Z5
	VMOVAPS      Z0, Z6
	VMOVAPS      Z0, Z7

g8loop:
	VPXORD       Z16, Z16, Z16
	VPXORD       Z17, Z17, Z17
	VPXORD       Z18, Z18, Z18
	VPXORD       Z19, Z19, Z19
	VPXORD       Z20, Z20, Z20
	VPXORD       Z21, Z21, Z21
	VPXORD       Z22, Z22, Z22
	VPXORD       Z23, Z23, Z23
	VPBROADCASTD 4(DX), Z24
	VPBROADCASTD 4(DX)(R12*1), Z25
	VPBROADCASTD 4(DX)(R12*2), Z26
	VPBROADCASTD 4(R13), Z27
	VPBROADCASTD 4(DX)(R12*4), Z28
	VPBROADCASTD 4(R13)(R12*2), Z29
	VPBROADCASTD 4(R11), Z30
	VPBROADCASTD 4(R13)(R12*4), Z31
	PREFETCH8
	STEP8(0)
	STEP8(1)
	STEP8(2)
	STEP8(3)
	STEP8(4)
	STEP8(5)
	STEP8(6)
	STEP8(7)
	VCVTPH2PS    (DI), Z9
	SCALE8(Z0, Z16, Z24, (DX))
	SCALE8(Z1, Z17, Z25, (DX)(R12*1))
	SCALE8(Z2, Z18, Z26, (DX)(R12*2))
	SCALE8(Z3, Z19, Z27, (R13))
	SCALE8(Z4, Z20, Z28, (DX)(R12*4))
	SCALE8(Z5, Z21, Z29, (R13)(R12*2))
	SCALE8(Z6, Z22, Z30, (R11))
	SCALE8(Z7, Z23, Z31, (R13)(R12*4))
	ADDQ         $512, SI
	ADDQ         $32, DI
	ADDQ         $64, BX
	ADDQ         $64, R9
	ADDQ         $64, R10
	ADDQ         $8, DX
	ADDQ         $8, R13
	ADDQ         $8, R11
	DECQ         CX
	JNZ          g8loop

	MOVQ         out+64(FP), AX
	MOVQ         ostride+72(FP), R8
	LEAQ         (AX)(R8*2), R9
	ADDQ         R8, R9               // out row 3
	LEAQ         (R9)(R8*2), R10
	ADDQ         R8, R10              // out row 6
	VMOVUPS      Z0, (AX)
	VMOVUPS      Z1, (AX)(R8*1)
	VMOVUPS      Z2, (AX)(R8*2)
	VMOVUPS      Z3, (R9)
	VMOVUPS      Z4, (AX)(R8*4)
	VMOVUPS      Z5, (R9)(R8*2)
	VMOVUPS      Z6, (R10)
	VMOVUPS      Z7, (R9)(R8*4)
	VZEROUPPER
	RET

// STEP1(off) is STEP8 for one x row at BX: q1 sums alternate between Z4
// and Z5, q2 sums between Z6 and Z7, so no chain is more than 4 deep.
#define STEP1(off, a, b) \
	VMOVDQU32     (64*off)(SI), Z8; \
	VPDPBUSD.BCST (4*off)(BX), Z8, a; \
	VPDPBUSD.BCST (32+4*off)(BX), Z8, b

// func gemmQ8x1VNNI(wq *byte, wd *uint16, blocks int, xq *int8, meta *q8Meta, groups int, bias *float32, bstride int, out *float32)
// gemmQ8x8VNNI for one row of x against groups consecutive packed groups
// (out gets 16 values per group, the sums started from the 16 floats at
// bias, which moves bstride bytes a group). One call per chunk of groups
// instead of per group: in decode a group is only ~200 ns of work, and the
// call cost was a large part of it.
TEXT ·gemmQ8x1VNNI(SB), NOSPLIT, $0-72
	MOVQ         wq+0(FP), SI
	MOVQ         wd+8(FP), DI
	MOVQ         groups+40(FP), R8
	MOVQ         bias+48(FP), R9
	MOVQ         bstride+56(FP), R10
	MOVQ         out+64(FP), AX

g1group:
	MOVQ         blocks+16(FP), CX
	MOVQ         xq+24(FP), BX
	MOVQ         meta+32(FP), DX
	VMOVUPS      (R9), Z0
	ADDQ         R10, R9

g1loop:
	VPXORD       Z4, Z4, Z4
	VPXORD       Z5, Z5, Z5
	VPBROADCASTD 4(DX), Z6
	VPXORD       Z7, Z7, Z7
	STEP1(0, Z4, Z6)
	STEP1(1, Z5, Z7)
	STEP1(2, Z4, Z6)
	STEP1(3, Z5, Z7)
	STEP1(4, Z4, Z6)
	STEP1(5, Z5, Z7)
	STEP1(6, Z4, Z6)
	STEP1(7, Z5, Z7)
	VPADDD       Z5, Z4, Z4
	VPADDD       Z7, Z6, Z6
	VCVTPH2PS    (DI), Z9
	SCALE8(Z0, Z4, Z6, (DX))
	ADDQ         $512, SI
	ADDQ         $32, DI
	ADDQ         $64, BX
	ADDQ         $8, DX
	DECQ         CX
	JNZ          g1loop

	VMOVUPS      Z0, (AX)
	ADDQ         $64, AX
	DECQ         R8
	JNZ          g1group
	VZEROUPPER
	RET

// func expSumAVX2(x *float32, n int, scale, sub float32, out *float32) float32
// out[i] = e^(x[i]·scale - sub) for n (a multiple of 8) values ≤ 0 after
// the shift, and their sum: see expF32 for the method.
TEXT ·expSumAVX2(SB), NOSPLIT, $0-36
	MOVQ         x+0(FP), SI
	MOVQ         n+8(FP), CX
	VBROADCASTSS scale+16(FP), Y14
	VBROADCASTSS sub+20(FP), Y13
	MOVQ         out+24(FP), DI
	MOVQ         $·expConsts(SB), AX
	VBROADCASTSS 0(AX), Y12              // floor -80
	VBROADCASTSS 4(AX), Y11              // log2(e)
	VBROADCASTSS 8(AX), Y10              // ln2 high
	VBROADCASTSS 12(AX), Y9              // ln2 low
	VXORPS       Y0, Y0, Y0

exloop:
	TESTQ        CX, CX
	JZ           exdone
	VMOVUPS      (SI), Y1
	VFMSUB213PS  Y13, Y14, Y1            // x·scale - sub
	VMAXPS       Y12, Y1, Y1
	VMULPS       Y11, Y1, Y2
	VROUNDPS     $0, Y2, Y2              // k
	VFNMADD231PS Y10, Y2, Y1
	VFNMADD231PS Y9, Y2, Y1              // r
	VBROADCASTSS 40(AX), Y3              // 1/720
	VBROADCASTSS 36(AX), Y4
	VFMADD213PS  Y4, Y1, Y3
	VBROADCASTSS 32(AX), Y4
	VFMADD213PS  Y4, Y1, Y3
	VBROADCASTSS 28(AX), Y4
	VFMADD213PS  Y4, Y1, Y3
	VBROADCASTSS 24(AX), Y4
	VFMADD213PS  Y4, Y1, Y3
	VBROADCASTSS 20(AX), Y4
	VFMADD213PS  Y4, Y1, Y3
	VBROADCASTSS 16(AX), Y4
	VFMADD213PS  Y4, Y1, Y3              // p(r)
	VCVTPS2DQ    Y2, Y2
	VPSLLD       $23, Y2, Y2
	VPADDD       Y2, Y3, Y3              // p·2^k
	VMOVUPS      Y3, (DI)
	VADDPS       Y3, Y0, Y0
	ADDQ         $32, SI
	ADDQ         $32, DI
	SUBQ         $8, CX
	JMP          exloop

exdone:
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VHADDPS      X0, X0, X0
	VHADDPS      X0, X0, X0
	VZEROUPPER
	MOVSS        X0, ret+32(FP)
	RET

// expF32's constants: the floor, log2(e), ln2 split high/low, and the
// Taylor coefficients 1, 1, 1/2, 1/6, 1/24, 1/120, 1/720; then geluF32's
// -2√(2/π) and 0.044715.
DATA ·expConsts+0(SB)/4, $-80.0
DATA ·expConsts+4(SB)/4, $1.4426950408889634
DATA ·expConsts+8(SB)/4, $0.693359375
DATA ·expConsts+12(SB)/4, $-2.12194440e-4
DATA ·expConsts+16(SB)/4, $1.0
DATA ·expConsts+20(SB)/4, $1.0
DATA ·expConsts+24(SB)/4, $0.5
DATA ·expConsts+28(SB)/4, $0.16666666666666666
DATA ·expConsts+32(SB)/4, $0.041666666666666664
DATA ·expConsts+36(SB)/4, $0.008333333333333333
DATA ·expConsts+40(SB)/4, $0.001388888888888889
DATA ·expConsts+44(SB)/4, $-1.5957691216057308
DATA ·expConsts+48(SB)/4, $0.044715
GLOBL ·expConsts(SB), RODATA|NOPTR, $52

// EXP8(t, k, p, tmp) sets p = e^t for the 8 lanes of t (floored at -80;
// t and k are clobbered), as expF32 does; AX points at expConsts.
#define EXP8(t, k, p, tmp) \
	VMAXPS       Y12, t, t; \
	VMULPS       Y11, t, k; \
	VROUNDPS     $0, k, k; \
	VFNMADD231PS Y10, k, t; \
	VFNMADD231PS Y9, k, t; \
	VBROADCASTSS 40(AX), p; \
	VBROADCASTSS 36(AX), tmp; \
	VFMADD213PS  tmp, t, p; \
	VBROADCASTSS 32(AX), tmp; \
	VFMADD213PS  tmp, t, p; \
	VBROADCASTSS 28(AX), tmp; \
	VFMADD213PS  tmp, t, p; \
	VBROADCASTSS 24(AX), tmp; \
	VFMADD213PS  tmp, t, p; \
	VBROADCASTSS 20(AX), tmp; \
	VFMADD213PS  tmp, t, p; \
	VBROADCASTSS 16(AX), tmp; \
	VFMADD213PS  tmp, t, p; \
	VCVTPS2DQ    k, k; \
	VPSLLD       $23, k, k; \
	VPADDD       k, p, p

// func geluAVX2(x, out *float32, n int)
// out = x·σ(2u), u = √(2/π)(x+0.044715x³), for n (a multiple of 8)
// values: with e = e^(-2|u|), x/(1+e) where u ≥ 0, else x·e/(1+e).
TEXT ·geluAVX2(SB), NOSPLIT, $0-24
	MOVQ         x+0(FP), SI
	MOVQ         out+8(FP), DI
	MOVQ         n+16(FP), CX
	MOVQ         $·expConsts(SB), AX
	VBROADCASTSS 0(AX), Y12
	VBROADCASTSS 4(AX), Y11
	VBROADCASTSS 8(AX), Y10
	VBROADCASTSS 12(AX), Y9
	VBROADCASTSS 44(AX), Y8              // -2√(2/π)
	VBROADCASTSS 48(AX), Y7              // 0.044715
	VBROADCASTSS 16(AX), Y6              // 1
	MOVL         $0x7fffffff, BX
	MOVQ         BX, X5
	VPBROADCASTD X5, Y5                  // |.| mask

geloop:
	TESTQ        CX, CX
	JZ           gedone
	VMOVUPS      (SI), Y0
	VMULPS       Y0, Y0, Y1
	VMULPS       Y7, Y1, Y1
	VFMADD213PS  Y0, Y0, Y1              // x + 0.044715x³
	VANDPS       Y5, Y1, Y2              // |.| (sign of u is the sign of x)
	VMULPS       Y8, Y2, Y2              // -2|u|
	EXP8(Y2, Y3, Y4, Y13)                // Y4 = e
	VADDPS       Y6, Y4, Y3              // 1+e
	VMULPS       Y0, Y4, Y2              // x·e
	VBLENDVPS    Y1, Y2, Y0, Y2          // x where u ≥ 0, x·e where u < 0
	VDIVPS       Y3, Y2, Y2
	VMOVUPS      Y2, (DI)
	ADDQ         $32, SI
	ADDQ         $32, DI
	SUBQ         $8, CX
	JMP          geloop

gedone:
	VZEROUPPER
	RET

// func scores4AVX2(q, k *float32, stride, n, d int, out *float32)
// scoresAVX2 four keys at a time (n a multiple of 4): each 8-wide load of
// q feeds four FMAs, and one horizontal reduction serves four keys. The
// partial sums are added in another order than scoresAVX2's, so only the
// fast precision uses it.
TEXT ·scores4AVX2(SB), NOSPLIT, $0-48
	MOVQ q+0(FP), SI
	MOVQ k+8(FP), DI
	MOVQ stride+16(FP), R8
	SHLQ $2, R8
	MOVQ n+24(FP), CX
	MOVQ d+32(FP), R9
	MOVQ out+40(FP), R10
	LEAQ (R8)(R8*2), R11                 // 3·stride

s4key:
	TESTQ  CX, CX
	JZ     s4done
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   AX, AX
	MOVQ   R9, DX
	MOVQ   DI, BX

s4dim:
	VMOVUPS     (SI)(AX*1), Y4
	VFMADD231PS (BX), Y4, Y0
	VFMADD231PS (BX)(R8*1), Y4, Y1
	VFMADD231PS (BX)(R8*2), Y4, Y2
	VFMADD231PS (BX)(R11*1), Y4, Y3
	ADDQ        $32, AX
	ADDQ        $32, BX
	SUBQ        $8, DX
	JNZ         s4dim

	VHADDPS      Y1, Y0, Y0
	VHADDPS      Y3, Y2, Y2
	VHADDPS      Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VMOVUPS      X0, (R10)
	ADDQ         $16, R10
	LEAQ         (DI)(R8*4), DI
	SUBQ         $4, CX
	JMP          s4key

s4done:
	VZEROUPPER
	RET

// WS4LOAD and WS4STORE move the 64 sums of each of the four rows of
// weightedSum4AVX512 (at DI, R9, R10 and R13) to and from Z0..Z15.
#define WS4LOAD \
	VMOVUPS      (DI), Z0; \
	VMOVUPS      64(DI), Z1; \
	VMOVUPS      128(DI), Z2; \
	VMOVUPS      192(DI), Z3; \
	VMOVUPS      (R9), Z4; \
	VMOVUPS      64(R9), Z5; \
	VMOVUPS      128(R9), Z6; \
	VMOVUPS      192(R9), Z7; \
	VMOVUPS      (R10), Z8; \
	VMOVUPS      64(R10), Z9; \
	VMOVUPS      128(R10), Z10; \
	VMOVUPS      192(R10), Z11; \
	VMOVUPS      (R13), Z12; \
	VMOVUPS      64(R13), Z13; \
	VMOVUPS      128(R13), Z14; \
	VMOVUPS      192(R13), Z15

#define WS4STORE \
	VMOVUPS      Z0, (DI); \
	VMOVUPS      Z1, 64(DI); \
	VMOVUPS      Z2, 128(DI); \
	VMOVUPS      Z3, 192(DI); \
	VMOVUPS      Z4, (R9); \
	VMOVUPS      Z5, 64(R9); \
	VMOVUPS      Z6, 128(R9); \
	VMOVUPS      Z7, 192(R9); \
	VMOVUPS      Z8, (R10); \
	VMOVUPS      Z9, 64(R10); \
	VMOVUPS      Z10, 128(R10); \
	VMOVUPS      Z11, 192(R10); \
	VMOVUPS      Z12, (R13); \
	VMOVUPS      Z13, 64(R13); \
	VMOVUPS      Z14, 128(R13); \
	VMOVUPS      Z15, 192(R13)

// WS4STEP adds the value row in Z16..Z19 times each row's probability
// (at AX, BX, DX, R11) to the sums and moves on one key.
#define WS4STEP \
	VBROADCASTSS (AX), Z20; \
	VBROADCASTSS (BX), Z21; \
	VBROADCASTSS (DX), Z22; \
	VBROADCASTSS (R11), Z23; \
	VFMADD231PS  Z16, Z20, Z0; \
	VFMADD231PS  Z17, Z20, Z1; \
	VFMADD231PS  Z18, Z20, Z2; \
	VFMADD231PS  Z19, Z20, Z3; \
	VFMADD231PS  Z16, Z21, Z4; \
	VFMADD231PS  Z17, Z21, Z5; \
	VFMADD231PS  Z18, Z21, Z6; \
	VFMADD231PS  Z19, Z21, Z7; \
	VFMADD231PS  Z16, Z22, Z8; \
	VFMADD231PS  Z17, Z22, Z9; \
	VFMADD231PS  Z18, Z22, Z10; \
	VFMADD231PS  Z19, Z22, Z11; \
	VFMADD231PS  Z16, Z23, Z12; \
	VFMADD231PS  Z17, Z23, Z13; \
	VFMADD231PS  Z18, Z23, Z14; \
	VFMADD231PS  Z19, Z23, Z15; \
	ADDQ         R8, SI; \
	ADDQ         $4, AX; \
	ADDQ         $4, BX; \
	ADDQ         $4, DX; \
	ADDQ         $4, R11; \
	DECQ         CX

// func weightedSum4AVX512(p0, p1, p2, p3, v *float32, stride, n int, o0, o1, o2, o3 *float32)
// weightedSumAVX2 for four rows of probabilities over the same n values of
// 64 columns (stride elements apart): oi[c] += Σ_j pi[j]·v[j·stride+c].
// Each value row is loaded once for the four rows, and the 16 sums are
// independent chains, where one row's 4 (8 in ymm) wait on each other's
// FMA latency. Every oi[c] gets the same FMAs in the same order as from
// weightedSumAVX2.
TEXT ·weightedSum4AVX512(SB), NOSPLIT, $0-88
	MOVQ         p0+0(FP), AX
	MOVQ         p1+8(FP), BX
	MOVQ         p2+16(FP), DX
	MOVQ         p3+24(FP), R11
	MOVQ         v+32(FP), SI
	MOVQ         stride+40(FP), R8
	SHLQ         $2, R8
	MOVQ         n+48(FP), CX
	MOVQ         o0+56(FP), DI
	MOVQ         o1+64(FP), R9
	MOVQ         o2+72(FP), R10
	MOVQ         o3+80(FP), R13
	WS4LOAD
	TESTQ        CX, CX
	JZ           ws4store

ws4loop:
	VMOVUPS      (SI), Z16
	VMOVUPS      64(SI), Z17
	VMOVUPS      128(SI), Z18
	VMOVUPS      192(SI), Z19
	WS4STEP
	JNZ          ws4loop

ws4store:
	WS4STORE
	VZEROUPPER
	RET

// func maxAVX512(x *float32, n int) float32
// The largest of n (a positive multiple of 16) values.
TEXT ·maxAVX512(SB), NOSPLIT, $0-20
	MOVQ          x+0(FP), SI
	MOVQ          n+8(FP), CX
	VMOVUPS       (SI), Z0
	VMOVAPS       Z0, Z1
	ADDQ          $64, SI
	SUBQ          $16, CX

max32:
	CMPQ          CX, $32
	JLT           max16
	VMAXPS        (SI), Z0, Z0
	VMAXPS        64(SI), Z1, Z1
	ADDQ          $128, SI
	SUBQ          $32, CX
	JMP           max32

max16:
	TESTQ         CX, CX
	JZ            maxdone
	VMAXPS        (SI), Z0, Z0

maxdone:
	VMAXPS        Z1, Z0, Z0
	VEXTRACTF64X4 $1, Z0, Y1
	VMAXPS        Y1, Y0, Y0
	VEXTRACTF128  $1, Y0, X1
	VMAXPS        X1, X0, X0
	VPERMILPS     $0x4e, X0, X1
	VMAXPS        X1, X0, X0
	VPERMILPS     $0xb1, X0, X1
	VMAXPS        X1, X0, X0
	VMOVSS        X0, ret+16(FP)
	VZEROUPPER
	RET

// SCORE8(acc, key) sets acc to the 16 partial products of the 64 values of
// q (Z16..Z19) with the key's, chained in 4 steps.
#define SCORE8(acc, key) \
	VMULPS      key, Z16, acc; \
	VFMADD231PS 64 key, Z17, acc; \
	VFMADD231PS 128 key, Z18, acc; \
	VFMADD231PS 192 key, Z19, acc

// PAIRSUM(a, b, t) sets a to [a0+a2, a1+a3, b0+b2, b1+b3] (128-bit lanes
// of a and b): half of each row's partial sums.
#define PAIRSUM(a, b, t) \
	VSHUFF64X2 $0xee, b, a, t; \
	VSHUFF64X2 $0x44, b, a, a; \
	VADDPS     t, a, a

// QUADSUM(a, b, t) sets a, holding [A0, A1, B0, B1] and b [C0, C1, D0, D1],
// to [A0+A1, B0+B1, C0+C1, D0+D1].
#define QUADSUM(a, b, t) \
	VSHUFF64X2 $0xdd, b, a, t; \
	VSHUFF64X2 $0x88, b, a, a; \
	VADDPS     t, a, a

// REDUCE8(a0..a7, t0..t3, perm) leaves in the low 8 elements of a0 the
// sums of a0..a7's 16 lanes: after the QUADSUMs, 128-bit lane j of a0
// holds key j's 4 partial sums and of a4 key 4+j's; the shuffles leave
// keys j and 4+j in elements 4j and 4j+2, which perm (scores8Perm)
// gathers.
#define REDUCE8(a0, a1, a2, a3, a4, a5, a6, a7, t0, t1, t2, t3, perm) \
	PAIRSUM(a0, a1, t0); \
	PAIRSUM(a2, a3, t1); \
	PAIRSUM(a4, a5, t2); \
	PAIRSUM(a6, a7, t3); \
	QUADSUM(a0, a2, t0); \
	QUADSUM(a4, a6, t1); \
	VSHUFPS    $0xee, a4, a0, t0; \
	VSHUFPS    $0x44, a4, a0, a0; \
	VADDPS     t0, a0, a0; \
	VPERMILPS  $0xb1, a0, t0; \
	VADDPS     t0, a0, a0; \
	VPERMPS    a0, perm, a0

// SCORES8STEP(score) is one step of scores8AVX512 and its binary16 twin:
// the scores of the 8 keys from BX (R8 bytes apart) by the macro score,
// reduced and stored at DI (R11 holds key 3, R12 key 6); BX moves on 8
// keys and CX down by 8.
#define SCORES8STEP(score) \
	LEAQ       (BX)(R8*2), R11; \
	ADDQ       R8, R11; \
	LEAQ       (R11)(R8*2), R12; \
	ADDQ       R8, R12; \
	score(Z0, (BX)); \
	score(Z1, (BX)(R8*1)); \
	score(Z2, (BX)(R8*2)); \
	score(Z3, (R11)); \
	score(Z4, (BX)(R8*4)); \
	score(Z5, (R11)(R8*2)); \
	score(Z6, (R12)); \
	score(Z7, (R11)(R8*4)); \
	REDUCE8(Z0, Z1, Z2, Z3, Z4, Z5, Z6, Z7, Z8, Z9, Z10, Z11, Z20); \
	VMOVUPS    Y0, (DI); \
	ADDQ       $32, DI; \
	LEAQ       (R11)(R8*4), BX; \
	ADDQ       R8, BX; \
	SUBQ       $8, CX

// func scores8AVX512(q, k *float32, stride, n int, out *float32)
// out[j] = Σ_c q[c]·k[j·stride+c] for 64 columns and j < n (a multiple of
// 8): eight keys at a time, each a chain of 4 zmm FMAs, the eight sums
// reduced together by shuffles (24 instructions for 8 scores).
TEXT ·scores8AVX512(SB), NOSPLIT, $0-40
	MOVQ       q+0(FP), SI
	MOVQ       k+8(FP), BX
	MOVQ       stride+16(FP), R8
	SHLQ       $2, R8
	MOVQ       n+24(FP), CX
	MOVQ       out+32(FP), DI
	VMOVUPS    (SI), Z16
	VMOVUPS    64(SI), Z17
	VMOVUPS    128(SI), Z18
	VMOVUPS    192(SI), Z19
	VMOVDQU32  ·scores8Perm(SB), Z20

s8loop:
	SCORES8STEP(SCORE8)
	JNZ        s8loop
	VZEROUPPER
	RET

// scores8Perm gathers keys 0..7's sums (elements 0, 4, 8, 12, 2, 6, 10, 14)
// into the low 8 elements.
DATA ·scores8Perm+0(SB)/4, $0
DATA ·scores8Perm+4(SB)/4, $4
DATA ·scores8Perm+8(SB)/4, $8
DATA ·scores8Perm+12(SB)/4, $12
DATA ·scores8Perm+16(SB)/4, $2
DATA ·scores8Perm+20(SB)/4, $6
DATA ·scores8Perm+24(SB)/4, $10
DATA ·scores8Perm+28(SB)/4, $14
DATA ·scores8Perm+32(SB)/4, $0
DATA ·scores8Perm+36(SB)/4, $0
DATA ·scores8Perm+40(SB)/4, $0
DATA ·scores8Perm+44(SB)/4, $0
DATA ·scores8Perm+48(SB)/4, $0
DATA ·scores8Perm+52(SB)/4, $0
DATA ·scores8Perm+56(SB)/4, $0
DATA ·scores8Perm+60(SB)/4, $0
GLOBL ·scores8Perm(SB), RODATA|NOPTR, $64

// SCOREQ(acc, key, qa, qb, qc, qd) is SCORE8 with the query in qa..qd.
#define SCOREQ(acc, key, qa, qb, qc, qd) \
	VMULPS      key, qa, acc; \
	VFMADD231PS 64 key, qb, acc; \
	VFMADD231PS 128 key, qc, acc; \
	VFMADD231PS 192 key, qd, acc

// SCOREK(acc0, q0) is 4 keys' SCOREQ for the query in q0..q0+3 (register
// numbers given as Zn names): keys at BX, BX+s, BX+2s and R11.
#define SCORE4K(a0, a1, a2, a3, qa, qb, qc, qd) \
	SCOREQ(a0, (BX), qa, qb, qc, qd); \
	SCOREQ(a1, (BX)(R8*1), qa, qb, qc, qd); \
	SCOREQ(a2, (BX)(R8*2), qa, qb, qc, qd); \
	SCOREQ(a3, (R11), qa, qb, qc, qd)

// func scores4qAVX512(q *float32, qstride int, k *float32, kstride, n int, o0, o1, o2, o3 *float32)
// scores8AVX512 for four queries (qstride elements apart) over the same n
// keys (a multiple of 4), into o0..o3: each key's 64 values are read from
// L2 once for the four queries instead of four times, and every score is
// computed with exactly scores8AVX512's operations.
TEXT ·scores4qAVX512(SB), NOSPLIT, $0-72
	MOVQ       q+0(FP), SI
	MOVQ       qstride+8(FP), R9
	SHLQ       $2, R9
	LEAQ       (SI)(R9*2), R10
	ADDQ       R9, R10                // query 3
	MOVQ       k+16(FP), BX
	MOVQ       kstride+24(FP), R8
	SHLQ       $2, R8
	MOVQ       n+32(FP), CX
	MOVQ       o0+40(FP), AX
	MOVQ       o1+48(FP), DX
	MOVQ       o2+56(FP), DI
	MOVQ       o3+64(FP), R12

s4qloop:
	LEAQ       (BX)(R8*2), R11
	ADDQ       R8, R11                // key 3
	VMOVUPS    (SI), Z16
	VMOVUPS    64(SI), Z17
	VMOVUPS    128(SI), Z18
	VMOVUPS    192(SI), Z19
	VMOVUPS    (SI)(R9*1), Z20
	VMOVUPS    64(SI)(R9*1), Z21
	VMOVUPS    128(SI)(R9*1), Z22
	VMOVUPS    192(SI)(R9*1), Z23
	VMOVUPS    (SI)(R9*2), Z24
	VMOVUPS    64(SI)(R9*2), Z25
	VMOVUPS    128(SI)(R9*2), Z26
	VMOVUPS    192(SI)(R9*2), Z27
	VMOVUPS    (R10), Z28
	VMOVUPS    64(R10), Z29
	VMOVUPS    128(R10), Z30
	VMOVUPS    192(R10), Z31
	SCORE4K(Z0, Z1, Z2, Z3, Z16, Z17, Z18, Z19)
	SCORE4K(Z4, Z5, Z6, Z7, Z20, Z21, Z22, Z23)
	SCORE4K(Z8, Z9, Z10, Z11, Z24, Z25, Z26, Z27)
	SCORE4K(Z12, Z13, Z14, Z15, Z28, Z29, Z30, Z31)
	VMOVDQU32  ·scores8Perm(SB), Z24
	REDUCE8(Z0, Z1, Z2, Z3, Z4, Z5, Z6, Z7, Z16, Z17, Z18, Z19, Z24)
	REDUCE8(Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15, Z20, Z21, Z22, Z23, Z24)
	VMOVUPS    X0, (AX)
	VEXTRACTF32X4 $1, Y0, X1
	VMOVUPS    X1, (DX)
	VMOVUPS    X8, (DI)
	VEXTRACTF32X4 $1, Y8, X9
	VMOVUPS    X9, (R12)
	ADDQ       $16, AX
	ADDQ       $16, DX
	ADDQ       $16, DI
	ADDQ       $16, R12
	LEAQ       (R11)(R8*1), BX        // key 4
	SUBQ       $4, CX
	JNZ        s4qloop
	VZEROUPPER
	RET

// The fast precision's KV caches hold binary16. The kernels below are the
// float32 ones above with each cache load replaced by a VCVTPH2PS, which
// widens exactly: every product and sum is the one the float32 kernel
// makes from the widened values, bit for bit.

// SCORE8H(acc, key) is SCORE8 for a key of 64 binary16 values.
#define SCORE8H(acc, key) \
	VCVTPH2PS   key, Z21; \
	VMULPS      Z21, Z16, acc; \
	VCVTPH2PS   32 key, Z22; \
	VFMADD231PS Z22, Z17, acc; \
	VCVTPH2PS   64 key, Z23; \
	VFMADD231PS Z23, Z18, acc; \
	VCVTPH2PS   96 key, Z24; \
	VFMADD231PS Z24, Z19, acc

// func scores8F16AVX512(q *float32, k *uint16, stride, n int, out *float32)
// scores8AVX512 over binary16 keys (stride in elements).
TEXT ·scores8F16AVX512(SB), NOSPLIT, $0-40
	MOVQ       q+0(FP), SI
	MOVQ       k+8(FP), BX
	MOVQ       stride+16(FP), R8
	SHLQ       $1, R8
	MOVQ       n+24(FP), CX
	MOVQ       out+32(FP), DI
	VMOVUPS    (SI), Z16
	VMOVUPS    64(SI), Z17
	VMOVUPS    128(SI), Z18
	VMOVUPS    192(SI), Z19
	VMOVDQU32  ·scores8Perm(SB), Z20

s8hloop:
	SCORES8STEP(SCORE8H)
	JNZ        s8hloop
	VZEROUPPER
	RET

// CVT4H(key) widens a key of 64 binary16 values into Z16..Z19.
#define CVT4H(key) \
	VCVTPH2PS key, Z16; \
	VCVTPH2PS 32 key, Z17; \
	VCVTPH2PS 64 key, Z18; \
	VCVTPH2PS 96 key, Z19

// SCOREHQ(acc, qm) is SCOREQ of the widened key in Z16..Z19 with the query
// in memory at qm (products commute bit for bit).
#define SCOREHQ(acc, qm) \
	VMULPS      qm, Z16, acc; \
	VFMADD231PS 64 qm, Z17, acc; \
	VFMADD231PS 128 qm, Z18, acc; \
	VFMADD231PS 192 qm, Z19, acc

// SCOREH4Q(key, a0, a1, a2, a3) scores one key for the four queries.
#define SCOREH4Q(key, a0, a1, a2, a3) \
	CVT4H(key); \
	SCOREHQ(a0, (SI)); \
	SCOREHQ(a1, (SI)(R9*1)); \
	SCOREHQ(a2, (SI)(R9*2)); \
	SCOREHQ(a3, (R10))

// func scores4qF16AVX512(q *float32, qstride int, k *uint16, kstride, n int, o0, o1, o2, o3 *float32)
// scores4qAVX512 over binary16 keys: each key is widened once for the four
// queries, which are read from L1 as memory operands (the 32 registers hold
// the 16 sums and the widened key).
TEXT ·scores4qF16AVX512(SB), NOSPLIT, $0-72
	MOVQ       q+0(FP), SI
	MOVQ       qstride+8(FP), R9
	SHLQ       $2, R9
	LEAQ       (SI)(R9*2), R10
	ADDQ       R9, R10                // query 3
	MOVQ       k+16(FP), BX
	MOVQ       kstride+24(FP), R8
	SHLQ       $1, R8
	MOVQ       n+32(FP), CX
	MOVQ       o0+40(FP), AX
	MOVQ       o1+48(FP), DX
	MOVQ       o2+56(FP), DI
	MOVQ       o3+64(FP), R12

s4qhloop:
	LEAQ       (BX)(R8*2), R11
	ADDQ       R8, R11                // key 3
	SCOREH4Q((BX), Z0, Z4, Z8, Z12)
	SCOREH4Q((BX)(R8*1), Z1, Z5, Z9, Z13)
	SCOREH4Q((BX)(R8*2), Z2, Z6, Z10, Z14)
	SCOREH4Q((R11), Z3, Z7, Z11, Z15)
	VMOVDQU32  ·scores8Perm(SB), Z24
	REDUCE8(Z0, Z1, Z2, Z3, Z4, Z5, Z6, Z7, Z16, Z17, Z18, Z19, Z24)
	REDUCE8(Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15, Z20, Z21, Z22, Z23, Z24)
	VMOVUPS    X0, (AX)
	VEXTRACTF32X4 $1, Y0, X1
	VMOVUPS    X1, (DX)
	VMOVUPS    X8, (DI)
	VEXTRACTF32X4 $1, Y8, X9
	VMOVUPS    X9, (R12)
	ADDQ       $16, AX
	ADDQ       $16, DX
	ADDQ       $16, DI
	ADDQ       $16, R12
	LEAQ       (R11)(R8*1), BX        // key 4
	SUBQ       $4, CX
	JNZ        s4qhloop
	VZEROUPPER
	RET

// func scores4F16AVX2(q *float32, k *uint16, stride, n, d int, out *float32)
// scores4AVX2 over binary16 keys.
TEXT ·scores4F16AVX2(SB), NOSPLIT, $0-48
	MOVQ q+0(FP), SI
	MOVQ k+8(FP), DI
	MOVQ stride+16(FP), R8
	SHLQ $1, R8
	MOVQ n+24(FP), CX
	MOVQ d+32(FP), R9
	MOVQ out+40(FP), R10
	LEAQ (R8)(R8*2), R11                 // 3·stride

s4hkey:
	TESTQ  CX, CX
	JZ     s4hdone
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   AX, AX
	MOVQ   R9, DX
	MOVQ   DI, BX

s4hdim:
	VMOVUPS     (SI)(AX*1), Y4
	VCVTPH2PS   (BX), Y5
	VFMADD231PS Y5, Y4, Y0
	VCVTPH2PS   (BX)(R8*1), Y6
	VFMADD231PS Y6, Y4, Y1
	VCVTPH2PS   (BX)(R8*2), Y7
	VFMADD231PS Y7, Y4, Y2
	VCVTPH2PS   (BX)(R11*1), Y8
	VFMADD231PS Y8, Y4, Y3
	ADDQ        $32, AX
	ADDQ        $16, BX
	SUBQ        $8, DX
	JNZ         s4hdim

	VHADDPS      Y1, Y0, Y0
	VHADDPS      Y3, Y2, Y2
	VHADDPS      Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VMOVUPS      X0, (R10)
	ADDQ         $16, R10
	LEAQ         (DI)(R8*4), DI
	SUBQ         $4, CX
	JMP          s4hkey

s4hdone:
	VZEROUPPER
	RET

// func weightedSum4F16AVX512(p0, p1, p2, p3 *float32, v *uint16, stride, n int, o0, o1, o2, o3 *float32)
// weightedSum4AVX512 over binary16 values.
TEXT ·weightedSum4F16AVX512(SB), NOSPLIT, $0-88
	MOVQ         p0+0(FP), AX
	MOVQ         p1+8(FP), BX
	MOVQ         p2+16(FP), DX
	MOVQ         p3+24(FP), R11
	MOVQ         v+32(FP), SI
	MOVQ         stride+40(FP), R8
	SHLQ         $1, R8
	MOVQ         n+48(FP), CX
	MOVQ         o0+56(FP), DI
	MOVQ         o1+64(FP), R9
	MOVQ         o2+72(FP), R10
	MOVQ         o3+80(FP), R13
	WS4LOAD
	TESTQ        CX, CX
	JZ           ws4hstore

ws4hloop:
	VCVTPH2PS    (SI), Z16
	VCVTPH2PS    32(SI), Z17
	VCVTPH2PS    64(SI), Z18
	VCVTPH2PS    96(SI), Z19
	WS4STEP
	JNZ          ws4hloop

ws4hstore:
	WS4STORE
	VZEROUPPER
	RET

// func encodeF16AVX2(x *float32, out *uint16, n int)
// out[i] = x[i] rounded to binary16, to nearest with ties to even (VCVTPS2PH
// immediate 0), for n a multiple of 8.
TEXT ·encodeF16AVX2(SB), NOSPLIT, $0-24
	MOVQ x+0(FP), SI
	MOVQ out+8(FP), DI
	MOVQ n+16(FP), CX

ehloop:
	TESTQ     CX, CX
	JZ        ehdone
	VMOVUPS   (SI), Y0
	VCVTPS2PH $0, Y0, X1
	VMOVDQU   X1, (DI)
	ADDQ      $32, SI
	ADDQ      $16, DI
	SUBQ      $8, CX
	JMP       ehloop

ehdone:
	VZEROUPPER
	RET

// func weightedSumF16AVX512(p *float32, v *uint16, stride, n, d int, out *float32)
// weightedSumAVX2 over binary16 values (n ≥ 1, d a multiple of 8), 64
// columns at a time (each value row's 128 bytes read in one pass, four
// chains), then 16, then 8: every column gets the FMAs of weightedSumAVX2
// in the same order, however the columns are chunked.
TEXT ·weightedSumF16AVX512(SB), NOSPLIT, $0-48
	MOVQ p+0(FP), SI
	MOVQ v+8(FP), DI
	MOVQ stride+16(FP), R8
	SHLQ $1, R8
	MOVQ n+24(FP), R11
	MOVQ d+32(FP), R9
	MOVQ out+40(FP), R10

wsh64:
	CMPQ         R9, $64
	JLT          wsh16
	VMOVUPS      (R10), Z0
	VMOVUPS      64(R10), Z1
	VMOVUPS      128(R10), Z2
	VMOVUPS      192(R10), Z3
	MOVQ         SI, AX
	MOVQ         DI, BX
	MOVQ         R11, CX

wsh64key:
	VBROADCASTSS (AX), Z20
	VCVTPH2PS    (BX), Z16
	VCVTPH2PS    32(BX), Z17
	VCVTPH2PS    64(BX), Z18
	VCVTPH2PS    96(BX), Z19
	VFMADD231PS  Z16, Z20, Z0
	VFMADD231PS  Z17, Z20, Z1
	VFMADD231PS  Z18, Z20, Z2
	VFMADD231PS  Z19, Z20, Z3
	ADDQ         $4, AX
	ADDQ         R8, BX
	DECQ         CX
	JNZ          wsh64key
	VMOVUPS      Z0, (R10)
	VMOVUPS      Z1, 64(R10)
	VMOVUPS      Z2, 128(R10)
	VMOVUPS      Z3, 192(R10)
	ADDQ         $256, R10
	ADDQ         $128, DI
	SUBQ         $64, R9
	JMP          wsh64

wsh16:
	CMPQ         R9, $16
	JLT          wsh8
	VMOVUPS      (R10), Z0
	MOVQ         SI, AX
	MOVQ         DI, BX
	MOVQ         R11, CX

wsh16key:
	VBROADCASTSS (AX), Z20
	VCVTPH2PS    (BX), Z16
	VFMADD231PS  Z16, Z20, Z0
	ADDQ         $4, AX
	ADDQ         R8, BX
	DECQ         CX
	JNZ          wsh16key
	VMOVUPS      Z0, (R10)
	ADDQ         $64, R10
	ADDQ         $32, DI
	SUBQ         $16, R9
	JMP          wsh16

wsh8:
	CMPQ         R9, $8
	JLT          wshdone
	VMOVUPS      (R10), Y0
	MOVQ         SI, AX
	MOVQ         DI, BX
	MOVQ         R11, CX

wsh8key:
	VBROADCASTSS (AX), Y4
	VCVTPH2PS    (BX), Y5
	VFMADD231PS  Y5, Y4, Y0
	ADDQ         $4, AX
	ADDQ         R8, BX
	DECQ         CX
	JNZ          wsh8key
	VMOVUPS      Y0, (R10)
	ADDQ         $32, R10
	ADDQ         $16, DI
	SUBQ         $8, R9
	JMP          wsh8

wshdone:
	VZEROUPPER
	RET
