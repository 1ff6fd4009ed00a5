package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"

	"orcd/tensor"
)

// Writer collects the metadata and tensor descriptions of a GGUF file (always
// version 3, little-endian), then streams it: Begin writes everything up to
// the data section and returns a TensorWriter that takes the tensor data in
// order, so a file of any size is written without holding it in memory.
type Writer struct {
	kv      []KV
	keys    map[string]int
	tensors []TensorInfo // Offset relative to the data section, set by Begin
	names   map[string]int
}

// NewWriter returns an empty Writer.
func NewWriter() *Writer {
	return &Writer{keys: map[string]int{}, names: map[string]int{}}
}

// Set sets a metadata key. Keys are written in the order first set; setting
// a key again replaces its value in place.
func (w *Writer) Set(key string, v Value) {
	if i, ok := w.keys[key]; ok {
		w.kv[i].Value = v
		return
	}
	w.keys[key] = len(w.kv)
	w.kv = append(w.kv, KV{Key: key, Value: v})
}

// SetUint32 sets a uint32 key.
func (w *Writer) SetUint32(key string, v uint32) { w.Set(key, Uint32Value(v)) }

// SetInt32 sets an int32 key.
func (w *Writer) SetInt32(key string, v int32) { w.Set(key, Int32Value(v)) }

// SetUint64 sets a uint64 key.
func (w *Writer) SetUint64(key string, v uint64) { w.Set(key, Uint64Value(v)) }

// SetFloat32 sets a float32 key.
func (w *Writer) SetFloat32(key string, v float32) { w.Set(key, Float32Value(v)) }

// SetBool sets a bool key.
func (w *Writer) SetBool(key string, v bool) { w.Set(key, BoolValue(v)) }

// SetString sets a string key.
func (w *Writer) SetString(key string, v string) { w.Set(key, StringValue(v)) }

// SetStrings sets a string array key. The slice is kept, not copied.
func (w *Writer) SetStrings(key string, v []string) {
	w.Set(key, Value{typ: Array, elem: String, arr: v})
}

// SetInt32s sets an int32 array key. The slice is kept, not copied.
func (w *Writer) SetInt32s(key string, v []int32) {
	w.Set(key, Value{typ: Array, elem: Int32, arr: v})
}

// SetFloat32s sets a float32 array key. The slice is kept, not copied.
func (w *Writer) SetFloat32s(key string, v []float32) {
	w.Set(key, Value{typ: Array, elem: Float32, arr: v})
}

// AddTensor declares a tensor: its name, type and dims in ggml order
// (innermost first). Tensor data must later be written in the order the
// tensors were added.
func (w *Writer) AddTensor(name string, typ tensor.Type, dims []int64) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("gguf: tensor name %q must have 1 to %d bytes", name, maxNameLen)
	}
	if _, dup := w.names[name]; dup {
		return fmt.Errorf("gguf: tensor %q added twice", name)
	}
	if !typ.Valid() {
		return fmt.Errorf("gguf: tensor %q: unsupported type %s", name, typ)
	}
	if len(dims) == 0 || len(dims) > maxDims {
		return fmt.Errorf("gguf: tensor %q: %d dims, want 1 to %d", name, len(dims), maxDims)
	}
	elems := int64(1)
	for _, d := range dims {
		if d <= 0 || elems > math.MaxInt64/d {
			return fmt.Errorf("gguf: tensor %q: bad dims %v", name, dims)
		}
		elems *= d
	}
	row, err := typ.RowSize(dims[0])
	if err != nil {
		return fmt.Errorf("gguf: tensor %q: %w", name, err)
	}
	if rows := elems / dims[0]; row > 0 && rows > math.MaxInt64/row {
		return fmt.Errorf("gguf: tensor %q: dims %v overflow the byte size", name, dims)
	}
	w.names[name] = len(w.tensors)
	w.tensors = append(w.tensors, TensorInfo{
		Name: name, Type: typ, Dims: append([]int64(nil), dims...), Size: row * (elems / dims[0]),
	})
	return nil
}

// alignment returns the alignment that general.alignment asks for.
func (w *Writer) alignment() (int64, error) {
	i, ok := w.keys[KeyAlignment]
	if !ok {
		return DefaultAlignment, nil
	}
	a, err := checkAlignment(w.kv[i].Value)
	if err != nil {
		return 0, fmt.Errorf("gguf: %s: %w", KeyAlignment, err)
	}
	return a, nil
}

