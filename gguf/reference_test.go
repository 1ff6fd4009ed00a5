package gguf

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The testdata/ref_*.gguf fixtures were written by
// tools/gguf_write_reference.py, an independent Python writer; each has a
// JSON sidecar saying what the script put in it.

type sidecar struct {
	Version    uint32           `json:"version"`
	Alignment  int64            `json:"alignment"`
	DataOffset int64            `json:"data_offset"`
	Size       int64            `json:"size"`
	KV         []map[string]any `json:"kv"`
	Tensors    []struct {
		Name   string  `json:"name"`
		Type   string  `json:"type"`
		Dims   []int64 `json:"dims"`
		Offset int64   `json:"offset"`
		Size   int64   `json:"size"`
		SHA256 string  `json:"sha256"`
	} `json:"tensors"`
}

func readSidecar(t *testing.T, path string) sidecar {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber() // uint64 and int64 extremes do not fit a float64
	var s sidecar
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return s
}

func referenceFixtures(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob("testdata/ref_*.gguf")
	if err != nil || len(paths) < 4 {
		t.Fatalf("reference fixtures missing (run tools/gguf_write_reference.py): %v %v", paths, err)
	}
	return paths
}

func TestReferenceFixtures(t *testing.T) {
	for _, path := range referenceFixtures(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			want := readSidecar(t, strings.TrimSuffix(path, ".gguf")+".json")
			f, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Version != want.Version || f.Alignment != want.Alignment || f.DataOffset != want.DataOffset || f.Size != want.Size {
				t.Errorf("header: version %d alignment %d data offset %d size %d, want %d %d %d %d",
					f.Version, f.Alignment, f.DataOffset, f.Size, want.Version, want.Alignment, want.DataOffset, want.Size)
			}
			if len(f.KV) != len(want.KV) {
				t.Fatalf("%d keys, want %d", len(f.KV), len(want.KV))
			}
			for i, w := range want.KV {
				key := w["key"].(string)
				if f.KV[i].Key != key {
					t.Errorf("key %d is %q, want %q (file order)", i, f.KV[i].Key, key)
					continue
				}
				if err := matchJSON(f.KV[i].Value, w); err != nil {
					t.Errorf("%s: %v", key, err)
				}
			}
			if len(f.Tensors) != len(want.Tensors) {
				t.Fatalf("%d tensors, want %d", len(f.Tensors), len(want.Tensors))
			}
			for i, w := range want.Tensors {
				ti := &f.Tensors[i]
				if ti.Name != w.Name || ti.Type.String() != w.Type || fmt.Sprint(ti.Dims) != fmt.Sprint(w.Dims) || ti.Offset != w.Offset || ti.Size != w.Size {
					t.Errorf("tensor %d: %s %s %v at %d, %d bytes; want %s %s %v at %d, %d bytes",
						i, ti.Name, ti.Type, ti.Dims, ti.Offset, ti.Size, w.Name, w.Type, w.Dims, w.Offset, w.Size)
				}
				sum := sha256.Sum256(f.TensorData(ti))
				if hex.EncodeToString(sum[:]) != w.SHA256 {
					t.Errorf("tensor %s: data SHA-256 differs", ti.Name)
				}
				if got, ok := f.Tensor(w.Name); !ok || got != ti {
					t.Errorf("Tensor(%q) does not find tensor %d", w.Name, i)
				}
			}
		})
	}
}

// matchJSON compares a Value with its sidecar form {"type", "value", "elem"}.
func matchJSON(got Value, want map[string]any) error {
	if got.Type().String() != want["type"] {
		return fmt.Errorf("type %s, want %v", got.Type(), want["type"])
	}
	if got.Type() != Array {
		return matchScalar(got, want["value"])
	}
	if got.ElemType().String() != want["elem"] {
		return fmt.Errorf("element type %s, want %v", got.ElemType(), want["elem"])
	}
	elems := want["value"].([]any)
	if got.Len() != len(elems) {
		return fmt.Errorf("%d elements, want %d", got.Len(), len(elems))
	}
	for i, w := range elems {
		var err error
		if got.ElemType() == Array {
			err = matchJSON(got.Index(i), w.(map[string]any))
		} else {
			err = matchScalar(got.Index(i), w)
		}
		if err != nil {
			return fmt.Errorf("element %d: %v", i, err)
		}
	}
	return nil
}

func matchScalar(got Value, want any) error {
	switch got.Type() {
	case String:
		if s, _ := got.AsString(); s != want {
			return fmt.Errorf("got %q, want %q", s, want)
		}
	case Bool:
		if b, _ := got.AsBool(); b != want {
			return fmt.Errorf("got %v, want %v", b, want)
		}
	case Float32, Float64:
		x, _ := got.AsFloat64()
		w, err := strconv.ParseFloat(string(want.(json.Number)), 64)
		if err != nil {
			return err
		}
		if x != w || math.Signbit(x) != math.Signbit(w) {
			return fmt.Errorf("got %v, want %v", x, w)
		}
	default:
		if got.String() != string(want.(json.Number)) {
			return fmt.Errorf("got %s, want %s", got, want)
		}
	}
	return nil
}

