package model

import (
	"errors"
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
	c.k, c.v, c.freed = nil, nil, true
}

// logitsMode says which logits one forward step computes.
type logitsMode int

const (
	noLogits   logitsMode = iota // an early chunk of a long prompt
	lastLogits                   // the last token's
	allLogits                    // every token's
)

// stepFunc runs one forward step of at most maxBatch tokens starting at
// position start and writes the requested logits into out.
type stepFunc func(tokens []int32, start int, mode logitsMode, out []float32) error

// forward is Model.Forward for both architectures: it checks the cache and
// tokens, splits the tokens into steps of at most maxBatch, and advances the
// cache after each successful step.
func forward(owner any, cache Cache, tokens []int32, all bool, vocab, maxBatch int, step stepFunc) ([]float32, error) {
	c, ok := cache.(*kvCache)
	if !ok || c.owner != owner {
		return nil, errors.New("model: Forward: the cache was not made by this model's NewCache")
	}
	if c.freed {
		return nil, errors.New("model: Forward: the cache has been freed")
	}
	if len(tokens) == 0 {
		return nil, errors.New("model: Forward: no tokens")
	}
	if c.n+len(tokens) > c.capacity {
		return nil, fmt.Errorf("model: context overflow: %d tokens in the cache + %d new > capacity %d",
			c.n, len(tokens), c.capacity)
	}
	for i, t := range tokens {
		if t < 0 || int(t) >= vocab {
			return nil, fmt.Errorf("model: token %d (index %d) is outside the vocabulary [0, %d)", t, i, vocab)
		}
	}
	var out []float32
	if all {
		out = make([]float32, len(tokens)*vocab)
	} else {
		out = make([]float32, vocab)
	}
	for lo := 0; lo < len(tokens); lo += maxBatch {
		hi := min(lo+maxBatch, len(tokens))
		mode, dst := noLogits, []float32(nil)
		switch {
		case all:
			mode, dst = allLogits, out[lo*vocab:hi*vocab]
		case hi == len(tokens):
			mode, dst = lastLogits, out
		}
		if err := step(tokens[lo:hi], c.n, mode, dst); err != nil {
			return nil, err
		}
		c.n += hi - lo
	}
	return out, nil
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

// tensorSet allocates backend tensors and remembers them, so that a group
// (one batch size's activations) is freed together, and so that a failed
// allocation is reported once at the end.
type tensorSet struct {
	be      backend.Backend
	tensors []backend.Tensor
	err     error
}

func (s *tensorSet) f32(rows, cols int) backend.Tensor {
	if s.err != nil {
		return nil
	}
	t, err := s.be.NewF32(rows, cols)
	if err != nil {
		s.err = fmt.Errorf("model: allocating a %d×%d activation: %w", rows, cols, err)
		return nil
	}
	s.tensors = append(s.tensors, t)
	return t
}

func (s *tensorSet) i32(n int) backend.Tensor {
	if s.err != nil {
		return nil
	}
	t, err := s.be.NewI32(n)
	if err != nil {
		s.err = fmt.Errorf("model: allocating %d int32: %w", n, err)
		return nil
	}
	s.tensors = append(s.tensors, t)
	return t
}

func (s *tensorSet) free() {
	for _, t := range s.tensors {
		s.be.Free(t)
	}
	s.tensors = nil
}

// bufferPool keeps the activation buffers of recent batch sizes, so that
// decode steps (size 1) and full prompt chunks (size maxBatch) reuse theirs
// and a decode step allocates nothing.
type bufferPool[B any] struct {
	sets   map[int]B
	nextID int
}

// maxBufferSets bounds the batch sizes whose buffers are kept: decode, full
// chunks and one odd remainder.
const maxBufferSets = 3

// get returns the buffers for n tokens, making them with alloc (given a
// fresh id for Graph keys) and dropping other sizes' buffers with free when
// too many are kept.
func (p *bufferPool[B]) get(n int, alloc func(n, id int) (B, error), free func(B)) (B, error) {
	if b, ok := p.sets[n]; ok {
		return b, nil
	}
	if p.sets == nil {
		p.sets = map[int]B{}
	}
	if len(p.sets) >= maxBufferSets {
		for size, b := range p.sets {
			if size != 1 {
				free(b)
				delete(p.sets, size)
			}
		}
	}
	p.nextID++
	b, err := alloc(n, p.nextID)
	if err != nil {
		return b, err
	}
	p.sets[n] = b
	return b, nil
}

// freeAll drops every kept set.
func (p *bufferPool[B]) freeAll(free func(B)) {
	for size, b := range p.sets {
		free(b)
		delete(p.sets, size)
	}
}

// positions returns start, start+1, … for n tokens.
func positions(dst []int32, start int) []int32 {
	for i := range dst {
		dst[i] = int32(start + i)
	}
	return dst
}
