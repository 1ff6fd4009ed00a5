//go:build amd64

#include "textflag.h"

// AVX2+FMA inner loops of the cpu backend: MatMul's dot products of float32
// rows, attention's loops over keys, and the weight row decoders. The Go
// declarations and the pure-Go equivalents are in kernels_amd64.go and
// kernels.go.

// func scoresAVX2(q, k *float32, stride, n, d int, out *float32)
// out[j] = Σ_c q[c]·k[j·stride+c] for j < n, c < d; d is a multiple of 8 and
// stride is in elements.
TEXT ·scoresAVX2(SB), NOSPLIT, $0-48
	MOVQ q+0(FP), SI
	MOVQ k+8(FP), DI
	MOVQ stride+16(FP), R8
	SHLQ $2, R8
	MOVQ n+24(FP), CX
	MOVQ d+32(FP), R9
	MOVQ out+40(FP), R10

scorekey:
	TESTQ  CX, CX
	JZ     scoredone
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	XORQ   AX, AX
	MOVQ   R9, DX

score16:
	CMPQ        DX, $16
	JLT         score8
	VMOVUPS     (SI)(AX*1), Y2
	VMOVUPS     32(SI)(AX*1), Y3
	VFMADD231PS (DI)(AX*1), Y2, Y0
	VFMADD231PS 32(DI)(AX*1), Y3, Y1
	ADDQ        $64, AX
	SUBQ        $16, DX
	JMP         score16

score8:
	CMPQ        DX, $8
	JLT         scorereduce
	VMOVUPS     (SI)(AX*1), Y2
	VFMADD231PS (DI)(AX*1), Y2, Y0
	ADDQ        $32, AX
	SUBQ        $8, DX
	JMP         score8

scorereduce:
	VADDPS       Y1, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VHADDPS      X0, X0, X0
	VHADDPS      X0, X0, X0
	MOVSS        X0, (R10)
	ADDQ         $4, R10
	ADDQ         R8, DI
	DECQ         CX
	JMP          scorekey

scoredone:
	VZEROUPPER
	RET

// func weightedSumAVX2(p, v *float32, stride, n, d int, out *float32)
// out[c] += Σ_j p[j]·v[j·stride+c] for j < n, c < d; d is a multiple of 8
// and stride is in elements. Columns go 32 (then 8) at a time, each chunk
// summed over all j in registers.
TEXT ·weightedSumAVX2(SB), NOSPLIT, $0-48
	MOVQ p+0(FP), SI
	MOVQ v+8(FP), DI
	MOVQ stride+16(FP), R8
	SHLQ $2, R8
	MOVQ n+24(FP), R11
	MOVQ d+32(FP), R9
	MOVQ out+40(FP), R10

wschunk32:
	CMPQ    R9, $32
	JLT     wschunk8
	VMOVUPS (R10), Y0
	VMOVUPS 32(R10), Y1
	VMOVUPS 64(R10), Y2
	VMOVUPS 96(R10), Y3
	MOVQ    SI, AX
	MOVQ    DI, BX
	MOVQ    R11, CX

wskey32:
	TESTQ        CX, CX
	JZ           wsstore32
	VBROADCASTSS (AX), Y4
	VFMADD231PS  (BX), Y4, Y0
	VFMADD231PS  32(BX), Y4, Y1
	VFMADD231PS  64(BX), Y4, Y2
	VFMADD231PS  96(BX), Y4, Y3
	ADDQ         $4, AX
	ADDQ         R8, BX
	DECQ         CX
	JMP          wskey32

wsstore32:
	VMOVUPS Y0, (R10)
	VMOVUPS Y1, 32(R10)
	VMOVUPS Y2, 64(R10)
	VMOVUPS Y3, 96(R10)
	ADDQ    $128, R10
	ADDQ    $128, DI
	SUBQ    $32, R9
	JMP     wschunk32

