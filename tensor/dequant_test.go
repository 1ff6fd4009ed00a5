package tensor

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// Hand-derived dequantization vectors. Each case builds one block's bytes by
// hand from the ggml layout and states the expected values with the
// arithmetic that gives them. Elements a case does not list take the value
// of the span they fall in.

// span gives elements [from, to) one expected value.
type span struct {
	from, to int
	want     float64
}

type dequantCase struct {
	name  string
	t     Type
	block []byte
	spans []span          // defaults, in order; later spans override earlier
	want  map[int]float64 // single elements, overriding the spans
}

// le16 is the little-endian bytes of a 16-bit value (an f16 scale).
func le16(v uint16) []byte { return []byte{byte(v), byte(v >> 8)} }

// cat joins byte slices into one block.
func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// fill is n copies of byte v.
func fill(n int, v byte) []byte { return []byte(strings.Repeat(string([]byte{v}), n)) }

// set returns b with the given index → value bytes overwritten.
func set(b []byte, kv ...int) []byte {
	for i := 0; i < len(kv); i += 2 {
		b[kv[i]] = byte(kv[i+1])
	}
	return b
}

var negZero = math.Copysign(0, -1)

var dequantCases = []dequantCase{
	// Plain floats: one element per block.
	{name: "F32 one", t: F32, block: []byte{0x00, 0x00, 0x80, 0x3f}, want: map[int]float64{0: 1}},
	{name: "F32 -0", t: F32, block: []byte{0, 0, 0, 0x80}, want: map[int]float64{0: negZero}},
	{name: "F32 -Inf", t: F32, block: []byte{0, 0, 0x80, 0xff}, want: map[int]float64{0: math.Inf(-1)}},
	{name: "F16 one", t: F16, block: le16(0x3c00), want: map[int]float64{0: 1}},
	{name: "F16 max", t: F16, block: le16(0x7bff), want: map[int]float64{0: 65504}},
	{name: "F16 smallest subnormal", t: F16, block: le16(0x0001), want: map[int]float64{0: math.Ldexp(1, -24)}},
	{name: "F16 -0", t: F16, block: le16(0x8000), want: map[int]float64{0: negZero}},
	{name: "BF16 -3", t: BF16, block: le16(0xc040), want: map[int]float64{0: -3}}, // sign, exp 128, mantissa .1b
	{name: "BF16 smallest subnormal", t: BF16, block: le16(0x0001), want: map[int]float64{0: math.Ldexp(1, -133)}},

	// Q8_0 {f16 d; int8 qs[32]}: x = q·d.
	{
		// d = 0x3800 = 0.5. qs[0] = 0x80 = -128 → -64; qs[1] = 0xff = -1 →
		// -0.5; qs[2] = 0x7f = 127 → 63.5; qs[31] = 3 → 1.5; others 0 → 0.
		name: "Q8_0 d=0.5", t: Q8_0,
		block: set(cat(le16(0x3800), fill(32, 0)), 2+0, 0x80, 2+1, 0xff, 2+2, 0x7f, 2+31, 3),
		spans: []span{{0, 32, 0}},
		want:  map[int]float64{0: -64, 1: -0.5, 2: 63.5, 31: 1.5},
	},
	{
		// d = 0xb800 = -0.5: q = 0 gives 0·(-0.5) = -0; q = 2 gives -1.
		name: "Q8_0 negative d", t: Q8_0,
		block: set(cat(le16(0xb800), fill(32, 0)), 2+5, 2),
		spans: []span{{0, 32, negZero}},
		want:  map[int]float64{5: -1},
	},
	{
		// d = 0x0001 = 2^-24 (smallest f16 subnormal): q = -3 → -3·2^-24.
		name: "Q8_0 subnormal d", t: Q8_0,
		block: set(cat(le16(0x0001), fill(32, 0)), 2+7, 0xfd),
		spans: []span{{0, 32, 0}},
		want:  map[int]float64{7: -3 * math.Ldexp(1, -24)},
	},
	{
		// d = 0x7bff = 65504 (largest f16): q = 127 → 8319008, q = -128 →
		// -8384512, both exact in float32.
		name: "Q8_0 huge d", t: Q8_0,
		block: set(cat(le16(0x7bff), fill(32, 0)), 2+0, 127, 2+1, 0x80),
		spans: []span{{0, 32, 0}},
		want:  map[int]float64{0: 8319008, 1: -8384512},
	},

	// Q4_0 {f16 d; qs[16]}: element j is the low nibble of qs[j], element
	// j+16 the high nibble; x = (q-8)·d.
	{
		// d = 0x4000 = 2. All qs bytes 0x88 (q = 8 → 0) except:
		// qs[0] = 0x0f: element 0 = (15-8)·2 = 14, element 16 = (0-8)·2 = -16;
		// qs[15] = 0x91: element 15 = (1-8)·2 = -14, element 31 = (9-8)·2 = 2.
		name: "Q4_0", t: Q4_0,
		block: set(cat(le16(0x4000), fill(16, 0x88)), 2+0, 0x0f, 2+15, 0x91),
		spans: []span{{0, 32, 0}},
		want:  map[int]float64{0: 14, 16: -16, 15: -14, 31: 2},
	},
	{
		// d = 0x8000 = -0: every (q-8)·(-0) is a zero whose sign is the
		// opposite of q-8's: q = 0 → -8·-0 = +0, q = 15 → 7·-0 = -0, and
		// q = 8 → 0·-0 = -0.
		name: "Q4_0 d=-0", t: Q4_0,
		block: set(cat(le16(0x8000), fill(16, 0x88)), 2+3, 0xf0),
		spans: []span{{0, 32, negZero}},
		want:  map[int]float64{3: 0, 19: negZero},
	},

	// Q4_1 {f16 d; f16 m; qs[16]}: x = q·d + m.
	{
		// d = 1, m = 0xc000 = -2. qs all 0 → -2, except qs[3] = 0xf1:
		// element 3 = 1-2 = -1, element 19 = 15-2 = 13.
		name: "Q4_1", t: Q4_1,
		block: set(cat(le16(0x3c00), le16(0xc000), fill(16, 0)), 4+3, 0xf1),
		spans: []span{{0, 32, -2}},
		want:  map[int]float64{3: -1, 19: 13},
	},
	{
		// d = 1, m = -0: q = 0 gives 0·1 + (-0) = +0 (IEEE: +0 + -0 = +0);
		// qs[0] = 0x20: element 16 = 2.
		name: "Q4_1 m=-0", t: Q4_1,
		block: set(cat(le16(0x3c00), le16(0x8000), fill(16, 0)), 4+0, 0x20),
		spans: []span{{0, 32, 0}},
		want:  map[int]float64{16: 2},
	},

	// Q5_0 {f16 d; qh[4]; qs[16]}: q = nibble | bit j of qh (as uint32 LE)
	// << 4; x = (q-16)·d.
	{
		// d = 0.5. qh = 01 00 01 80 = 0x80010001: bits 0, 16 and 31.
		// qs all 0 → (0-16)·0.5 = -8, except:
		// qs[0] = 0x0f: element 0: 15|16 = 31 → 7.5; element 16: 0|16 = 16 → +0.
		// qs[1] = 0x21: element 1: 1 → -7.5; element 17: 2 → -7.
		// qs[15] = 0xf0: element 15: 0 → -8; element 31: 15|16 = 31 → 7.5.
		name: "Q5_0", t: Q5_0,
		block: set(cat(le16(0x3800), []byte{0x01, 0x00, 0x01, 0x80}, fill(16, 0)), 6+0, 0x0f, 6+1, 0x21, 6+15, 0xf0),
		spans: []span{{0, 32, -8}},
		want:  map[int]float64{0: 7.5, 16: 0, 1: -7.5, 17: -7, 31: 7.5},
	},

	// Q5_1 {f16 d; f16 m; qh[4]; qs[16]}: x = q·d + m.
	{
		// d = 2, m = 1. qh = 00 80 00 00: bit 15 only. qs all 0 → 1, except
		// qs[15] = 0x1f: element 15: 15|16 = 31 → 63; element 31: 1 → 3.
		// qs[8] = 0x0a: element 8: 10 (no fifth bit) → 21.
		name: "Q5_1", t: Q5_1,
		block: set(cat(le16(0x4000), le16(0x3c00), []byte{0x00, 0x80, 0x00, 0x00}, fill(16, 0)), 8+15, 0x1f, 8+8, 0x0a),
		spans: []span{{0, 32, 1}},
		want:  map[int]float64{15: 63, 31: 3, 8: 21},
	},

	// Q4_K {f16 d; f16 dmin; scales[12]; qs[128]}: 8 sub-blocks of 32,
	// x = d·sc·q - dmin·m. Packed scales (s = scales):
	//   j < 4: sc = s[j] & 63, m = s[j+4] & 63
	//   j ≥ 4: sc = (s[j+4] & 15) | (s[j-4] >> 6) << 4, m = (s[j+4] >> 4) | (s[j] >> 6) << 4
	// Chosen s: 41 02 03 c4 | 81 00 3f 02 | 25 00 ff 1a gives
	//   sc0 = 1, m0 = 1; sc1 = 2, m1 = 0; sc2 = 3, m2 = 63; sc3 = 4, m3 = 2;
	//   sc4 = 5 | (0x41>>6=1)<<4 = 21, m4 = 2 | (0x81>>6=2)<<4 = 34;
	//   sc5 = 0, m5 = 0; sc6 = 15, m6 = 15;
	//   sc7 = 0xa | (0xc4>>6=3)<<4 = 58, m7 = 1 | (0x02>>6=0)<<4 = 1.
	// d = 1, dmin = 0.5; with q = 0 sub-block s is -m_s/2:
	//   -0.5, +0 (0 - 0), -31.5, -1, -17, +0, -7.5, -0.5.
	// qs[32p+l] holds sub-block 2p element l (low) and 2p+1 element l (high):
	//   qs[0] = 0xf3: element 0 = 1·3 - 0.5 = 2.5, element 32 = 2·15 - 0 = 30.
	//   qs[69] (p=2, l=5) = 0x21: element 133 = 21·1 - 17 = 4, element 165 = 0·2 - 0 = 0.
	//   qs[127] (p=3, l=31) = 0x9c: element 223 = 15·12 - 7.5 = 172.5,
	//   element 255 = 58·9 - 0.5 = 521.5.
	{
		name: "Q4_K", t: Q4_K,
		block: set(cat(le16(0x3c00), le16(0x3800),
			[]byte{0x41, 0x02, 0x03, 0xc4, 0x81, 0x00, 0x3f, 0x02, 0x25, 0x00, 0xff, 0x1a},
			fill(128, 0)), 16+0, 0xf3, 16+69, 0x21, 16+127, 0x9c),
		spans: []span{{0, 32, -0.5}, {32, 64, 0}, {64, 96, -31.5}, {96, 128, -1},
			{128, 160, -17}, {160, 192, 0}, {192, 224, -7.5}, {224, 256, -0.5}},
		want: map[int]float64{0: 2.5, 32: 30, 133: 4, 165: 0, 223: 172.5, 255: 521.5},
	},

	// Q5_K {f16 d; f16 dmin; scales[12]; qh[32]; qs[128]}: as Q4_K, plus
	// the fifth bit of sub-block s element l in bit s of qh[l].
	// s = 01 02 03 04 | 00 01 00 01 | 15 26 37 48 (no top bits) gives
	//   (sc, m) = (1,0) (2,1) (3,0) (4,1) (5,1) (6,2) (7,3) (8,4).
	// d = 2, dmin = 1; with q = 0 sub-block s is -m_s:
	//   +0, -1, +0, -1, -1, -2, -3, -4.
	//   qh[0] = 0x01: element 0: q = 16 → 2·1·16 - 0 = 32.
	//   qh[5] = 0x0c (bits 2, 3) and qs[37] (p=1, l=5) = 0x7a:
	//     element 69 (sub-block 2): q = 10|16 = 26 → 2·3·26 - 0 = 156;
	//     element 101 (sub-block 3): q = 7|16 = 23 → 2·4·23 - 1 = 183.
	//   qh[31] = 0x80 (bit 7) and qs[127] = 0xf0:
	//     element 223 (sub-block 6): q = 0 → -3; element 255 (sub-block 7):
	//     q = 15|16 = 31 → 2·8·31 - 4 = 492.
	{
		name: "Q5_K", t: Q5_K,
		block: set(cat(le16(0x4000), le16(0x3c00),
			[]byte{0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x00, 0x01, 0x15, 0x26, 0x37, 0x48},
			fill(32, 0), fill(128, 0)),
			16+0, 0x01, 16+5, 0x0c, 16+31, 0x80, 48+37, 0x7a, 48+127, 0xf0),
		spans: []span{{0, 32, 0}, {32, 64, -1}, {64, 96, 0}, {96, 128, -1},
			{128, 160, -1}, {160, 192, -2}, {192, 224, -3}, {224, 256, -4}},
		want: map[int]float64{0: 32, 69: 156, 101: 183, 223: -3, 255: 492},
	},

	// Q6_K {ql[128]; qh[64]; int8 scales[16]; f16 d}: 16 sub-blocks of 16,
	// sub-block k uses scales[k]; x = d·sc·(q-32), q = 4 bits of ql and 2 of
	// qh. Half h (elements 128h..) uses ql[64h..], qh[32h..]; for l < 32:
	//   element l:    low nibble of ql[l],    qh[l] bits 0-1
	//   element l+32: low nibble of ql[l+32], qh[l] bits 2-3
	//   element l+64: high nibble of ql[l],   qh[l] bits 4-5
	//   element l+96: high nibble of ql[l+32], qh[l] bits 6-7
	// d = 0.5, scales = 1 -1 2 -2 3 -3 4 -4 5 -5 6 -6 7 -7 8 -128. With q = 0
	// (q-32 = -32) sub-block k is 0.5·sc·(-32) = -16·sc.
	//   ql[0] = 0xa5, qh[0] = 0xe4 (bits 00, 01, 10, 11 from the bottom):
	//     element 0:  5 | 0<<4 = 5 → 0.5·1·(5-32) = -13.5
	//     element 32: 0 | 1<<4 = 16 → 0.5·2·(-16) = -16
	//     element 64: 10 | 2<<4 = 42 → 0.5·3·10 = 15
	//     element 96: 0 | 3<<4 = 48 → 0.5·4·16 = 32
	//   second half, l = 31: ql[95] = 0xff, qh[63] = 0xff:
	//     element 159 (sub-block 9, sc -5): 15|48 = 63 → 0.5·-5·31 = -77.5
	//     element 191 (sub-block 11, sc -6): ql[127] low 0 | 48 → 0.5·-6·16 = -48
	//     element 223 (sub-block 13, sc -7): 15|48 = 63 → 0.5·-7·31 = -108.5
	//     element 255 (sub-block 15, sc -128): 0 | 48 → 0.5·-128·16 = -1024
	{
		name: "Q6_K", t: Q6_K,
		block: set(cat(fill(128, 0), fill(64, 0),
			[]byte{1, 0xff, 2, 0xfe, 3, 0xfd, 4, 0xfc, 5, 0xfb, 6, 0xfa, 7, 0xf9, 8, 0x80},
			le16(0x3800)),
			0, 0xa5, 128+0, 0xe4, 95, 0xff, 128+63, 0xff),
		spans: []span{{0, 16, -16}, {16, 32, 16}, {32, 48, -32}, {48, 64, 32},
			{64, 80, -48}, {80, 96, 48}, {96, 112, -64}, {112, 128, 64},
			{128, 144, -80}, {144, 160, 80}, {160, 176, -96}, {176, 192, 96},
			{192, 208, -112}, {208, 224, 112}, {224, 240, -128}, {240, 256, 2048}},
		want: map[int]float64{0: -13.5, 32: -16, 64: 15, 96: 32, 159: -77.5, 191: -48, 223: -108.5, 255: -1024},
	},
}

