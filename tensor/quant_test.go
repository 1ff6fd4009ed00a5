package tensor

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"
)

// zeros32 is a block of 32 float32 zeros with the listed index → value
// pairs set.
func zeros32(kv ...float64) []float32 {
	x := make([]float32, 32)
	for i := 0; i < len(kv); i += 2 {
		x[int(kv[i])] = float32(kv[i+1])
	}
	return x
}

func TestQuantizeQ8_0HandVectors(t *testing.T) {
	for _, c := range []struct {
		name string
		x    []float32
		want []byte // d (2 bytes LE) then 32 quants
	}{
		{
			// amax 127 → d = 127/127 = 1 (f16 0x3c00), 1/d = 1; q = round(x)
			// with halves away from zero: 127, -63.5 → -64, 0.5 → 1,
			// 2.5 → 3, -0.5 → -1, 0.25 → 0, -0 → 0.
			name: "d=1",
			x:    zeros32(0, 127, 1, -63.5, 2, 0.5, 3, 2.5, 4, -0.5, 5, 0.25, 6, negZero),
			want: set(cat(le16(0x3c00), fill(32, 0)), 2, 127, 3, 0xc0, 4, 1, 5, 3, 6, 0xff),
		},
		{
			// amax 254 → d = 2 (0x4000), 1/d = 0.5: -254 → -127 (0x81),
			// 3 → round(1.5) = 2, -1 → round(-0.5) = -1.
			name: "d=2",
			x:    zeros32(0, -254, 31, 3, 17, -1),
			want: set(cat(le16(0x4000), fill(32, 0)), 2, 0x81, 2+31, 2, 2+17, 0xff),
		},
		{
			// amax 1 → d = 1/127 = 0.0078740157, as f16 (1 + 8/1024)·2^-7 =
			// 0x2008 (mantissa 0.00787·128·1024 - 1024 = 8.06 → 8). The
			// quants use the unrounded d: 1 → 127, 0.25 → 31.75 → 32,
			// -0.1 → -12.7 → -13.
			name: "d=1/127",
			x:    zeros32(0, 1, 1, 0.25, 2, -0.1),
			want: set(cat(le16(0x2008), fill(32, 0)), 2, 127, 3, 32, 4, 0xf3),
		},
		{
			// amax 1e-40 (a float32 subnormal): d = 7.9e-43 and 1/d
			// overflows float32, where ggml's int8 conversion is undefined.
			// d is 0 as f16, so the block decodes to zeros: zero quants.
			name: "tiny subnormal block",
			x:    zeros32(0, 1e-40, 1, -1e-40),
			want: cat(le16(0), fill(32, 0)),
		},
		{
			name: "all zero: d = 0",
			x:    zeros32(),
			want: cat(le16(0), fill(32, 0)),
		},
	} {
		got, err := Quantize(Q8_0, c.x)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !bytes.Equal(got, c.want) {
			t.Errorf("%s:\n got % x\nwant % x", c.name, got, c.want)
		}
	}
}

// mxfp4Case is one MXFP4 block to quantize and its expected scale byte and
// codes (element order, not packed).
type mxfp4Case struct {
	name  string
	x     []float32
	e     byte
	codes map[int]byte // elements not listed expect code 0
}

func (c mxfp4Case) block() []byte {
	b := make([]byte, 17)
	b[0] = c.e
	for i, code := range c.codes {
		if i < 16 {
			b[1+i] |= code
		} else {
			b[1+i-16] |= code << 4
		}
	}
	return b
}

