package cpu

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"orcd/backend"
	"orcd/tensor"
)

// Shared test helpers: random inputs, random valid weight blocks, float64
// references built from tensor.Dequantize, and comparison with tolerances.

func newRand(t *testing.T) *rand.Rand {
	t.Helper()
	return rand.New(rand.NewPCG(uint64(len(t.Name())), 42))
}

func randF32(r *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * scale)
	}
	return v
}

// putF16 stores v as a little-endian binary16 at b[0:2].
func putF16(b []byte, v float32) { binary.LittleEndian.PutUint16(b, tensor.F32ToF16(v)) }

// randWeightBytes returns n elements of typ: normal random values encoded
// by tensor.Quantize where it supports typ, otherwise random quant bytes with
// every scale field set to a finite value of sensible size.
func randWeightBytes(r *rand.Rand, typ tensor.Type, n int) []byte {
	if tensor.CanQuantize(typ) {
		b, err := tensor.Quantize(typ, randF32(r, n, 1))
		if err != nil {
			panic(err)
		}
		return b
	}
	size, err := typ.RowSize(int64(n))
	if err != nil {
		panic(err)
	}
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	ts := typ.TypeSize()
	scale := func() float32 { return float32(0.01 + 0.05*r.Float64()) }
	for off := 0; off < len(b); off += ts {
		blk := b[off : off+ts]
		switch typ {
		case tensor.Q4_0, tensor.Q5_0:
			putF16(blk, scale())
		case tensor.Q4_1, tensor.Q5_1:
			putF16(blk, scale())
			putF16(blk[2:], -scale())
		case tensor.Q4_K, tensor.Q5_K: // 6-bit sub-block scales and mins multiply d and dmin
			putF16(blk, scale()/32)
			putF16(blk[2:], scale()/32)
		case tensor.Q6_K: // int8 sub-block scales multiply d, stored last
			putF16(blk[ts-2:], scale()/64)
		case tensor.MXFP4:
			blk[0] = byte(120 + r.UintN(8))
		default:
			panic("randWeightBytes: no generator for " + typ.String())
		}
	}
	return b
}

// dequant expands n elements of typ through the tensor package.
func dequant(t *testing.T, typ tensor.Type, raw []byte, n int) []float64 {
	t.Helper()
	f := make([]float32, n)
	if typ == tensor.F32 {
		for i := range f {
			f[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	} else if err := tensor.Dequantize(typ, raw, f); err != nil {
		t.Fatalf("Dequantize %s: %v", typ, err)
	}
	out := make([]float64, n)
	for i, v := range f {
		out[i] = float64(v)
	}
	return out
}

func f32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// must returns v, panicking on err: a failed allocation in a test is a bug
// in the test itself.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// activation allocates a rows×cols tensor holding data.
func activation(t *testing.T, b *Backend, rows, cols int, data []float32) backend.Tensor {
	t.Helper()
	x := must(b.NewF32(rows, cols))
	b.WriteF32(x, data)
	return x
}

// poisoned allocates a rows×cols tensor filled with NaN, so an element the
// op forgets to write shows up in the comparison.
func poisoned(t *testing.T, b *Backend, rows, cols int) backend.Tensor {
	t.Helper()
	v := make([]float32, rows*cols)
	for i := range v {
		v[i] = float32(math.NaN())
	}
	return activation(t, b, rows, cols, v)
}

func ints(t *testing.T, b *Backend, v []int32) backend.Tensor {
	t.Helper()
	x := must(b.NewI32(len(v)))
	b.WriteI32(x, v)
	return x
}

func read(t *testing.T, b *Backend, x backend.Tensor) []float32 {
	t.Helper()
	n := 1
	for _, d := range x.Dims() {
		n *= d
	}
	v := make([]float32, n)
	if err := b.ReadF32(x, v); err != nil {
		t.Fatal(err)
	}
	return v
}

// compare checks got[i] against want[i] within tol[i] (absolute).
func compare(t *testing.T, what string, got []float32, want, tol []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	bad := 0
	for i := range got {
		g := float64(got[i])
		if math.IsNaN(g) || math.Abs(g-want[i]) > tol[i] {
			if bad < 5 {
				t.Errorf("%s[%d] = %v, want %v (tolerance %.3g)", what, i, g, want[i], tol[i])
			}
			bad++
		}
	}
	if bad > 5 {
		t.Errorf("%s: %d of %d values wrong", what, bad, len(got))
	}
}

// uniformTol is a tolerance of rel·|want|+abs for every element.
func uniformTol(want []float64, rel, abs float64) []float64 {
	tol := make([]float64, len(want))
	for i, w := range want {
		tol[i] = rel*math.Abs(w) + abs
	}
	return tol
}

// backends returns single- and multi-threaded backends with the pure-Go and
// (where the CPU has them) the assembly kernels, so every op is checked with
// and without its work split across goroutines and in both kernel sets.
func backends() map[string]*Backend {
	bs := map[string]*Backend{"go/threads=1": newBackend(1, false, Exact), "go/threads=3": newBackend(3, false, Exact)}
	if _, ok := simdKernels(); ok {
		bs["simd/threads=1"] = newBackend(1, true, Exact)
		bs["simd/threads=3"] = newBackend(3, true, Exact)
	}
	return bs
}

// backendsWithFast is backends plus fast-precision ones, for the ops whose
// fast versions keep float32 accuracy (attention's float32 exps).
func backendsWithFast() map[string]*Backend {
	bs := backends()
	bs["go/fast/threads=3"] = newBackend(3, false, Fast)
	if b := newBackend(3, true, Fast); b.Fast() {
		bs["simd/fast/threads=3"] = b
	}
	return bs
}
