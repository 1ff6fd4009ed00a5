package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// BPE on text in most scripts spends most of its merges joining the bytes
// of each character into the character's token (three bytes, two merges,
// for a CJK character) before it joins characters into words. A charTable
// lets BPE start from those character tokens instead, where that provably
// gives the same result:
//
// Where every merge ranks after the merges that make its two parts
// (monotone merges: true of vocabularies learned by BPE and of merges
// derived from tiktoken ranks), BPE performs its merges in order of rank.
// A character's own merges then happen exactly as when the character is
// encoded alone, unless some merge joins one of its partial tokens with a
// token outside it, at a rank before that partial token's own merge. The
// table records, for each character whose bytes BPE makes into one token,
// the tokens such merges would join to its first partial tokens (on the
// left) and last ones (on the right); a character is merged in advance only
// where the text next to it in the piece cannot form them. (chars_test.go
// checks both halves: with the dangers, Encode agrees with a plain BPE on
// text made to contain them; without, it does not.)
type charTable struct {
	bmp     *[0x10000]uint16 // by rune: an index into entries, 0 if none
	supp    map[rune]uint16  // the same above the Basic Multilingual Plane
	entries []charEntry      // entries[0] is unused
	// dangers holds the entries' dangerous neighbours: the bytes of tokens
	// that must not end just before the character (left) or start just
	// after it (right) in the piece.
	dangers []string
}

// charEntry is a character that BPE makes into the token tok.
type charEntry struct {
	tok int32
	// left and right have bit b&63 set for the last byte b of each left
	// danger and the first byte of each right danger, so that most
	// characters are cleared by one test per side.
	left, right uint64
	// dangers[start:mid] are the left dangers, dangers[mid:end] the right.
	start, mid, end int32
}

// newCharTable builds the table for the tokens that are one multi-byte
// character, or returns nil if the merges are not monotone.
func newCharTable(t *Tokenizer, merges []merge) *charTable {
	n := len(t.pieces)
	made := make([]int32, n) // 1 + the highest rank of a merge that makes each token
	for rank, m := range merges {
		made[m.result] = max(made[m.result], int32(rank)+1)
	}
	// byLeft[leftStart[id]:leftStart[id+1]] are the ranks of the merges
	// with id on the left, in order; byRight likewise.
	leftStart, rightStart := make([]int32, n+1), make([]int32, n+1)
	for rank, m := range merges {
		if made[m.left] > int32(rank) || made[m.right] > int32(rank) {
			return nil // not monotone
		}
		leftStart[m.left+1]++
		rightStart[m.right+1]++
	}
	for id := range n {
		leftStart[id+1] += leftStart[id]
		rightStart[id+1] += rightStart[id]
	}
	byLeft, byRight := make([]int32, len(merges)), make([]int32, len(merges))
	leftFill, rightFill := append([]int32(nil), leftStart[:n]...), append([]int32(nil), rightStart[:n]...)
	for rank, m := range merges {
		byLeft[leftFill[m.left]] = int32(rank)
		leftFill[m.left]++
		byRight[rightFill[m.right]] = int32(rank)
		rightFill[m.right]++
	}
	ct := &charTable{bmp: new([0x10000]uint16), supp: map[rune]uint16{}, entries: make([]charEntry, 1)}
	for id, p := range t.pieces {
		if t.types[id] != TypeNormal && t.types[id] != TypeByte {
			continue
		}
		r, w := utf8.DecodeRune(p)
		if w < 2 || w != len(p) || ct.get(r) != nil || len(ct.entries) > 0xFFFF {
			continue // not one multi-byte character, or a duplicate of an earlier token
		}
		tok, left, right, ok := t.isolatedChar(p, merges, leftStart, byLeft, rightStart, byRight)
		if !ok {
			continue
		}
		e := charEntry{tok: tok, start: int32(len(ct.dangers))}
		for _, x := range left {
			e.left |= 1 << (x[len(x)-1] & 63)
		}
		for _, x := range right {
			e.right |= 1 << (x[0] & 63)
		}
		ct.dangers = append(append(ct.dangers, left...), right...)
		e.mid, e.end = e.start+int32(len(left)), int32(len(ct.dangers))
		if r < 0x10000 {
			ct.bmp[r] = uint16(len(ct.entries))
		} else {
			ct.supp[r] = uint16(len(ct.entries))
		}
		ct.entries = append(ct.entries, e)
	}
	return ct
}

