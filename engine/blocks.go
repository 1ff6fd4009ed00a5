package engine

import (
	"orcd/model"
)

// blockManager hands out the blocks of a paged KV pool to sequences: one
// block table per KV group and sequence, blocks counted by references, and
// a prefix cache (as vLLM's block manager and SGLang's radix cache do): a
// full block is known by the hash of its tokens and of every token before
// it, so that a later prompt that starts the same way reuses it instead of
// recomputing it. A block nobody references keeps its contents (and its
// hash) until it is needed for something else, least recently used first.
//
// It is used by the engine's loop alone and needs no lock.
type blockManager struct {
	groups []model.KVGroup
	bs     int
	ref    []int32  // references per block
	hash   []uint64 // content hash of a cached block; 0 for none
	owner  []int    // the group a hashed block belongs to
	free   []int32  // blocks with no references and no cached contents
	// lru orders the blocks with no references but cached contents, least
	// recently used at the head: a doubly linked list threaded through
	// prev and next (-1 ends it), so that a hit takes its block out in O(1).
	prev, next []int32
	head, tail int32
	lruLen     int
	cached     []map[uint64]int32 // per group: hash → block
	prefix     bool               // whether prompts reuse cached blocks
}

// newBlockManager manages blocks 0..blocks-1 of a pool with the given
// groups and block size.
func newBlockManager(blocks, bs int, groups []model.KVGroup, prefix bool) *blockManager {
	m := &blockManager{
		groups: groups, bs: bs, prefix: prefix,
		ref: make([]int32, blocks), hash: make([]uint64, blocks), owner: make([]int, blocks),
		prev: make([]int32, blocks), next: make([]int32, blocks), head: -1, tail: -1,
		cached: make([]map[uint64]int32, len(groups)),
	}
	for g := range groups {
		m.cached[g] = map[uint64]int32{}
	}
	for b := blocks - 1; b >= 0; b-- {
		m.free = append(m.free, int32(b))
	}
	return m
}

// available is the number of blocks that can be handed out: free ones and
// cached ones nobody references.
func (m *blockManager) available() int { return len(m.free) + m.lruLen }

// cachedIdle is the number of blocks that hold cached contents and no
// references.
func (m *blockManager) cachedIdle() int { return m.lruLen }

// alloc takes a block: a free one, else the least recently used cached
// one (forgetting its contents). It reports false when there is none.
func (m *blockManager) alloc() (int32, bool) {
	var b int32
	switch {
	case len(m.free) > 0:
		b = m.free[len(m.free)-1]
		m.free = m.free[:len(m.free)-1]
	case m.head >= 0:
		b = m.head
		m.unlink(b)
		delete(m.cached[m.owner[b]], m.hash[b])
		m.hash[b] = 0
	default:
		return -1, false
	}
	m.ref[b] = 1
	return b, true
}

// take adds a reference to a block found in the cache.
func (m *blockManager) take(b int32) {
	if m.ref[b] == 0 {
		m.unlink(b)
	}
	m.ref[b]++
}

// release drops a reference. A block nobody references goes to the back of
// the LRU list if its contents are cached, else to the free list.
func (m *blockManager) release(b int32) {
	m.ref[b]--
	if m.ref[b] > 0 {
		return
	}
	if m.hash[b] == 0 {
		m.free = append(m.free, b)
		return
	}
	m.prev[b], m.next[b] = m.tail, -1
	if m.tail >= 0 {
		m.next[m.tail] = b
	} else {
		m.head = b
	}
	m.tail = b
	m.lruLen++
}

func (m *blockManager) unlink(b int32) {
	p, n := m.prev[b], m.next[b]
	if p >= 0 {
		m.next[p] = n
	} else {
		m.head = n
	}
	if n >= 0 {
		m.prev[n] = p
	} else {
		m.tail = p
	}
	m.lruLen--
}

// blockHashes are the chained hashes of a sequence's full blocks: hash i
// covers the tokens of blocks 0..i.
type blockHashes []uint64

// extend appends the hashes of the full blocks of tokens not yet hashed.
func (h blockHashes) extend(tokens []int32, bs int) blockHashes {
	for i := len(h); (i+1)*bs <= len(tokens); i++ {
		parent := uint64(0x9e3779b97f4a7c15)
		if i > 0 {
			parent = h[i-1]
		}
		h = append(h, hashBlock(parent, tokens[i*bs:(i+1)*bs]))
	}
	return h
}

// hashBlock mixes a block's tokens into its parent's hash (FNV-1a over the
// bytes, then a final avalanche); never 0, which marks "no hash".
func hashBlock(parent uint64, tokens []int32) uint64 {
	h := parent ^ 0xcbf29ce484222325
	for _, t := range tokens {
		for s := 0; s < 32; s += 8 {
			h ^= uint64(byte(t >> s))
			h *= 0x100000001b3
		}
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h | 1
}

// blocksFor is the number of blocks group g needs at once for a sequence of
// n tokens computed in chunks of at most chunk tokens: all of them for full
// attention, the window and one chunk for a sliding window.
func (m *blockManager) blocksFor(g, n, chunk int) int {
	need := (n + m.bs - 1) / m.bs
	if w := m.groups[g].Window; w > 0 {
		need = min(need, (w-1+chunk+m.bs-1)/m.bs+1)
	}
	return need
}

// match looks up the longest cached prefix of tokens that leaves at least
// one token to compute, and returns its length (a multiple of the block
// size) and, per group, the cached blocks that a sequence starting there
// needs: every block before it for full attention, the window's for a
// sliding group. It takes no references.
func (m *blockManager) match(hashes blockHashes, n int) (int, [][]int32) {
	if !m.prefix {
		return 0, nil
	}
	// The longest run of cached blocks in every full-attention group.
	full := min(len(hashes), (n-1)/m.bs)
	for g, grp := range m.groups {
		if grp.Window > 0 {
			continue
		}
		run := 0
		for run < full {
			if _, ok := m.cached[g][hashes[run]]; !ok {
				break
			}
			run++
		}
		full = run
	}
	// The longest length whose window blocks are cached too.
	for blocks := full; blocks > 0; blocks-- {
		l := blocks * m.bs
		tables := make([][]int32, len(m.groups))
		ok := true
		for g, grp := range m.groups {
			lo := 0
			if grp.Window > 0 {
				lo = max(0, l-grp.Window+1) / m.bs
			}
			t := make([]int32, blocks)
			for i := range t {
				t[i] = -1
				if i < lo {
					continue
				}
				b, hit := m.cached[g][hashes[i]]
				if !hit {
					ok = false
					break
				}
				t[i] = b
			}
			if !ok {
				break
			}
			tables[g] = t
		}
		if ok {
			return l, tables
		}
	}
	return 0, nil
}

// register records the full blocks of a sequence, whose hashes are known,
// in the prefix cache: block i of group g's table under hashes[i], unless
// the cache already holds that content. from is the first block index not
// registered before.
func (m *blockManager) register(tables [][]int32, hashes blockHashes, from int) {
	if !m.prefix {
		return
	}
	for g := range m.groups {
		t := tables[g]
		for i := from; i < len(hashes) && i < len(t); i++ {
			b := t[i]
			if b < 0 || m.hash[b] != 0 {
				continue
			}
			if _, dup := m.cached[g][hashes[i]]; dup {
				continue
			}
			m.hash[b], m.owner[b] = hashes[i], g
			m.cached[g][hashes[i]] = b
		}
	}
}