// MXFP4 {u8 e; qs[16]}: element j = low nibble of qs[j], j+16 = high
// nibble. The E2M1 code's bit 3 is the sign and bits 0-2 pick
// {0, 0.5, 1, 1.5, 2, 3, 4, 6}; x = value · 2^(e-127). ggml holds -0 (code 8)
// as the integer 0, so it decodes to +0.
var e2m1 = [16]float64{0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6}

// mxfp4AllCodes is a block with scale byte e whose element j has code j and
// element j+16 code 15-j, so each code appears twice.
func mxfp4AllCodes(e byte) dequantCase {
	block := []byte{e}
	want := map[int]float64{}
	for j := 0; j < 16; j++ {
		block = append(block, byte(j)|byte(15-j)<<4)
		// value · 2^(e-127) in float64 is exact; the float32 rounding of
		// the comparison takes it to the float32 result (±Inf on overflow).
		want[j] = e2m1[j] * math.Ldexp(1, int(e)-127)
		want[j+16] = e2m1[15-j] * math.Ldexp(1, int(e)-127)
	}
	return dequantCase{name: fmt.Sprintf("MXFP4 all codes e=%d", e), t: MXFP4, block: block, want: want}
}

func allDequantCases() []dequantCase {
	cases := append([]dequantCase{}, dequantCases...)
	// e = 127 is scale 1, so the values are the E2M1 table itself. e = 0
	// and 1 put every nonzero value in float32's subnormal or lowest normal
	// range (0.5·2^-127 = 2^-128 is the bit pattern 0x00200000). e = 254
	// and 255 overflow the largest codes to ±Inf (6·2^127 > MaxFloat32).
	for _, e := range []byte{127, 0, 1, 2, 128, 254, 255} {
		cases = append(cases, mxfp4AllCodes(e))
	}
	return cases
}

