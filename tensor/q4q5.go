package tensor

import "encoding/binary"

// The legacy 4- and 5-bit formats. Each block holds 32 elements; byte j of
// qs carries element j in its low nibble and element j+16 in its high
// nibble. The 5-bit formats keep each element's fifth bit in a little-endian
// uint32 qh: bit j for element j.

// dequantizeQ4_0 decodes one Q4_0 block {f16 d; qs[16]}: x = (q-8)·d.
func dequantizeQ4_0(b []byte, y []float32) {
	_, _ = b[17], y[31] // reslicing alone checks cap, not len
	b, y = b[:18], y[:32]
	d := F16ToF32(binary.LittleEndian.Uint16(b))
	for j, q := range b[2:18] {
		y[j] = float32(int(q&0x0f)-8) * d
		y[j+16] = float32(int(q>>4)-8) * d
	}
}

// dequantizeQ4_1 decodes one Q4_1 block {f16 d; f16 m; qs[16]}: x = q·d + m.
func dequantizeQ4_1(b []byte, y []float32) {
	_, _ = b[19], y[31] // reslicing alone checks cap, not len
	b, y = b[:20], y[:32]
	d := F16ToF32(binary.LittleEndian.Uint16(b))
	m := F16ToF32(binary.LittleEndian.Uint16(b[2:]))
	for j, q := range b[4:20] {
		// q·d is exact (4 bits times an 11-bit significand), so a fused
		// multiply-add would round the same way.
		y[j] = float32(q&0x0f)*d + m
		y[j+16] = float32(q>>4)*d + m
	}
}

// dequantizeQ5_0 decodes one Q5_0 block {f16 d; qh[4]; qs[16]}:
// x = (q-16)·d with q's fifth bit from qh.
func dequantizeQ5_0(b []byte, y []float32) {
	_, _ = b[21], y[31] // reslicing alone checks cap, not len
	b, y = b[:22], y[:32]
	d := F16ToF32(binary.LittleEndian.Uint16(b))
	qh := binary.LittleEndian.Uint32(b[2:])
	for j, q := range b[6:22] {
		lo := int(q&0x0f) | int(qh>>j&1)<<4
		hi := int(q>>4) | int(qh>>(j+16)&1)<<4
		y[j] = float32(lo-16) * d
		y[j+16] = float32(hi-16) * d
	}
}

// dequantizeQ5_1 decodes one Q5_1 block {f16 d; f16 m; qh[4]; qs[16]}:
// x = q·d + m with q's fifth bit from qh.
func dequantizeQ5_1(b []byte, y []float32) {
	_, _ = b[23], y[31] // reslicing alone checks cap, not len
	b, y = b[:24], y[:32]
	d := F16ToF32(binary.LittleEndian.Uint16(b))
	m := F16ToF32(binary.LittleEndian.Uint16(b[2:]))
	qh := binary.LittleEndian.Uint32(b[4:])
	for j, q := range b[8:24] {
		lo := uint32(q&0x0f) | (qh>>j&1)<<4
		hi := uint32(q>>4) | (qh>>(j+16)&1)<<4
		// q·d is exact (5 bits times an 11-bit significand).
		y[j] = float32(lo)*d + m
		y[j+16] = float32(hi)*d + m
	}
}
