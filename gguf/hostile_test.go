package gguf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// raw builds GGUF images field by field, so tests can write what no
// well-behaved writer would.
type raw struct{ b []byte }

func header(version uint32, tensors, kvs uint64) *raw {
	return (&raw{b: []byte(Magic)}).u32(version).u64(tensors).u64(kvs)
}

func (r *raw) bytes(b ...byte) *raw { r.b = append(r.b, b...); return r }
func (r *raw) u32(v uint32) *raw    { r.b = binary.LittleEndian.AppendUint32(r.b, v); return r }
func (r *raw) u64(v uint64) *raw    { r.b = binary.LittleEndian.AppendUint64(r.b, v); return r }
func (r *raw) str(s string) *raw    { return r.u64(uint64(len(s))).bytes([]byte(s)...) }
func (r *raw) zeros(n int) *raw     { return r.bytes(make([]byte, n)...) }
func (r *raw) padTo(a int) *raw     { return r.zeros((a - len(r.b)%a) % a) }

// kv appends a key and a value type tag; the caller appends the payload.
func (r *raw) kv(key string, t ValueType) *raw { return r.str(key).u32(uint32(t)) }
func (r *raw) kvString(key, v string) *raw     { return r.kv(key, String).str(v) }
func (r *raw) kvUint32(key string, v uint32) *raw {
	return r.kv(key, Uint32).u32(v)
}

// info appends a tensor info: name, dims, ggml type, offset.
func (r *raw) info(name string, typ uint32, off uint64, dims ...uint64) *raw {
	r.str(name).u32(uint32(len(dims)))
	for _, d := range dims {
		r.u64(d)
	}
	return r.u32(typ).u64(off)
}

// f32 is the ggml type number of F32 (raw images use numbers on purpose).
const f32 = 0

type hostileCase struct {
	name  string
	data  []byte
	field string // expected in FormatError.Field
	msg   string // expected in FormatError.Msg
}

// validOneTensor is a well-formed file: one key, one F32 [8] tensor.
func validOneTensor() *raw {
	return header(3, 1, 1).kvString("general.architecture", "gpt2").info("w", f32, 0, 8).padTo(32).zeros(32)
}