wschunk8:
	CMPQ    R9, $8
	JLT     wsdone
	VMOVUPS (R10), Y0
	MOVQ    SI, AX
	MOVQ    DI, BX
	MOVQ    R11, CX

wskey8:
	TESTQ        CX, CX
	JZ           wsstore8
	VBROADCASTSS (AX), Y4
	VFMADD231PS  (BX), Y4, Y0
	ADDQ         $4, AX
	ADDQ         R8, BX
	DECQ         CX
	JMP          wskey8

wsstore8:
	VMOVUPS Y0, (R10)
	ADDQ    $32, R10
	ADDQ    $32, DI
	SUBQ    $8, R9
	JMP     wschunk8

wsdone:
	VZEROUPPER
	RET

// func cpuid(leaf, sub uint32) (a, b, c, d uint32)
TEXT ·cpuid(SB), NOSPLIT, $0-24
	MOVL leaf+0(FP), AX
	MOVL sub+4(FP), CX
	CPUID
	MOVL AX, a+8(FP)
	MOVL BX, b+12(FP)
	MOVL CX, c+16(FP)
	MOVL DX, d+20(FP)
	RET

// func xgetbv0() uint32
TEXT ·xgetbv0(SB), NOSPLIT, $0-4
	MOVL   $0, CX
	XGETBV
	MOVL   AX, ret+0(FP)
	RET

// func dot4x2AVX2(x *float32, xstride int, w0, w1 *float32, n int, out *[8]float32)
// out[2i+j] = Σ_c x[i·xstride+c]·wj[c] for i < 4, j < 2 and c < n, a
// multiple of 8: four rows of x against two weight rows, so each load feeds
// more than one FMA.
TEXT ·dot4x2AVX2(SB), NOSPLIT, $0-48
	MOVQ   x+0(FP), SI
	MOVQ   xstride+8(FP), R8
	SHLQ   $2, R8
	MOVQ   w0+16(FP), DI
	MOVQ   w1+24(FP), DX
	MOVQ   n+32(FP), CX
	MOVQ   out+40(FP), R10
	LEAQ   (SI)(R8*1), R11
	LEAQ   (R11)(R8*1), R12
	LEAQ   (R12)(R8*1), R13
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	XORQ   AX, AX

d42loop:
	CMPQ        CX, $8
	JLT         d42reduce
	VMOVUPS     (DI)(AX*1), Y8
	VMOVUPS     (DX)(AX*1), Y9
	VMOVUPS     (SI)(AX*1), Y10
	VFMADD231PS Y8, Y10, Y0
	VFMADD231PS Y9, Y10, Y1
	VMOVUPS     (R11)(AX*1), Y11
	VFMADD231PS Y8, Y11, Y2
	VFMADD231PS Y9, Y11, Y3
	VMOVUPS     (R12)(AX*1), Y12
	VFMADD231PS Y8, Y12, Y4
	VFMADD231PS Y9, Y12, Y5
	VMOVUPS     (R13)(AX*1), Y13
	VFMADD231PS Y8, Y13, Y6
	VFMADD231PS Y9, Y13, Y7
	ADDQ        $32, AX
	SUBQ        $8, CX
	JMP         d42loop

d42reduce:
	// Pairwise horizontal adds leave [Y0 Y1 Y2 Y3] and [Y4 Y5 Y6 Y7]
	// summed per 128-bit lane; adding the lanes gives the eight results.
	VHADDPS      Y1, Y0, Y0
	VHADDPS      Y3, Y2, Y2
	VHADDPS      Y5, Y4, Y4
	VHADDPS      Y7, Y6, Y6
	VHADDPS      Y2, Y0, Y0
	VHADDPS      Y6, Y4, Y4
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VEXTRACTF128 $1, Y4, X5
	VADDPS       X5, X4, X4
	VMOVUPS      X0, (R10)
	VMOVUPS      X4, 16(R10)
	VZEROUPPER
	RET