func TestQuantizeMXFP4HandVectors(t *testing.T) {
	// e = floor(log2(amax)) - 2 + 127 and the scale is 2^(e-127); each value
	// takes the nearest code, ties to the lower code.
	exact := mxfp4Case{
		// Element j holds code j's value and element j+16 code 15-j's, at
		// scale 1: amax 6 → floor(log2 6) = 2 → e = 127. The -0 of code 8
		// is matched first by code 0.
		name: "every value exactly", e: 127, codes: map[int]byte{},
		x: make([]float32, 32),
	}
	for j := 0; j < 16; j++ {
		exact.x[j] = float32(e2m1[j])
		exact.x[j+16] = float32(e2m1[15-j])
		if j == 8 {
			exact.x[j] = float32(negZero)
		}
		exact.codes[j], exact.codes[j+16] = byte(j), byte(15-j)
	}
	exact.codes[8], exact.codes[16+7] = 0, 0

	cases := []mxfp4Case{
		exact,
		{
			// amax 7 → e = 127, scale 1. 7 saturates to 6 (code 7); the
			// ties take the smaller magnitude: 0.25 → 0, 0.75 → 0.5 (1),
			// 1.25 → 1 (2), 2.5 → 2 (4), 3.5 → 3 (5), 5 → 4 (6),
			// -2.5 → -2 (12), -5 → -4 (14), -0.25 → 0 (code 0 comes before
			// 8 and 9); 0.1 → 0; -7 → -6 (15).
			name: "ties and saturation", e: 127,
			x: zeros32(0, 7, 1, 0.25, 2, 0.75, 3, 1.25, 4, 2.5, 5, 3.5, 6, 5,
				7, -2.5, 8, -5, 9, -0.25, 10, 0.1, 11, -7),
			codes: map[int]byte{0: 7, 2: 1, 3: 2, 4: 4, 5: 5, 6: 6, 7: 12, 8: 14, 11: 15},
		},
		// amax 1 → floor 0 → e = 125, scale 2^-2: 1 = 4·0.25 (code 6).
		{name: "amax 1", e: 125, x: zeros32(20, 1), codes: map[int]byte{20: 6}},
		{name: "amax -1", e: 125, x: zeros32(31, -1), codes: map[int]byte{31: 14}},
		// amax 8 → floor 3 → e = 128, scale 2: 8 = 4·2 (code 6).
		{name: "amax 8", e: 128, x: zeros32(0, 8), codes: map[int]byte{0: 6}},
		{
			// amax 8·(1-2^-24) = 7.9999995: log2 = 3 - 8.6e-8, which rounds
			// to 3.0 in float32 (spacing 2.4e-7), so e = 128 as with a
			// correctly rounded log2f; at scale 2 it is nearest 4·2 (code 6).
			name: "just below 8", e: 128,
			x: zeros32(0, float64(math.Nextafter32(8, 0))), codes: map[int]byte{0: 6},
		},
		// amax 2^-125 → e = 0, scale 2^-127: 2^-125 = 4·2^-127 (code 6).
		{name: "e=0", e: 0, x: zeros32(0, math.Ldexp(1, -125)), codes: map[int]byte{0: 6}},
		// amax 2^-124 → e = 1, scale 2^-126.
		{name: "e=1", e: 1, x: zeros32(0, math.Ldexp(1, -124)), codes: map[int]byte{0: 6}},
		// amax 2^-126 → formula e = -1, clamped to 0: 2^-126 = 2·2^-127 (code 4).
		{name: "below e=0", e: 0, x: zeros32(0, math.Ldexp(1, -126)), codes: map[int]byte{0: 4}},
		// amax 2^-149 (smallest float32): e = 0, nearest value is 0.
		{name: "smallest subnormal", e: 0, x: zeros32(0, math.Ldexp(1, -149))},
		// amax 2^127 → e = 252, scale 2^125: 2^127 = 4·2^125 (code 6).
		{name: "2^127", e: 252, x: zeros32(0, math.Ldexp(1, 127)), codes: map[int]byte{0: 6}},
		{
			// amax MaxFloat32 = (2-2^-23)·2^127: log2 = 128 - 8.6e-8 rounds
			// to 128 in float32, so e = 253 and the doubled values 8 and 12
			// times 2^(253-128) overflow to +Inf; the nearest finite is
			// 6·2^125 = 1.5·2^127 (code 5).
			name: "MaxFloat32", e: 253, x: zeros32(0, math.MaxFloat32), codes: map[int]byte{0: 5},
		},
		{name: "all zero", e: 0, x: zeros32()},
	}
	for _, c := range cases {
		got, err := Quantize(MXFP4, c.x)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if want := c.block(); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got % x\nwant % x", c.name, got, want)
		}
	}
}