// hostileCases returns malformed GGUF images, each with the field and the
// message its error must carry.
func hostileCases(t testing.TB) []hostileCase {
	t.Helper()
	nested := func(depth int) *raw { // key "n": depth arrays of arrays around an empty uint8 array
		r := header(3, 0, 1).kv("n", Array)
		for i := 0; i < depth; i++ {
			r.u32(uint32(Array)).u64(1)
		}
		return r.u32(uint32(Uint8)).u64(0)
	}
	tensorFile := func(typ uint32, off uint64, dims ...uint64) []byte {
		return header(3, 1, 0).info("w", typ, off, dims...).padTo(32).zeros(64).b
	}
	valid := validOneTensor().b
	const longName = "a_long_tensor_name_xx" // makes a truncated info pass the tensor count check
	cases := []hostileCase{
		{"empty", nil, "header.magic", "needs 4 bytes"},
		{"short magic", []byte("GGU"), "header.magic", "needs 4 bytes"},
		{"wrong magic", append([]byte("GGML"), valid[4:]...), "header.magic", "not a GGUF file"},
		{"no version", []byte("GGUF\x03\x00"), "header.version", "needs 4 bytes"},
		{"version 0", header(0, 0, 0).b, "header.version", "unknown version 0"},
		{"version 1", header(1, 0, 0).b, "header.version", "version 1 is not supported"},
		{"version 4", header(4, 0, 0).b, "header.version", "unknown version 4"},
		{"big-endian", header(3<<24, 0, 0).b, "header.version", "big-endian"},
		{"no tensor count", []byte("GGUF\x03\x00\x00\x00\x01"), "header.tensor_count", "needs 8 bytes"},
		{"no kv count", (&raw{b: []byte(Magic)}).u32(3).u64(0).b, "header.kv_count", "needs 8 bytes"},
		{"tensor count 2^40", header(3, 1<<40, 0).b, "header.tensor_count", "does not fit"},
		{"tensor count max", header(3, math.MaxUint64, 0).b, "header.tensor_count", "does not fit"},
		{"tensor count over bytes", header(3, 1000, 0).zeros(100).b, "header.tensor_count", "does not fit"},
		{"kv count max", header(3, 0, math.MaxUint64).b, "header.kv_count", "does not fit"},
		{"kv count over bytes", header(3, 0, 100).zeros(100).b, "header.kv_count", "does not fit"},
		{"kv count 2, one kv", header(3, 0, 2).kvString("a", "b").zeros(13).b, "kv[1].key", ""},
		{"key length huge", header(3, 0, 1).u64(1 << 62).zeros(16).b, "kv[0].key", "does not fit"},
		{"key length past end", header(3, 0, 1).u64(40).zeros(12).b, "kv[0].key", "does not fit"},
		{"key over 65535 bytes", header(3, 0, 1).str(strings.Repeat("k", 70000)).u32(0).bytes(0).b, "kv[0].key", "exceeds the limit"},
		{"empty key", header(3, 0, 1).str("").u32(0).bytes(0).b, "kv[0].key", "empty key"},
		{"no value type", header(3, 0, 1).str("abc").zeros(2).b, "abc", "needs 4 bytes"},
		{"value type 13", header(3, 0, 1).kv("k", 13).zeros(8).b, "k", "unknown value type 13"},
		{"value type max", header(3, 0, 1).kv("k", math.MaxUint32).zeros(8).b, "k", "unknown value type"},
		{"string length huge", header(3, 0, 1).kv("k", String).u64(1 << 63).b, "k", "does not fit"},
		{"string length one past end", header(3, 0, 1).kv("k", String).u64(5).zeros(4).b, "k", "does not fit"},
		{"bool 2", header(3, 0, 1).kv("k", Bool).bytes(2).b, "k", "bool byte is 2"},
		{"u64 truncated", header(3, 0, 1).kv("k", Uint64).zeros(5).b, "k", "needs 8 bytes"},
		{"f32 truncated", header(3, 0, 1).kv("k", Float32).zeros(3).b, "k", "needs 4 bytes"},
		{"array elem type 13", header(3, 0, 1).kv("k", Array).u32(13).u64(0).b, "k", "unknown array element type 13"},
		{"array no elem type", header(3, 0, 1).kv("k", Array).zeros(2).b, "k (array type)", "needs 4 bytes"},
		{"array count max", header(3, 0, 1).kv("k", Array).u32(uint32(Uint8)).u64(math.MaxUint64).b, "k (array length)", ""},
		{"u32 array over bytes", header(3, 0, 1).kv("k", Array).u32(uint32(Uint32)).u64(100).zeros(8).b, "k (array length)", "does not fit"},
		{"string array count over bytes", header(3, 0, 1).kv("k", Array).u32(uint32(String)).u64(1 << 40).zeros(64).b, "k (array length)", "does not fit"},
		{"string array element too long", header(3, 0, 1).kv("k", Array).u32(uint32(String)).u64(2).str("a").u64(1 << 50).zeros(8).b, "k[1]", "does not fit"},
		{"bool array element 7", header(3, 0, 1).kv("k", Array).u32(uint32(Bool)).u64(3).bytes(1, 7, 0).b, "k", "element 1: bool byte is 7"},
		{"arrays nested too deep", nested(maxArrayDepth).b, "n[0][0][0][0][0][0][0][0]", "nested deeper"},
		{"nested array inner count huge", header(3, 0, 1).kv("k", Array).u32(uint32(Array)).u64(1).u32(uint32(Int64)).u64(1 << 60).b, "k[0] (array length)", "does not fit"},
		{"nested array inner type bad", header(3, 0, 1).kv("k", Array).u32(uint32(Array)).u64(1).u32(99).u64(0).b, "k[0]", "unknown array element type 99"},
		{"duplicate key", header(3, 0, 2).kvUint32("a.b", 1).kvUint32("a.b", 2).b, "a.b", "duplicate metadata key"},
		{"alignment 0", header(3, 0, 1).kvUint32(KeyAlignment, 0).b, KeyAlignment, "not a power of two"},
		{"alignment 48", header(3, 0, 1).kvUint32(KeyAlignment, 48).b, KeyAlignment, "not a power of two"},
		{"alignment 2^30", header(3, 0, 1).kv(KeyAlignment, Uint64).u64(1 << 30).b, KeyAlignment, "not a power of two in"},
		{"alignment string", header(3, 0, 1).kvString(KeyAlignment, "32").b, KeyAlignment, "want a positive integer"},
		{"alignment negative", header(3, 0, 1).kv(KeyAlignment, Int32).u32(math.MaxUint32 - 31).b, KeyAlignment, "want a positive integer"},
		{"tensor name empty", header(3, 1, 0).info("", f32, 0, 8).zeros(64).b, "tensor_infos[0].name", "empty tensor name"},
		{"tensor name 65 bytes", header(3, 1, 0).info(strings.Repeat("n", 65), f32, 0, 8).zeros(64).b, "tensor_infos[0].name", "exceeds the limit 64"},
		{"tensor name length huge", header(3, 1, 0).u64(1 << 60).zeros(64).b, "tensor_infos[0].name", "does not fit"},
		{"n_dims 0", tensorFile(f32, 0), "w", "n_dims is 0"},
		{"n_dims 5", tensorFile(f32, 0, 1, 1, 1, 1, 1), "w", "n_dims is 5"},
		{"n_dims max", header(3, 1, 0).str("w").u32(math.MaxUint32).zeros(64).b, "w", "n_dims is 4294967295"},
		{"dim zero", tensorFile(f32, 0, 8, 0), "w", "dim 1 is zero"},
		{"dims overflow", tensorFile(f32, 0, 1<<32, 1<<32), "w", "overflow the element count"},
		{"dims overflow over 4", tensorFile(f32, 0, 1<<16, 1<<16, 1<<16, 1<<16), "w", "overflow the element count"},
		{"dim 2^63", tensorFile(f32, 0, 1<<63), "w", "overflow the element count"},
		{"removed type 4 (Q4_2)", tensorFile(4, 0, 32), "w", "unsupported tensor type 4"},
		{"type 40", tensorFile(40, 0, 32), "w", "unsupported tensor type 40"},
		{"type max", tensorFile(math.MaxUint32, 0, 32), "w", "unsupported tensor type"},
		{"Q8_0 row of 33", tensorFile(8, 0, 33), "w", "not a multiple of the block size 32"},
		{"Q4_K row of 255", tensorFile(12, 0, 255, 2), "w", "not a multiple of the block size 256"},
		{"byte size overflow", tensorFile(f32, 0, 1<<31, 1<<31), "w", "overflows the byte size"},
		{"no dims", header(3, 1, 0).str(longName).u32(2).u64(8).b, longName + " (dim 1)", "needs 8 bytes"},
		{"no type", header(3, 1, 0).str(longName).u32(1).u64(8).zeros(2).b, longName + " (type)", "needs 4 bytes"},
		{"no offset", header(3, 1, 0).str(longName).u32(1).u64(8).u32(f32).zeros(3).b, longName + " (offset)", "needs 8 bytes"},
		{"tensor count 2, one info", header(3, 2, 0).info("w", f32, 0, 8).u64(60).zeros(30).b, "tensor_infos[1].name", "does not fit"},
		{"offset unaligned", tensorFile(f32, 4, 8), "w", "not a multiple of the alignment 32"},
		{"offset unaligned for alignment 64", header(3, 1, 1).kvUint32(KeyAlignment, 64).info("w", f32, 32, 8).padTo(64).zeros(128).b, "w", "not a multiple of the alignment 64"},
		{"offset 2^63", tensorFile(f32, 1<<63, 8), "w", "out of range"},
		{"offset past end", tensorFile(f32, 1<<40, 8), "w", "past the end"},
		{"offset max aligned", tensorFile(f32, math.MaxInt64&^31, 8), "w", "past the end"},
		{"data past end", tensorFile(f32, 32, 16), "w", "past the end"},
		{"tensor larger than file", tensorFile(f32, 0, 1<<40), "w", "past the end"},
		{"no data section", header(3, 1, 0).info("w", f32, 0, 8).b, "data", "past the end"},
		{"data truncated", validOneTensor().b[:len(valid)-1], "w", "past the end"},
		{"same offset", header(3, 2, 0).info("a", f32, 0, 8).info("b", f32, 0, 8).padTo(32).zeros(64).b, "b", "overlaps tensor \"a\""},
		{"partial overlap", header(3, 2, 0).info("a", f32, 0, 16).info("b", f32, 32, 8).padTo(32).zeros(128).b, "b", "overlaps tensor \"a\""},
		{"overlap listed backwards", header(3, 2, 0).info("a", f32, 32, 8).info("b", f32, 0, 16).padTo(32).zeros(128).b, "a", "overlaps tensor \"b\""},
		{"duplicate tensor name", header(3, 2, 0).info("w", f32, 0, 8).info("w", f32, 32, 8).padTo(32).zeros(64).b, "w", "duplicate tensor name"},
	}
	// Bit flips in the header fields of a valid file that must be caught.
	flip := func(name string, at int, bit uint, field, msg string) {
		b := append([]byte(nil), valid...)
		b[at] ^= 1 << bit
		cases = append(cases, hostileCase{"bit flip: " + name, b, field, msg})
	}
	flip("magic", 0, 0, "header.magic", "not a GGUF file")
	flip("version", 4, 1, "header.version", "version 1")
	flip("tensor count", 8+7, 6, "header.tensor_count", "does not fit")
	flip("kv count", 16+1, 0, "header.kv_count", "does not fit")
	flip("key length", 24+5, 0, "kv[0].key", "does not fit")
	const infoAt = 24 + 8 + 20 + 4 + 8 + 4 // after the one KV
	flip("tensor n_dims", infoAt+9, 3, "w", "n_dims is 9")
	flip("tensor dim", infoAt+13+7, 7, "w", "overflow the element count")
	flip("tensor type", infoAt+21, 2, "w", "unsupported tensor type 4")
	flip("tensor offset", infoAt+25, 0, "w", "not a multiple of the alignment")
	return cases
}