// Begin writes the header, metadata, tensor infos and the padding before the
// data section to out, and returns the TensorWriter for the tensor data.
// The Writer must not be changed afterwards.
func (w *Writer) Begin(out io.Writer) (*TensorWriter, error) {
	align, err := w.alignment()
	if err != nil {
		return nil, err
	}
	off := int64(0)
	for i := range w.tensors {
		w.tensors[i].Offset = off
		off = alignUp(off+w.tensors[i].Size, align)
	}
	e := &encoder{w: bufio.NewWriterSize(out, 1<<20)}
	e.bytes([]byte(Magic))
	e.u32(3)
	e.u64(uint64(len(w.tensors)))
	e.u64(uint64(len(w.kv)))
	for _, kv := range w.kv {
		if kv.Key == "" || len(kv.Key) > maxKeyLen {
			return nil, fmt.Errorf("gguf: metadata key %q must have 1 to %d bytes", kv.Key, maxKeyLen)
		}
		e.str(kv.Key)
		e.u32(uint32(kv.Value.typ))
		if err := e.value(kv.Value, 0); err != nil {
			return nil, fmt.Errorf("gguf: key %q: %w", kv.Key, err)
		}
	}
	for _, ti := range w.tensors {
		e.str(ti.Name)
		e.u32(uint32(len(ti.Dims)))
		for _, d := range ti.Dims {
			e.u64(uint64(d))
		}
		e.u32(uint32(ti.Type))
		e.u64(uint64(ti.Offset))
	}
	e.pad(align)
	if e.err != nil {
		return nil, fmt.Errorf("gguf: write: %w", e.err)
	}
	return &TensorWriter{e: e, tensors: w.tensors, align: align, start: e.n}, nil
}

// TensorWriter streams tensor data after Writer.Begin.
type TensorWriter struct {
	e       *encoder
	tensors []TensorInfo
	align   int64
	start   int64 // where the data section starts
	next    int   // index of the tensor being written
	written int64 // bytes of tensors[next] written so far
}

// WriteTensor writes data of the named tensor, which must be the next one in
// AddTensor order. A tensor may be written in several calls, each with the
// next chunk of its bytes; it is complete when all its bytes are written.
func (tw *TensorWriter) WriteTensor(name string, data []byte) error {
	if tw.next >= len(tw.tensors) {
		return fmt.Errorf("gguf: tensor %q: all %d tensors are already written", name, len(tw.tensors))
	}
	ti := &tw.tensors[tw.next]
	if name != ti.Name {
		if tw.written > 0 {
			return fmt.Errorf("gguf: tensor %q written while %q is incomplete (%d of %d bytes)", name, ti.Name, tw.written, ti.Size)
		}
		return fmt.Errorf("gguf: tensor %q written out of order: next is %q", name, ti.Name)
	}
	if int64(len(data)) > ti.Size-tw.written {
		return fmt.Errorf("gguf: tensor %q: %d bytes written, it has %d", name, tw.written+int64(len(data)), ti.Size)
	}
	tw.e.bytes(data)
	tw.written += int64(len(data))
	if tw.written == ti.Size {
		tw.e.pad(tw.align)
		tw.next++
		tw.written = 0
	}
	if tw.e.err != nil {
		return fmt.Errorf("gguf: write tensor %q: %w", name, tw.e.err)
	}
	return nil
}

// Close checks that every tensor was written in full and flushes the output.
// It does not close the underlying writer.
func (tw *TensorWriter) Close() error {
	if tw.next < len(tw.tensors) {
		ti := tw.tensors[tw.next]
		return fmt.Errorf("gguf: tensor %q incomplete: %d of %d bytes written (%d tensors left)", ti.Name, tw.written, ti.Size, len(tw.tensors)-tw.next)
	}
	if tw.e.err == nil {
		tw.e.err = tw.e.w.Flush()
	}
	if tw.e.err != nil {
		return fmt.Errorf("gguf: write: %w", tw.e.err)
	}
	return nil
}

// WriteFile writes w to path, taking each tensor's bytes from data by name.
// It is meant for tests and small files; large files should use Begin.
func WriteFile(path string, w *Writer, data map[string][]byte) (err error) {
	out, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("gguf: %w", cerr)
		}
	}()
	tw, err := w.Begin(out)
	if err != nil {
		return err
	}
	for _, ti := range w.tensors {
		b, ok := data[ti.Name]
		if !ok {
			return fmt.Errorf("gguf: no data for tensor %q", ti.Name)
		}
		if err := tw.WriteTensor(ti.Name, b); err != nil {
			return err
		}
	}
	return tw.Close()
}

