package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
)

// BlockFunc decodes one block of a type into float32. len(block) must be at
// least the type's TypeSize and len(dst) at least its BlockSize; only those
// are used. Shorter slices are a programming error and panic.
type BlockFunc func(block []byte, dst []float32)

// blockFuncs holds the block decoder of every supported type.
var blockFuncs = map[Type]BlockFunc{
	F32:   func(b []byte, y []float32) { y[0] = math.Float32frombits(binary.LittleEndian.Uint32(b)) },
	F16:   func(b []byte, y []float32) { y[0] = F16ToF32(binary.LittleEndian.Uint16(b)) },
	BF16:  func(b []byte, y []float32) { y[0] = BF16ToF32(binary.LittleEndian.Uint16(b)) },
	Q4_0:  dequantizeQ4_0,
	Q4_1:  dequantizeQ4_1,
	Q5_0:  dequantizeQ5_0,
	Q5_1:  dequantizeQ5_1,
	Q8_0:  dequantizeQ8_0,
	Q4_K:  dequantizeQ4_K,
	Q5_K:  dequantizeQ5_K,
	Q6_K:  dequantizeQ6_K,
	MXFP4: dequantizeMXFP4,
}

// BlockDecoder returns the decoder for one block of type t, for loops (such
// as a CPU matmul) that decode block by block into a reused buffer.
func BlockDecoder(t Type) (BlockFunc, error) {
	f, ok := blockFuncs[t]
	if !ok {
		return nil, fmt.Errorf("dequantize: unsupported tensor type %s", t)
	}
	return f, nil
}

// DequantizeBlock decodes one block of type t: block must be exactly
// t.TypeSize() bytes and dst exactly t.BlockSize() elements.
func DequantizeBlock(t Type, block []byte, dst []float32) error {
	f, err := BlockDecoder(t)
	if err != nil {
		return err
	}
	if len(block) != t.TypeSize() || len(dst) != t.BlockSize() {
		return fmt.Errorf("dequantize %s block: got %d bytes into %d elements, want %d bytes into %d",
			t, len(block), len(dst), t.TypeSize(), t.BlockSize())
	}
	f(block, dst)
	return nil
}

// Dequantize decodes src, a run of whole blocks of type t, into dst.
// len(dst) is the element count and must be a whole number of blocks; src
// must be exactly t.RowSize(len(dst)) bytes.
func Dequantize(t Type, src []byte, dst []float32) error {
	want, err := t.RowSize(int64(len(dst))) // fails for an unsupported type
	if err != nil {
		return fmt.Errorf("dequantize: %w", err)
	}
	if int64(len(src)) != want {
		return fmt.Errorf("dequantize: %s: %d elements take %d bytes, got %d", t, len(dst), want, len(src))
	}
	// The plain float types have one-element blocks: convert in one loop
	// rather than a call per element.
	switch t {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
		return nil
	case F16:
		for i := range dst {
			dst[i] = F16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
		}
		return nil
	case BF16:
		for i := range dst {
			dst[i] = BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
		}
		return nil
	}
	decode, bs, ts := blockFuncs[t], t.BlockSize(), t.TypeSize()
	for i := 0; i < len(dst)/bs; i++ {
		decode(src[i*ts:(i+1)*ts], dst[i*bs:(i+1)*bs])
	}
	return nil
}

// CanQuantize reports whether Quantize supports type t: F32, F16, BF16, Q8_0
// and MXFP4.
func CanQuantize(t Type) bool {
	switch t {
	case F32, F16, BF16, Q8_0, MXFP4:
		return true
	}
	return false
}

// Quantize encodes src as type t; len(src) must be a whole number of blocks.
// See AppendQuantized.
func Quantize(t Type, src []float32) ([]byte, error) {
	n, err := t.RowSize(int64(len(src)))
	if err != nil || !CanQuantize(t) {
		return AppendQuantized(nil, t, src) // for its error
	}
	return AppendQuantized(make([]byte, 0, n), t, src)
}

// AppendQuantized appends src encoded as type t to dst and returns the
// extended slice, so a writer can stream a tensor in pieces of whole blocks.
// Supported types are those of CanQuantize. F16 and BF16 round to nearest
// even (large values become ±Inf, as IEEE conversion does). Q8_0 and MXFP4
// follow ggml's reference quantizers and reject NaN and ±Inf, and Q8_0
// rejects blocks whose scale would overflow f16. On error dst is returned
// as it was.
func AppendQuantized(dst []byte, t Type, src []float32) ([]byte, error) {
	if !CanQuantize(t) {
		return dst, fmt.Errorf("quantize: unsupported target type %s (supported: F32, F16, BF16, Q8_0, MXFP4)", t)
	}
	if _, err := t.RowSize(int64(len(src))); err != nil {
		return dst, fmt.Errorf("quantize: %w", err)
	}
	switch t {
	case F32:
		for _, v := range src {
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(v))
		}
		return dst, nil
	case F16:
		for _, v := range src {
			dst = binary.LittleEndian.AppendUint16(dst, F32ToF16(v))
		}
		return dst, nil
	case BF16:
		for _, v := range src {
			dst = binary.LittleEndian.AppendUint16(dst, F32ToBF16(v))
		}
		return dst, nil
	}
	encode := quantizeQ8_0
	if t == MXFP4 {
		encode = quantizeMXFP4
	}
	start, bs := len(dst), t.BlockSize()
	for i := 0; i < len(src); i += bs {
		var err error
		if dst, err = encode(dst, src[i:i+bs]); err != nil {
			return dst[:start], fmt.Errorf("quantize %s: block %d (elements %d-%d): %w", t, i/bs, i, i+bs-1, err)
		}
	}
	return dst, nil
}

// finiteAmax returns the largest |v| of a block about to be quantized, or
// an error naming the first element that is NaN or infinite.
func finiteAmax(x []float32) (float32, error) {
	var amax float32
	for j, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return 0, fmt.Errorf("element %d is %v", j, v)
		}
		amax = max(amax, abs32(v))
	}
	return amax, nil
}
