package safetensors

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// image builds a safetensors file from a header written by hand and data.
func image(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(b, header...), data...)
}

func TestParse(t *testing.T) {
	// Written in the reference layout: tensors in data order, metadata,
	// the header padded with spaces to a multiple of 8.
	hdr := `{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},` +
		`"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"s":{"dtype":"U8","shape":[],"data_offsets":[12,13]}}  `
	data := []byte{0, 0, 128, 63, 0, 0, 0, 64, 0x80, 0x3f, 0, 0x40, 7}
	f, err := Parse("x", image(hdr, data))
	if err != nil {
		t.Fatal(err)
	}
	if f.Metadata["format"] != "pt" || len(f.Tensors) != 3 {
		t.Fatalf("metadata %v, %d tensors", f.Metadata, len(f.Tensors))
	}
	if f.Tensors[0].Name != "a" || f.Tensors[1].Name != "b" || f.Tensors[2].Name != "s" {
		t.Errorf("tensors not in data order: %v", f.Tensors)
	}
	b, ok := f.Tensor("b")
	if !ok || b.DType != BF16 || b.Elements() != 2 || string(f.Data(b)) != string(data[8:12]) {
		t.Errorf("b = %+v, data %v", b, f.Data(b))
	}
	s, _ := f.Tensor("s")
	if s.Elements() != 1 || f.Data(s)[0] != 7 {
		t.Errorf("scalar s = %+v", s)
	}
}

// hostile are malformed images, each with the field and message its error
// must name.
var hostile = []struct {
	name, field, msg string
	data             []byte
}{
	{"short", "header length", "need at least 8", []byte{1, 2, 3}},
	{"header past the end", "header length", "the file has 2", append(binary.LittleEndian.AppendUint64(nil, 100), '{', '}')},
	{"huge header", "header length", "limit", binary.LittleEndian.AppendUint64(nil, 1<<62)},
	{"not an object", "header", "not a JSON object", image(`[1]`, nil)},
	{"truncated json", "header", "bad JSON", image(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}`, make([]byte, 4))},
	{"trailing data", "header", "after the JSON", image(`{} {}`, nil)},
	{"unknown dtype", "a", "unknown dtype", image(`{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4))},
	{"negative dim", "a", "negative dim", image(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, make([]byte, 4))},
	{"overflowing shape", "a", "overflows", image(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, make([]byte, 4))},
	{"size mismatch", "a", "needs 8", image(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, make([]byte, 4))},
	{"offsets past the end", "a", "outside the 4-byte", image(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 4))},
	{"reversed offsets", "a", "outside", image(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}`, make([]byte, 4))},
	{"overlap", "b", "overlaps", image(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}`, make([]byte, 4))},
	{"gap", "b", "gap of 2", image(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}`, make([]byte, 6))},
	{"unused tail", "data", "2 bytes after", image(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`, make([]byte, 4))},
	{"duplicate tensor", "a", "twice", image(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, make([]byte, 2))},
	{"bad metadata", "__metadata__", "not an object of strings", image(`{"__metadata__":{"n":1}}`, nil)},
	{"bad entry", "a", "bad entry", image(`{"a":{"dtype":"U8","shape":"x","data_offsets":[0,1]}}`, make([]byte, 1))},
	{"too many dims", "a", "9 dims", image(`{"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}`, make([]byte, 1))},
	{"empty name", "tensor name", "0 bytes", image(`{"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, make([]byte, 1))},
}

func TestHostile(t *testing.T) {
	for _, c := range hostile {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("bad.safetensors", c.data)
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *FormatError", err)
			}
			if fe.Field != c.field || !strings.Contains(fe.Msg, c.msg) || fe.File != "bad.safetensors" {
				t.Errorf("error %q: field %q, want %q; message should mention %q", err, fe.Field, c.field, c.msg)
			}
		})
	}
}

func TestOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	data := image(`{"w":{"dtype":"F16","shape":[1,2],"data_offsets":[0,4]}}`, []byte{0, 60, 0, 64})
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := f.Tensor("w")
	if got := f.Data(w); len(got) != 4 || got[1] != 60 {
		t.Errorf("data %v", got)
	}
	f.Close()
	if f.Data(w) != nil {
		t.Error("data after Close")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("opening a missing file succeeded")
	}
}

// FuzzParse: arbitrary bytes never panic; a rejection is a *FormatError;
// an accepted file's tensors tile its data section.
func FuzzParse(f *testing.F) {
	f.Add(image(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 8)))
	f.Add(image(`{"__metadata__":{"k":"v"},"a":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}`, []byte{1}))
	for _, c := range hostile {
		f.Add(c.data)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Parse("fuzz", b)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error is not a *FormatError: %v", err)
			}
			return
		}
		var end int64
		for i := range file.Tensors {
			tt := &file.Tensors[i]
			if tt.Begin != end || tt.End-tt.Begin != tt.Elements()*tt.DType.Size() {
				t.Fatalf("tensor %q at [%d, %d) breaks the tiling", tt.Name, tt.Begin, tt.End)
			}
			end = tt.End
			if got, ok := file.Tensor(tt.Name); !ok || got != tt {
				t.Fatalf("Tensor(%q) does not find it", tt.Name)
			}
		}
		if end != int64(len(file.data)) {
			t.Fatalf("tensors end at %d of %d", end, len(file.data))
		}
	})
}