// encoder writes little-endian fields, keeping the first error and the
// number of bytes written.
type encoder struct {
	w   *bufio.Writer
	n   int64
	err error
	buf [8]byte
}

func (e *encoder) bytes(b []byte) {
	if e.err != nil {
		return
	}
	var n int
	n, e.err = e.w.Write(b)
	e.n += int64(n)
}

func (e *encoder) u8(v uint8) { e.buf[0] = v; e.bytes(e.buf[:1]) }
func (e *encoder) u16(v uint16) {
	binary.LittleEndian.PutUint16(e.buf[:], v)
	e.bytes(e.buf[:2])
}
func (e *encoder) u32(v uint32) {
	binary.LittleEndian.PutUint32(e.buf[:], v)
	e.bytes(e.buf[:4])
}
func (e *encoder) u64(v uint64) {
	binary.LittleEndian.PutUint64(e.buf[:], v)
	e.bytes(e.buf[:8])
}

func (e *encoder) str(s string) {
	e.u64(uint64(len(s)))
	if e.err == nil {
		var n int
		n, e.err = e.w.WriteString(s)
		e.n += int64(n)
	}
}

var zeros [256]byte

// pad writes zeros up to the next multiple of align.
func (e *encoder) pad(align int64) {
	for n := alignUp(e.n, align) - e.n; n > 0; {
		k := min(n, int64(len(zeros)))
		e.bytes(zeros[:k])
		n -= k
	}
}

// value writes v's payload (not its type tag).
func (e *encoder) value(v Value, depth int) error {
	switch v.typ {
	case Uint8, Int8, Bool:
		e.u8(uint8(v.num))
	case Uint16, Int16:
		e.u16(uint16(v.num))
	case Uint32, Int32, Float32:
		e.u32(uint32(v.num))
	case Uint64, Int64, Float64:
		e.u64(v.num)
	case String:
		e.str(v.str)
	case Array:
		return e.array(v, depth)
	default:
		return fmt.Errorf("unknown value type %s", v.typ)
	}
	return nil
}

func (e *encoder) array(v Value, depth int) error {
	if depth >= maxArrayDepth {
		return fmt.Errorf("arrays nested deeper than %d", maxArrayDepth)
	}
	e.u32(uint32(v.elem))
	e.u64(uint64(v.Len()))
	switch a := v.arr.(type) {
	case []uint8:
		e.bytes(a)
	case []int8:
		for _, x := range a {
			e.u8(uint8(x))
		}
	case []bool:
		for _, x := range a {
			if x {
				e.u8(1)
			} else {
				e.u8(0)
			}
		}
	case []uint16:
		for _, x := range a {
			e.u16(x)
		}
	case []int16:
		for _, x := range a {
			e.u16(uint16(x))
		}
	case []uint32:
		for _, x := range a {
			e.u32(x)
		}
	case []int32:
		for _, x := range a {
			e.u32(uint32(x))
		}
	case []float32:
		for _, x := range a {
			e.u32(math.Float32bits(x))
		}
	case []uint64:
		for _, x := range a {
			e.u64(x)
		}
	case []int64:
		for _, x := range a {
			e.u64(uint64(x))
		}
	case []float64:
		for _, x := range a {
			e.u64(math.Float64bits(x))
		}
	case []string:
		for _, x := range a {
			e.str(x)
		}
	case []Value:
		for i, x := range a {
			if x.typ != Array {
				return fmt.Errorf("element %d of an array of arrays is a %s", i, x.typ)
			}
			if err := e.array(x, depth+1); err != nil {
				return err
			}
		}
	default:
		return errors.New("array without elements (zero Value of type array)")
	}
	return nil
}

// Virtual returns a File with the Writer's metadata and tensors whose data
// comes from data, called by TensorData with each tensor's name: a model
// assembled from another format (a Hugging Face checkpoint) reads like a
// GGUF file without being written out. Offsets are those the tensors would
// have in a written file; Size is the data's. Close calls release, if set.
// The Writer must not be changed afterwards.
func (w *Writer) Virtual(path string, data func(name string) []byte, release func() error) (*File, error) {
	align, err := w.alignment()
	if err != nil {
		return nil, err
	}
	f := &File{Path: path, Version: 3, Alignment: align, KV: w.kv, keys: w.keys, tensors: w.names, unmap: release}
	var off int64
	for _, ti := range w.tensors {
		ti.Offset = off
		off = alignUp(off+ti.Size, align)
		f.Tensors = append(f.Tensors, ti)
	}
	f.fetch = func(ti *TensorInfo) []byte { return data(ti.Name) }
	return f, nil
}
