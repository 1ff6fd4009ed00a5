package gguf

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ValueType is the type tag of a GGUF metadata value, numbered as in the
// GGUF specification.
type ValueType uint32

// The GGUF metadata value types. The numbers are the on-disk tags.
const (
	Uint8   ValueType = 0
	Int8    ValueType = 1
	Uint16  ValueType = 2
	Int16   ValueType = 3
	Uint32  ValueType = 4
	Int32   ValueType = 5
	Float32 ValueType = 6
	Bool    ValueType = 7
	String  ValueType = 8
	Array   ValueType = 9
	Uint64  ValueType = 10
	Int64   ValueType = 11
	Float64 ValueType = 12
)

var valueTypeNames = [...]string{
	Uint8: "uint8", Int8: "int8", Uint16: "uint16", Int16: "int16",
	Uint32: "uint32", Int32: "int32", Float32: "float32", Bool: "bool",
	String: "string", Array: "array", Uint64: "uint64", Int64: "int64",
	Float64: "float64",
}

// String returns the specification's name of the type ("uint32", "array"),
// or "type(N)" for a tag outside the specification.
func (t ValueType) String() string {
	if int(t) < len(valueTypeNames) {
		return valueTypeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint32(t))
}

// valid reports whether t is a tag of the specification.
func (t ValueType) valid() bool { return t <= Float64 }

// fixedSize is the encoded size of one value of a scalar type other than
// String, or 0 for String and Array, whose size varies.
func (t ValueType) fixedSize() int {
	switch t {
	case Uint8, Int8, Bool:
		return 1
	case Uint16, Int16:
		return 2
	case Uint32, Int32, Float32:
		return 4
	case Uint64, Int64, Float64:
		return 8
	}
	return 0
}

// minSize is the fewest bytes one encoded value of type t can take: a string
// has at least its 8-byte length, an array its 4-byte type and 8-byte count.
func (t ValueType) minSize() int {
	switch t {
	case String:
		return 8
	case Array:
		return 12
	}
	return t.fixedSize()
}

func (t ValueType) isInteger() bool {
	switch t {
	case Uint8, Int8, Uint16, Int16, Uint32, Int32, Uint64, Int64:
		return true
	}
	return false
}

func (t ValueType) isSigned() bool {
	return t == Int8 || t == Int16 || t == Int32 || t == Int64
}

// Value is one GGUF metadata value: a scalar, a string, or an array.
//
// Arrays are stored as one typed Go slice ([]uint8 … []float64, []bool,
// []string), so a vocabulary of 200k strings is one slice, not 200k boxed
// values. Only arrays of arrays hold a []Value. The zero Value is a uint8 0.
// Values are immutable: slices returned by accessors must not be modified.
type Value struct {
	typ  ValueType
	elem ValueType // element type when typ is Array
	// num holds integers (signed ones sign-extended), bools (0 or 1) and
	// floats (float32 or float64 bits).
	num uint64
	str string
	// arr is the typed slice of an array: []uint8, []int8, []uint16,
	// []int16, []uint32, []int32, []float32, []bool, []string, []uint64,
	// []int64, []float64, or []Value for an array of arrays.
	arr any
}

// Uint8Value returns a uint8 Value.
func Uint8Value(v uint8) Value { return Value{typ: Uint8, num: uint64(v)} }

// Int8Value returns an int8 Value.
func Int8Value(v int8) Value { return Value{typ: Int8, num: uint64(int64(v))} }

// Uint16Value returns a uint16 Value.
func Uint16Value(v uint16) Value { return Value{typ: Uint16, num: uint64(v)} }

// Int16Value returns an int16 Value.
func Int16Value(v int16) Value { return Value{typ: Int16, num: uint64(int64(v))} }

// Uint32Value returns a uint32 Value.
func Uint32Value(v uint32) Value { return Value{typ: Uint32, num: uint64(v)} }

// Int32Value returns an int32 Value.
func Int32Value(v int32) Value { return Value{typ: Int32, num: uint64(int64(v))} }

// Uint64Value returns a uint64 Value.
func Uint64Value(v uint64) Value { return Value{typ: Uint64, num: v} }

// Int64Value returns an int64 Value.
func Int64Value(v int64) Value { return Value{typ: Int64, num: uint64(v)} }

// Float32Value returns a float32 Value.
func Float32Value(v float32) Value { return Value{typ: Float32, num: uint64(math.Float32bits(v))} }

// Float64Value returns a float64 Value.
func Float64Value(v float64) Value { return Value{typ: Float64, num: math.Float64bits(v)} }

// BoolValue returns a bool Value.
func BoolValue(v bool) Value {
	if v {
		return Value{typ: Bool, num: 1}
	}
	return Value{typ: Bool}
}

// StringValue returns a string Value.
func StringValue(v string) Value { return Value{typ: String, str: v} }

// ArrayValue returns an array Value holding the elements of a typed slice:
// []uint8, []int8, []uint16, []int16, []uint32, []int32, []float32, []bool,
// []string, []uint64, []int64, []float64, or []Value whose elements are all
// arrays (an array of arrays; the inner arrays may differ in type). The
// slice is kept, not copied.
func ArrayValue(slice any) (Value, error) {
	elem, ok := sliceElemType(slice)
	if !ok {
		return Value{}, fmt.Errorf("gguf: cannot make an array of %T", slice)
	}
	if vs, ok := slice.([]Value); ok {
		for i, v := range vs {
			if v.typ != Array {
				return Value{}, fmt.Errorf("gguf: element %d of a []Value array is a %s; only arrays of arrays use []Value (use a typed slice)", i, v.typ)
			}
		}
	}
	return Value{typ: Array, elem: elem, arr: slice}, nil
}

