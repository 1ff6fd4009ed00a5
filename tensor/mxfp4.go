package tensor

import "math"

// MXFP4 block (17 bytes, 32 elements): E8M0 byte e, then qs[16]; element j is
// the low nibble of qs[j] and element j+16 the high nibble. Each nibble is an
// E2M1 code: bit 3 the sign, bits 0-2 index {0, 0.5, 1, 1.5, 2, 3, 4, 6}.
// Like ggml, orcd keeps the values doubled, as small integers, and scales by
// 2^(e-128) (E8M0ToF32Half) instead of 2^(e-127).

// mxfp4Doubled holds twice each E2M1 code's value. Code 8 (-0) is a plain 0,
// so it decodes to +0 as in ggml.
var mxfp4Doubled = [16]int8{0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12}

// MXFP4DoubledValues returns twice the value of each E2M1 code, indexed by
// the 4-bit code: with a block's scale taken as E8M0ToF32Half(e), element
// value = MXFP4DoubledValues()[code] · scale, exactly as Dequantize computes.
func MXFP4DoubledValues() [16]int8 { return mxfp4Doubled }

// dequantizeMXFP4 decodes one MXFP4 block.
func dequantizeMXFP4(b []byte, y []float32) {
	_, _ = b[16], y[31] // reslicing alone checks cap, not len
	b, y = b[:17], y[:32]
	d := E8M0ToF32Half(b[0])
	for j, q := range b[1:17] {
		y[j] = float32(mxfp4Doubled[q&0x0f]) * d
		y[j+16] = float32(mxfp4Doubled[q>>4]) * d
	}
}

// quantizeMXFP4 appends one MXFP4 block for the 32 values in x, following
// ggml's reference quantizer (quantize_row_mxfp4_ref):
//
//   - e = floor(log2(amax)) - 2 + 127, or 0 when amax is 0, so the largest
//     code (6) times 2^(e-127) covers amax up to 1.5·2^floor(log2(amax));
//     larger values saturate at ±6.
//   - each value takes the code whose doubled value times 2^(e-128) is
//     nearest, by float32 absolute error; ties go to the lower code, so to
//     the smaller magnitude, and -0 becomes code 0.
//
// log2 is taken in float64 and rounded to float32 before the floor, as a
// correctly rounded log2f does: just below a power of two 2^k (|k| ≥ 3) that
// rounds up to k, so ggml, and orcd, pick the exponent of 2^k.
//
// Where ggml's formula gives e < 0 (amax below 2^-125) its conversion to a
// byte is undefined in C; orcd uses e = 0 there, the closest scale. It fails
// on a non-finite value.
func quantizeMXFP4(dst []byte, x []float32) ([]byte, error) {
	x = x[:32]
	amax, err := finiteAmax(x)
	if err != nil {
		return dst, err
	}
	var e uint8
	if amax > 0 {
		log2 := float32(math.Log2(float64(amax)))
		// amax is below 2^128, so the exponent is at most 127-2+127 = 252.
		e = uint8(max(0, int(math.Floor(float64(log2)))-2+127))
	}
	d := E8M0ToF32Half(e)
	dst = append(dst, e)
	for j := range 16 {
		dst = append(dst, nearestMXFP4(x[j], d)|nearestMXFP4(x[j+16], d)<<4)
	}
	return dst, nil
}

// nearestMXFP4 returns the code whose value, scaled by d, is nearest to v,
// scanning codes in order and keeping the first on a tie (ggml's
// best_index_mxfp4). The products are exact (small integers times a power of
// two), so only the subtraction rounds.
func nearestMXFP4(v, d float32) uint8 {
	best, bestErr := uint8(0), abs32(float32(mxfp4Doubled[0])*d-v)
	for code := uint8(1); code < 16; code++ {
		if err := abs32(float32(mxfp4Doubled[code])*d - v); err < bestErr {
			best, bestErr = code, err
		}
	}
	return best
}