// TestReferenceGetters checks the typed accessors on the Python-written file,
// including integer widening and the errors for missing and mistyped keys.
func TestReferenceGetters(t *testing.T) {
	f, err := Open("testdata/ref_v3_all_types.gguf")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if s, err := f.GetString("general.architecture"); err != nil || s != "gpt2" {
		t.Errorf("GetString(general.architecture) = %q, %v", s, err)
	}
	if n, err := f.GetUint32("gpt2.context_length"); err != nil || n != 1024 {
		t.Errorf("GetUint32(gpt2.context_length) = %d, %v", n, err)
	}
	if n, err := f.GetInt32("gpt2.block_count"); err != nil || n != 1 {
		t.Errorf("GetInt32 of a uint32 key = %d, %v", n, err)
	}
	if n, err := f.GetUint64("test.u64"); err != nil || n != math.MaxUint64 {
		t.Errorf("GetUint64(test.u64) = %d, %v", n, err)
	}
	if n, err := f.GetUint32("test.u8"); err != nil || n != 255 {
		t.Errorf("GetUint32 of a uint8 key = %d, %v", n, err)
	}
	if n, err := f.GetInt32("test.i8"); err != nil || n != -128 {
		t.Errorf("GetInt32 of an int8 key = %d, %v", n, err)
	}
	if x, err := f.GetFloat32("gpt2.attention.layer_norm_epsilon"); err != nil || x != 1e-5 {
		t.Errorf("GetFloat32(eps) = %v, %v", x, err)
	}
	if b, err := f.GetBool("test.bool_true"); err != nil || !b {
		t.Errorf("GetBool = %v, %v", b, err)
	}
	toks, err := f.GetStrings("tokenizer.ggml.tokens")
	if err != nil || len(toks) != 11 || toks[5] != "Ġa" || toks[10] != "日本" {
		t.Errorf("GetStrings(tokens) = %q, %v", toks, err)
	}
	if types, err := f.GetInt32s("tokenizer.ggml.token_type"); err != nil || len(types) != 11 || types[8] != 3 {
		t.Errorf("GetInt32s(token_type) = %v, %v", types, err)
	}
	if xs, err := f.GetInt32s("test.arr_u16"); err != nil || len(xs) != 2 || xs[1] != 65535 {
		t.Errorf("GetInt32s of a uint16 array = %v, %v", xs, err)
	}
	if xs, err := f.GetFloat32s("test.arr_f32"); err != nil || len(xs) != 3 || xs[1] != -1.25 {
		t.Errorf("GetFloat32s = %v, %v", xs, err)
	}
	if a, err := f.GetArray("test.arr_nested"); err != nil || a.Len() != 4 || a.Index(2).Index(0).Index(0).String() != "1.5" {
		t.Errorf("GetArray(nested) = %v, %v", a, err)
	}

	// Failures name the key and the file.
	bad := []struct {
		name string
		call func() error
		msg  string
	}{
		{"missing", func() error { _, err := f.GetUint32("gpt2.nope"); return err }, "key not found"},
		{"string as uint32", func() error { _, err := f.GetUint32("general.name"); return err }, "is a string, want an integer"},
		{"negative as uint32", func() error { _, err := f.GetUint32("test.i8"); return err }, "out of range"},
		{"too big for int32", func() error { _, err := f.GetInt32("test.u32"); return err }, "out of range"},
		{"negative uint64", func() error { _, err := f.GetUint64("test.i64"); return err }, "negative"},
		{"int as float", func() error { _, err := f.GetFloat32("test.u32"); return err }, "want float32"},
		{"int as bool", func() error { _, err := f.GetBool("test.u8"); return err }, "want bool"},
		{"array as string", func() error { _, err := f.GetString("test.arr_str"); return err }, "want string"},
		{"scalar as array", func() error { _, err := f.GetArray("test.u8"); return err }, "want array"},
		{"int32s as strings", func() error { _, err := f.GetStrings("test.arr_i32"); return err }, "want array of string"},
		{"strings as int32s", func() error { _, err := f.GetInt32s("test.arr_str"); return err }, "want array of int32"},
		{"u32 overflow in int32s", func() error { _, err := f.GetInt32s("test.arr_u32"); return err }, "does not fit"},
		{"f64 as float32s", func() error { _, err := f.GetFloat32s("test.arr_f64"); return err }, "want array of float32"},
	}
	for _, c := range bad {
		err := c.call()
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), "ref_v3_all_types.gguf") || !strings.Contains(err.Error(), "key \"") {
			t.Errorf("%s: error %q does not name the file and key or lacks %q", c.name, err, c.msg)
		}
	}
	if _, err := f.GetString("nope"); !errors.Is(err, ErrMissingKey) {
		t.Errorf("missing key error %v does not wrap ErrMissingKey", err)
	}
	if f.Has("nope") || !f.Has("test.u8") {
		t.Error("Has is wrong")
	}
}
