// Package safetensors reads Hugging Face's safetensors files: an 8-byte
// little-endian header length, a JSON header naming each tensor's dtype,
// shape and byte range, and the data.
//
// Files are untrusted input. Parse checks every field before using it and
// reports any problem as a *FormatError naming the file, the field and the
// byte offset; it never panics and never allocates by an unchecked count.
package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"orcd/internal/mmap"
)

// Limits on untrusted sizes, far above any real checkpoint (a header of
// gpt-oss-120b is under 200 KiB).
const (
	maxHeader  = 100 << 20 // the reference implementation's limit
	maxTensors = 1 << 20
	maxDims    = 8
	maxNameLen = 1 << 10
)

// FormatError is a problem found in a safetensors file.
type FormatError struct {
	File   string // the path or name given to Open or Parse
	Offset int64  // byte offset in the file where the problem was found
	Field  string // "header", or a tensor name and its field
	Msg    string
}

// Error formats the problem as "safetensors: file: field (at byte N): message".
func (e *FormatError) Error() string {
	field := e.Field
	if strings.ContainsFunc(field, func(r rune) bool { return !unicode.IsPrint(r) }) {
		field = strconv.Quote(field) // a hostile name must not break the line
	}
	return fmt.Sprintf("safetensors: %s: %s (at byte %d): %s", e.File, field, e.Offset, e.Msg)
}

// DType is a tensor's element type as the header spells it.
type DType string

// The dtypes of the format.
const (
	F64    DType = "F64"
	F32    DType = "F32"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I64    DType = "I64"
	I32    DType = "I32"
	I16    DType = "I16"
	I8     DType = "I8"
	U64    DType = "U64"
	U32    DType = "U32"
	U16    DType = "U16"
	U8     DType = "U8"
	Bool   DType = "BOOL"
	F8E4M3 DType = "F8_E4M3"
	F8E5M2 DType = "F8_E5M2"
)

var dtypeSize = map[DType]int64{
	F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1,
	U64: 8, U32: 4, U16: 2, U8: 1, Bool: 1, F8E4M3: 1, F8E5M2: 1,
}

// Size is the bytes of one element, 0 for an unknown dtype.
func (d DType) Size() int64 { return dtypeSize[d] }

// Tensor describes one tensor of a file.
type Tensor struct {
	Name  string
	DType DType
	Shape []int64 // outermost first (row-major), as the header gives it
	// Begin and End are the data's byte range, relative to the start of
	// the data section.
	Begin, End int64
}

// Elements is the product of Shape (1 for a scalar).
func (t *Tensor) Elements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// File is a parsed safetensors file. Tensor data stays in the file's memory
// mapping (or the image given to Parse) until Close.
type File struct {
	Path     string
	Metadata map[string]string // the header's __metadata__, if any
	Tensors  []Tensor          // in data order

	data   []byte // the data section
	unmap  func() error
	byName map[string]int
}

// Open maps the file at path read-only and parses it. Close unmaps it.
func Open(path string) (*File, error) {
	f, unmap, err := mmap.Parse(path, Parse)
	if err != nil {
		return nil, wrapOpen(err)
	}
	f.unmap = unmap
	return f, nil
}

// wrapOpen prefixes errors from the file system; a *FormatError names the
// package already.
func wrapOpen(err error) error {
	var fe *FormatError
	if errors.As(err, &fe) {
		return err
	}
	return fmt.Errorf("safetensors: %w", err)
}

// Close releases the mapping; tensor data must not be used afterwards.
func (f *File) Close() error {
	unmap := f.unmap
	f.data, f.unmap = nil, nil
	if unmap == nil {
		return nil
	}
	return unmap()
}

// Tensor returns the named tensor's description.
func (f *File) Tensor(name string) (*Tensor, bool) {
	i, ok := f.byName[name]
	if !ok {
		return nil, false
	}
	return &f.Tensors[i], true
}

// Data returns a tensor's bytes: a view into the mapping, valid until
// Close; nil after Close.
func (f *File) Data(t *Tensor) []byte {
	if f.data == nil {
		return nil
	}
	return f.data[t.Begin:t.End:t.End]
}

