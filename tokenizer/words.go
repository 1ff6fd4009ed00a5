package tokenizer

import (
	"fmt"
	"math/bits"
)

// wordTable finds a normal token by its bytes: the whole-piece lookup before
// BPE, and TokenID. Each slot holds a token's first bytes and its length
// besides its id, so the lookup of a piece of up to 8 bytes (most words)
// reads one slot and nothing else; a longer piece is compared with the
// token's bytes only after its first 8 bytes, its length and 16 more bits
// of its hash match. Open addressing, linear probing, load at most 1/2.
type wordTable struct {
	slots  []wordSlot
	shift  uint // 64 - log2(len(slots))
	pieces [][]byte
}

type wordSlot struct {
	head uint64 // the head of the token's bytes (see wordHash)
	meta uint64 // hash tag<<48 | length<<32 | id+1; 0 if the slot is free
}

// maxWordLen is the longest token a wordTable holds.
const maxWordLen = 1<<16 - 1

// newWordTable indexes the tokens ids (whose bytes are pieces[id]); of two
// tokens with the same bytes, the first in ids wins.
func newWordTable(pieces [][]byte, ids []int32) (*wordTable, error) {
	logn := bits.Len(uint(max(2*len(ids), 16) - 1))
	w := &wordTable{slots: make([]wordSlot, 1<<logn), shift: uint(64 - logn), pieces: pieces}
	mask := uint64(len(w.slots) - 1)
	for _, id := range ids {
		p := string(pieces[id])
		if len(p) > maxWordLen {
			return nil, fmt.Errorf("tokenizer: token %d is %d bytes long, more than the %d supported", id, len(p), maxWordLen)
		}
		head, h := wordHash(p)
		meta := wordMeta(h, len(p)) | uint64(id+1)
		for i := h >> w.shift; ; i = (i + 1) & mask {
			sl := &w.slots[i]
			if sl.meta == 0 {
				*sl = wordSlot{head: head, meta: meta}
				break
			}
			if w.match(sl, p, head, meta) {
				break // a duplicate: the first token wins
			}
		}
	}
	return w, nil
}

// match reports whether slot sl holds the token s, whose head and meta
// (id bits aside) are given.
func (w *wordTable) match(sl *wordSlot, s string, head, meta uint64) bool {
	return sl.head == head && sl.meta&^0xFFFFFFFF == meta&^0xFFFFFFFF &&
		(len(s) <= 8 || string(w.pieces[uint32(sl.meta)-1][8:]) == s[8:])
}

// get returns the id of the token whose bytes are s.
func (w *wordTable) get(s string) (int32, bool) {
	head, h := wordHash(s)
	meta := wordMeta(h, len(s))
	slots := w.slots
	mask := uint64(len(slots) - 1)
	for i := h >> w.shift; ; i = (i + 1) & mask {
		sl := &slots[i]
		if sl.meta == 0 {
			return 0, false
		}
		if w.match(sl, s, head, meta) {
			return int32(uint32(sl.meta) - 1), true
		}
	}
}

func wordMeta(hash uint64, n int) uint64 { return hash<<48 | uint64(n)<<32 }

// wordHash returns the head of s (a function of its bytes that is one to
// one among strings of a length up to 8, and its first 8 bytes otherwise)
// and a hash of all of s.
func wordHash(s string) (head, hash uint64) {
	n := len(s)
	switch {
	case n >= 8:
		head = load64(s)
	case n >= 4: // two loads that overlap and cover s
		head = uint64(load32(s)) | uint64(load32(s[n-4:]))<<32
	case n > 0:
		head = uint64(s[0]) | uint64(s[n/2])<<8 | uint64(s[n-1])<<16
	}
	hash = head ^ uint64(n)*0x9E3779B97F4A7C15
	for i := 8; i < n; i += 8 {
		hash = (hash ^ bits.RotateLeft64(hash, 29)) * 0xBF58476D1CE4E5B9
		hash ^= load64(s[min(i, n-8):]) // the last 8 bytes overlap the previous chunk
	}
	// The finalizer of splitmix64: every bit of the result depends on every
	// bit of the input.
	hash = (hash ^ hash>>30) * 0xBF58476D1CE4E5B9
	hash = (hash ^ hash>>27) * 0x94D049BB133111EB
	return head, hash ^ hash>>31
}

// load64 and load32 read little-endian words from the start of s (the
// compiler makes each a single load).
func load64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

func load32(s string) uint32 {
	_ = s[3]
	return uint32(s[0]) | uint32(s[1])<<8 | uint32(s[2])<<16 | uint32(s[3])<<24
}