// isolatedChar runs BPE over the bytes of one character, tracking which
// byte span each part covers, and returns the token it ends with and the
// dangerous neighbours of its partial tokens; ok is false if BPE leaves more
// than one token.
func (t *Tokenizer) isolatedChar(b []byte, merges []merge, leftStart, byLeft, rightStart, byRight []int32) (tok int32, left, right []string, ok bool) {
	type part struct {
		id         int32
		start, end int
	}
	var buf [utf8.UTFMax]part
	parts := buf[:len(b)]
	for i := range b {
		parts[i] = part{t.byteID[b[i]], i, i + 1}
	}
	for len(parts) > 1 {
		best, at := noRank, -1
		for i := 0; i+1 < len(parts); i++ {
			if r := t.merges.rank(parts[i].id, parts[i+1].id); r < best {
				best, at = r, i
			}
		}
		if at < 0 {
			return 0, nil, nil, false
		}
		// The two parts merge at best; until then a part at the start of
		// the character could merge with a token on its left, one at the
		// end with a token on its right.
		// (An empty token is never a part, so it is no danger.)
		for _, p := range parts[at : at+2] {
			if p.start == 0 {
				for _, r := range byRight[rightStart[p.id]:rightStart[p.id+1]] {
					if uint32(r) >= best {
						break
					}
					if x := t.pieces[merges[r].left]; len(x) > 0 {
						left = append(left, string(x))
					}
				}
			}
			if p.end == len(b) {
				for _, r := range byLeft[leftStart[p.id]:leftStart[p.id+1]] {
					if uint32(r) >= best {
						break
					}
					if x := t.pieces[merges[r].right]; len(x) > 0 {
						right = append(right, string(x))
					}
				}
			}
		}
		parts[at] = part{t.merges.results[best], parts[at].start, parts[at+1].end}
		parts = append(parts[:at+1], parts[at+2:]...)
	}
	return parts[0].id, left, right, true
}

// get returns the table's entry for r, nil if none.
func (ct *charTable) get(r rune) *charEntry {
	var i uint16
	if r < 0x10000 {
		i = ct.bmp[r]
	} else {
		i = ct.supp[r]
	}
	if i == 0 {
		return nil
	}
	return &ct.entries[i]
}

// initialParts writes the parts BPE starts a piece from into id, and the
// ranks of merging each part with the next into rank, and returns the
// number of parts: the piece's bytes, with each character of the
// charTable already merged where that is safe. id and rank must be at
// least len(piece) long.
func (t *Tokenizer) initialParts(piece string, id []int32, rank []uint32) int {
	// Single bytes up to the first character that may be merged: all of
	// an ASCII piece.
	i := 0
	for ; i < len(piece) && (piece[i] < utf8.RuneSelf || t.chars == nil); i++ {
		id[i] = t.byteID[piece[i]]
		if i > 0 {
			rank[i-1] = t.byteRank[uint16(piece[i-1])<<8|uint16(piece[i])]
		}
	}
	m := i
	prevByte := -1 // the byte of the previous part if it is a single byte, else -1
	if i > 0 {
		prevByte = int(piece[i-1])
	}
	for i < len(piece) {
		n := 1 // bytes to add as single-byte parts
		if piece[i] >= utf8.RuneSelf && t.chars != nil {
			tok, w, ok := t.charAt(piece, i)
			if ok {
				if m > 0 {
					rank[m-1] = t.merges.rank(id[m-1], tok)
				}
				id[m] = tok
				m++
				i += w
				prevByte = -1
				continue
			}
			n = w
		}
		for end := i + n; i < end; i++ {
			b := piece[i]
			if m > 0 {
				if prevByte >= 0 {
					rank[m-1] = t.byteRank[uint16(prevByte)<<8|uint16(b)]
				} else {
					rank[m-1] = t.merges.rank(id[m-1], t.byteID[b])
				}
			}
			id[m] = t.byteID[b]
			m++
			prevByte = int(b)
		}
	}
	return m
}

// charAt decodes the character at piece[i] (a byte >= 0x80) and returns
// its width and, if the charTable has it and its neighbours in the piece
// allow it, its token and ok.
func (t *Tokenizer) charAt(piece string, i int) (tok int32, w int, ok bool) {
	r, w := decodeRune(piece, i)
	e := t.chars.get(r)
	if e == nil || w == 1 {
		return 0, w, false
	}
	if i > 0 && e.left>>(piece[i-1]&63)&1 != 0 {
		for _, x := range t.chars.dangers[e.start:e.mid] {
			if strings.HasSuffix(piece[:i], x) {
				return 0, w, false
			}
		}
	}
	if i+w < len(piece) && e.right>>(piece[i+w]&63)&1 != 0 {
		for _, x := range t.chars.dangers[e.mid:e.end] {
			if strings.HasPrefix(piece[i+w:], x) {
				return 0, w, false
			}
		}
	}
	return e.tok, w, true
}
