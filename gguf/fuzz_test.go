package gguf

import (
	"errors"
	"os"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse. It must never panic or hang;
// a file it accepts must satisfy the invariants that callers rely on, and
// every rejection must be a *FormatError.
func FuzzParse(f *testing.F) {
	w, data := sampleWriter(f, 0)
	f.Add(encode(f, w, data))
	w, data = sampleWriter(f, 64)
	f.Add(encode(f, w, data))
	for _, path := range []string{"testdata/ref_v3_all_types.gguf", "testdata/ref_v2_small.gguf", "testdata/ref_align64.gguf", "testdata/ref_no_tensors.gguf"} {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, c := range hostileCases(f) {
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
		checkInvariants(t, file)
	})
}

// checkInvariants checks what Parse promises about a file it accepts.
func checkInvariants(t *testing.T, f *File) {
	t.Helper()
	if f.Alignment <= 0 || f.Alignment&(f.Alignment-1) != 0 || f.DataOffset%f.Alignment != 0 {
		t.Fatalf("alignment %d, data offset %d", f.Alignment, f.DataOffset)
	}
	seen := map[string]bool{}
	for _, kv := range f.KV {
		if seen[kv.Key] {
			t.Fatalf("duplicate key %q accepted", kv.Key)
		}
		seen[kv.Key] = true
		_ = kv.Value.Summary(3)
	}
	for i := range f.Tensors {
		ti := &f.Tensors[i]
		if ti.Offset < f.DataOffset || ti.Offset+ti.Size > f.Size || (ti.Offset-f.DataOffset)%f.Alignment != 0 {
			t.Fatalf("tensor %s at [%d, +%d) outside data [%d, %d) or unaligned", ti.Name, ti.Offset, ti.Size, f.DataOffset, f.Size)
		}
		if row, err := ti.Type.RowSize(ti.Dims[0]); err != nil || row*(ti.Elements()/ti.Dims[0]) != ti.Size {
			t.Fatalf("tensor %s: size %d inconsistent with %s %v", ti.Name, ti.Size, ti.Type, ti.Dims)
		}
		if int64(len(f.TensorData(ti))) != ti.Size {
			t.Fatalf("tensor %s: data view has the wrong length", ti.Name)
		}
		for j := range f.Tensors[:i] {
			o := &f.Tensors[j]
			if ti.Offset < o.Offset+o.Size && o.Offset < ti.Offset+ti.Size {
				t.Fatalf("tensors %s and %s overlap", ti.Name, o.Name)
			}
		}
	}
}
