package tensor

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"math"
	"os"
	"testing"
)

// vectorFile is testdata/tensor_vectors.json, written by
// tools/tensor_vectors.py (see testdata/README.md). Floats are float32 bit
// patterns, so comparisons are exact, -0 and infinities included.
type vectorFile struct {
	Dequantize []struct {
		Type   string
		Blocks string // hex
		Want   []uint32
	}
	Quantize []struct {
		Type string
		X    []uint32
		Want string // hex
	}
	F16 struct {
		X    []uint32
		Want []uint16
	}
}

func loadVectors(t *testing.T) vectorFile {
	t.Helper()
	data, err := os.ReadFile("testdata/tensor_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectorFile
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("testdata/tensor_vectors.json: %v", err)
	}
	return v
}

func TestDequantizeReferenceVectors(t *testing.T) {
	v := loadVectors(t)
	seen := map[Type]bool{}
	for _, c := range v.Dequantize {
		typ, err := ParseType(c.Type)
		if err != nil {
			t.Fatal(err)
		}
		seen[typ] = true
		src, err := hex.DecodeString(c.Blocks)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		got := make([]float32, len(c.Want))
		if err := Dequantize(typ, src, got); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		bad := 0
		for i, w := range c.Want {
			if g := math.Float32bits(got[i]); g != w && bad < 5 {
				bad++
				t.Errorf("%s element %d (block %d): got %g (%#08x), want %g (%#08x)",
					typ, i, i/typ.BlockSize(), got[i], g, math.Float32frombits(w), w)
			}
		}
	}
	for _, typ := range []Type{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, MXFP4} {
		if !seen[typ] {
			t.Errorf("no reference vectors for %s", typ)
		}
	}
}

func TestQuantizeReferenceVectors(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.Quantize {
		typ, err := ParseType(c.Type)
		if err != nil {
			t.Fatal(err)
		}
		x := make([]float32, len(c.X))
		for i, b := range c.X {
			x[i] = math.Float32frombits(b)
		}
		want, err := hex.DecodeString(c.Want)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Quantize(typ, x)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if bytes.Equal(got, want) {
			continue
		}
		bs := typ.TypeSize()
		for b := 0; b < len(want)/bs; b++ {
			if !bytes.Equal(got[b*bs:(b+1)*bs], want[b*bs:(b+1)*bs]) {
				t.Errorf("%s block %d:\n got % x\nwant % x\ninput %v", typ, b, got[b*bs:(b+1)*bs], want[b*bs:(b+1)*bs], x[b*32:(b+1)*32])
			}
		}
	}
}

func TestF32ToF16ReferenceVectors(t *testing.T) {
	v := loadVectors(t)
	if len(v.F16.X) == 0 || len(v.F16.X) != len(v.F16.Want) {
		t.Fatalf("f16 vectors: %d inputs, %d outputs", len(v.F16.X), len(v.F16.Want))
	}
	for i, b := range v.F16.X {
		if got := F32ToF16(math.Float32frombits(b)); got != v.F16.Want[i] {
			t.Errorf("F32ToF16(%g = %#08x) = %#04x, want %#04x", math.Float32frombits(b), b, got, v.F16.Want[i])
		}
	}
}
