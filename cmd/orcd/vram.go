package main

import (
	"fmt"

	"orcd/backend"
	"orcd/gguf"
	"orcd/model"
)

// The VRAM check made before a model is uploaded to a GPU: weights, the KV
// cache of one --ctx-size sequence and the activations and workspace of a
// --max-batch step must fit in what the device has free.

// memoryReporter is implemented by backends with device memory (cuda).
type memoryReporter interface {
	FreeMemory() (int64, error)
}

// insufficientVRAMError reports a model that does not fit. Its ErrorCode is
// the worker API's INSUFFICIENT_VRAM.
type insufficientVRAMError struct {
	needed, free              int64
	weights, cache, workspace int64
	ctx                       int
}

func (e *insufficientVRAMError) Error() string {
	return fmt.Sprintf("INSUFFICIENT_VRAM: the model needs about %d bytes of GPU memory (weights %d, KV cache for %d tokens %d, workspace %d) but %d are free",
		e.needed, e.weights, e.ctx, e.cache, e.workspace, e.free)
}

// ErrorCode is INSUFFICIENT_VRAM.
func (e *insufficientVRAMError) ErrorCode() string { return "INSUFFICIENT_VRAM" }

// checkVRAM returns an *insufficientVRAMError when be has device memory and
// too little of it is free for the model in f. Backends without device
// memory (cpu) always pass.
func checkVRAM(f *gguf.File, be backend.Backend, mf *modelFlags) error {
	mr, ok := be.(memoryReporter)
	if !ok {
		return nil
	}
	need, err := estimateVRAM(f, mf.ctxSize, mf.maxBatch)
	if err != nil {
		return err
	}
	free, err := mr.FreeMemory()
	if err != nil {
		return err
	}
	need.free = free
	if need.needed > free {
		return need
	}
	return nil
}

// estimateVRAM adds up the weights (their file size; the GPU layout is no
// larger than 256 bytes a tensor more), the f16 KV cache and a workspace
// estimate for a step of maxBatch tokens.
func estimateVRAM(f *gguf.File, ctx, maxBatch int) (*insufficientVRAMError, error) {
	e := &insufficientVRAMError{}
	for i := range f.Tensors {
		e.weights += f.Tensors[i].Size + 256
	}
	a, err := model.ArchOf(f)
	if err != nil {
		return nil, err
	}
	arch := a.Name
	if name, err := f.GetString("general.architecture"); err == nil {
		arch = name // the alias the file's keys use
	}
	u := func(key string, def int64) int64 {
		v, err := f.GetUint64(arch + "." + key)
		if err != nil {
			return def
		}
		return int64(v)
	}
	if maxBatch <= 0 {
		maxBatch = model.DefaultMaxBatch
	}
	layout, err := model.LayoutOf(f)
	if err != nil {
		return nil, err
	}
	hidden := u("embedding_length", 0)
	heads := max(u("attention.head_count", 1), 1)
	headDim := u("attention.key_length", hidden/heads)
	maxCtx := u("context_length", int64(ctx))
	c := int64(ctx)
	if c <= 0 || c > maxCtx {
		c = maxCtx
	}
	e.ctx = int(c)
	for _, window := range layout.Windows {
		rows := c
		if window > 0 { // a sliding layer keeps a ring of window+batch-1 rows
			rows = min(c, int64(window)+int64(maxBatch)-1)
		}
		e.cache += 2 * rows * int64(layout.Cols) * 2
	}
	var vocab int64
	if ti, ok := f.Tensor("token_embd.weight"); ok && len(ti.Dims) == 2 {
		vocab = ti.Dims[1]
	}
	ff := max(u("expert_feed_forward_length", 0), u("feed_forward_length", 0))
	k := max(u("expert_used_count", 1), 1)
	b := int64(maxBatch)
	// Activations (a dozen hidden-wide buffers and the logits), MoE scratch
	// (gate, up and down outputs of every selected expert), attention
	// partials, and 256 MiB for upload staging and alignment.
	e.workspace = b*(12*hidden+vocab)*4 + b*k*(2*ff+hidden)*4 + b*heads*(headDim+2)*4*4 + 256<<20
	e.needed = e.weights + e.cache + e.workspace
	return e, nil
}
