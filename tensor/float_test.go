package tensor

import (
	"math"
	"testing"
)

// The reference decoders below are written straight from the IEEE 754 and
// bfloat16 definitions with math.Ldexp, independently of the bit shuffling
// in float.go.

// refF16 decodes binary16 bits: 1 sign, 5 exponent (bias 15), 10 mantissa.
func refF16(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp, mant := int(h>>10&0x1f), float64(h&0x3ff)
	switch exp {
	case 0x1f:
		if mant != 0 {
			return math.NaN()
		}
		return math.Inf(int(sign))
	case 0:
		return sign * math.Ldexp(mant, -24) // 0.mant × 2^-14
	}
	return sign * math.Ldexp(1024+mant, exp-25) // 1.mant × 2^(exp-15)
}

// refBF16 decodes bfloat16 bits: 1 sign, 8 exponent (bias 127), 7 mantissa.
func refBF16(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp, mant := int(h>>7&0xff), float64(h&0x7f)
	switch exp {
	case 0xff:
		if mant != 0 {
			return math.NaN()
		}
		return math.Inf(int(sign))
	case 0:
		return sign * math.Ldexp(mant, -133) // 0.mant × 2^-126
	}
	return sign * math.Ldexp(128+mant, exp-134) // 1.mant × 2^(exp-127)
}

// sameFloat reports whether got is want, telling -0 from +0 and treating any
// NaN as equal to any NaN of the same sign.
func sameFloat(got float32, want float64) bool {
	if math.IsNaN(want) {
		return math.IsNaN(float64(got)) && math.Signbit(float64(got)) == math.Signbit(want)
	}
	return math.Float32bits(got) == math.Float32bits(float32(want))
}

func TestF16ToF32Exhaustive(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := uint16(i)
		want := refF16(h)
		if math.IsNaN(want) && h&0x8000 != 0 {
			want = math.Copysign(want, -1)
		}
		if got := F16ToF32(h); !sameFloat(got, want) {
			t.Fatalf("F16ToF32(%#04x) = %g (%#08x), want %g", h, got, math.Float32bits(got), want)
		}
	}
}

func TestBF16ToF32Exhaustive(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := uint16(i)
		want := refBF16(h)
		if math.IsNaN(want) && h&0x8000 != 0 {
			want = math.Copysign(want, -1)
		}
		if got := BF16ToF32(h); !sameFloat(got, want) {
			t.Fatalf("BF16ToF32(%#04x) = %g, want %g", h, got, want)
		}
	}
}

// checkNarrowing checks a float32 → 16-bit conversion against decode for
// every 16-bit pattern h: the exact value maps back to h, and the float32
// midpoint between h and the next larger magnitude maps to whichever of the
// two is even (ties to even), while its float32 neighbours go to the nearer
// one. The step past the largest finite value is infinity's pattern, so the
// overflow threshold is tested too.
func checkNarrowing(t *testing.T, name string, narrow func(float32) uint16, decode func(uint16) float64, maxFinite uint16) {
	t.Helper()
	for _, sign := range []uint16{0, 0x8000} {
		for m := uint16(0); m <= maxFinite; m++ {
			h := sign | m
			x := float32(decode(h))
			if got := narrow(x); got != h {
				t.Fatalf("%s(%g) = %#04x, want %#04x (exact)", name, x, got, h)
			}
			next := h + 1 // the next larger magnitude (infinity after maxFinite)
			lo, hi := decode(h), decode(next)
			if math.IsInf(hi, 0) {
				// Where the next exponent would start: 2^16 for binary16,
				// 2^128 for bfloat16.
				hi = math.Copysign(math.Ldexp(1, math.Ilogb(lo)+1), lo)
			}
			mid := (lo + hi) / 2 // exact in float64, and in float32 (one more bit)
			if float64(float32(mid)) != mid {
				t.Fatalf("%s: midpoint %g after %#04x is not a float32", name, mid, h)
			}
			even := h
			if h&1 == 1 {
				even = next
			}
			if got := narrow(float32(mid)); got != even {
				t.Fatalf("%s(%g) = %#04x, want %#04x (tie between %#04x and %#04x goes to even)", name, mid, got, even, h, next)
			}
			inner := math.Nextafter32(float32(mid), 0)
			outer := math.Nextafter32(float32(mid), float32(math.Copysign(math.Inf(1), mid)))
			if got := narrow(inner); got != h {
				t.Fatalf("%s(%g) = %#04x, want %#04x (just below the midpoint)", name, inner, got, h)
			}
			if got := narrow(outer); got != next {
				t.Fatalf("%s(%g) = %#04x, want %#04x (just above the midpoint)", name, outer, got, next)
			}
		}
	}
}

func TestF32ToF16RoundsToNearestEven(t *testing.T) {
	checkNarrowing(t, "F32ToF16", F32ToF16, refF16, 0x7bff)
}

