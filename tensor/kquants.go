package tensor

import "encoding/binary"

// The k-quants work on super-blocks of 256 elements split into sub-blocks,
// each sub-block with its own integer scale (and for Q4_K/Q5_K a min),
// themselves scaled by the super-block's f16 d (and dmin).

// scaleMinK4 unpacks sub-block j's 6-bit scale and 6-bit min from the 12
// packed bytes of a Q4_K or Q5_K super-block (ggml's get_scale_min_k4).
// Sub-blocks 0-3 keep scale and min in the low 6 bits of bytes j and j+4.
// Sub-blocks 4-7 keep their low 4 bits in the nibbles of byte j+4 (scale
// low, min high) and their top 2 bits in the spare top bits of bytes j-4
// (scale) and j (min).
func scaleMinK4(s []byte, j int) (scale, min uint8) {
	if j < 4 {
		return s[j] & 63, s[j+4] & 63
	}
	return s[j+4]&0x0f | (s[j-4]>>6)<<4, s[j+4]>>4 | (s[j]>>6)<<4
}

// dequantizeQ4_K decodes one Q4_K super-block
// {f16 d; f16 dmin; scales[12]; qs[128]}. Its 8 sub-blocks of 32 are laid
// out in pairs: 32 bytes of qs hold sub-block 2i in their low nibbles and
// sub-block 2i+1 in their high nibbles; x = d·scale·q - dmin·min.
func dequantizeQ4_K(b []byte, y []float32) {
	_, _ = b[143], y[255] // reslicing alone checks cap, not len
	b, y = b[:144], y[:256]
	d := F16ToF32(binary.LittleEndian.Uint16(b))
	dmin := F16ToF32(binary.LittleEndian.Uint16(b[2:]))
	scales, qs := b[4:16], b[16:144]
	for pair := 0; pair < 4; pair++ {
		sc1, m1 := scaleMinK4(scales, 2*pair)
		sc2, m2 := scaleMinK4(scales, 2*pair+1)
		d1, min1 := d*float32(sc1), dmin*float32(m1)
		d2, min2 := d*float32(sc2), dmin*float32(m2)
		q := qs[32*pair : 32*pair+32]
		lo, hi := y[64*pair:64*pair+32], y[64*pair+32:64*pair+64]
		for l := range 32 {
			// d1·q is exact (6+4 bits times an 11-bit significand), so
			// only the subtraction rounds, fused or not.
			lo[l] = d1*float32(q[l]&0x0f) - min1
			hi[l] = d2*float32(q[l]>>4) - min2
		}
	}
}

// dequantizeQ5_K decodes one Q5_K super-block
// {f16 d; f16 dmin; scales[12]; qh[32]; qs[128]}. It is Q4_K plus a fifth
// bit per element: for sub-block s, element l's fifth bit is bit s of
// qh[l]; x = d·scale·q - dmin·min.
func dequantizeQ5_K(b []byte, y []float32) {
	_, _ = b[175], y[255] // reslicing alone checks cap, not len
	b, y = b[:176], y[:256]
	d := F16ToF32(binary.LittleEndian.Uint16(b))
	dmin := F16ToF32(binary.LittleEndian.Uint16(b[2:]))
	scales, qh, qs := b[4:16], b[16:48], b[48:176]
	for pair := 0; pair < 4; pair++ {
		sc1, m1 := scaleMinK4(scales, 2*pair)
		sc2, m2 := scaleMinK4(scales, 2*pair+1)
		d1, min1 := d*float32(sc1), dmin*float32(m1)
		d2, min2 := d*float32(sc2), dmin*float32(m2)
		bit1, bit2 := uint(2*pair), uint(2*pair+1)
		q := qs[32*pair : 32*pair+32]
		lo, hi := y[64*pair:64*pair+32], y[64*pair+32:64*pair+64]
		for l := range 32 {
			q1 := q[l]&0x0f | (qh[l]>>bit1&1)<<4
			q2 := q[l]>>4 | (qh[l]>>bit2&1)<<4
			// d1·q is exact (6+5 bits times an 11-bit significand).
			lo[l] = d1*float32(q1) - min1
			hi[l] = d2*float32(q2) - min2
		}
	}
}

// dequantizeQ6_K decodes one Q6_K super-block
// {ql[128]; qh[64]; int8 scales[16]; f16 d}: 16 sub-blocks of 16 elements,
// x = d·scale·(q-32) with q 6 bits. Each half of 128 elements uses 64 bytes
// of ql and 32 of qh: for l < 32, ql[l] holds elements l (low nibble) and
// l+64 (high), ql[l+32] holds l+32 and l+96, and qh[l] holds the top two
// bits of elements l, l+32, l+64, l+96 in bits 0-1, 2-3, 4-5, 6-7.
func dequantizeQ6_K(b []byte, y []float32) {
	_, _ = b[209], y[255] // reslicing alone checks cap, not len
	b, y = b[:210], y[:256]
	d := F16ToF32(binary.LittleEndian.Uint16(b[208:]))
	for half := 0; half < 2; half++ {
		ql := b[64*half : 64*half+64]
		qh := b[128+32*half : 128+32*half+32]
		sc := b[192+8*half : 192+8*half+8]
		out := y[128*half : 128*half+128]
		for l := range 32 {
			is := l / 16
			q1 := int(ql[l]&0x0f|(qh[l]&3)<<4) - 32
			q2 := int(ql[l+32]&0x0f|(qh[l]>>2&3)<<4) - 32
			q3 := int(ql[l]>>4|(qh[l]>>4&3)<<4) - 32
			q4 := int(ql[l+32]>>4|(qh[l]>>6&3)<<4) - 32
			// Exact: d's 11-bit significand times |scale·q| ≤ 4096.
			out[l] = d * float32(int8(sc[is])) * float32(q1)
			out[l+32] = d * float32(int8(sc[is+2])) * float32(q2)
			out[l+64] = d * float32(int8(sc[is+4])) * float32(q3)
			out[l+96] = d * float32(int8(sc[is+6])) * float32(q4)
		}
	}
}
