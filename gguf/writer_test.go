package gguf

import (
	"bytes"
	"math"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"orcd/tensor"
)

func mustArray(t testing.TB, slice any) Value {
	t.Helper()
	v, err := ArrayValue(slice)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// sampleWriter returns a Writer with a key of every type (arrays of every
// element type and nested arrays included) and tensors of several types and
// odd sizes, with their data.
func sampleWriter(t testing.TB, alignment uint32) (*Writer, map[string][]byte) {
	t.Helper()
	w := NewWriter()
	w.SetString("general.architecture", "gpt2")
	if alignment != 0 {
		w.SetUint32(KeyAlignment, alignment)
	}
	w.Set("t.u8", Uint8Value(200))
	w.Set("t.i8", Int8Value(-5))
	w.Set("t.u16", Uint16Value(60000))
	w.Set("t.i16", Int16Value(-30000))
	w.SetUint32("t.u32", 4000000000)
	w.SetInt32("t.i32", -2000000000)
	w.SetFloat32("t.f32", float32(math.Inf(-1)))
	w.SetBool("t.bool", true)
	w.SetString("t.str", "héllo")
	w.SetUint64("t.u64", math.MaxUint64)
	w.Set("t.i64", Int64Value(math.MinInt64))
	w.Set("t.f64", Float64Value(math.SmallestNonzeroFloat64))
	w.Set("t.f32nan", Float32Value(float32(math.NaN())))
	w.Set("t.au8", mustArray(t, []uint8{1, 2, 3}))
	w.Set("t.ai8", mustArray(t, []int8{-1, 0, 1}))
	w.Set("t.au16", mustArray(t, []uint16{1, 65535}))
	w.Set("t.ai16", mustArray(t, []int16{-32768}))
	w.Set("t.au32", mustArray(t, []uint32{7}))
	w.SetInt32s("t.ai32", []int32{-7, 7})
	w.SetFloat32s("t.af32", []float32{0.5, float32(math.Copysign(0, -1))})
	w.Set("t.abool", mustArray(t, []bool{true, false}))
	w.SetStrings("t.astr", []string{"", "a", "日本"})
	w.Set("t.au64", mustArray(t, []uint64{math.MaxUint64}))
	w.Set("t.ai64", mustArray(t, []int64{math.MinInt64, 1}))
	w.Set("t.af64", mustArray(t, []float64{math.Pi}))
	w.Set("t.aempty", mustArray(t, []string{}))
	w.Set("t.nested", mustArray(t, []Value{
		mustArray(t, []int32{1, 2}),
		mustArray(t, []Value{mustArray(t, []string{"deep"})}),
		mustArray(t, []bool{}),
	}))
	data := map[string][]byte{}
	add := func(name string, typ tensor.Type, dims ...int64) {
		if err := w.AddTensor(name, typ, dims); err != nil {
			t.Fatal(err)
		}
		ti := w.tensors[len(w.tensors)-1]
		b := make([]byte, ti.Size)
		for i := range b {
			b[i] = byte(len(data)*31 + i*7)
		}
		data[name] = b
	}
	add("token_embd.weight", tensor.F32, 5, 3)
	add("blk.0.attn_q.weight", tensor.F16, 7)
	add("blk.0.ffn_up.weight", tensor.Q8_0, 64, 3)
	add("blk.0.ffn_gate_exps.weight", tensor.MXFP4, 32, 2, 2, 2)
	add("output.weight", tensor.Q4_K, 256, 1)
	return w, data
}

func encode(t testing.TB, w *Writer, data map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw, err := w.Begin(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range w.tensors {
		if err := tw.WriteTensor(ti.Name, data[ti.Name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	for _, align := range []uint32{0, 1, 64, 4096} {
		w, data := sampleWriter(t, align)
		path := filepath.Join(t.TempDir(), "rt.gguf")
		if err := WriteFile(path, w, data); err != nil {
			t.Fatal(err)
		}
		f, err := Open(path)
		if err != nil {
			t.Fatalf("alignment %d: %v", align, err)
		}
		wantAlign := int64(align)
		if align == 0 {
			wantAlign = DefaultAlignment
		}
		if f.Version != 3 || f.Alignment != wantAlign || f.DataOffset%wantAlign != 0 {
			t.Errorf("alignment %d: version %d, alignment %d, data offset %d", align, f.Version, f.Alignment, f.DataOffset)
		}
		if len(f.KV) != len(w.kv) {
			t.Fatalf("%d keys, want %d", len(f.KV), len(w.kv))
		}
		for i, kv := range w.kv {
			if f.KV[i].Key != kv.Key || !f.KV[i].Value.Equal(kv.Value) {
				t.Errorf("key %d: %s = %v, want %s = %v", i, f.KV[i].Key, f.KV[i].Value, kv.Key, kv.Value)
			}
		}
		if len(f.Tensors) != len(w.tensors) {
			t.Fatalf("%d tensors, want %d", len(f.Tensors), len(w.tensors))
		}
		for i, want := range w.tensors {
			got := &f.Tensors[i]
			if got.Name != want.Name || got.Type != want.Type || !slices.Equal(got.Dims, want.Dims) || got.Size != want.Size {
				t.Errorf("tensor %d: %+v, want %+v", i, *got, want)
			}
			if got.Offset%wantAlign != 0 {
				t.Errorf("tensor %s at %d, not aligned to %d", got.Name, got.Offset, wantAlign)
			}
			if !bytes.Equal(f.TensorData(got), data[want.Name]) {
				t.Errorf("tensor %s: data differs", got.Name)
			}
		}
		if err := f.Close(); err != nil {
			t.Error(err)
		}
		if f.TensorData(&f.Tensors[0]) != nil {
			t.Error("TensorData after Close is not nil")
		}
	}
}

// TestWriteChunks writes a tensor in several pieces and checks the result
// is the same file as writing it at once.
func TestWriteChunks(t *testing.T) {
	w, data := sampleWriter(t, 0)
	whole := encode(t, w, data)
	var buf bytes.Buffer
	tw, err := w.Begin(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range w.tensors {
		b := data[ti.Name]
		for len(b) > 0 {
			n := min(len(b), 5)
			if err := tw.WriteTensor(ti.Name, b[:n]); err != nil {
				t.Fatal(err)
			}
			b = b[n:]
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), whole) {
		t.Error("chunked write differs from whole write")
	}
}

func TestWriterErrors(t *testing.T) {
	w := NewWriter()
	bad := []struct {
		name string
		typ  tensor.Type
		dims []int64
	}{
		{"", tensor.F32, []int64{1}},
		{strings.Repeat("x", 65), tensor.F32, []int64{1}},
		{"a", tensor.Type(5), []int64{1}},
		{"a", tensor.F32, nil},
		{"a", tensor.F32, []int64{1, 1, 1, 1, 1}},
		{"a", tensor.F32, []int64{0}},
		{"a", tensor.F32, []int64{-1}},
		{"a", tensor.F32, []int64{1 << 32, 1 << 32}},
		{"a", tensor.Q8_0, []int64{33}},
		{"a", tensor.F32, []int64{1 << 31, 1 << 31}},
	}
	for _, c := range bad {
		if err := w.AddTensor(c.name, c.typ, c.dims); err == nil {
			t.Errorf("AddTensor(%q, %s, %v) succeeded", c.name, c.typ, c.dims)
		}
	}
	if err := w.AddTensor("a", tensor.F32, []int64{2}); err != nil {
		t.Fatal(err)
	}
	if err := w.AddTensor("a", tensor.F32, []int64{2}); err == nil {
		t.Error("duplicate tensor name accepted")
	}
	if err := w.AddTensor("b", tensor.F32, []int64{1}); err != nil {
		t.Fatal(err)
	}

	var buf bytes.Buffer
	tw, err := w.Begin(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.WriteTensor("b", make([]byte, 4)); err == nil {
		t.Error("out-of-order tensor accepted")
	}
	if err := tw.WriteTensor("a", make([]byte, 12)); err == nil {
		t.Error("too many bytes accepted")
	}
	if err := tw.WriteTensor("a", make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	if err := tw.WriteTensor("b", make([]byte, 4)); err == nil {
		t.Error("tensor switched while incomplete")
	}
	if err := tw.Close(); err == nil {
		t.Error("Close with an incomplete tensor succeeded")
	}

	for _, align := range []Value{Uint32Value(0), Uint32Value(48), StringValue("32"), Int32Value(-32)} {
		w := NewWriter()
		w.Set(KeyAlignment, align)
		if _, err := w.Begin(&buf); err == nil {
			t.Errorf("general.alignment %v accepted", align)
		}
	}
	if _, err := ArrayValue([]Value{Uint8Value(1)}); err == nil {
		t.Error("[]Value of scalars accepted")
	}
	if _, err := ArrayValue([]int{1}); err == nil {
		t.Error("[]int accepted")
	}
	w = NewWriter()
	w.Set("k", Value{typ: Array})
	if _, err := w.Begin(&buf); err == nil {
		t.Error("array Value without elements accepted")
	}
}

func TestValueSummary(t *testing.T) {
	v := mustArray(t, []int32{1, 2, 3, 4, 5})
	if got := v.Summary(2); got != "[1, 2, ... (3 more)]" {
		t.Errorf("Summary(2) = %q", got)
	}
	if got := v.String(); got != "[1, 2, 3, 4, 5]" {
		t.Errorf("String() = %q", got)
	}
	n := mustArray(t, []Value{mustArray(t, []string{"a", "b"})})
	if got := n.Summary(1); got != `[["a", ... (1 more)]]` {
		t.Errorf("nested Summary(1) = %q", got)
	}
	if got := Float32Value(0.1).String(); got != "0.1" {
		t.Errorf("float32 String = %q", got)
	}
}

// countingWriter counts the bytes written to it and keeps none.
type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// TestWriterStreams writes 64 MiB of tensor data in 1 MiB chunks and checks
// that the writer allocates far less than that: it must stream, so that
// synth can write a 12 GB file.
func TestWriterStreams(t *testing.T) {
	const rows = 64
	w := NewWriter()
	w.SetString("general.architecture", "gpt2")
	if err := w.AddTensor("big", tensor.F32, []int64{1 << 18, rows}); err != nil {
		t.Fatal(err)
	}
	if err := w.AddTensor("small", tensor.F32, []int64{3}); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var out countingWriter
	tw, err := w.Begin(&out)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < rows; i++ {
		if err := tw.WriteTensor("big", chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.WriteTensor("small", chunk[:12]); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
		t.Errorf("writing 64 MiB allocated %d bytes", alloc)
	}
	header := alignUp(24+ /* kv */ 8+20+4+8+4+ /* infos */ 8+3+4+16+4+8+8+5+4+8+4+8, DefaultAlignment)
	if want := header + rows<<20 + DefaultAlignment; out.n != want {
		t.Errorf("wrote %d bytes, want %d", out.n, want)
	}
}

// BenchmarkParseVocab parses metadata shaped like a large BPE tokenizer:
// 200k tokens, their types and 450k merges.
func BenchmarkParseVocab(b *testing.B) {
	w := NewWriter()
	tokens := make([]string, 200000)
	types := make([]int32, len(tokens))
	for i := range tokens {
		tokens[i] = "tok" + strings.Repeat("x", i%9) + string(rune('a'+i%26))
		types[i] = 1
	}
	merges := make([]string, 450000)
	for i := range merges {
		merges[i] = tokens[i%len(tokens)] + " " + tokens[(i*7)%len(tokens)]
	}
	w.SetStrings("tokenizer.ggml.tokens", tokens)
	w.SetInt32s("tokenizer.ggml.token_type", types)
	w.SetStrings("tokenizer.ggml.merges", merges)
	img := encode(b, w, nil)
	b.SetBytes(int64(len(img)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("vocab", img); err != nil {
			b.Fatal(err)
		}
	}
}
