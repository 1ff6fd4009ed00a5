// Package gguf reads and writes GGUF model files (versions 2 and 3), the
// format of llama.cpp and ggml: a header, typed key/value metadata, tensor
// descriptions, and an aligned data section.
//
// Files are untrusted input. The reader checks every field before using it
// and reports any problem as a *FormatError naming the file, the field and
// the byte offset; it never panics and never allocates by an unchecked count.
package gguf

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"

	"orcd/internal/mmap"
	"orcd/tensor"
)

// Magic is the first four bytes of every GGUF file.
const Magic = "GGUF"

// DefaultAlignment is the data alignment when general.alignment is absent.
const DefaultAlignment = 32

// KeyAlignment is the metadata key that overrides DefaultAlignment.
const KeyAlignment = "general.alignment"

// Limits on untrusted counts and sizes. They are far above any real model
// (gpt-oss-120b has under 700 tensors and under 50 keys).
const (
	maxTensors    = 1 << 20
	maxKV         = 1 << 20
	maxKeyLen     = 1<<16 - 1 // the specification's limit
	maxNameLen    = 64        // the specification's limit on tensor names
	maxDims       = 4
	maxArrayDepth = 8
	maxAlignment  = 1 << 20
)

// FormatError is a problem found in a GGUF file.
type FormatError struct {
	File   string // the path or name given to Open or Parse
	Offset int64  // byte offset in the file where the problem was found
	Field  string // the header field, metadata key or tensor name
	Msg    string
}

// Error formats the problem as "gguf: file: field (at byte N): message".
func (e *FormatError) Error() string {
	field := e.Field
	if strings.ContainsFunc(field, func(r rune) bool { return !unicode.IsPrint(r) }) {
		field = strconv.Quote(field) // a hostile name must not break the line
	}
	return fmt.Sprintf("gguf: %s: %s (at byte %d): %s", e.File, field, e.Offset, e.Msg)
}

// ErrMissingKey is wrapped by the getters' error for a key the file lacks,
// so that callers can tell an absent optional key (errors.Is) from a bad one.
var ErrMissingKey = errors.New("key not found")

// KV is one metadata entry.
type KV struct {
	Key    string
	Value  Value
	Offset int64 // byte offset of the entry in the file
}

// TensorInfo describes one tensor and where its data lies.
type TensorInfo struct {
	Name   string
	Type   tensor.Type
	Dims   []int64 // ggml order: Dims[0] is the innermost (contiguous) dimension
	Offset int64   // absolute byte offset of the data in the file
	Size   int64   // bytes of data
}

// Elements is the number of elements (the product of Dims).
func (ti *TensorInfo) Elements() int64 {
	n := int64(1)
	for _, d := range ti.Dims {
		n *= d
	}
	return n
}

// File is a parsed GGUF file. Its tensor data stays in the file's memory
// mapping (or the image given to Parse) until Close.
type File struct {
	Path       string
	Version    uint32
	Alignment  int64        // data alignment in bytes
	DataOffset int64        // absolute offset of the data section (past Size in a file with no tensors and no padding)
	Size       int64        // file size in bytes
	KV         []KV         // metadata in file order
	Tensors    []TensorInfo // tensors in file order

	data    []byte
	unmap   func() error
	fetch   func(*TensorInfo) []byte // a virtual file's data (Writer.Virtual)
	keys    map[string]int           // key → index in KV
	tensors map[string]int           // name → index in Tensors
}

// Open maps the file at path read-only and parses it. Close unmaps it.
func Open(path string) (*File, error) {
	f, unmap, err := mmap.Parse(path, Parse)
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil, err
		}
		return nil, fmt.Errorf("gguf: %w", err)
	}
	f.unmap = unmap
	return f, nil
}

// Close releases the file's mapping. Tensor data returned by TensorData
// must not be used afterwards; metadata stays valid (it is copied).
func (f *File) Close() error {
	unmap := f.unmap
	f.data, f.unmap, f.fetch = nil, nil, nil
	if unmap == nil {
		return nil
	}
	return unmap()
}

// Tensor returns the description of the named tensor.
func (f *File) Tensor(name string) (*TensorInfo, bool) {
	i, ok := f.tensors[name]
	if !ok {
		return nil, false
	}
	return &f.Tensors[i], true
}

// TensorData returns the bytes of a tensor of this file: a view into the
// mapping, not a copy, valid until Close. It returns nil after Close.
func (f *File) TensorData(ti *TensorInfo) []byte {
	if f.fetch != nil {
		return f.fetch(ti)
	}
	if f.data == nil {
		return nil
	}
	return f.data[ti.Offset : ti.Offset+ti.Size : ti.Offset+ti.Size]
}

// Has reports whether the file has the metadata key.
func (f *File) Has(key string) bool {
	_, ok := f.keys[key]
	return ok
}

// Get returns the value of a metadata key.
func (f *File) Get(key string) (Value, bool) {
	i, ok := f.keys[key]
	if !ok {
		return Value{}, false
	}
	return f.KV[i].Value, true
}

