package tensor

import "math"

// F16ToF32 widens an IEEE 754 binary16 value, given as its bit pattern, to
// float32. Every binary16 value, subnormals, infinities, NaNs and -0 included,
// is exactly representable in float32, so this never rounds.
func F16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // infinity or NaN: keep the payload, top-aligned
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0: // normal: rebias the exponent from 15 to 127
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	case mant == 0:
		return math.Float32frombits(sign)
	default: // subnormal: mant × 2^-24, which is a normal float32
		v := float32(mant) * (1.0 / (1 << 24))
		return math.Float32frombits(sign | math.Float32bits(v))
	}
}

// F32ToF16 narrows a float32 to IEEE 754 binary16 (returned as its bit
// pattern), rounding to nearest with ties to even. Values too large become
// ±Inf, values too small become ±0 or a binary16 subnormal, NaN stays a
// (quiet) NaN with its sign and the top of its payload, and -0 stays -0.
func F32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant == 0 {
			return sign | 0x7c00
		}
		return sign | 0x7e00 | uint16(mant>>13) // set the quiet bit so it stays NaN
	}
	if exp == 0 {
		// float32 subnormals are below 2^-126, far under half the smallest
		// binary16 subnormal (2^-25), so they round to zero.
		return sign
	}
	sig := mant | 0x800000 // value = sig × 2^(exp-150)
	if halfExp := exp - 127 + 15; halfExp >= 1 {
		// Normal binary16: 10 mantissa bits, so drop 13 of float32's 23.
		// Adding the rounded significand (implicit bit included) to
		// (halfExp-1)<<10 lets a carry out of the mantissa bump the exponent,
		// and anything reaching the all-ones exponent is infinity.
		h := uint32(halfExp-1)<<10 + roundShiftEven(sig, 13)
		if h >= 0x7c00 {
			return sign | 0x7c00
		}
		return sign | uint16(h)
	}
	// Subnormal binary16: units of 2^-24, so shift by (-24) - (exp-150).
	shift := uint(126 - exp)
	if shift > 24 {
		return sign // below 2^-25: rounds to zero
	}
	return sign | uint16(roundShiftEven(sig, shift))
}

// roundShiftEven returns v >> s rounded to nearest, ties to even (1 ≤ s ≤ 31).
func roundShiftEven(v uint32, s uint) uint32 {
	q := v >> s
	rem := v & (1<<s - 1)
	half := uint32(1) << (s - 1)
	if rem > half || (rem == half && q&1 == 1) {
		q++
	}
	return q
}

// abs32 is |v| for a float32, clearing the sign bit (so |-0| = +0).
func abs32(v float32) float32 {
	return math.Float32frombits(math.Float32bits(v) &^ (1 << 31))
}

// BF16ToF32 widens a bfloat16 value, given as its bit pattern, to float32.
// bfloat16 is the top half of a float32, so this is exact.
func BF16ToF32(h uint16) float32 {
	return math.Float32frombits(uint32(h) << 16)
}

// F32ToBF16 narrows a float32 to bfloat16 (returned as its bit pattern),
// rounding to nearest with ties to even. NaN stays a quiet NaN with its sign:
// plain rounding could carry a NaN's payload into an infinity.
func F32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x0040
	}
	return uint16((b + 0x7fff + ((b >> 16) & 1)) >> 16)
}

// E8M0ToF32 decodes an E8M0 scale byte (the OCP microscaling shared
// exponent) to 2^(e-127) as ggml does: e = 0 gives the float32 subnormal
// 2^-127 and e = 255 overflows to +Inf (ggml gives it no NaN meaning).
func E8M0ToF32(e uint8) float32 {
	if e == 0 {
		return math.Float32frombits(0x00400000) // 2^-127, a subnormal
	}
	return math.Float32frombits(uint32(e) << 23)
}

// E8M0ToF32Half decodes an E8M0 scale byte to 2^(e-128), half the scale.
// ggml's MXFP4 blocks use this form because its value table holds the E2M1
// values doubled ({0, 1, 2, 3, 4, 6, 8, 12}). e = 0 and e = 1 give the
// float32 subnormals 2^-128 and 2^-127; e = 255 gives 2^127.
func E8M0ToF32Half(e uint8) float32 {
	if e < 2 {
		return math.Float32frombits(0x00200000 << e)
	}
	return math.Float32frombits(uint32(e-1) << 23)
}