// func dot1x4AVX2(x, w0, w1, w2, w3 *float32, n int, out *[4]float32)
// out[j] = Σ_c x[c]·wj[c] for j < 4 and c < n, a multiple of 8: one row of
// x against four weight rows, each output summed exactly as dot4x2AVX2 sums
// its eight (one 8-lane accumulator, FMAs in order, the same pairwise
// reduction), so a row's MatMul result does not depend on how many rows
// share the call.
TEXT ·dot1x4AVX2(SB), NOSPLIT, $0-56
	MOVQ   x+0(FP), SI
	MOVQ   w0+8(FP), DI
	MOVQ   w1+16(FP), DX
	MOVQ   w2+24(FP), R8
	MOVQ   w3+32(FP), R9
	MOVQ   n+40(FP), CX
	MOVQ   out+48(FP), R10
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   AX, AX

d14loop:
	CMPQ        CX, $8
	JLT         d14reduce
	VMOVUPS     (SI)(AX*1), Y8
	VFMADD231PS (DI)(AX*1), Y8, Y0
	VFMADD231PS (DX)(AX*1), Y8, Y1
	VFMADD231PS (R8)(AX*1), Y8, Y2
	VFMADD231PS (R9)(AX*1), Y8, Y3
	ADDQ        $32, AX
	SUBQ        $8, CX
	JMP         d14loop

d14reduce:
	VHADDPS      Y1, Y0, Y0
	VHADDPS      Y3, Y2, Y2
	VHADDPS      Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VMOVUPS      X0, (R10)
	VZEROUPPER
	RET

// func decodeQ8_0AVX2(w *byte, out *float32, blocks int)
// out[j] = q[j]·d for each 34-byte Q8_0 block.
TEXT ·decodeQ8_0AVX2(SB), NOSPLIT, $0-24
	MOVQ w+0(FP), SI
	MOVQ out+8(FP), DI
	MOVQ blocks+16(FP), CX

dq8loop:
	TESTQ        CX, CX
	JZ           dq8done
	VPBROADCASTW (SI), X7
	VCVTPH2PS    X7, Y7
	VPMOVSXBD    2(SI), Y1
	VPMOVSXBD    10(SI), Y2
	VPMOVSXBD    18(SI), Y3
	VPMOVSXBD    26(SI), Y4
	VCVTDQ2PS    Y1, Y1
	VCVTDQ2PS    Y2, Y2
	VCVTDQ2PS    Y3, Y3
	VCVTDQ2PS    Y4, Y4
	VMULPS       Y7, Y1, Y1
	VMULPS       Y7, Y2, Y2
	VMULPS       Y7, Y3, Y3
	VMULPS       Y7, Y4, Y4
	VMOVUPS      Y1, (DI)
	VMOVUPS      Y2, 32(DI)
	VMOVUPS      Y3, 64(DI)
	VMOVUPS      Y4, 96(DI)
	ADDQ         $34, SI
	ADDQ         $128, DI
	DECQ         CX
	JMP          dq8loop

dq8done:
	VZEROUPPER
	RET

// func decodeF16AVX2(w *byte, out *float32, n int)
// Widens n binary16 values, n a multiple of 8.
TEXT ·decodeF16AVX2(SB), NOSPLIT, $0-24
	MOVQ w+0(FP), SI
	MOVQ out+8(FP), DI
	MOVQ n+16(FP), CX

df16loop:
	CMPQ      CX, $8
	JLT       df16done
	VCVTPH2PS (SI), Y1
	VMOVUPS   Y1, (DI)
	ADDQ      $16, SI
	ADDQ      $32, DI
	SUBQ      $8, CX
	JMP       df16loop

df16done:
	VZEROUPPER
	RET