func TestQuantizeFloats(t *testing.T) {
	x := []float32{1, float32(negZero), 65520, -3, float32(math.Inf(-1))}
	for _, c := range []struct {
		t    Type
		want []byte
	}{
		{F32, []byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0x80, 0, 0xf0, 0x7f, 0x47, 0, 0, 0x40, 0xc0, 0, 0, 0x80, 0xff}},
		// 65520 is the midpoint between 65504 and 2^16: ties to even, +Inf.
		{F16, []byte{0x00, 0x3c, 0x00, 0x80, 0x00, 0x7c, 0x00, 0xc2, 0x00, 0xfc}},
		// 65520 = 0x477ff000 in float32: bf16 keeps 0x477f and the dropped
		// 0xf000 is above half, so 0x4780 (65536).
		{BF16, []byte{0x80, 0x3f, 0x00, 0x80, 0x80, 0x47, 0x40, 0xc0, 0x80, 0xff}},
	} {
		got, err := Quantize(c.t, x)
		if err != nil {
			t.Fatalf("%s: %v", c.t, err)
		}
		if !bytes.Equal(got, c.want) {
			t.Errorf("%s:\n got % x\nwant % x", c.t, got, c.want)
		}
	}
}

func TestQuantizeErrors(t *testing.T) {
	bad := func(at int, v float64) []float32 {
		x := make([]float32, 64)
		x[at] = float32(v)
		return x
	}
	for _, c := range []struct {
		name    string
		t       Type
		x       []float32
		wantErr []string
	}{
		{"unsupported type", Q4_K, make([]float32, 256), []string{"Q4_K", "unsupported"}},
		{"unknown type", Type(77), make([]float32, 32), []string{"type(77)"}},
		{"partial block", Q8_0, make([]float32, 33), []string{"Q8_0", "33", "32"}},
		{"NaN", Q8_0, bad(37, math.NaN()), []string{"Q8_0", "block 1", "element 5", "NaN"}},
		{"Inf", MXFP4, bad(2, math.Inf(-1)), []string{"MXFP4", "block 0", "element 2", "-Inf"}},
		{"MXFP4 NaN", MXFP4, bad(63, math.NaN()), []string{"block 1", "element 31"}},
		// amax 1e7 → d = 78740 > 65504, the largest f16.
		{"Q8_0 scale overflow", Q8_0, bad(40, 1e7), []string{"Q8_0", "block 1", "f16"}},
	} {
		prefix := []byte("keep")
		out, err := AppendQuantized(prefix, c.t, c.x)
		wantErrorMentions(t, c.name, err, c.wantErr)
		if string(out) != "keep" {
			t.Errorf("%s: dst became %q on error", c.name, out)
		}
		if _, err := Quantize(c.t, c.x); err == nil {
			t.Errorf("%s: Quantize gave no error", c.name)
		}
	}
	for _, typ := range Types() {
		want := typ == F32 || typ == F16 || typ == BF16 || typ == Q8_0 || typ == MXFP4
		if CanQuantize(typ) != want {
			t.Errorf("CanQuantize(%s) = %v", typ, !want)
		}
	}
}

// randomBlocks returns n values in blocks of 32, each block with its own
// magnitude between 1e-3 and 1e3, so scales vary block to block.
func randomBlocks(rng *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	var scale float64
	for i := range x {
		if i%32 == 0 {
			scale = math.Pow(10, rng.Float64()*6-3)
		}
		x[i] = float32(rng.NormFloat64() * scale)
	}
	return x
}

func roundTrip(t *testing.T, typ Type, x []float32) (q []byte, y []float32) {
	t.Helper()
	q, err := Quantize(typ, x)
	if err != nil {
		t.Fatal(err)
	}
	y = make([]float32, len(x))
	if err := Dequantize(typ, q, y); err != nil {
		t.Fatal(err)
	}
	return q, y
}

