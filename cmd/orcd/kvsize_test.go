package main

import (
	"strings"
	"testing"

	"orcd/backend/cpu"
	"orcd/model"
)

// TestKVBlocks checks the pool size worked by hand for gpt-oss-20b's
// layout (12 sliding layers of window 128 and 12 full ones, 8 KV heads of
// 64): a 16-token block of f16 is 12 slots × K and V × 16 × 512 × 2 bytes =
// 393,216 bytes; a 4,096-token sequence in steps of 2,048 needs 256 blocks
// in the full group and (127 + 2048)/16 rounded up, plus one, = 137 in the
// sliding group.
func TestKVBlocks(t *testing.T) {
	windows := make([]int, 24)
	for l := range windows {
		if l%2 == 0 {
			windows[l] = 128
		}
	}
	layout := model.KVLayout{Windows: windows, Cols: 512}
	if got := layout.BlockBytes(16, 2); got != 393216 {
		t.Fatalf("BlockBytes %d, want 393216", got)
	}
	const perSeq = 256 + 137
	got, err := kvBlocks(layout, 10<<30, 2, 16, 4096, 2048, 256)
	if err != nil || got != (10<<30)/393216 {
		t.Errorf("10 GiB: %d blocks, %v; want %d", got, err, (10<<30)/393216)
	}
	if got, err := kvBlocks(layout, 100<<30, 2, 16, 4096, 2048, 8); err != nil || got != 8*perSeq {
		t.Errorf("100 GiB, 8 sequences: %d blocks, %v; want %d", got, err, 8*perSeq)
	}
	if _, err := kvBlocks(layout, 100<<20, 2, 16, 4096, 2048, 8); err == nil || !strings.Contains(err.Error(), "393 blocks") {
		t.Errorf("100 MiB: error %v, want one naming the 393 blocks a sequence needs", err)
	}
}

// TestKVElemBytes checks the sizing's bytes per cached value against what
// the CPU backend's caches take, in both precisions.
func TestKVElemBytes(t *testing.T) {
	for _, prec := range []cpu.Precision{cpu.Exact, cpu.Fast} {
		be := cpu.NewWithOptions(cpu.Options{Threads: 1, Precision: prec})
		before := be.Allocated()
		c, err := be.NewKVCache(16, 32)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := int64(kvElemBytes(be))*16*32, be.Allocated()-before; got != want {
			t.Errorf("precision %v (fast %v): sizing %d bytes, the cache takes %d", prec, be.Fast(), got, want)
		}
		be.Free(c)
	}
}
