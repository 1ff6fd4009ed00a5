package tokenizer

import (
	"slices"
	"sync"

	"golang.org/x/text/unicode/norm"
)

// specialSet finds the texts of a set of special tokens in a string.
type specialSet struct {
	ids map[string]int32
	// lengths of the texts, longest first: at a position the longest text
	// that matches wins.
	lengths []int
	// first marks the bytes a text can start with.
	first [256]bool
}

func newSpecialSet(pieces [][]byte, ids []int32) *specialSet {
	s := &specialSet{ids: make(map[string]int32, len(ids))}
	for _, id := range ids {
		text := string(pieces[id])
		if text == "" {
			continue
		}
		if _, dup := s.ids[text]; dup {
			continue
		}
		s.ids[text] = id
		s.first[text[0]] = true
		if !slices.Contains(s.lengths, len(text)) {
			s.lengths = append(s.lengths, len(text))
		}
	}
	slices.SortFunc(s.lengths, func(a, b int) int { return b - a })
	return s
}

// next returns the position, length and id of the first special text in
// text; pos is -1 if there is none.
func (s *specialSet) next(text string) (pos, length int, id int32) {
	if len(s.ids) == 0 {
		return -1, 0, 0
	}
	for p := 0; p < len(text); p++ {
		if !s.first[text[p]] {
			continue
		}
		for _, n := range s.lengths {
			if p+n <= len(text) {
				if id, ok := s.ids[text[p:p+n]]; ok {
					return p, n, id
				}
			}
		}
	}
	return -1, 0, 0
}

// Encode encodes text from a user. Text that looks like a special token
// ("<|start|>") is encoded as ordinary text, never as the special token: a
// prompt must not be able to forge the chat template's structure. Templates
// insert special tokens by id. Tokens the vocabulary marks user-defined are
// still recognised, as in llama.cpp and HF tokenizers. Neither Encode nor
// EncodeSpecial adds BOS or EOS; see AddBOS.
func (t *Tokenizer) Encode(text string) []int32 {
	return t.encode(text, false)
}

// EncodeSpecial encodes text in which special-token texts become their ids,
// for trusted templates and tests.
func (t *Tokenizer) EncodeSpecial(text string) []int32 {
	return t.encode(text, true)
}

func (t *Tokenizer) encode(text string, parseSpecial bool) []int32 {
	ids := make([]int32, 0, len(text)/3+1)
	for len(text) > 0 {
		pos, n, id := t.userDefined.next(text)
		if parseSpecial {
			if cpos, cn, cid := t.control.next(text); cpos >= 0 && (pos < 0 || cpos < pos || (cpos == pos && cn > n)) {
				pos, n, id = cpos, cn, cid
			}
		}
		if pos < 0 {
			ids = t.encodeOrdinary(ids, text)
			break
		}
		ids = t.encodeOrdinary(ids, text[:pos])
		ids = append(ids, id)
		text = text[pos+n:]
	}
	return ids
}

// encodeOrdinary appends the tokens of text with no special tokens in it.
func (t *Tokenizer) encodeOrdinary(ids []int32, text string) []int32 {
	if t.nfc && !norm.NFC.IsNormalString(text) {
		text = norm.NFC.String(text)
	}
	var sc *bpeScratch // from scratchPool at the first piece that needs BPE
	for i := 0; i < len(text); {
		j := t.pretok(text, i)
		piece := text[i:j]
		i = j
		if len(piece) == 1 {
			ids = append(ids, t.byteID[piece[0]])
			continue
		}
		if t.wholeWords && len(piece) <= t.maxTokenLen {
			if id, ok := t.words.get(piece); ok {
				ids = append(ids, id)
				continue
			}
		}
		if sc == nil {
			sc = scratchPool.Get().(*bpeScratch)
		}
		sc.id, sc.rank = grow(sc.id, len(piece)), grow(sc.rank, len(piece))
		m := t.initialParts(piece, sc.id, sc.rank)
		if m <= maxLinearBPE {
			ids = t.bpeLinear(ids, sc.id[:m], sc.rank[:m])
		} else {
			ids = t.bpeQueue(ids, sc.id[:m], sc.rank[:m], sc)
		}
	}
	if sc != nil {
		scratchPool.Put(sc)
	}
	return ids
}

