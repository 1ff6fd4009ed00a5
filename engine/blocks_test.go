package engine

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"orcd/model"
)

// pagedSeq is a sequence of TestBlockManagerProperties: its tokens, how
// many are computed, and its tables.
type pagedSeq struct {
	tokens     []int32
	computed   int
	tables     [][]int32
	hashes     blockHashes
	registered int
}

// TestBlockManagerProperties runs random admissions (prompts that share
// prefixes, so the prefix cache hits), growth, completion, cancellation and
// preemption against a small pool with a full and a sliding group, and
// after every operation checks the manager's invariants: each block's
// reference count is the number of table entries that name it; free,
// cached-idle and referenced blocks partition the pool; the prefix cache
// names only blocks that hold its hash; a sequence never holds a block
// twice; and a reused block's cached hash is that of the sequence's own
// tokens at that place (no sharing of different contents). At the end every
// block is available again.
func TestBlockManagerProperties(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 99))
			const bs, blocks, step = 4, 48, 6
			groups := []model.KVGroup{{Window: 0, Layers: []int{1}}, {Window: 6, Layers: []int{0}}}
			m := newBlockManager(blocks, bs, groups, true)
			prefixes := [][]int32{{1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 2, 3, 4, 9, 9, 9, 9}, {7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}}
			var live []*pagedSeq
			release := func(s *pagedSeq) {
				for _, tab := range s.tables {
					for _, b := range tab {
						if b >= 0 {
							m.release(b)
						}
					}
				}
				s.tables = nil
			}
			for op := 0; op < 400; op++ {
				switch k := r.IntN(10); {
				case k < 3 && len(live) < 6: // admit
					s := &pagedSeq{tokens: append([]int32(nil), prefixes[r.IntN(len(prefixes))]...)}
					for range r.IntN(10) {
						s.tokens = append(s.tokens, int32(r.IntN(5)))
					}
					s.hashes = s.hashes.extend(s.tokens, bs)
					hit, tables := m.match(s.hashes, len(s.tokens))
					s.tables = make([][]int32, len(groups))
					for g := range groups {
						if tables != nil {
							s.tables[g] = tables[g]
							for _, b := range tables[g] {
								if b >= 0 {
									m.take(b)
								}
							}
						}
					}
					s.computed, s.registered = hit, hit/bs
					live = append(live, s)
				case k < 7 && len(live) > 0: // grow by a chunk or a decode token
					s := live[r.IntN(len(live))]
					n := 1 + r.IntN(step)
					if s.computed+n > len(s.tokens) {
						for range s.computed + n - len(s.tokens) {
							s.tokens = append(s.tokens, int32(r.IntN(5)))
						}
					}
					if !model.GrowTables(s.tables, groups, bs, s.computed, s.computed+n, m.alloc, m.release) {
						// Out of blocks: preempt this sequence (recompute later).
						release(s)
						s.tables, s.computed, s.registered = make([][]int32, len(groups)), 0, 0
						break
					}
					s.computed += n
					full := s.computed / bs
					s.hashes = s.hashes.extend(s.tokens[:full*bs], bs)
					m.register(s.tables, s.hashes[:full], s.registered)
					s.registered = full
				case len(live) > 0: // finish or cancel
					i := r.IntN(len(live))
					release(live[i])
					live = append(live[:i], live[i+1:]...)
				}
				checkBlocks(t, m, live, op)
			}
			for _, s := range live {
				release(s)
			}
			checkBlocks(t, m, nil, -1)
			if m.available() != blocks {
				t.Errorf("%d of %d blocks available at the end", m.available(), blocks)
			}
		})
	}
}

func checkBlocks(t *testing.T, m *blockManager, live []*pagedSeq, op int) {
	t.Helper()
	n := len(m.ref)
	refs := make([]int32, n)
	for si, s := range live {
		seen := map[int32]bool{}
		for g, tab := range s.tables {
			for i, b := range tab {
				if b < 0 {
					continue
				}
				if seen[b] {
					t.Fatalf("op %d: sequence %d holds block %d twice", op, si, b)
				}
				seen[b] = true
				refs[b]++
				// A block with a cached hash holds the contents that hash
				// names: if it sits at a full block of this sequence, the
				// hash must be this sequence's.
				if h := m.hash[b]; h != 0 && i < len(s.hashes) && (i+1)*m.bs <= s.computed && m.owner[b] == g && h != s.hashes[i] {
					t.Fatalf("op %d: sequence %d shares block %d whose cached contents differ from its own", op, si, b)
				}
			}
		}
	}
	state := make([]int, n) // 1 free, 2 cached idle
	for _, b := range m.free {
		state[b]++
		if m.hash[b] != 0 {
			t.Fatalf("op %d: free block %d has a hash", op, b)
		}
	}
	idle := 0
	for b := m.head; b >= 0; b = m.next[b] {
		state[b] += 2
		idle++
	}
	if idle != m.lruLen {
		t.Fatalf("op %d: LRU list has %d blocks, lruLen %d", op, idle, m.lruLen)
	}
	for b := range n {
		switch {
		case refs[b] != m.ref[b]:
			t.Fatalf("op %d: block %d: %d references counted, %d recorded", op, b, refs[b], m.ref[b])
		case refs[b] > 0 && state[b] != 0:
			t.Fatalf("op %d: block %d is in use and also free or idle (%d)", op, b, state[b])
		case refs[b] == 0 && state[b] != 1 && state[b] != 2:
			t.Fatalf("op %d: unused block %d is neither free nor idle (%d)", op, b, state[b])
		}
	}
	for g, c := range m.cached {
		for h, b := range c {
			if m.hash[b] != h || m.owner[b] != g {
				t.Fatalf("op %d: cache of group %d names block %d for a hash it does not hold", op, g, b)
			}
		}
	}
}