func (f *File) keyError(key, format string, args ...any) error {
	return fmt.Errorf("gguf: %s: key %q: %s", f.Path, key, fmt.Sprintf(format, args...))
}

// lookup returns the value of key, or an error wrapping ErrMissingKey.
func (f *File) lookup(key string) (Value, error) {
	v, ok := f.Get(key)
	if !ok {
		return Value{}, fmt.Errorf("gguf: %s: key %q: %w", f.Path, key, ErrMissingKey)
	}
	return v, nil
}

// integer returns key's value as an int64 within [lo, hi]. Any integer type
// is accepted, because writers disagree on them (u32 vs i32 for counts).
func (f *File) integer(key string, lo, hi int64) (int64, error) {
	v, err := f.lookup(key)
	if err != nil {
		return 0, err
	}
	if !v.typ.isInteger() {
		return 0, f.keyError(key, "is a %s, want an integer", v.typ)
	}
	n, ok := v.AsInt64()
	if !ok || n < lo || n > hi {
		return 0, f.keyError(key, "value %s out of range [%d, %d]", v, lo, hi)
	}
	return n, nil
}

// GetUint32 returns the value of an integer key. Any integer type is
// accepted whose value fits in a uint32.
func (f *File) GetUint32(key string) (uint32, error) {
	n, err := f.integer(key, 0, math.MaxUint32)
	return uint32(n), err
}

// GetInt32 returns the value of an integer key. Any integer type is accepted
// whose value fits in an int32.
func (f *File) GetInt32(key string) (int32, error) {
	n, err := f.integer(key, math.MinInt32, math.MaxInt32)
	return int32(n), err
}

// GetUint64 returns the value of an integer key. Any integer type is
// accepted whose value is not negative.
func (f *File) GetUint64(key string) (uint64, error) {
	v, err := f.lookup(key)
	if err != nil {
		return 0, err
	}
	if !v.typ.isInteger() {
		return 0, f.keyError(key, "is a %s, want an integer", v.typ)
	}
	n, ok := v.AsUint64()
	if !ok {
		return 0, f.keyError(key, "value %s is negative", v)
	}
	return n, nil
}

// GetFloat32 returns the value of a float32 key. A float64 is accepted too
// and rounded to float32.
func (f *File) GetFloat32(key string) (float32, error) {
	v, err := f.lookup(key)
	if err != nil {
		return 0, err
	}
	x, ok := v.AsFloat64()
	if !ok {
		return 0, f.keyError(key, "is a %s, want float32", v.typ)
	}
	return float32(x), nil
}

// GetBool returns the value of a bool key.
func (f *File) GetBool(key string) (bool, error) {
	v, err := f.lookup(key)
	if err != nil {
		return false, err
	}
	b, ok := v.AsBool()
	if !ok {
		return false, f.keyError(key, "is a %s, want bool", v.typ)
	}
	return b, nil
}

// GetString returns the value of a string key.
func (f *File) GetString(key string) (string, error) {
	v, err := f.lookup(key)
	if err != nil {
		return "", err
	}
	s, ok := v.AsString()
	if !ok {
		return "", f.keyError(key, "is a %s, want string", v.typ)
	}
	return s, nil
}

// GetArray returns the value of an array key, of any element type.
func (f *File) GetArray(key string) (Value, error) {
	v, err := f.lookup(key)
	if err != nil {
		return Value{}, err
	}
	if v.typ != Array {
		return Value{}, f.keyError(key, "is a %s, want array", v.typ)
	}
	return v, nil
}

// GetStrings returns the elements of a string array key. The slice is
// shared with the File and must not be modified.
func (f *File) GetStrings(key string) ([]string, error) {
	v, err := f.GetArray(key)
	if err != nil {
		return nil, err
	}
	s, ok := v.arr.([]string)
	if !ok {
		return nil, f.keyError(key, "is an array of %s, want array of string", v.elem)
	}
	return s, nil
}

// GetFloat32s returns the elements of a float32 array key. The slice is
// shared with the File and must not be modified.
func (f *File) GetFloat32s(key string) ([]float32, error) {
	v, err := f.GetArray(key)
	if err != nil {
		return nil, err
	}
	s, ok := v.arr.([]float32)
	if !ok {
		return nil, f.keyError(key, "is an array of %s, want array of float32", v.elem)
	}
	return s, nil
}

// GetInt32s returns the elements of an integer array key as int32s. An int32
// array is returned as is (shared with the File, not to be modified); an
// array of any other integer type is converted if every element fits.
func (f *File) GetInt32s(key string) ([]int32, error) {
	v, err := f.GetArray(key)
	if err != nil {
		return nil, err
	}
	if s, ok := v.arr.([]int32); ok {
		return s, nil
	}
	if !v.elem.isInteger() {
		return nil, f.keyError(key, "is an array of %s, want array of int32", v.elem)
	}
	out := make([]int32, v.Len())
	for i := range out {
		n, ok := v.Index(i).AsInt64()
		if !ok || n < math.MinInt32 || n > math.MaxInt32 {
			return nil, f.keyError(key, "element %d (%s) does not fit in an int32", i, v.Index(i))
		}
		out[i] = int32(n)
	}
	return out, nil
}
