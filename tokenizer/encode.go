package tokenizer

import (
	"slices"

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
	for i := 0; i < len(text); {
		j := t.pretok(text, i)
		ids = t.encodePiece(ids, text[i:j])
		i = j
	}
	return ids
}

func (t *Tokenizer) encodePiece(ids []int32, piece string) []int32 {
	if len(piece) == 1 {
		return append(ids, t.byteID[piece[0]])
	}
	if t.wholeWords {
		if id, ok := t.normal[piece]; ok {
			return append(ids, id)
		}
	}
	return t.bpe(ids, piece)
}

// pair returns the rank and result of merging left and right, or noRank.
func (t *Tokenizer) pair(left, right int32) (rank uint32, result int32) {
	v, ok := t.merges[uint64(uint32(left))<<32|uint64(uint32(right))]
	if !ok {
		return noRank, -1
	}
	return uint32(v >> 32), int32(uint32(v))
}

// part is one token of a piece during BPE, with what merging it with the
// next part would give.
type part struct {
	id     int32
	rank   uint32
	merged int32
}

// bpe appends the BPE encoding of piece: start from its bytes and merge the
// adjacent pair of lowest rank (the leftmost among equals) until no pair can
// merge. Pieces are short (words), so a linear scan for the best pair beats a
// heap; long pieces are split into linked runs by bpeLong.
func (t *Tokenizer) bpe(ids []int32, piece string) []int32 {
	if len(piece) > maxLinearBPE {
		return t.bpeLong(ids, piece)
	}
	var buf [maxLinearBPE]part
	parts := buf[:len(piece)]
	for i := range parts {
		parts[i].id = t.byteID[piece[i]]
	}
	for i := 0; i+1 < len(parts); i++ {
		parts[i].rank, parts[i].merged = t.pair(parts[i].id, parts[i+1].id)
	}
	parts[len(parts)-1].rank = noRank
	for {
		best, at := noRank, -1
		for i := 0; i+1 < len(parts); i++ {
			if parts[i].rank < best {
				best, at = parts[i].rank, i
			}
		}
		if at < 0 {
			break
		}
		parts[at].id = parts[at].merged
		parts = append(parts[:at+1], parts[at+2:]...)
		if at+1 < len(parts) {
			parts[at].rank, parts[at].merged = t.pair(parts[at].id, parts[at+1].id)
		} else {
			parts[at].rank = noRank
		}
		if at > 0 {
			parts[at-1].rank, parts[at-1].merged = t.pair(parts[at-1].id, parts[at].id)
		}
	}
	for _, p := range parts {
		ids = append(ids, p.id)
	}
	return ids
}

// maxLinearBPE is the longest piece that bpe handles with its quadratic scan.
const maxLinearBPE = 128

// bpeLong is bpe for long pieces (runs of letters or spaces of any length):
// the same merges, found with a heap over a linked list, so the cost grows as
// n log n rather than n².
func (t *Tokenizer) bpeLong(ids []int32, piece string) []int32 {
	n := len(piece)
	id := make([]int32, n)
	prev := make([]int32, n)
	next := make([]int32, n)
	for i := 0; i < n; i++ {
		id[i] = t.byteID[piece[i]]
		prev[i] = int32(i - 1)
		next[i] = int32(i + 1)
	}
	next[n-1] = -1
	h := &pairHeap{}
	push := func(i int32) {
		j := next[i]
		if j < 0 {
			return
		}
		if rank, _ := t.pair(id[i], id[j]); rank != noRank {
			h.push(heapEntry{rank: rank, left: i, right: j, leftID: id[i], rightID: id[j]})
		}
	}
	for i := int32(0); i+1 < int32(n); i++ {
		push(i)
	}
	for h.len() > 0 {
		e := h.pop()
		i, j := e.left, e.right
		if next[i] != j || id[i] != e.leftID || id[j] != e.rightID {
			continue // stale: a node of this pair has merged since
		}
		_, id[i] = t.pair(id[i], id[j])
		id[j] = -1
		next[i] = next[j]
		if next[j] >= 0 {
			prev[next[j]] = i
		}
		push(i)
		if prev[i] >= 0 {
			push(prev[i])
		}
	}
	for i := int32(0); i >= 0; i = next[i] {
		ids = append(ids, id[i])
	}
	return ids
}

// heapEntry is a candidate merge of node left with its successor right, valid
// while both still hold the ids it was made from.
type heapEntry struct {
	rank            uint32
	left, right     int32
	leftID, rightID int32
}

// pairHeap is a min-heap of candidate merges by (rank, position): the lowest
// rank first, the leftmost among equal ranks, as in the linear scan.
type pairHeap struct{ e []heapEntry }

func (h *pairHeap) len() int { return len(h.e) }

func (h *pairHeap) less(a, b int) bool {
	if h.e[a].rank != h.e[b].rank {
		return h.e[a].rank < h.e[b].rank
	}
	return h.e[a].left < h.e[b].left
}

func (h *pairHeap) push(x heapEntry) {
	h.e = append(h.e, x)
	for i := len(h.e) - 1; i > 0; {
		p := (i - 1) / 2
		if !h.less(i, p) {
			break
		}
		h.e[i], h.e[p] = h.e[p], h.e[i]
		i = p
	}
}

func (h *pairHeap) pop() heapEntry {
	top := h.e[0]
	last := len(h.e) - 1
	h.e[0] = h.e[last]
	h.e = h.e[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(h.e) && h.less(l, m) {
			m = l
		}
		if r < len(h.e) && h.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		h.e[i], h.e[m] = h.e[m], h.e[i]
		i = m
	}
	return top
}