// func decodeMXFP4AVX2(w *byte, out *float32, blocks int, scales *float32, values *byte)
// Decodes 17-byte MXFP4 blocks as dotMXFP4AVX2 reads them.
TEXT ·decodeMXFP4AVX2(SB), NOSPLIT, $0-40
	MOVQ         w+0(FP), SI
	MOVQ         out+8(FP), DI
	MOVQ         blocks+16(FP), CX
	MOVQ         scales+24(FP), R9
	MOVQ         values+32(FP), R8
	VMOVDQU      (R8), X15
	MOVL         $0x0F0F0F0F, AX
	MOVQ         AX, X14
	VPBROADCASTD X14, X14

dmxloop:
	TESTQ        CX, CX
	JZ           dmxdone
	MOVBLZX      (SI), AX
	VBROADCASTSS (R9)(AX*4), Y7
	VMOVDQU      1(SI), X1
	VPSRLW       $4, X1, X2
	VPAND        X14, X1, X1
	VPAND        X14, X2, X2
	VPSHUFB      X1, X15, X1
	VPSHUFB      X2, X15, X2
	VPMOVSXBD    X1, Y3
	VPSRLDQ      $8, X1, X1
	VPMOVSXBD    X1, Y4
	VPMOVSXBD    X2, Y5
	VPSRLDQ      $8, X2, X2
	VPMOVSXBD    X2, Y6
	VCVTDQ2PS    Y3, Y3
	VCVTDQ2PS    Y4, Y4
	VCVTDQ2PS    Y5, Y5
	VCVTDQ2PS    Y6, Y6
	VMULPS       Y7, Y3, Y3
	VMULPS       Y7, Y4, Y4
	VMULPS       Y7, Y5, Y5
	VMULPS       Y7, Y6, Y6
	VMOVUPS      Y3, (DI)
	VMOVUPS      Y4, 32(DI)
	VMOVUPS      Y5, 64(DI)
	VMOVUPS      Y6, 96(DI)
	ADDQ         $17, SI
	ADDQ         $128, DI
	DECQ         CX
	JMP          dmxloop

dmxdone:
	VZEROUPPER
	RET

// func decodeBF16AVX2(w *byte, out *float32, n int)
// Widens n bfloat16 values, n a multiple of 8.
TEXT ·decodeBF16AVX2(SB), NOSPLIT, $0-24
	MOVQ w+0(FP), SI
	MOVQ out+8(FP), DI
	MOVQ n+16(FP), CX

dbf16loop:
	CMPQ      CX, $8
	JLT       dbf16done
	VPMOVZXWD (SI), Y1
	VPSLLD    $16, Y1, Y1
	VMOVUPS   Y1, (DI)
	ADDQ      $16, SI
	ADDQ      $32, DI
	SUBQ      $8, CX
	JMP       dbf16loop

dbf16done:
	VZEROUPPER
	RET

// The fused decode kernels below are dot1x4AVX2 of one row of x with four
// weight rows in their file format, rowBytes apart, decoding 8 values at a
// time in registers (each decoded value is exact in float32, so it equals
// the row decoders' output): out[j] is then the same bits as dot1x4AVX2 and
// dot4x2AVX2 give for the decoded rows. REDUCE4 is their shared reduction
// of the accumulators Y0..Y3 into out at R10.
#define REDUCE4 \
	VHADDPS      Y1, Y0, Y0; \
	VHADDPS      Y3, Y2, Y2; \
	VHADDPS      Y2, Y0, Y0; \
	VEXTRACTF128 $1, Y0, X1; \
	VADDPS       X1, X0, X0; \
	VMOVUPS      X0, (R10); \
	VZEROUPPER

// ROWS4 sets the row pointers R11, R12, R13 from the first, SI, and
// rowBytes in R8, and zeroes the accumulators.
#define ROWS4 \
	LEAQ (SI)(R8*1), R11; \
	LEAQ (R11)(R8*1), R12; \
	LEAQ (R12)(R8*1), R13; \
	VXORPS Y0, Y0, Y0; \
	VXORPS Y1, Y1, Y1; \
	VXORPS Y2, Y2, Y2; \
	VXORPS Y3, Y3, Y3