func TestHostileCorpus(t *testing.T) {
	cases := hostileCases(t)
	if len(cases) < 50 {
		t.Fatalf("hostile corpus has %d cases, want at least 50", len(cases))
	}
	if _, err := Parse("valid", validOneTensor().b); err != nil {
		t.Fatalf("the base of the corpus is not valid: %v", err)
	}
	dir := t.TempDir()
	for i, c := range cases {
		_, err := Parse("hostile.gguf", c.data)
		checkFormatError(t, c.name, err, "hostile.gguf", len(c.data), c.field, c.msg)

		// The same through Open, from a file on disk.
		path := filepath.Join(dir, fmt.Sprintf("h%03d.gguf", i))
		if err := os.WriteFile(path, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := Open(path)
		if err == nil {
			f.Close()
		}
		checkFormatError(t, c.name+" (Open)", err, path, len(c.data), c.field, c.msg)
	}
	t.Logf("%d hostile files rejected", len(cases))
}

func checkFormatError(t *testing.T, name string, err error, file string, size int, field, msg string) {
	t.Helper()
	var fe *FormatError
	if !errors.As(err, &fe) {
		t.Errorf("%s: got %v, want a *FormatError", name, err)
		return
	}
	if fe.File != file || fe.Offset < 0 || fe.Offset > int64(size) {
		t.Errorf("%s: error %q: file %q, offset %d (file has %d bytes)", name, err, fe.File, fe.Offset, size)
	}
	if fe.Field != field || !strings.Contains(fe.Msg, msg) {
		t.Errorf("%s: error %q: want field %q and message containing %q", name, err, field, msg)
	}
	if !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "at byte") {
		t.Errorf("%s: error %q does not name the file and offset", name, err)
	}
}

