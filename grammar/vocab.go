package grammar

import (
	"bytes"
	"encoding/binary"
	"slices"
	"sync"
)

// Vocab is a tokenizer's vocabulary as a trie of the tokens' bytes, for
// computing masks. It is safe for concurrent use.
type Vocab struct {
	size int
	// Node i's edges are edgeByte/edgeNode[edges[i]:edges[i+1]]; the
	// tokens whose bytes end at node i are ids[toks[i]:toks[i+1]].
	edges    []int32
	edgeByte []byte
	edgeNode []int32
	toks     []int32
	ids      []int32
	maxLen   int
	// special[i] reports whether a byte below node i ends a JSON string
	// body ('"', '\\' or a control character): the subtrees without one
	// give the same tokens inside every string (see bodyEntry).
	special []bool

	bodyOnce sync.Once
	body     *maskEntry

	mu    sync.Mutex
	cache map[string]*maskEntry
	key   []byte
}

// maxMasks bounds the masks a Vocab caches (25 KB each for a 201k vocabulary).
const maxMasks = 1024

// NewVocab builds the trie of tokens, where tokens[id] is token id's bytes;
// tokens with no bytes (special tokens) are never allowed by a mask.
func NewVocab(tokens [][]byte) *Vocab {
	order := make([]int32, 0, len(tokens))
	for id, t := range tokens {
		if len(t) > 0 {
			order = append(order, int32(id))
		}
	}
	slices.SortFunc(order, func(a, b int32) int {
		if c := bytes.Compare(tokens[a], tokens[b]); c != 0 {
			return c
		}
		return int(a - b)
	})
	v := &Vocab{size: len(tokens), cache: map[string]*maskEntry{}}
	// Nodes are numbered in the order build visits them; each node's
	// edges are laid down before its children are built, so they stay
	// contiguous.
	type pending struct {
		lo, hi, depth int
		node          int32
	}
	v.edges = []int32{0}
	v.toks = []int32{0}
	nodes := 1
	var build func(lo, hi, depth int)
	build = func(lo, hi, depth int) {
		// Tokens ending here come first in sorted order.
		for lo < hi && len(tokens[order[lo]]) == depth {
			v.ids = append(v.ids, order[lo])
			lo++
		}
		v.maxLen = max(v.maxLen, depth)
		v.toks = append(v.toks, int32(len(v.ids)))
		var kids []pending
		for i := lo; i < hi; {
			b := tokens[order[i]][depth]
			j := i
			for j < hi && tokens[order[j]][depth] == b {
				j++
			}
			kids = append(kids, pending{i, j, depth + 1, 0})
			i = j
		}
		start := len(v.edgeByte)
		for k := range kids {
			v.edgeByte = append(v.edgeByte, tokens[order[kids[k].lo]][depth])
			v.edgeNode = append(v.edgeNode, 0)
		}
		v.edges = append(v.edges, int32(len(v.edgeByte)))
		for k, kid := range kids {
			v.edgeNode[start+k] = int32(nodes)
			nodes++
			build(kid.lo, kid.hi, kid.depth)
		}
	}
	build(0, len(order), 0)
	// edges[i]/toks[i] were appended in visiting order, which is node
	// order; children come after their parents.
	v.special = make([]bool, nodes)
	for i := nodes - 1; i >= 0; i-- {
		for e := v.edges[i]; e < v.edges[i+1]; e++ {
			if specialByte(v.edgeByte[e]) || v.special[v.edgeNode[e]] {
				v.special[i] = true
				break
			}
		}
	}
	return v
}

// specialByte reports whether c ends or escapes a JSON string body.
func specialByte(c byte) bool { return c == '"' || c == '\\' || c < 0x20 }

// bodyEntry is the mask of the tokens made only of bytes that stay in a
// string body (valid UTF-8, no special byte), from the body state, with
// how many bytes each adds to the shortest ending (a token that stops
// inside a character) in rising. Inside any string, these are allowed
// whatever the stack below, so masks there walk only the paths with a
// special byte.
func (v *Vocab) bodyEntry() *maskEntry {
	v.bodyOnce.Do(func() {
		w := walker{v: v, e: &maskEntry{mask: make([]uint64, (v.size+63)/64)}, before: 1, plainOnly: true,
			bufs: make([][]*stack, v.maxLen+1)}
		w.walk(0, []*stack{{f: frame{n: keyNode, st: sBody}, depth: 1}}, 0, false)
		v.body = w.e
	})
	return v.body
}

