package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Q8_0 block (34 bytes, 32 elements): f16 d, then int8 qs[32]; x[j] = qs[j]·d.

// dequantizeQ8_0 decodes one Q8_0 block.
func dequantizeQ8_0(b []byte, y []float32) {
	_, _ = b[33], y[31] // reslicing alone checks cap, not len
	b, y = b[:34], y[:32]
	d := F16ToF32(binary.LittleEndian.Uint16(b))
	for j, q := range b[2:34] {
		y[j] = float32(int8(q)) * d
	}
}

// quantizeQ8_0 appends one Q8_0 block for the 32 values in x, following
// ggml's reference quantizer (quantize_row_q8_0_ref): d = amax/127 kept as
// f16, q = round(x·(1/d)) with halves away from zero. The quants are computed
// from the unrounded d, as ggml does. It fails on a non-finite value or when
// d overflows f16 (amax above about 8.3e6), where the block could not be
// decoded back.
func quantizeQ8_0(dst []byte, x []float32) ([]byte, error) {
	x = x[:32]
	amax, err := finiteAmax(x)
	if err != nil {
		return dst, err
	}
	d := amax / 127
	var id float32
	if d != 0 {
		id = 1 / d
	}
	if math.IsInf(float64(id), 0) {
		// d is a float32 subnormal so small that 1/d overflows (amax below
		// about 3.7e-37). Its f16 form is 0 and the block decodes to zeros
		// whatever the quants; ggml's float-to-int8 conversion is undefined
		// here, so write zero quants.
		id = 0
	}
	dh := F32ToF16(d)
	if dh&0x7fff == 0x7c00 {
		return dst, fmt.Errorf("largest magnitude %g needs a scale %g beyond f16's range", amax, d)
	}
	dst = binary.LittleEndian.AppendUint16(dst, dh)
	for _, v := range x {
		dst = append(dst, byte(int8(math.Round(float64(v*id)))))
	}
	return dst, nil
}