// BPE starts from the bytes of a piece (some of them already merged into
// characters by initialParts) and merges the adjacent pair of lowest rank,
// the leftmost among equals, until no pair can merge. Two implementations
// give the same result: bpeLinear scans all pairs for the best at each
// merge, which is fastest for pieces of few parts (most words); bpeQueue
// keeps the pairs in order, so that a merge costs O(log n) rather than
// O(n), for longer ones (runs of CJK, spaces, emoji).

// maxLinearBPE is the most parts that bpeLinear handles; its keys hold a
// part's index in the low linearBits bits.
const (
	linearBits   = 4
	maxLinearBPE = 1 << linearBits
)

// noSmallKey is bpeLinear's key of a part with no mergeable successor.
const noSmallKey = ^uint32(0)

// bpeLinear appends the BPE encoding of a piece that starts as parts (at
// most maxLinearBPE of them; ranks[i] is the rank of merging part i with
// part i+1). The parts form a linked list in fixed arrays; key[i] is
// rank<<linearBits | i for the pair that part i starts, so the least key
// is the lowest rank at the leftmost position, found by a branch-free scan
// of all maxLinearBPE keys. (Ranks are below 2^22, so the keys fit.)
func (t *Tokenizer) bpeLinear(ids []int32, parts []int32, ranks []uint32) []int32 {
	var id [maxLinearBPE]int32
	var next, prev [maxLinearBPE]int8
	key := noSmallKeys
	n := copy(id[:], parts)
	for i := range n {
		next[i], prev[i] = int8(i+1), int8(i-1)
	}
	for i := range n - 1 {
		key[i] = smallKey(ranks[i], i)
	}
	for {
		best := minKey(&key)
		if best == noSmallKey {
			break
		}
		i := best & (maxLinearBPE - 1)
		j := next[i]
		id[i] = t.merges.results[best>>linearBits]
		k := next[j]
		key[j], key[i] = noSmallKey, noSmallKey
		next[i] = k
		if int(k) < n {
			prev[k] = int8(i)
			key[i] = smallKey(t.merges.rank(id[i], id[k]), int(i))
		}
		if h := prev[i]; h >= 0 {
			key[h] = smallKey(t.merges.rank(id[h], id[i]), int(h))
		}
	}
	for i := 0; i < n; i = int(next[i]) {
		ids = append(ids, id[i])
	}
	return ids
}

// noSmallKeys is bpeLinear's keys before any pair is known.
var noSmallKeys = [maxLinearBPE]uint32{
	noSmallKey, noSmallKey, noSmallKey, noSmallKey, noSmallKey, noSmallKey, noSmallKey, noSmallKey,
	noSmallKey, noSmallKey, noSmallKey, noSmallKey, noSmallKey, noSmallKey, noSmallKey, noSmallKey,
}

// minKey is the least of 16 keys, as a tree of independent comparisons.
func minKey(k *[maxLinearBPE]uint32) uint32 {
	a0, a1, a2, a3 := min(k[0], k[1]), min(k[2], k[3]), min(k[4], k[5]), min(k[6], k[7])
	a4, a5, a6, a7 := min(k[8], k[9]), min(k[10], k[11]), min(k[12], k[13]), min(k[14], k[15])
	return min(min(min(a0, a1), min(a2, a3)), min(min(a4, a5), min(a6, a7)))
}

// smallKey is bpeLinear's key of merging part i at rank (maybe noRank).
func smallKey(rank uint32, i int) uint32 {
	if rank == noRank {
		return noSmallKey
	}
	return rank<<linearBits | uint32(i)
}

// bpeScratch holds the working arrays of initialParts and bpeQueue, reused
// across pieces and calls.
type bpeScratch struct {
	id, next, prev     []int32
	rank               []uint32
	cur, initial, heap []uint64
}