// Mask returns the tokens whose bytes m accepts next, one bit per token id
// (bit id%64 of word id/64), keeping only those after which the value can
// still end within limit bytes (limit < 0: no limit). A caller with n
// tokens left that keeps limit at most n-1 (one byte-sized step each)
// always finishes in time, since every vocabulary of byte-level BPE has a
// token for each byte. The mask may be shared: the caller must not change it.
func (v *Vocab) Mask(m *Matcher, limit int) []uint64 {
	d := m.MinBytes()
	tight := limit >= 0 && limit < d
	e := v.entry(m, tight)
	if limit < 0 || tight || limit >= e.maxAfter {
		return e.mask
	}
	mask := append([]uint64(nil), e.mask...)
	for _, t := range e.rising {
		if int(t.after) > limit {
			mask[t.id/64] &^= 1 << (t.id % 64)
		}
	}
	return mask
}

// maskEntry is a state's cached mask. rising lists the allowed tokens
// after which the value needs more bytes than before, with that number;
// maxAfter is its largest. In tight entries only tokens that bring the end
// closer are allowed.
type maskEntry struct {
	mask     []uint64
	rising   []risingToken
	maxAfter int
}

type risingToken struct{ id, after int32 }

func (v *Vocab) entry(m *Matcher, tight bool) *maskEntry {
	v.mu.Lock()
	key := binary.AppendUvarint(v.key[:0], m.g.id)
	if tight {
		key = append(key, 1)
	} else {
		key = append(key, 0)
	}
	key = m.appendKey(key)
	v.key = key
	if e, ok := v.cache[string(key)]; ok {
		v.mu.Unlock()
		return e
	}
	k := string(key)
	v.mu.Unlock()
	d := minDist(m.stacks)
	w := walker{v: v, e: &maskEntry{mask: make([]uint64, (v.size+63)/64)}, tight: tight, before: d,
		bufs: make([][]*stack, v.maxLen+1)}
	if len(m.stacks) == 1 && m.stacks[0] != nil && m.stacks[0].f.n.kind == kString && m.stacks[0].f.st == sBody {
		w.specialOnly = true
		if !tight { // body tokens never bring the end closer
			b := v.bodyEntry()
			copy(w.e.mask, b.mask)
			for _, r := range b.rising {
				after := d - 1 + int(r.after)
				w.e.rising = append(w.e.rising, risingToken{r.id, int32(after)})
				w.e.maxAfter = max(w.e.maxAfter, after)
			}
		}
	}
	w.walk(0, m.stacks, 0, false)
	v.mu.Lock()
	if len(v.cache) >= maxMasks {
		for old := range v.cache { // evict one, arbitrarily
			delete(v.cache, old)
			break
		}
	}
	v.cache[k] = w.e
	v.mu.Unlock()
	return w.e
}

type walker struct {
	v      *Vocab
	e      *maskEntry
	tight  bool
	before int
	// plainOnly skips special bytes (bodyEntry); specialOnly visits only
	// the paths with one, and takes the tokens that have one.
	plainOnly, specialOnly bool
	bufs                   [][]*stack // one per depth, reused across siblings
}

// walk visits node's subtree with the stacks reached by its bytes;
// sawSpecial says whether those bytes hold a special one.
func (w *walker) walk(node int32, stacks []*stack, depth int, sawSpecial bool) {
	v := w.v
	for e := v.edges[node]; e < v.edges[node+1]; e++ {
		c, child := v.edgeByte[e], v.edgeNode[e]
		sp := sawSpecial || specialByte(c)
		if w.plainOnly && sp || w.specialOnly && !sp && !v.special[child] {
			continue
		}
		next := advance(stacks, c, w.bufs[depth])
		w.bufs[depth] = next
		if len(next) == 0 {
			continue
		}
		if ids := v.ids[v.toks[child]:v.toks[child+1]]; len(ids) > 0 && (sp || !w.specialOnly) {
			after := minDist(next)
			if !w.tight || after < w.before {
				for _, id := range ids {
					w.e.mask[id/64] |= 1 << (id % 64)
					if after > w.before {
						w.e.rising = append(w.e.rising, risingToken{id, int32(min(after, inf))})
						w.e.maxAfter = max(w.e.maxAfter, after)
					}
				}
			}
		}
		// The children reuse deeper buffers; next stays intact.
		w.walk(child, next, depth+1, sp)
	}
}
