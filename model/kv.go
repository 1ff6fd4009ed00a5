package model

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"orcd/backend"
)

// KVLayout describes the key/value caches of a model's attention layers.
type KVLayout struct {
	Windows []int // per layer: its sliding window in tokens, 0 for full attention
	Cols    int   // values in one K (and one V) row: KV heads × head dim
}

// KVGroup is a set of layers with the same window. They share one block
// table per sequence: a block of the group holds the same positions in each
// of its layers.
type KVGroup struct {
	Window int   // 0 for full attention
	Layers []int // in ascending order
}

// Groups splits the layers by window, full attention (window 0) first.
func (l KVLayout) Groups() []KVGroup {
	var windows []int
	for _, w := range l.Windows {
		if !slices.Contains(windows, w) {
			windows = append(windows, w)
		}
	}
	slices.Sort(windows)
	groups := make([]KVGroup, len(windows))
	for i, w := range windows {
		groups[i].Window = w
		for layer, lw := range l.Windows {
			if lw == w {
				groups[i].Layers = append(groups[i].Layers, layer)
			}
		}
	}
	return groups
}

// slots is the number of K (and V) pool tensors: the layers of the largest
// group. Layer i of every group lives in tensor i, so a block id names the
// same rows in each tensor and belongs to one group at a time: the groups
// draw their blocks from one free list.
func (l KVLayout) slots() int {
	n := 0
	for _, g := range l.Groups() {
		n = max(n, len(g.Layers))
	}
	return n
}

// BlockBytes is the memory one pool block of blockSize tokens takes, at
// elemBytes per cached value (4 for f32, 2 for f16).
func (l KVLayout) BlockBytes(blockSize, elemBytes int) int64 {
	return int64(l.slots()) * 2 * int64(blockSize) * int64(l.Cols) * int64(elemBytes)
}

// kvPool is the KV of both architectures: per pool tensor (slot), one K
// and one V tensor of Blocks·BlockSize rows.
type kvPool struct {
	be        backend.Backend
	owner     any         // the model that made the pool; Step rejects others
	lock      sync.Locker // the owner's mutex: the backend serves one goroutine at a time
	id        int         // distinguishes pools in backend.Graph keys
	blockSize int
	blocks    int
	groups    []KVGroup
	groupOf   []int            // KV group of each layer
	slotOf    []int            // pool tensor of each layer
	k, v      []backend.Tensor // per slot: blocks·blockSize rows
	freed     bool
}

// newKV allocates a pool for layout. The caller holds lock.
func newKV(be backend.Backend, owner any, lock sync.Locker, id int, layout KVLayout, blocks, blockSize int) (*kvPool, error) {
	if blocks < 1 || blockSize < 1 || int64(blocks)*int64(blockSize) > 1<<31-1 {
		return nil, fmt.Errorf("model: KV pool of %d blocks of %d tokens: out of range", blocks, blockSize)
	}
	kv := &kvPool{be: be, owner: owner, lock: lock, id: id, blockSize: blockSize, blocks: blocks, groups: layout.Groups()}
	kv.groupOf = make([]int, len(layout.Windows))
	kv.slotOf = make([]int, len(layout.Windows))
	for g, grp := range kv.groups {
		for i, l := range grp.Layers {
			kv.groupOf[l], kv.slotOf[l] = g, i
		}
	}
	rows := blocks * blockSize
	for s := range layout.slots() {
		k, err := be.NewKVCache(rows, layout.Cols)
		if err != nil {
			kv.free()
			return nil, fmt.Errorf("model: allocating K cache %d (%d×%d): %w", s, rows, layout.Cols, err)
		}
		kv.k = append(kv.k, k)
		v, err := be.NewKVCache(rows, layout.Cols)
		if err != nil {
			kv.free()
			return nil, fmt.Errorf("model: allocating V cache %d (%d×%d): %w", s, rows, layout.Cols, err)
		}
		kv.v = append(kv.v, v)
	}
	return kv, nil
}

// BlockSize is the number of tokens a block holds.
func (kv *kvPool) BlockSize() int { return kv.blockSize }

// Blocks is the number of blocks in the pool.
func (kv *kvPool) Blocks() int { return kv.blocks }

// Groups are the pool's KV groups; a Chunk has one block table per group.
func (kv *kvPool) Groups() []KVGroup { return kv.groups }

// Free releases the pool's memory. Using it afterwards is an error.
func (kv *kvPool) Free() {
	kv.lock.Lock()
	defer kv.lock.Unlock()
	kv.free()
}