// expected returns the float32 each element of c should decode to.
func (c dequantCase) expected() []float64 {
	want := make([]float64, c.t.BlockSize())
	for _, s := range c.spans {
		for i := s.from; i < s.to; i++ {
			want[i] = s.want
		}
	}
	for i, v := range c.want {
		want[i] = v
	}
	return want
}

func TestDequantizeHandVectors(t *testing.T) {
	for _, c := range allDequantCases() {
		t.Run(c.name, func(t *testing.T) {
			if len(c.block) != c.t.TypeSize() {
				t.Fatalf("test block is %d bytes, %s blocks are %d", len(c.block), c.t, c.t.TypeSize())
			}
			want := c.expected()
			got := make([]float32, c.t.BlockSize())
			if err := Dequantize(c.t, c.block, got); err != nil {
				t.Fatal(err)
			}
			for i := range got {
				if !sameFloat(got[i], want[i]) {
					t.Errorf("element %d = %g (%#08x), want %g", i, got[i], math.Float32bits(got[i]), want[i])
				}
			}
			// The block helpers agree with the whole-row path.
			one := make([]float32, c.t.BlockSize())
			if err := DequantizeBlock(c.t, c.block, one); err != nil {
				t.Fatal(err)
			}
			f, err := BlockDecoder(c.t)
			if err != nil {
				t.Fatal(err)
			}
			two := make([]float32, c.t.BlockSize())
			f(c.block, two)
			for i := range got {
				if math.Float32bits(one[i]) != math.Float32bits(got[i]) || math.Float32bits(two[i]) != math.Float32bits(got[i]) {
					t.Fatalf("element %d: DequantizeBlock %g, BlockDecoder %g, Dequantize %g", i, one[i], two[i], got[i])
				}
			}
		})
	}
}