// TestTruncated cuts a valid file (every value type, several tensors) at
// every byte before the end of its last tensor: each cut must be rejected.
func TestTruncated(t *testing.T) {
	w, data := sampleWriter(t, 0)
	whole := encode(t, w, data)
	f, err := Parse("whole", whole)
	if err != nil {
		t.Fatal(err)
	}
	last := f.Tensors[len(f.Tensors)-1]
	end := last.Offset + last.Size
	for n := int64(0); n < end; n++ {
		_, err := Parse("cut", whole[:n])
		var fe *FormatError
		if !errors.As(err, &fe) {
			t.Fatalf("cut at %d of %d: got %v, want a *FormatError", n, end, err)
		}
	}
	if _, err := Parse("cut", whole[:end]); err != nil {
		t.Errorf("cut after the last tensor's data (before its padding): %v", err)
	}
	t.Logf("%d truncations rejected", end)
}

// TestBitFlips flips every bit before the data section of a valid file.
// Some flips leave a valid file (a changed value); none may panic, every
// rejection must be a *FormatError, and every accepted file must satisfy
// the invariants.
func TestBitFlips(t *testing.T) {
	w, data := sampleWriter(t, 0)
	whole := encode(t, w, data)
	f, err := Parse("whole", whole)
	if err != nil {
		t.Fatal(err)
	}
	rejected := 0
	b := append([]byte(nil), whole...)
	for i := int64(0); i < f.DataOffset; i++ {
		for bit := uint(0); bit < 8; bit++ {
			b[i] ^= 1 << bit
			g, err := Parse("flipped", b)
			if err != nil {
				var fe *FormatError
				if !errors.As(err, &fe) {
					t.Fatalf("flip byte %d bit %d: %v is not a *FormatError", i, bit, err)
				}
				rejected++
			} else {
				checkInvariants(t, g)
			}
			b[i] ^= 1 << bit
		}
	}
	t.Logf("%d of %d bit flips rejected", rejected, 8*f.DataOffset)
}

// TestCountLimits checks the hard limits on counts, which need files large
// enough to pass the bytes-left check (about 32 MiB), so they are not in
// the corpus (which also seeds the fuzzer).
func TestCountLimits(t *testing.T) {
	n := uint64(maxTensors + 1)
	_, err := Parse("big", header(3, n, 0).zeros(int(n)*32).b)
	checkFormatError(t, "tensor count over limit", err, "big", 24+int(n)*32, "header.tensor_count", "exceeds the limit")
	n = maxKV + 1
	_, err = Parse("big", header(3, 0, n).zeros(int(n)*13).b)
	checkFormatError(t, "kv count over limit", err, "big", 24+int(n)*13, "header.kv_count", "exceeds the limit")
}
