package gguf

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"sort"

	"orcd/tensor"
)

// decoder reads little-endian fields from a file image, checking every read
// against the bytes left. Offsets are int64 positions in the image.
type decoder struct {
	file string
	data []byte
	pos  int64
}

func (d *decoder) errorf(at int64, field, format string, args ...any) error {
	return &FormatError{File: d.file, Offset: at, Field: field, Msg: fmt.Sprintf(format, args...)}
}

func (d *decoder) left() int64 { return int64(len(d.data)) - d.pos }

// take returns the next n bytes, or an error naming field if fewer are left.
func (d *decoder) take(n int64, field string) ([]byte, error) {
	if n < 0 || n > d.left() {
		return nil, d.errorf(d.pos, field, "needs %d bytes, only %d left in the file", n, d.left())
	}
	b := d.data[d.pos : d.pos+n]
	d.pos += n
	return b, nil
}

func (d *decoder) u32(field string) (uint32, error) {
	b, err := d.take(4, field)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (d *decoder) u64(field string) (uint64, error) {
	b, err := d.take(8, field)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

// count reads a u64 element count and checks it against limit and against
// the bytes left, given that each element takes at least minSize bytes.
func (d *decoder) count(field, what string, limit uint64, minSize int) (int, error) {
	at := d.pos
	n, err := d.u64(field)
	if err != nil {
		return 0, err
	}
	if minSize > 0 && n > uint64(d.left())/uint64(minSize) {
		return 0, d.errorf(at, field, "%s %d at %d or more bytes each does not fit in the %d bytes left in the file", what, n, minSize, d.left())
	}
	if n > limit {
		return 0, d.errorf(at, field, "%s %d exceeds the limit %d", what, n, limit)
	}
	return int(n), nil
}

// str reads a length-prefixed string. The bytes are copied, so the string
// outlives the mapping.
func (d *decoder) str(field string, maxLen uint64) (string, error) {
	n, err := d.count(field, "string length", maxLen, 1)
	if err != nil {
		return "", err
	}
	b, err := d.take(int64(n), field)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// Parse parses a GGUF image held in memory. name is used in errors and as
// File.Path. The File's tensor data are views into data.
func Parse(name string, data []byte) (*File, error) {
	d := &decoder{file: name, data: data}
	f := &File{Path: name, Size: int64(len(data)), Alignment: DefaultAlignment, data: data}

	magic, err := d.take(4, "header.magic")
	if err != nil {
		return nil, err
	}
	if string(magic) != Magic {
		return nil, d.errorf(0, "header.magic", "got %q, want %q: not a GGUF file", magic, Magic)
	}
	if f.Version, err = d.u32("header.version"); err != nil {
		return nil, err
	}
	switch {
	case f.Version == 2 || f.Version == 3:
	case f.Version == 1:
		return nil, d.errorf(4, "header.version", "version 1 is not supported (only 2 and 3)")
	case bits.ReverseBytes32(f.Version) == 2 || bits.ReverseBytes32(f.Version) == 3:
		return nil, d.errorf(4, "header.version", "big-endian GGUF (version %d) is not supported", bits.ReverseBytes32(f.Version))
	default:
		return nil, d.errorf(4, "header.version", "unknown version %d (only 2 and 3 are supported)", f.Version)
	}
	// The smallest tensor info is an empty name (8), n_dims (4), one dim (8),
	// the type (4) and the offset (8); the smallest KV an empty key (8), its
	// type (4) and a one-byte value.
	nTensors, err := d.count("header.tensor_count", "tensor count", maxTensors, 32)
	if err != nil {
		return nil, err
	}
	nKV, err := d.count("header.kv_count", "metadata count", maxKV, 13)
	if err != nil {
		return nil, err
	}

	f.KV = make([]KV, 0, nKV)
	f.keys = make(map[string]int, nKV)
	for i := 0; i < nKV; i++ {
		kv, err := d.kv(i)
		if err != nil {
			return nil, err
		}
		if _, dup := f.keys[kv.Key]; dup {
			return nil, d.errorf(kv.Offset, kv.Key, "duplicate metadata key")
		}
		f.keys[kv.Key] = len(f.KV)
		f.KV = append(f.KV, kv)
	}
	if i, ok := f.keys[KeyAlignment]; ok {
		if f.Alignment, err = checkAlignment(f.KV[i].Value); err != nil {
			return nil, d.errorf(f.KV[i].Offset, KeyAlignment, "%v", err)
		}
	}

	f.Tensors = make([]TensorInfo, 0, nTensors)
	f.tensors = make(map[string]int, nTensors)
	infoAt := make([]int64, 0, nTensors) // where each tensor info starts, for errors
	for i := 0; i < nTensors; i++ {
		at := d.pos
		ti, err := d.tensorInfo(i, f.Alignment)
		if err != nil {
			return nil, err
		}
		if _, dup := f.tensors[ti.Name]; dup {
			return nil, d.errorf(at, ti.Name, "duplicate tensor name")
		}
		f.tensors[ti.Name] = len(f.Tensors)
		f.Tensors = append(f.Tensors, ti)
		infoAt = append(infoAt, at)
	}

	// The data section starts at the next multiple of the alignment. Tensor
	// offsets were read relative to it; make them absolute and check that
	// each tensor lies inside the file.
	f.DataOffset = alignUp(d.pos, f.Alignment)
	if len(f.Tensors) > 0 && f.DataOffset > f.Size {
		return nil, d.errorf(d.pos, "data", "data section would start at byte %d, past the end of the file (%d bytes)", f.DataOffset, f.Size)
	}
	for i := range f.Tensors {
		ti := &f.Tensors[i]
		room := f.Size - f.DataOffset
		if ti.Offset > room || ti.Size > room-ti.Offset {
			return nil, d.errorf(infoAt[i], ti.Name, "data [%d, +%d) relative to the data section (at %d) runs past the end of the file (%d bytes)", ti.Offset, ti.Size, f.DataOffset, f.Size)
		}
		ti.Offset += f.DataOffset
	}
	if err := checkOverlaps(d, f.Tensors, infoAt); err != nil {
		return nil, err
	}
	return f, nil
}

func checkAlignment(v Value) (int64, error) {
	n, ok := v.AsUint64()
	if !v.typ.isInteger() || !ok {
		return 0, fmt.Errorf("is a %s %s, want a positive integer", v.typ, v)
	}
	if n == 0 || n&(n-1) != 0 || n > maxAlignment {
		return 0, fmt.Errorf("%d is not a power of two in [1, %d]", n, maxAlignment)
	}
	return int64(n), nil
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// checkOverlaps reports two tensors whose data share a byte.
func checkOverlaps(d *decoder, ts []TensorInfo, infoAt []int64) error {
	order := make([]int, len(ts))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return ts[order[a]].Offset < ts[order[b]].Offset })
	for k := 1; k < len(order); k++ {
		prev, cur := &ts[order[k-1]], &ts[order[k]]
		if cur.Offset < prev.Offset+prev.Size {
			return d.errorf(infoAt[order[k]], cur.Name, "data [%d, %d) overlaps tensor %q [%d, %d)", cur.Offset, cur.Offset+cur.Size, prev.Name, prev.Offset, prev.Offset+prev.Size)
		}
	}
	return nil
}

func (d *decoder) kv(i int) (KV, error) {
	kv := KV{Offset: d.pos}
	key, err := d.str(fmt.Sprintf("kv[%d].key", i), maxKeyLen)
	if err != nil {
		return kv, err
	}
	if key == "" {
		return kv, d.errorf(kv.Offset, fmt.Sprintf("kv[%d].key", i), "empty key")
	}
	kv.Key = key
	at := d.pos
	t, err := d.u32(key)
	if err != nil {
		return kv, err
	}
	kv.Value, err = d.value(key, at, ValueType(t), 0)
	return kv, err
}

// value reads one value of type t (whose tag was at byte at), depth arrays
// deep. field names it in errors.
func (d *decoder) value(field string, at int64, t ValueType, depth int) (Value, error) {
	if !t.valid() {
		return Value{}, d.errorf(at, field, "unknown value type %d", uint32(t))
	}
	switch t {
	case String:
		s, err := d.str(field, math.MaxInt64)
		return StringValue(s), err
	case Array:
		return d.array(field, depth)
	}
	start := d.pos
	b, err := d.take(int64(t.fixedSize()), field)
	if err != nil {
		return Value{}, err
	}
	v := Value{typ: t}
	switch t {
	case Uint8:
		v.num = uint64(b[0])
	case Int8:
		v.num = uint64(int64(int8(b[0])))
	case Bool:
		if b[0] > 1 {
			return Value{}, d.errorf(start, field, "bool byte is %d, want 0 or 1", b[0])
		}
		v.num = uint64(b[0])
	case Uint16:
		v.num = uint64(binary.LittleEndian.Uint16(b))
	case Int16:
		v.num = uint64(int64(int16(binary.LittleEndian.Uint16(b))))
	case Uint32, Float32:
		v.num = uint64(binary.LittleEndian.Uint32(b))
	case Int32:
		v.num = uint64(int64(int32(binary.LittleEndian.Uint32(b))))
	default: // Uint64, Int64, Float64
		v.num = binary.LittleEndian.Uint64(b)
	}
	return v, nil
}

// array reads an array's element type, count and elements into a typed
// slice. The count is checked against the bytes left before allocating.
func (d *decoder) array(field string, depth int) (Value, error) {
	if depth >= maxArrayDepth {
		return Value{}, d.errorf(d.pos, field, "arrays nested deeper than %d", maxArrayDepth)
	}
	at := d.pos
	et, err := d.u32(field + " (array type)")
	if err != nil {
		return Value{}, err
	}
	elem := ValueType(et)
	if !elem.valid() {
		return Value{}, d.errorf(at, field, "unknown array element type %d", et)
	}
	n, err := d.count(field+" (array length)", "array length", math.MaxInt64, elem.minSize())
	if err != nil {
		return Value{}, err
	}
	v := Value{typ: Array, elem: elem}
	if size := elem.fixedSize(); size > 0 {
		// Checked by count: n*size bytes are left.
		b, _ := d.take(int64(n)*int64(size), field)
		v.arr, err = decodeFixed(elem, n, b)
		if err != nil {
			return Value{}, d.errorf(at+12, field, "%v", err)
		}
		return v, nil
	}
	if elem == String {
		return d.stringArray(field, v, n)
	}
	// An array of arrays: each element is an inner array's element type,
	// count and elements, with no type tag of its own.
	vs := make([]Value, n)
	for i := range vs {
		if vs[i], err = d.array(fmt.Sprintf("%s[%d]", field, i), depth+1); err != nil {
			return Value{}, err
		}
	}
	v.arr = vs
	return v, nil
}

// stringArray reads n strings. Their bytes are copied in one allocation, the
// strings being substrings of it, so a large vocabulary costs two
// allocations rather than one per string.
func (d *decoder) stringArray(field string, v Value, n int) (Value, error) {
	start := d.pos
	type span struct{ off, len int64 }
	spans := make([]span, n)
	for i := range spans {
		// Read the length inline: naming the field costs an allocation, so
		// it is done only on error.
		if d.left() < 8 || binary.LittleEndian.Uint64(d.data[d.pos:]) > uint64(d.left()-8) {
			_, err := d.str(fmt.Sprintf("%s[%d]", field, i), math.MaxInt64)
			return Value{}, err
		}
		l := int64(binary.LittleEndian.Uint64(d.data[d.pos:]))
		spans[i] = span{d.pos + 8 - start, l}
		d.pos += 8 + l
	}
	all := string(d.data[start:d.pos])
	ss := make([]string, n)
	for i, s := range spans {
		ss[i] = all[s.off : s.off+s.len]
	}
	v.arr = ss
	return v, nil
}

// decodeFixed decodes n elements of a fixed-size type from b, which holds
// exactly n of them.
func decodeFixed(t ValueType, n int, b []byte) (any, error) {
	le := binary.LittleEndian
	switch t {
	case Uint8:
		return append([]uint8(nil), b...), nil
	case Int8:
		s := make([]int8, n)
		for i := range s {
			s[i] = int8(b[i])
		}
		return s, nil
	case Bool:
		s := make([]bool, n)
		for i := range s {
			if b[i] > 1 {
				return nil, fmt.Errorf("element %d: bool byte is %d, want 0 or 1", i, b[i])
			}
			s[i] = b[i] == 1
		}
		return s, nil
	case Uint16:
		s := make([]uint16, n)
		for i := range s {
			s[i] = le.Uint16(b[2*i:])
		}
		return s, nil
	case Int16:
		s := make([]int16, n)
		for i := range s {
			s[i] = int16(le.Uint16(b[2*i:]))
		}
		return s, nil
	case Uint32:
		s := make([]uint32, n)
		for i := range s {
			s[i] = le.Uint32(b[4*i:])
		}
		return s, nil
	case Int32:
		s := make([]int32, n)
		for i := range s {
			s[i] = int32(le.Uint32(b[4*i:]))
		}
		return s, nil
	case Float32:
		s := make([]float32, n)
		for i := range s {
			s[i] = math.Float32frombits(le.Uint32(b[4*i:]))
		}
		return s, nil
	case Uint64:
		s := make([]uint64, n)
		for i := range s {
			s[i] = le.Uint64(b[8*i:])
		}
		return s, nil
	case Int64:
		s := make([]int64, n)
		for i := range s {
			s[i] = int64(le.Uint64(b[8*i:]))
		}
		return s, nil
	case Float64:
		s := make([]float64, n)
		for i := range s {
			s[i] = math.Float64frombits(le.Uint64(b[8*i:]))
		}
		return s, nil
	}
	return nil, fmt.Errorf("type %s is not fixed-size", t)
}

// tensorInfo reads tensor info i. Its Offset is left relative to the data
// section; Parse makes it absolute once the section's start is known.
func (d *decoder) tensorInfo(i int, alignment int64) (TensorInfo, error) {
	at := d.pos
	field := fmt.Sprintf("tensor_infos[%d].name", i)
	name, err := d.str(field, maxNameLen)
	if err != nil {
		return TensorInfo{}, err
	}
	if name == "" {
		return TensorInfo{}, d.errorf(at, field, "empty tensor name")
	}
	ti := TensorInfo{Name: name}
	nAt := d.pos
	nDims, err := d.u32(name + " (n_dims)")
	if err != nil {
		return ti, err
	}
	if nDims == 0 || nDims > maxDims {
		return ti, d.errorf(nAt, name, "n_dims is %d, want 1 to %d", nDims, maxDims)
	}
	ti.Dims = make([]int64, nDims)
	elems := int64(1)
	for j := range ti.Dims {
		dAt := d.pos
		dim, err := d.u64(fmt.Sprintf("%s (dim %d)", name, j))
		if err != nil {
			return ti, err
		}
		if dim == 0 {
			return ti, d.errorf(dAt, name, "dim %d is zero", j)
		}
		if dim > math.MaxInt64 || elems > math.MaxInt64/int64(dim) {
			return ti, d.errorf(dAt, name, "dims %v... overflow the element count", ti.Dims[:j+1])
		}
		ti.Dims[j] = int64(dim)
		elems *= int64(dim)
	}
	tAt := d.pos
	typ, err := d.u32(name + " (type)")
	if err != nil {
		return ti, err
	}
	ti.Type = tensor.Type(typ)
	if !ti.Type.Valid() {
		return ti, d.errorf(tAt, name, "unsupported tensor type %d", typ)
	}
	row, err := ti.Type.RowSize(ti.Dims[0])
	if err != nil {
		return ti, d.errorf(tAt, name, "shape %v: %v", ti.Dims, err)
	}
	rows := elems / ti.Dims[0]
	if row > 0 && rows > math.MaxInt64/row {
		return ti, d.errorf(tAt, name, "shape %v of %s overflows the byte size", ti.Dims, ti.Type)
	}
	ti.Size = row * rows
	oAt := d.pos
	off, err := d.u64(name + " (offset)")
	if err != nil {
		return ti, err
	}
	if off > math.MaxInt64 {
		return ti, d.errorf(oAt, name, "offset %d out of range", off)
	}
	if int64(off)%alignment != 0 {
		return ti, d.errorf(oAt, name, "offset %d is not a multiple of the alignment %d", off, alignment)
	}
	ti.Offset = int64(off)
	return ti, nil
}