func sliceElemType(slice any) (ValueType, bool) {
	switch slice.(type) {
	case []uint8:
		return Uint8, true
	case []int8:
		return Int8, true
	case []uint16:
		return Uint16, true
	case []int16:
		return Int16, true
	case []uint32:
		return Uint32, true
	case []int32:
		return Int32, true
	case []float32:
		return Float32, true
	case []bool:
		return Bool, true
	case []string:
		return String, true
	case []uint64:
		return Uint64, true
	case []int64:
		return Int64, true
	case []float64:
		return Float64, true
	case []Value:
		return Array, true
	}
	return 0, false
}

// Type is the value's type.
func (v Value) Type() ValueType { return v.typ }

// ElemType is the type of an array's elements (Array for an array of
// arrays). It is meaningless for a value that is not an array.
func (v Value) ElemType() ValueType { return v.elem }

// Len is the number of elements of an array, and 0 for any other value.
func (v Value) Len() int {
	switch a := v.arr.(type) {
	case []uint8:
		return len(a)
	case []int8:
		return len(a)
	case []uint16:
		return len(a)
	case []int16:
		return len(a)
	case []uint32:
		return len(a)
	case []int32:
		return len(a)
	case []float32:
		return len(a)
	case []bool:
		return len(a)
	case []string:
		return len(a)
	case []uint64:
		return len(a)
	case []int64:
		return len(a)
	case []float64:
		return len(a)
	case []Value:
		return len(a)
	}
	return 0
}

// Index returns element i of an array as a Value. It panics, like a slice
// index, if v is not an array or i is out of range.
func (v Value) Index(i int) Value {
	switch a := v.arr.(type) {
	case []uint8:
		return Uint8Value(a[i])
	case []int8:
		return Int8Value(a[i])
	case []uint16:
		return Uint16Value(a[i])
	case []int16:
		return Int16Value(a[i])
	case []uint32:
		return Uint32Value(a[i])
	case []int32:
		return Int32Value(a[i])
	case []float32:
		return Float32Value(a[i])
	case []bool:
		return BoolValue(a[i])
	case []string:
		return StringValue(a[i])
	case []uint64:
		return Uint64Value(a[i])
	case []int64:
		return Int64Value(a[i])
	case []float64:
		return Float64Value(a[i])
	case []Value:
		return a[i]
	}
	panic(fmt.Sprintf("gguf: Index on a %s value", v.typ))
}

// AsInt64 returns the value of any integer type, if it fits in an int64.
func (v Value) AsInt64() (int64, bool) {
	if !v.typ.isInteger() {
		return 0, false
	}
	if v.typ == Uint64 && v.num > math.MaxInt64 {
		return 0, false
	}
	return int64(v.num), true
}

// AsUint64 returns the value of any integer type, if it is not negative.
func (v Value) AsUint64() (uint64, bool) {
	if !v.typ.isInteger() {
		return 0, false
	}
	if v.typ.isSigned() && int64(v.num) < 0 {
		return 0, false
	}
	return v.num, true
}

// AsFloat64 returns the value of a float32 or float64.
func (v Value) AsFloat64() (float64, bool) {
	switch v.typ {
	case Float32:
		return float64(math.Float32frombits(uint32(v.num))), true
	case Float64:
		return math.Float64frombits(v.num), true
	}
	return 0, false
}

// AsBool returns the value of a bool.
func (v Value) AsBool() (bool, bool) { return v.num != 0, v.typ == Bool }

// AsString returns the value of a string.
func (v Value) AsString() (string, bool) { return v.str, v.typ == String }

// String formats the value for people: numbers in Go syntax, strings
// quoted, arrays in full as [a, b, ...]. Use Summary for long arrays.
func (v Value) String() string { return v.Summary(-1) }

// Summary formats the value like String but shows at most n elements of
// each array (all of them if n < 0), followed by "... (N more)".
func (v Value) Summary(n int) string {
	var b strings.Builder
	v.format(&b, n)
	return b.String()
}

func (v Value) format(b *strings.Builder, n int) {
	switch v.typ {
	case Array:
		b.WriteByte('[')
		l := v.Len()
		shown := l
		if n >= 0 && n < l {
			shown = n
		}
		for i := 0; i < shown; i++ {
			if i > 0 {
				b.WriteString(", ")
			}
			v.Index(i).format(b, n)
		}
		if shown < l {
			if shown > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(b, "... (%d more)", l-shown)
		}
		b.WriteByte(']')
	case String:
		b.WriteString(strconv.Quote(v.str))
	case Bool:
		b.WriteString(strconv.FormatBool(v.num != 0))
	case Float32:
		b.WriteString(strconv.FormatFloat(float64(math.Float32frombits(uint32(v.num))), 'g', -1, 32))
	case Float64:
		b.WriteString(strconv.FormatFloat(math.Float64frombits(v.num), 'g', -1, 64))
	default:
		if v.typ.isSigned() {
			b.WriteString(strconv.FormatInt(int64(v.num), 10))
		} else {
			b.WriteString(strconv.FormatUint(v.num, 10))
		}
	}
}

// Equal reports whether two values have the same type and contents
// (floats compared bit for bit, so NaNs with equal bits are equal).
func (v Value) Equal(o Value) bool {
	if v.typ != o.typ {
		return false
	}
	if v.typ != Array {
		return v.num == o.num && v.str == o.str
	}
	if v.elem != o.elem || v.Len() != o.Len() {
		return false
	}
	for i := 0; i < v.Len(); i++ {
		if !v.Index(i).Equal(o.Index(i)) {
			return false
		}
	}
	return true
}