// Q8ROW(r, acc): one Q8_0 block of the row at r against x in Y4..Y7.
#define Q8ROW(r, acc) \
	VPBROADCASTW (r), X8; \
	VCVTPH2PS    X8, Y8; \
	VPMOVSXBD    2(r), Y9; \
	VPMOVSXBD    10(r), Y10; \
	VPMOVSXBD    18(r), Y11; \
	VPMOVSXBD    26(r), Y12; \
	VCVTDQ2PS    Y9, Y9; \
	VCVTDQ2PS    Y10, Y10; \
	VCVTDQ2PS    Y11, Y11; \
	VCVTDQ2PS    Y12, Y12; \
	VMULPS       Y8, Y9, Y9; \
	VMULPS       Y8, Y10, Y10; \
	VMULPS       Y8, Y11, Y11; \
	VMULPS       Y8, Y12, Y12; \
	VFMADD231PS  Y4, Y9, acc; \
	VFMADD231PS  Y5, Y10, acc; \
	VFMADD231PS  Y6, Y11, acc; \
	VFMADD231PS  Y7, Y12, acc

// func dotQ8_0x4AVX2(w *byte, rowBytes int, x *float32, blocks int, out *[4]float32)
TEXT ·dotQ8_0x4AVX2(SB), NOSPLIT, $0-40
	MOVQ w+0(FP), SI
	MOVQ rowBytes+8(FP), R8
	ROWS4
	MOVQ x+16(FP), DI
	MOVQ blocks+24(FP), CX
	MOVQ out+32(FP), R10

q84loop:
	TESTQ   CX, CX
	JZ      q84done
	VMOVUPS (DI), Y4
	VMOVUPS 32(DI), Y5
	VMOVUPS 64(DI), Y6
	VMOVUPS 96(DI), Y7
	Q8ROW(SI, Y0)
	Q8ROW(R11, Y1)
	Q8ROW(R12, Y2)
	Q8ROW(R13, Y3)
	ADDQ    $34, SI
	ADDQ    $34, R11
	ADDQ    $34, R12
	ADDQ    $34, R13
	ADDQ    $128, DI
	DECQ    CX
	JMP     q84loop

q84done:
	REDUCE4
	RET

// MXROW(r, acc): one MXFP4 block of the row at r (layout as in
// dotMXFP4's decoder: element j in the low nibble of byte j, j+16 in the
// high one) against x in Y4..Y7; scales at R9, codes in X15, 0x0F in X14.
#define MXROW(r, acc) \
	MOVBLZX      (r), AX; \
	VBROADCASTSS (R9)(AX*4), Y8; \
	VMOVDQU      1(r), X9; \
	VPSRLW       $4, X9, X10; \
	VPAND        X14, X9, X9; \
	VPAND        X14, X10, X10; \
	VPSHUFB      X9, X15, X9; \
	VPSHUFB      X10, X15, X10; \
	VPMOVSXBD    X9, Y11; \
	VPSRLDQ      $8, X9, X9; \
	VPMOVSXBD    X9, Y12; \
	VPMOVSXBD    X10, Y13; \
	VPSRLDQ      $8, X10, X10; \
	VPMOVSXBD    X10, Y9; \
	VCVTDQ2PS    Y11, Y11; \
	VCVTDQ2PS    Y12, Y12; \
	VCVTDQ2PS    Y13, Y13; \
	VCVTDQ2PS    Y9, Y9; \
	VMULPS       Y8, Y11, Y11; \
	VMULPS       Y8, Y12, Y12; \
	VMULPS       Y8, Y13, Y13; \
	VMULPS       Y8, Y9, Y9; \
	VFMADD231PS  Y4, Y11, acc; \
	VFMADD231PS  Y5, Y12, acc; \
	VFMADD231PS  Y6, Y13, acc; \
	VFMADD231PS  Y7, Y9, acc

