package tokenizer

import (
	"fmt"
	"math/bits"
)

// pairTable maps a pair of adjacent tokens to the rank of their merge; the
// merge's result is then results[rank]. The lookup is the innermost step of
// BPE and usually a cache miss, so the table is made small: open addressing
// with linear probing, each slot one uint64 holding the pair and its rank,
// at a load of at most 1/2.
type pairTable struct {
	slots   []uint64 // pairKey(left, right)<<rankBits | rank, or emptySlot
	shift   uint     // 64 - log2(len(slots)), for Fibonacci hashing
	results []int32  // results[rank] is the token that merge rank makes
}

// Field widths of a slot. Token ids below maxTokens fit, with the id
// 1<<idBits-1 left unused so that emptySlot is no pair's slot.
const (
	idBits    = 21
	rankBits  = 64 - 2*idBits
	maxTokens = 1<<idBits - 1
	maxMerges = 1 << rankBits
	emptySlot = ^uint64(0)
)

func pairKey(left, right int32) uint64 { return uint64(left)<<idBits | uint64(right) }

// newPairTable builds the table of merges, whose token ids must be below
// maxTokens: the i-th merge has rank i, and of two merges of the same pair
// the first wins.
func newPairTable(merges []merge) (*pairTable, error) {
	if len(merges) > maxMerges {
		return nil, fmt.Errorf("tokenizer: %d merges, more than the %d supported", len(merges), maxMerges)
	}
	logn := bits.Len(uint(max(2*len(merges), 16) - 1))
	t := &pairTable{
		slots:   make([]uint64, 1<<logn),
		shift:   uint(64 - logn),
		results: make([]int32, len(merges)),
	}
	for i := range t.slots {
		t.slots[i] = emptySlot
	}
	mask := uint64(len(t.slots) - 1)
	for rank, m := range merges {
		t.results[rank] = m.result
		key := pairKey(m.left, m.right)
		for i := t.home(key); ; i = (i + 1) & mask {
			s := t.slots[i]
			if s == emptySlot {
				t.slots[i] = key<<rankBits | uint64(rank)
				break
			}
			if s>>rankBits == key {
				break // a duplicate: the first merge of a pair wins
			}
		}
	}
	return t, nil
}

func (t *pairTable) home(key uint64) uint64 { return (key * 0x9E3779B97F4A7C15) >> t.shift }

// rank returns the rank of merging left and right, or noRank.
func (t *pairTable) rank(left, right int32) uint32 {
	key := pairKey(left, right)
	slots := t.slots
	mask := uint64(len(slots) - 1)
	for i := t.home(key); ; i = (i + 1) & mask {
		s := slots[i]
		if s>>rankBits == key {
			return uint32(s & (maxMerges - 1))
		}
		if s == emptySlot {
			return noRank
		}
	}
}
