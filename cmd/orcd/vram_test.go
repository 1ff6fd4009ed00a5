package main

import (
	"errors"
	"strings"
	"testing"

	"orcd/backend/cpu"
	"orcd/gguf"
	"orcd/internal/testgguf"
)

// gptoss20bMetadata writes a tensor-less GGUF with gpt-oss-20b's attention
// metadata and opens it.
func gptoss20bMetadata(t *testing.T) *gguf.File {
	t.Helper()
	w := gguf.NewWriter()
	w.SetString("general.architecture", "gpt-oss")
	for key, v := range map[string]uint32{
		"block_count": 24, "embedding_length": 2880, "attention.head_count": 64,
		"attention.head_count_kv": 8, "attention.key_length": 64, "attention.sliding_window": 128,
		"context_length": 131072, "expert_feed_forward_length": 2880, "expert_used_count": 4,
	} {
		w.SetUint32("gpt-oss."+key, v)
	}
	return testgguf.Open(t, w, nil)
}

// The KV-cache part of the estimate, worked by hand for gpt-oss-20b at a
// 131,072-token context and 512-token steps, f16 K and V of 8 heads × 64:
// 12 full layers × 131,072 rows + 12 sliding layers × (128+512−1) rows,
// each row 2 (K and V) × 512 values × 2 bytes.
func TestEstimateVRAMCacheGPTOSS20B(t *testing.T) {
	e, err := estimateVRAM(gptoss20bMetadata(t), 131072, 512)
	if err != nil {
		t.Fatal(err)
	}
	const want = 12*131072*2*512*2 + 12*639*2*512*2
	if e.cache != want {
		t.Errorf("KV cache estimate %d bytes, want %d", e.cache, want)
	}
	if e.needed != e.weights+e.cache+e.workspace || e.workspace <= 0 {
		t.Errorf("estimate %+v does not add up", e)
	}
}

// memoryBackend is the cpu backend reporting a given amount of free device
// memory, standing in for a GPU.
type memoryBackend struct {
	*cpu.Backend
	free int64
}

func (b memoryBackend) FreeMemory() (int64, error) { return b.free, nil }

func TestCheckVRAM(t *testing.T) {
	f := gptoss20bMetadata(t)
	mf := &modelFlags{ctxSize: 131072, maxBatch: 512}
	if err := checkVRAM(f, cpu.New(), mf); err != nil {
		t.Errorf("cpu backend (no device memory): %v", err)
	}
	if err := checkVRAM(f, memoryBackend{cpu.New(), 80 << 30}, mf); err != nil {
		t.Errorf("80 GiB free: %v", err)
	}
	err := checkVRAM(f, memoryBackend{cpu.New(), 1 << 30}, mf)
	var short *insufficientVRAMError
	if !errors.As(err, &short) || short.ErrorCode() != "INSUFFICIENT_VRAM" {
		t.Fatalf("1 GiB free: got %v, want an INSUFFICIENT_VRAM error", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "but 1073741824 are free") || short.needed <= 1<<30 {
		t.Errorf("message does not give the bytes needed and free: %s", msg)
	}
}
