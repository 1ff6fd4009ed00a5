package engine

import "math"

// expNeg is e^x for x ≤ 0, or 0 below -708 (also for -Inf and NaN).
func expNeg(x float64) float64 {
	if !(x >= -708) {
		return 0
	}
	return exp2k(x * expScale)
}

// expScale turns an exponent x into exp2k's argument: e^x = exp2k(x·expScale).
// Loops fold it into the temperature's factor.
const expScale = 2048 / math.Ln2

// exp2k is 2^(y/2048) for -2^21 < y ≤ 0, i.e. e^x for y = x·expScale: the
// sampler's exponents, a logit minus the largest over the temperature. It is
// about twice as fast as math.Exp, which dominates sampling at a 201k
// vocabulary, and small enough to inline into the sampler's loops.
//
// y = k + t with k an integer and |t| ≤ 1/2: 2^(k/2048) comes from a table
// (16 KiB) and the exponent bits, 2^(t/2048) = e^r with |r| ≤ ln2/4096 from a
// degree-3 polynomial (truncation error below 4e-17). The result is within a few
// units in the last place of e^x for the rounded y; rounding x·expScale adds
// a relative error of about |x|·2e-16, as dividing the logit by the
// temperature already does (see TestExpNeg).
func exp2k(y float64) float64 {
	// Adding and removing 1.5·2^52 rounds to an integer.
	const shift = 0x1.8p52
	kf := y + shift - shift
	k := int64(kf)
	t := y - kf
	const c = math.Ln2 / 2048
	p := 1 + t*(c+t*(c*c/2+t*(c*c*c/6)))
	// 2^(k/2048) = 2^(k>>11) · 2^((k&2047)/2048): add k>>11 to the table
	// entry's exponent (the result stays normal for y > -2^21).
	return math.Float64frombits(math.Float64bits(exp2Table[k&2047])+uint64(k>>11)<<52) * p
}

// exp2Table[j] = 2^(j/2048).
var exp2Table = func() (t [2048]float64) {
	for j := range t {
		t[j] = math.Exp2(float64(j) / 2048)
	}
	return t
}()