var scratchPool = sync.Pool{New: func() any { return new(bpeScratch) }}

// noPair is the key of a part with no mergeable successor, or removed.
const noPair = ^uint64(0)

// mergeKey orders the merges of a piece: the lowest rank first, the
// leftmost among equals (pos is the left part's index).
func mergeKey(rank uint32, pos int32) uint64 {
	if rank == noRank {
		return noPair
	}
	return uint64(rank)<<32 | uint64(uint32(pos))
}

// bpeQueue appends the BPE encoding of a piece that starts as the parts id
// (which it overwrites; ranks as for bpeLinear). The parts form a linked
// list, and cur holds the mergeKey of each part's pair with its successor.
// The next merge is the least valid key among the initial pairs, sorted
// once, and the pairs made by merges since, kept in a heap; an entry is
// valid while cur still holds it, since a part's key changes whenever its
// pair does.
func (t *Tokenizer) bpeQueue(ids []int32, id []int32, ranks []uint32, sc *bpeScratch) []int32 {
	n := len(id)
	sc.next, sc.prev = grow(sc.next, n), grow(sc.prev, n)
	if cap(sc.cur) < n {
		// initial holds at most n-1 keys, and the heap holds at most n
		// valid ones (and the stale ones not yet popped).
		sc.cur, sc.initial, sc.heap = make([]uint64, n), make([]uint64, 0, n), make([]uint64, 0, n)
	}
	next, prev, cur := sc.next, sc.prev, sc.cur[:n]
	initial, heap := sc.initial[:0], sc.heap[:0]
	for i := range n {
		next[i], prev[i] = int32(i+1), int32(i-1)
	}
	next[n-1] = -1
	for i := range n - 1 {
		cur[i] = mergeKey(ranks[i], int32(i))
		if cur[i] != noPair {
			initial = append(initial, cur[i])
		}
	}
	cur[n-1] = noPair
	slices.Sort(initial)
	for c := 0; ; {
		for c < len(initial) && cur[uint32(initial[c])] != initial[c] {
			c++ // stale
		}
		for len(heap) > 0 && cur[uint32(heap[0])] != heap[0] {
			heap = heapPop(heap) // stale
		}
		var key uint64
		if c < len(initial) && (len(heap) == 0 || initial[c] < heap[0]) {
			key = initial[c]
			c++
		} else if len(heap) > 0 {
			key = heap[0]
			heap = heapPop(heap)
		} else {
			break
		}
		i := int32(uint32(key))
		j := next[i]
		id[i] = t.merges.results[key>>32]
		k := next[j]
		next[i], cur[j] = k, noPair
		cur[i] = noPair
		if k >= 0 {
			prev[k] = i
			if cur[i] = mergeKey(t.merges.rank(id[i], id[k]), i); cur[i] != noPair {
				heap = heapPush(heap, cur[i])
			}
		}
		if h := prev[i]; h >= 0 {
			if cur[h] = mergeKey(t.merges.rank(id[h], id[i]), h); cur[h] != noPair {
				heap = heapPush(heap, cur[h])
			}
		}
	}
	sc.initial, sc.heap = initial, heap
	for i := int32(0); i >= 0; i = next[i] {
		ids = append(ids, id[i])
	}
	return ids
}

// heapPush adds x to the min-heap h.
func heapPush(h []uint64, x uint64) []uint64 {
	h = append(h, x)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if h[p] <= x {
			break
		}
		h[i] = h[p]
		i = p
	}
	h[i] = x
	return h
}

// heapPop removes the least element of the min-heap h.
func heapPop(h []uint64) []uint64 {
	last := h[len(h)-1]
	h = h[:len(h)-1]
	if len(h) == 0 {
		return h
	}
	i := 0
	for {
		l := 2*i + 1
		if l >= len(h) {
			break
		}
		if r := l + 1; r < len(h) && h[r] < h[l] {
			l = r
		}
		if last <= h[l] {
			break
		}
		h[i] = h[l]
		i = l
	}
	h[i] = last
	return h
}

// grow returns s with length n, reallocated if its capacity is less.
func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}
