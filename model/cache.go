package model

import (
	"fmt"
	"sync"

	"orcd/backend"
)

// kvCache is the Cache of both architectures: one K and one V tensor per
// layer. A full-attention layer has a row per position; a sliding-window
// layer keeps a ring of Window + maxBatch - 1 rows (key position p in row
// p % rows), which is enough because one forward step of at most maxBatch
// tokens needs the keys of its own tokens and the Window - 1 before them.
type kvCache struct {
	be       backend.Backend
	owner    any         // the model that made the cache; Forward rejects others
	lock     sync.Locker // the owner's mutex: the backend serves one goroutine at a time
	id       int         // distinguishes caches in backend.Graph keys
	k, v     []backend.Tensor
	rows     []int // rows of layer l's tensors (AttentionParams.CacheCap)
	n        int   // tokens stored
	capacity int   // tokens the cache can hold
	freed    bool
	logits   []float32 // host buffer Forward returns the last token's logits in
}

// newKVCache allocates the caches of len(rows) layers, each rows[l]×cols.
// The caller holds lock.
func newKVCache(be backend.Backend, owner any, lock sync.Locker, id, capacity int, rows []int, cols int) (*kvCache, error) {
	c := &kvCache{be: be, owner: owner, lock: lock, id: id, rows: rows, capacity: capacity}
	for l, r := range rows {
		k, err := be.NewKVCache(r, cols)
		if err != nil {
			c.free()
			return nil, fmt.Errorf("model: allocating the K cache of layer %d (%d×%d): %w", l, r, cols, err)
		}
		c.k = append(c.k, k)
		v, err := be.NewKVCache(r, cols)
		if err != nil {
			c.free()
			return nil, fmt.Errorf("model: allocating the V cache of layer %d (%d×%d): %w", l, r, cols, err)
		}
		c.v = append(c.v, v)
	}
	return c, nil
}

// Len is the number of tokens stored so far.
func (c *kvCache) Len() int { return c.n }

// Cap is the number of tokens the cache can hold.
func (c *kvCache) Cap() int { return c.capacity }

// Reset forgets the stored tokens; the memory is kept and overwritten.
func (c *kvCache) Reset() {
	c.lock.Lock()
	defer c.lock.Unlock()
	c.n = 0
}

// Free releases the cache tensors. Using the cache afterwards is an error.
func (c *kvCache) Free() {
	c.lock.Lock()
	defer c.lock.Unlock()
	c.free()
}

func (c *kvCache) free() {
	for _, t := range c.k {
		c.be.Free(t)
	}
	for _, t := range c.v {
		c.be.Free(t)
	}
	c.k, c.v, c.logits, c.freed = nil, nil, nil, true
}

// newCacheRows checks a requested context size and returns the cache rows of
// each layer: ctx for full attention, a ring for sliding-window layers
// (window[l] > 0).
func newCacheRows(ctx, maxCtx, maxBatch int, window []int) ([]int, error) {
	if ctx <= 0 || ctx > maxCtx {
		return nil, fmt.Errorf("model: cache size %d out of range [1, %d] (the model's context length)", ctx, maxCtx)
	}
	rows := make([]int, len(window))
	for l, w := range window {
		rows[l] = ctx
		if w > 0 {
			rows[l] = min(ctx, w+maxBatch-1)
		}
	}
	return rows, nil
}
