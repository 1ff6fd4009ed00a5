// Package tensor describes ggml tensor element formats: their block layout,
// sizes, and conversion to and from float32.
package tensor

import (
	"fmt"
	"strings"
)

// Type is a ggml tensor element type, numbered as in ggml.h (and so in GGUF).
type Type uint32

// The ggml types orcd supports. Numbers are ggml's and must not change.
const (
	F32   Type = 0
	F16   Type = 1
	Q4_0  Type = 2
	Q4_1  Type = 3
	Q5_0  Type = 6
	Q5_1  Type = 7
	Q8_0  Type = 8
	Q4_K  Type = 12
	Q5_K  Type = 13
	Q6_K  Type = 14
	BF16  Type = 30
	MXFP4 Type = 39
)

type layout struct {
	name      string
	blockSize int // elements per block
	typeSize  int // bytes per block
}

var layouts = map[Type]layout{
	F32:   {"F32", 1, 4},
	F16:   {"F16", 1, 2},
	BF16:  {"BF16", 1, 2},
	Q4_0:  {"Q4_0", 32, 2 + 16},
	Q4_1:  {"Q4_1", 32, 2 + 2 + 16},
	Q5_0:  {"Q5_0", 32, 2 + 4 + 16},
	Q5_1:  {"Q5_1", 32, 2 + 2 + 4 + 16},
	Q8_0:  {"Q8_0", 32, 2 + 32},
	Q4_K:  {"Q4_K", 256, 2 + 2 + 12 + 128},
	Q5_K:  {"Q5_K", 256, 2 + 2 + 12 + 32 + 128},
	Q6_K:  {"Q6_K", 256, 128 + 64 + 16 + 2},
	MXFP4: {"MXFP4", 32, 1 + 16},
}

// Types lists every supported type in ggml order.
func Types() []Type {
	return []Type{F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16, MXFP4}
}

// Valid reports whether t is a type orcd supports.
func (t Type) Valid() bool { _, ok := layouts[t]; return ok }

// String returns ggml's name for the type, or "type(N)" for an unknown one.
func (t Type) String() string {
	if l, ok := layouts[t]; ok {
		return l.name
	}
	return fmt.Sprintf("type(%d)", uint32(t))
}

// BlockSize is the number of elements in one block (1 for plain floats).
// It is 0 for unsupported types.
func (t Type) BlockSize() int { return layouts[t].blockSize }

// TypeSize is the number of bytes in one block. It is 0 for unsupported types.
func (t Type) TypeSize() int { return layouts[t].typeSize }

// ParseType maps a ggml type name such as "Q8_0" or "mxfp4" to its Type.
func ParseType(name string) (Type, error) {
	for t, l := range layouts {
		if strings.EqualFold(l.name, name) {
			return t, nil
		}
	}
	return 0, fmt.Errorf("unknown tensor type %q (supported: %v)", name, Types())
}

// RowSize returns the bytes taken by n elements of type t. It fails for an
// unsupported type, a negative n, or an n that is not a whole number of blocks.
func (t Type) RowSize(n int64) (int64, error) {
	l, ok := layouts[t]
	if !ok {
		return 0, fmt.Errorf("unsupported tensor type %s", t)
	}
	if n < 0 {
		return 0, fmt.Errorf("%s: negative element count %d", t, n)
	}
	if n%int64(l.blockSize) != 0 {
		return 0, fmt.Errorf("%s: %d elements is not a multiple of the block size %d", t, n, l.blockSize)
	}
	blocks := n / int64(l.blockSize)
	if blocks > (1<<62)/int64(l.typeSize) {
		return 0, fmt.Errorf("%s: %d elements overflow the byte size", t, n)
	}
	return blocks * int64(l.typeSize), nil
}