// func dotMXFP4x4AVX2(w *byte, rowBytes int, x *float32, blocks int, out *[4]float32, scales *float32, values *byte)
TEXT ·dotMXFP4x4AVX2(SB), NOSPLIT, $0-56
	MOVQ w+0(FP), SI
	MOVQ rowBytes+8(FP), R8
	ROWS4
	MOVQ         x+16(FP), DI
	MOVQ         blocks+24(FP), CX
	MOVQ         out+32(FP), R10
	MOVQ         scales+40(FP), R9
	MOVQ         values+48(FP), DX
	VMOVDQU      (DX), X15
	MOVL         $0x0F0F0F0F, AX
	MOVQ         AX, X14
	VPBROADCASTD X14, X14

mx4loop:
	TESTQ   CX, CX
	JZ      mx4done
	VMOVUPS (DI), Y4
	VMOVUPS 32(DI), Y5
	VMOVUPS 64(DI), Y6
	VMOVUPS 96(DI), Y7
	MXROW(SI, Y0)
	MXROW(R11, Y1)
	MXROW(R12, Y2)
	MXROW(R13, Y3)
	ADDQ    $17, SI
	ADDQ    $17, R11
	ADDQ    $17, R12
	ADDQ    $17, R13
	ADDQ    $128, DI
	DECQ    CX
	JMP     mx4loop

mx4done:
	REDUCE4
	RET

// func dotF16x4AVX2(w *byte, rowBytes int, x *float32, n int, out *[4]float32)
// n is a multiple of 8.
TEXT ·dotF16x4AVX2(SB), NOSPLIT, $0-40
	MOVQ w+0(FP), SI
	MOVQ rowBytes+8(FP), R8
	ROWS4
	MOVQ x+16(FP), DI
	MOVQ n+24(FP), CX
	MOVQ out+32(FP), R10
	XORQ AX, AX

f164loop:
	CMPQ        CX, $8
	JLT         f164done
	VMOVUPS     (DI)(AX*2), Y4
	VCVTPH2PS   (SI)(AX*1), Y8
	VCVTPH2PS   (R11)(AX*1), Y9
	VCVTPH2PS   (R12)(AX*1), Y10
	VCVTPH2PS   (R13)(AX*1), Y11
	VFMADD231PS Y4, Y8, Y0
	VFMADD231PS Y4, Y9, Y1
	VFMADD231PS Y4, Y10, Y2
	VFMADD231PS Y4, Y11, Y3
	ADDQ        $16, AX
	SUBQ        $8, CX
	JMP         f164loop

f164done:
	REDUCE4
	RET

// func dotBF16x4AVX2(w *byte, rowBytes int, x *float32, n int, out *[4]float32)
// n is a multiple of 8.
TEXT ·dotBF16x4AVX2(SB), NOSPLIT, $0-40
	MOVQ w+0(FP), SI
	MOVQ rowBytes+8(FP), R8
	ROWS4
	MOVQ x+16(FP), DI
	MOVQ n+24(FP), CX
	MOVQ out+32(FP), R10
	XORQ AX, AX

bf164loop:
	CMPQ        CX, $8
	JLT         bf164done
	VMOVUPS     (DI)(AX*2), Y4
	VPMOVZXWD   (SI)(AX*1), Y8
	VPMOVZXWD   (R11)(AX*1), Y9
	VPMOVZXWD   (R12)(AX*1), Y10
	VPMOVZXWD   (R13)(AX*1), Y11
	VPSLLD      $16, Y8, Y8
	VPSLLD      $16, Y9, Y9
	VPSLLD      $16, Y10, Y10
	VPSLLD      $16, Y11, Y11
	VFMADD231PS Y4, Y8, Y0
	VFMADD231PS Y4, Y9, Y1
	VFMADD231PS Y4, Y10, Y2
	VFMADD231PS Y4, Y11, Y3
	ADDQ        $16, AX
	SUBQ        $8, CX
	JMP         bf164loop

bf164done:
	REDUCE4
	RET