// headerEntry is one tensor's header object.
type headerEntry struct {
	DType       DType    `json:"dtype"`
	Shape       []int64  `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

// Parse parses a whole safetensors image. The File keeps a reference to
// data.
func Parse(name string, data []byte) (*File, error) {
	bad := func(at int64, field, format string, args ...any) error {
		return &FormatError{File: name, Offset: at, Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if len(data) < 8 {
		return nil, bad(0, "header length", "file has %d bytes, need at least 8", len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n > maxHeader || n > uint64(len(data)-8) {
		return nil, bad(0, "header length", "%d bytes, but the file has %d after the length (limit %d)", n, len(data)-8, maxHeader)
	}
	hdr := data[8 : 8+n]
	f := &File{Path: name, data: data[8+n:], byName: map[string]int{}}
	dataLen := int64(len(f.data))

	dec := json.NewDecoder(bytes.NewReader(hdr))
	dec.UseNumber()
	at := func() int64 { return 8 + dec.InputOffset() }
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, bad(8, "header", "not a JSON object")
	}
	for dec.More() {
		keyAt := at()
		tok, err := dec.Token()
		if err != nil {
			return nil, bad(keyAt, "header", "bad JSON: %v", err)
		}
		key, _ := tok.(string)
		if key == "__metadata__" {
			if f.Metadata != nil {
				return nil, bad(keyAt, key, "appears twice")
			}
			if err := dec.Decode(&f.Metadata); err != nil {
				return nil, bad(keyAt, key, "not an object of strings: %v", err)
			}
			if f.Metadata == nil {
				f.Metadata = map[string]string{}
			}
			continue
		}
		if key == "" || len(key) > maxNameLen {
			return nil, bad(keyAt, "tensor name", "name of %d bytes (want 1 to %d)", len(key), maxNameLen)
		}
		if _, dup := f.byName[key]; dup {
			return nil, bad(keyAt, key, "tensor appears twice")
		}
		if len(f.Tensors) >= maxTensors {
			return nil, bad(keyAt, key, "more than %d tensors", maxTensors)
		}
		var e headerEntry
		if err := dec.Decode(&e); err != nil {
			return nil, bad(keyAt, key, "bad entry: %v", err)
		}
		t := Tensor{Name: key, DType: e.DType, Shape: e.Shape, Begin: e.DataOffsets[0], End: e.DataOffsets[1]}
		if err := checkTensor(&t, dataLen); err != nil {
			return nil, bad(keyAt, key, "%s", err)
		}
		f.byName[key] = len(f.Tensors)
		f.Tensors = append(f.Tensors, t)
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, bad(at(), "header", "bad JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		// Trailing spaces are allowed (writers pad the header to 8 bytes).
		return nil, bad(at(), "header", "data after the JSON object")
	}
	// The tensors must tile the data section: no overlap, no gap.
	slices.SortFunc(f.Tensors, func(a, b Tensor) int {
		if a.Begin != b.Begin {
			return int(min(max(a.Begin-b.Begin, -1), 1))
		}
		return int(min(max(a.End-b.End, -1), 1))
	})
	var end int64
	for i := range f.Tensors {
		t := &f.Tensors[i]
		if t.Begin != end {
			what := "overlaps the one before"
			if t.Begin > end {
				what = fmt.Sprintf("leaves a gap of %d bytes before it", t.Begin-end)
			}
			return nil, bad(8+int64(n)+t.Begin, t.Name, "data at [%d, %d) %s", t.Begin, t.End, what)
		}
		end = t.End
		f.byName[t.Name] = i
	}
	if end != dataLen {
		return nil, bad(8+int64(n)+end, "data", "%d bytes after the last tensor", dataLen-end)
	}
	return f, nil
}

// checkTensor validates one header entry against the data section's size.
func checkTensor(t *Tensor, dataLen int64) error {
	size := t.DType.Size()
	if size == 0 {
		return fmt.Errorf("unknown dtype %q", t.DType)
	}
	if len(t.Shape) > maxDims {
		return fmt.Errorf("%d dims, at most %d", len(t.Shape), maxDims)
	}
	elems := int64(1)
	for _, d := range t.Shape {
		if d < 0 {
			return fmt.Errorf("negative dim in shape %v", t.Shape)
		}
		if d > 0 && elems > math.MaxInt64/size/d {
			return fmt.Errorf("shape %v overflows", t.Shape)
		}
		elems *= d
	}
	if t.Begin < 0 || t.End < t.Begin || t.End > dataLen {
		return fmt.Errorf("data_offsets [%d, %d] outside the %d-byte data section", t.Begin, t.End, dataLen)
	}
	if got, want := t.End-t.Begin, elems*size; got != want {
		return fmt.Errorf("data_offsets [%d, %d] hold %d bytes; %s %v needs %d", t.Begin, t.End, got, t.DType, t.Shape, want)
	}
	return nil
}