// TestDequantizeMultipleBlocks decodes all the hand vectors of each type as
// one row, so each block must land at its own offset.
func TestDequantizeMultipleBlocks(t *testing.T) {
	for _, typ := range Types() {
		var src []byte
		var want []float64
		for _, c := range allDequantCases() {
			if c.t == typ {
				src = append(src, c.block...)
				want = append(want, c.expected()...)
			}
		}
		if len(want) == 0 {
			t.Errorf("%s: no hand vectors", typ)
			continue
		}
		got := make([]float32, len(want))
		if err := Dequantize(typ, src, got); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		for i := range got {
			if !sameFloat(got[i], want[i]) {
				t.Errorf("%s: element %d (block %d) = %g, want %g", typ, i, i/typ.BlockSize(), got[i], want[i])
			}
		}
	}
}

func TestDequantizeErrors(t *testing.T) {
	for _, c := range []struct {
		name    string
		t       Type
		src     int // bytes
		dst     int // elements
		wantErr []string
	}{
		{"unknown type", Type(5), 0, 0, []string{"type(5)"}},
		{"partial block", Q4_K, 144, 255, []string{"Q4_K", "255", "256"}},
		{"short src", Q8_0, 33, 32, []string{"Q8_0", "33", "34"}},
		{"long src", MXFP4, 35, 32, []string{"MXFP4", "35", "17"}},
		{"src for two blocks, dst for one", Q6_K, 420, 256, []string{"Q6_K", "420", "210"}},
		{"odd F16 bytes", F16, 3, 2, []string{"F16", "3", "4"}},
	} {
		err := Dequantize(c.t, make([]byte, c.src), make([]float32, c.dst))
		wantErrorMentions(t, c.name, err, c.wantErr)
	}
	// Zero elements is a valid, empty row.
	if err := Dequantize(Q4_0, nil, nil); err != nil {
		t.Errorf("empty row: %v", err)
	}
	if err := DequantizeBlock(Q5_K, make([]byte, 175), make([]float32, 256)); err == nil || !strings.Contains(err.Error(), "Q5_K") {
		t.Errorf("DequantizeBlock with a short block: %v", err)
	}
	if _, err := BlockDecoder(Type(99)); err == nil {
		t.Error("BlockDecoder(99): no error")
	}
}

// TestBlockDecoderShortSlices checks that a block decoder given a slice
// shorter than a block panics instead of reading past its length into
// spare capacity.
func TestBlockDecoderShortSlices(t *testing.T) {
	for _, typ := range Types() {
		f, err := BlockDecoder(typ)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2*typ.TypeSize())
		short := buf[:typ.TypeSize()-1]
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: decoding a %d-byte block did not panic", typ, len(short))
				}
			}()
			f(short, make([]float32, typ.BlockSize()))
		}()
	}
}

func TestMXFP4DoubledValues(t *testing.T) {
	for code, v := range MXFP4DoubledValues() {
		if float64(v) != 2*e2m1[code] {
			t.Errorf("code %d: %d, want 2·%g", code, v, e2m1[code])
		}
	}
}

// wantErrorMentions fails the test unless err is an error whose message
// contains each of want.
func wantErrorMentions(t *testing.T, name string, err error, want []string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error", name)
		return
	}
	for _, s := range want {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s: error %q does not mention %q", name, err, s)
		}
	}
}