func TestF32ToBF16RoundsToNearestEven(t *testing.T) {
	checkNarrowing(t, "F32ToBF16", F32ToBF16, refBF16, 0x7f7f)
}

func TestF32ToF16Specials(t *testing.T) {
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{float32(math.Copysign(0, -1)), 0x8000},
		{float32(math.Inf(1)), 0x7c00},
		{float32(math.Inf(-1)), 0xfc00},
		{math.MaxFloat32, 0x7c00},
		{-1e10, 0xfc00},
		{65519.996, 0x7bff},                           // below 65520, the midpoint to 2^16: stays 65504
		{65520, 0x7c00},                               // midpoint 65504|2^16, ties to even (infinity's mantissa 0)
		{float32(math.Ldexp(1, -25)), 0x0000},         // half the smallest subnormal: tie to even zero
		{float32(math.Ldexp(1.0000001, -25)), 0x0001}, // just above: the smallest subnormal
		{float32(math.Ldexp(3, -26)), 0x0001},         // 0.75 units: rounds up to 1 unit of 2^-24
		{float32(math.Ldexp(3, -25)), 0x0002},         // 1.5 units: tie, to even 2
		{float32(math.Ldexp(-5, -25)), 0x8002},        // -2.5 units: tie, to even 2
		{math.Float32frombits(1), 0x0000},             // float32 subnormals are far below half a unit
		{math.Float32frombits(0x80000001), 0x8000},
		{float32(math.Ldexp(2047, -25)), 0x0400}, // 1023.5 units: tie between the largest subnormal and 2^-14, to even 2^-14
	} {
		if got := F32ToF16(c.in); got != c.want {
			t.Errorf("F32ToF16(%g) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	for _, bits := range []uint32{0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff} {
		in := math.Float32frombits(bits)
		got := F32ToF16(in)
		if got&0x7c00 != 0x7c00 || got&0x3ff == 0 || got>>15 != uint16(bits>>31) {
			t.Errorf("F32ToF16(NaN %#08x) = %#04x, want a NaN of the same sign", bits, got)
		}
	}
}

func TestF32ToBF16Specials(t *testing.T) {
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{float32(math.Copysign(0, -1)), 0x8000},
		{float32(math.Inf(1)), 0x7f80},
		{float32(math.Inf(-1)), 0xff80},
		{math.MaxFloat32, 0x7f80},                  // 0x7f7fffff: the dropped half 0xffff is above the midpoint
		{math.Float32frombits(0x3f808000), 0x3f80}, // 1 + 2^-8: tie, to even 0x3f80
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie, to even 0x3f82
		{math.Float32frombits(0x00008000), 0x0000}, // subnormal tie, to even 0
		{math.Float32frombits(0x00018000), 0x0002},
	} {
		if got := F32ToBF16(c.in); got != c.want {
			t.Errorf("F32ToBF16(%g) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	// 0x7f800001 has its payload only in the low half: plain rounding would
	// truncate it to 0x7f80, which is +Inf.
	for _, bits := range []uint32{0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff} {
		got := F32ToBF16(math.Float32frombits(bits))
		if got&0x7f80 != 0x7f80 || got&0x7f == 0 || got>>15 != uint16(bits>>31) {
			t.Errorf("F32ToBF16(NaN %#08x) = %#04x, want a NaN of the same sign", bits, got)
		}
	}
}

func TestE8M0(t *testing.T) {
	for i := 0; i < 256; i++ {
		e := uint8(i)
		full, half := math.Ldexp(1, i-127), math.Ldexp(1, i-128)
		if i == 255 {
			full = math.Inf(1) // 2^128 does not fit a float32; ggml's bits give +Inf
		}
		if got := E8M0ToF32(e); !sameFloat(got, full) {
			t.Errorf("E8M0ToF32(%d) = %g, want %g", e, got, full)
		}
		if got := E8M0ToF32Half(e); !sameFloat(got, half) {
			t.Errorf("E8M0ToF32Half(%d) = %g, want %g", e, got, half)
		}
	}
	// The values ggml special-cases, by bit pattern.
	for _, c := range []struct {
		e          uint8
		full, half uint32
	}{
		{0, 0x00400000, 0x00200000}, // 2^-127 and 2^-128: float32 subnormals
		{1, 0x00800000, 0x00400000}, // 2^-126 (smallest normal) and 2^-127
		{2, 0x01000000, 0x00800000},
		{127, 0x3f800000, 0x3f000000}, // 1 and 0.5
		{254, 0x7f000000, 0x7e800000}, // 2^127 and 2^126
	} {
		if got := math.Float32bits(E8M0ToF32(c.e)); got != c.full {
			t.Errorf("E8M0ToF32(%d) bits %#08x, want %#08x", c.e, got, c.full)
		}
		if got := math.Float32bits(E8M0ToF32Half(c.e)); got != c.half {
			t.Errorf("E8M0ToF32Half(%d) bits %#08x, want %#08x", c.e, got, c.half)
		}
	}
}