func TestRoundTripQ8_0(t *testing.T) {
	x := randomBlocks(rand.New(rand.NewPCG(1, 2)), 32*512)
	_, y := roundTrip(t, Q8_0, x)
	for b := 0; b < len(x); b += 32 {
		var amax float64
		for _, v := range x[b : b+32] {
			amax = math.Max(amax, math.Abs(float64(v)))
		}
		// Rounding to the nearest quant costs up to d/2; storing d as f16
		// (error ≤ d·2^-11, or 2^-25 where d is an f16 subnormal) moves a
		// quant of at most 127 by up to 127 times that.
		d := amax / 127
		dErr := math.Max(d*math.Ldexp(1, -11), math.Ldexp(1, -25))
		bound := d/2 + 127*dErr + 1e-6*d
		for i := b; i < b+32; i++ {
			if err := math.Abs(float64(x[i]) - float64(y[i])); err > bound {
				t.Fatalf("element %d: %g → %g, error %g > %g", i, x[i], y[i], err, bound)
			}
		}
	}
}

func TestRoundTripMXFP4(t *testing.T) {
	x := randomBlocks(rand.New(rand.NewPCG(3, 4)), 32*512)
	q, y := roundTrip(t, MXFP4, x)
	for b := 0; b < len(x); b += 32 {
		scale := math.Ldexp(1, int(q[b/32*17])-127)
		for i := b; i < b+32; i++ {
			v, err := float64(x[i]), math.Abs(float64(x[i])-float64(y[i]))
			// The decoded value is the nearest of all 16 code values
			// (the tie rule aside) ...
			for _, c := range e2m1 {
				if alt := math.Abs(v - c*scale); alt < err*(1-1e-6) {
					t.Fatalf("element %d: %g → %g (error %g), but %g·%g is nearer", i, x[i], y[i], err, c, scale)
				}
			}
			// ... and within 2·scale: the widest gap (4 to 6) is 2·scale
			// wide, and values above 6·scale are below 8·scale.
			if err > 2*scale {
				t.Fatalf("element %d: %g → %g, error %g > 2·%g", i, x[i], y[i], err, scale)
			}
		}
	}
}

func TestRoundTripFloats(t *testing.T) {
	x := randomBlocks(rand.New(rand.NewPCG(5, 6)), 4096)
	for _, c := range []struct {
		t   Type
		rel float64 // half an ulp, relative
	}{{F32, 0}, {F16, math.Ldexp(1, -11)}, {BF16, math.Ldexp(1, -8)}} {
		_, y := roundTrip(t, c.t, x)
		for i := range x {
			v := float64(x[i])
			if c.t == F16 && math.Abs(v) < math.Ldexp(1, -14) {
				continue // f16 subnormals have absolute, not relative, precision
			}
			if err := math.Abs(v - float64(y[i])); err > c.rel*math.Abs(v) {
				t.Fatalf("%s element %d: %g → %g", c.t, i, x[i], y[i])
			}
		}
	}
}

func BenchmarkDequantize(b *testing.B) {
	const n = 1 << 16
	rng := rand.New(rand.NewPCG(7, 8))
	for _, typ := range Types() {
		size, _ := typ.RowSize(n)
		src := make([]byte, size)
		for i := range src {
			src[i] = byte(rng.Uint32())
		}
		// Keep every f16 scale finite: clear the exponent's top bit of
		// each 16-bit word (this also keeps F16 and BF16 data finite).
		for i := 1; i < len(src); i += 2 {
			src[i] &^= 0x40
		}
		dst := make([]float32, n)
		b.Run(typ.String(), func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				if err := Dequantize(typ, src, dst); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Melem/s")
		})
	}
}

func BenchmarkQuantize(b *testing.B) {
	const n = 1 << 16
	x := randomBlocks(rand.New(rand.NewPCG(9, 10)), n)
	for _, typ := range []Type{F16, BF16, Q8_0, MXFP4} {
		buf := make([]byte, 0, 4*n)
		b.Run(typ.String(), func(b *testing.B) {
			b.SetBytes(4 * n) // float32 input
			for b.Loop() {
				if _, err := AppendQuantized(buf[:0], typ, x); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