func (kv *kvPool) free() {
	for _, t := range kv.k {
		kv.be.Free(t)
	}
	for _, t := range kv.v {
		kv.be.Free(t)
	}
	kv.k, kv.v, kv.freed = nil, nil, true
}

// poolOf returns kv as a pool m may run a step on.
func poolOf(kv KV, m any) (*kvPool, error) {
	p, ok := kv.(*kvPool)
	switch {
	case !ok || p.owner != m:
		return nil, errors.New("model: the KV pool was not made by this model's NewKV")
	case p.freed:
		return nil, errors.New("model: the KV pool has been freed")
	}
	return p, nil
}

// seqCache is the Cache of Forward: one sequence with a pool of its own,
// big enough for capacity tokens. Full-attention groups keep a block per
// BlockSize positions; sliding-window groups give blocks back once they
// fall out of the window, so they hold only the window and one step.
type seqCache struct {
	kv       *kvPool
	tables   [][]int32 // per group
	free     []int32   // blocks not in any table
	n        int       // tokens stored
	capacity int
	logits   []float32 // host buffer Forward returns the last token's logits in
}

// seqCacheBlockSize is the block size of Forward's caches.
const seqCacheBlockSize = 16

// newSeqCache makes the cache of one sequence of up to capacity tokens, for
// steps of at most maxBatch tokens. The caller holds the model's lock.
func newSeqCache(be backend.Backend, owner any, lock sync.Locker, id int, layout KVLayout, capacity, maxBatch int) (*seqCache, error) {
	const bs = seqCacheBlockSize
	groups := layout.Groups()
	blocks := 0
	for _, g := range groups {
		need := (capacity + bs - 1) / bs
		if g.Window > 0 {
			// The keys of one step's tokens reach back Window-1 positions
			// before its first token: Window-1+maxBatch positions, which
			// may straddle one more block boundary.
			need = min(need, (g.Window-1+maxBatch+bs-1)/bs+1)
		}
		blocks += need
	}
	kv, err := newKV(be, owner, lock, id, layout, blocks, bs)
	if err != nil {
		return nil, err
	}
	c := &seqCache{kv: kv, capacity: capacity, tables: make([][]int32, len(groups))}
	c.reset()
	return c, nil
}

// reset empties the tables and puts every block back in the free list.
func (c *seqCache) reset() {
	c.n = 0
	c.free = c.free[:0]
	for b := c.kv.blocks - 1; b >= 0; b-- {
		c.free = append(c.free, int32(b))
	}
	for g := range c.tables {
		c.tables[g] = c.tables[g][:0]
	}
}

// grow gives each group blocks for positions up to end-1, first handing
// back the blocks of sliding groups that no token from position pos on can
// see. The pool was sized so that it never runs out.
func (c *seqCache) grow(pos, end int) {
	alloc := func() (int32, bool) {
		last := len(c.free) - 1
		b := c.free[last]
		c.free = c.free[:last]
		return b, true
	}
	release := func(b int32) { c.free = append(c.free, b) }
	GrowTables(c.tables, c.kv.groups, c.kv.blockSize, pos, end, alloc, release)
}

// GrowTables extends one sequence's block tables (one per group) with
// blocks from alloc so that they cover positions up to end-1, after giving
// the blocks of sliding-window groups that no query from position pos on can
// see to release (their entries become -1). It reports false, with the
// tables partly grown, when alloc runs out.
func GrowTables(tables [][]int32, groups []KVGroup, bs, pos, end int, alloc func() (int32, bool), release func(int32)) bool {
	for g, grp := range groups {
		t := tables[g]
		if grp.Window > 0 {
			for i := 0; i < (pos-grp.Window+1)/bs && i < len(t); i++ {
				if t[i] >= 0 {
					release(t[i])
					t[i] = -1
				}
			}
		}
		for len(t)*bs < end {
			b, ok := alloc()
			if !ok {
				tables[g] = t
				return false
			}
			t = append(t, b)
		}
		tables[g] = t
	}
	return true
}

// Len is the number of tokens stored so far.
func (c *seqCache) Len() int { return c.n }

// Cap is the number of tokens the cache can hold.
func (c *seqCache) Cap() int { return c.capacity }

// Reset forgets the stored tokens; the memory is kept and overwritten.
func (c *seqCache) Reset() {
	c.kv.lock.Lock()
	defer c.kv.lock.Unlock()
	c.reset()
}

// Free releases the cache's memory. Using the cache afterwards is an error.
func (c *seqCache) Free() {
	c.kv.Free()
	c.logits = nil
}
