package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"orcd/backend"
	"orcd/backend/cpu"
	"orcd/model"
)

// Serving defaults that size themselves from the machine: how many
// sequences run at once and how many KV cache blocks the pool holds, when
// --max-active and --kv-blocks leave it to orcd.

// defaultMaxActive is the number of sequences run at once by default: a
// GPU step of hundreds of sequences still reads each weight once, while a
// CPU's aggregate throughput stops growing after a few.
func defaultMaxActive(be backend.Backend) int {
	if be.Name() == "cuda" {
		return 256
	}
	return 8
}

// kvBudget is the memory the KV pool may take: on a GPU, what is free after
// the weights less a reserve for activations and workspace (15% and 2 GiB);
// on the CPU, half of the memory available (the pool's pages are only
// touched as sequences fill its blocks).
func kvBudget(be backend.Backend) (int64, error) {
	if mr, ok := be.(memoryReporter); ok {
		free, err := mr.FreeMemory()
		if err != nil {
			return 0, err
		}
		return free - free*15/100 - 2<<30, nil
	}
	avail, err := memAvailable()
	if err != nil {
		return 0, err
	}
	return avail / 2, nil
}

// kvBlocks returns the pool size for maxActive sequences of up to ctx
// tokens: enough for all of them at full length if the budget allows, else
// what the budget holds. Fewer blocks than one full sequence needs is an
// error naming the memory.
func kvBlocks(layout model.KVLayout, budget int64, elemBytes, blockSize, ctx, stepTokens, maxActive int) (int, error) {
	perSeq := kvSeqBlocks(layout, blockSize, ctx, stepTokens)
	blockBytes := layout.BlockBytes(blockSize, elemBytes)
	fit := int(budget / max(blockBytes, 1))
	if fit < perSeq {
		return 0, fmt.Errorf("the KV cache of one %d-token sequence needs %d blocks of %d bytes, but only %d bytes are left for it; lower --ctx-size or set --kv-blocks",
			ctx, perSeq, blockBytes, max(budget, 0))
	}
	return min(fit, perSeq*maxActive), nil
}

// kvSeqBlocks is the most blocks one sequence of ctx tokens holds: every
// block of its positions in full-attention groups, and in sliding-window
// groups the window plus the step that writes into it.
func kvSeqBlocks(layout model.KVLayout, blockSize, ctx, stepTokens int) int {
	perSeq := 0
	for _, g := range layout.Groups() {
		n := (ctx + blockSize - 1) / blockSize
		if g.Window > 0 {
			n = min(n, (g.Window-1+stepTokens+blockSize-1)/blockSize+1)
		}
		perSeq += n
	}
	return perSeq
}

// memAvailable reads MemAvailable from /proc/meminfo (Linux); elsewhere it
// assumes 4 GiB.
func memAvailable() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 4 << 30, nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/meminfo: MemAvailable %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 4 << 30, sc.Err()
}

// kvElemBytes is the bytes of one cached value in a serving pool: f16 on
// cuda (pools beyond a few MiB are f16 there) and in the CPU's fast
// precision, f32 in its exact one.
func kvElemBytes(be backend.Backend) int {
	if c, ok := be.(*cpu.Backend); be.Name() == "cuda" || ok && c.Fast() {
		return 2
	}
	return 4
}
