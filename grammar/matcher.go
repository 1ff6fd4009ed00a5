package grammar

import (
	"bytes"
	"encoding/binary"
)

// The states of a frame. stStart (a value not begun) is common to all kinds.
const (
	stStart uint8 = iota
	// objects: a is the next property index; in obKey a is the first
	// candidate property and b the bytes of its key matched
	obOpen
	obKey
	obAfter
	obComma
)

const (
	mpOpen uint8 = iota + 1 // maps (any object)
	mpColon
	mpAfter
	mpComma
)

const (
	arOpen uint8 = iota + 1 // arrays
	arAfter
	arComma
)

const (
	sBody uint8 = iota + 1 // strings; in sHex a counts the hex digits
	sEsc
	sHex
	sUTF // a: continuation bytes left; b, c: the range of the next one
)

const (
	nMinus uint8 = iota + 1 // numbers; a counts the digits of the part
	nZero
	nInt
	nDot
	nFrac
	nE
	nESign
	nExp
)

// frame is the state of one value being matched. For literals a is the
// first candidate and b the bytes matched.
type frame struct {
	n       *node
	st      uint8
	a, b, c int32
}

// stack is a persistent stack of frames: steps share the frames below the
// top, so a state is cheap to copy and to branch.
type stack struct {
	f     frame
	up    *stack
	depth int32
}

func (s *stack) with(f frame) *stack { return &stack{f: f, up: s.up, depth: s.depth} }

// maxStacks bounds the parses a matcher follows at once (anyOf branches
// that accept the same bytes); dropping some keeps every kept one valid.
const maxStacks = 32

// Matcher matches the bytes of one output against a grammar. A nil stack in
// its set means a complete value.
type Matcher struct {
	g      *Grammar
	stacks []*stack
}

// NewMatcher returns a matcher at the start of the grammar.
func (g *Grammar) NewMatcher() *Matcher {
	return &Matcher{g: g, stacks: push(nil, g.root, nil)}
}

// Clone returns an independent copy of m.
func (m *Matcher) Clone() *Matcher {
	return &Matcher{g: m.g, stacks: append([]*stack(nil), m.stacks...)}
}

// Advance consumes bs if the grammar allows all of them, and reports
// whether it did; on false m is unchanged.
func (m *Matcher) Advance(bs []byte) bool {
	cur := m.stacks
	for _, c := range bs {
		cur = advance(cur, c, nil)
		if len(cur) == 0 {
			return false
		}
	}
	m.stacks = cur
	return true
}

// CanEnd reports whether the bytes so far are a complete instance.
func (m *Matcher) CanEnd() bool {
	for _, s := range m.stacks {
		if s == nil || (s.up == nil && accepting(s.f)) {
			return true
		}
	}
	return false
}

// Done reports whether the instance is complete and nothing may follow.
func (m *Matcher) Done() bool {
	for _, s := range m.stacks {
		if s != nil {
			return false
		}
	}
	return true
}

// MinBytes is the fewest bytes that complete the instance from here.
func (m *Matcher) MinBytes() int { return minDist(m.stacks) }

func minDist(stacks []*stack) int {
	d := inf
	for _, s := range stacks {
		d = min(d, dist(s))
	}
	return d
}

// advance steps every stack over c, appending the survivors to out.
func advance(stacks []*stack, c byte, out []*stack) []*stack {
	out = out[:0]
	for _, s := range stacks {
		if s == nil {
			continue
		}
		out = step(s, c, out)
	}
	if len(out) > 1 {
		out = dedupe(out)
	}
	return out
}

func dedupe(ss []*stack) []*stack {
	k := 0
outer:
	for _, s := range ss {
		for _, t := range ss[:k] {
			if sameStack(s, t) {
				continue outer
			}
		}
		if k < maxStacks {
			ss[k] = s
			k++
		}
	}
	return ss[:k]
}

func sameStack(a, b *stack) bool {
	for a != b {
		if a == nil || b == nil || a.f != b.f {
			return false
		}
		a, b = a.up, b.up
	}
	return true
}

// push begins a value of n on top of parent (nil at the root), appending
// one stack per way to begin it.
func push(parent *stack, n *node, out []*stack) []*stack {
	var seen [8]*node
	return pushSeen(parent, n, out, seen[:0])
}

// pushSeen is push with the anyOf nodes being expanded: one met again
// (as in {"anyOf":[{"$ref":"#"},...]}) adds no way to begin.
func pushSeen(parent *stack, n *node, out []*stack, seen []*node) []*stack {
	if n.minLen >= inf {
		return out
	}
	var depth int32
	if parent != nil {
		depth = parent.depth
	}
	if depth >= maxDepth {
		return out
	}
	if n.kind == kAnyOf {
		for _, s := range seen {
			if s == n {
				return out
			}
		}
		seen = append(seen, n)
		for _, a := range n.alts {
			out = pushSeen(parent, a, out, seen)
		}
		return out
	}
	return append(out, &stack{f: frame{n: n}, up: parent, depth: depth + 1})
}

// pass hands c to s's parent once s's value (a number or a literal, which
// end without a byte of their own) is complete.
func pass(s *stack, c byte, out []*stack) []*stack {
	if s.up == nil {
		return out
	}
	return step(s.up, c, out)
}

// step advances s over c.
func step(s *stack, c byte, out []*stack) []*stack {
	f := s.f
	n := f.n
	switch n.kind {
	case kObject:
		return stepObject(s, c, out)
	case kMap:
		switch f.st {
		case stStart:
			if c == '{' {
				return append(out, s.with(frame{n: n, st: mpOpen}))
			}
		case mpOpen, mpComma:
			if c == '"' && s.depth < maxDepth {
				return append(out, &stack{f: frame{n: keyNode, st: sBody}, up: s.with(frame{n: n, st: mpColon}), depth: s.depth + 1})
			}
			if c == '}' && f.st == mpOpen {
				return append(out, s.up)
			}
		case mpColon:
			if c == ':' {
				return push(s.with(frame{n: n, st: mpAfter}), anyGrammar.any, out)
			}
		case mpAfter:
			switch c {
			case ',':
				return append(out, s.with(frame{n: n, st: mpComma}))
			case '}':
				return append(out, s.up)
			}
		}
	case kArray:
		switch f.st {
		case stStart:
			if c == '[' {
				return append(out, s.with(frame{n: n, st: arOpen}))
			}
		case arOpen, arComma:
			if c == ']' && f.st == arOpen {
				return append(out, s.up)
			}
			var kids [maxStacks]*stack
			for _, k := range push(s.with(frame{n: n, st: arAfter}), n.items, kids[:0]) {
				out = step(k, c, out)
			}
			return out
		case arAfter:
			switch c {
			case ',':
				return append(out, s.with(frame{n: n, st: arComma}))
			case ']':
				return append(out, s.up)
			}
		}
	case kString:
		return stepString(s, c, out)
	case kNumber, kInteger:
		return stepNumber(s, c, out)
	case kLiteral:
		pre := n.lits[f.a][:f.b]
		for k := int(f.a); k < len(n.lits); k++ {
			l := n.lits[k]
			if len(l) < len(pre) || !bytes.Equal(l[:len(pre)], pre) {
				break // the literals sharing the prefix are contiguous
			}
			if len(l) > len(pre) && l[len(pre)] == c {
				return append(out, s.with(frame{n: n, a: int32(k), b: f.b + 1}))
			}
		}
		if accepting(f) {
			return pass(s, c, out)
		}
	}
	return out
}

// keyNode is the string node of map keys.
var keyNode = &node{kind: kString, id: -1, minLen: 2}

// anyGrammar holds the shared node of an arbitrary value: a map's values.
var anyGrammar = func() *Grammar {
	c := newCompiler(nil)
	return c.finish(c.anyNode())
}()

func stepObject(s *stack, c byte, out []*stack) []*stack {
	f := s.f
	n := f.n
	switch f.st {
	case stStart:
		if c == '{' {
			return append(out, s.with(frame{n: n, st: obOpen}))
		}
	case obOpen, obComma:
		if c == '"' {
			if k := firstCand(n, int(f.a)); k >= 0 {
				return append(out, s.with(frame{n: n, st: obKey, a: int32(k), b: 1}))
			}
		}
		if c == '}' && f.st == obOpen && n.reqFrom[f.a] == len(n.props) {
			return append(out, s.up)
		}
	case obKey:
		j, off := int(f.a), int(f.b)
		pre := n.props[j].key[:off]
		for k := j; k <= lastCand(n, j); k++ {
			key := n.props[k].key
			if n.props[k].value.minLen >= inf || len(key) <= off || !bytes.Equal(key[:off], pre) || key[off] != c {
				continue
			}
			if off+1 == len(key) {
				return push(s.with(frame{n: n, st: obAfter, a: int32(k + 1)}), n.props[k].value, out)
			}
			return append(out, s.with(frame{n: n, st: obKey, a: int32(k), b: int32(off + 1)}))
		}
	case obAfter:
		switch c {
		case ',':
			if firstCand(n, int(f.a)) >= 0 {
				return append(out, s.with(frame{n: n, st: obComma, a: f.a}))
			}
		case '}':
			if n.reqFrom[f.a] == len(n.props) {
				return append(out, s.up)
			}
		}
	}
	return out
}

// lastCand is the last property that may come next when i may: optional
// ones may be skipped, the first required one may not.
func lastCand(n *node, i int) int { return min(n.reqFrom[i], len(n.props)-1) }

// firstCand is the first property that may come next from i, or -1.
func firstCand(n *node, i int) int {
	if i >= len(n.props) {
		return -1
	}
	for k := i; k <= lastCand(n, i); k++ {
		if n.props[k].value.minLen < inf {
			return k
		}
	}
	return -1
}

func stepString(s *stack, c byte, out []*stack) []*stack {
	f := s.f
	n := f.n
	body := func() []*stack { return append(out, s.with(frame{n: n, st: sBody})) }
	switch f.st {
	case stStart:
		if c == '"' {
			return body()
		}
	case sBody:
		switch {
		case c == '"':
			return append(out, s.up)
		case c == '\\':
			return append(out, s.with(frame{n: n, st: sEsc}))
		case c < 0x20:
		case c < 0x80:
			return append(out, s)
		case c >= 0xC2 && c <= 0xDF:
			return append(out, s.with(frame{n: n, st: sUTF, a: 1, b: 0x80, c: 0xBF}))
		case c == 0xE0:
			return append(out, s.with(frame{n: n, st: sUTF, a: 2, b: 0xA0, c: 0xBF}))
		case c == 0xED:
			return append(out, s.with(frame{n: n, st: sUTF, a: 2, b: 0x80, c: 0x9F}))
		case c >= 0xE1 && c <= 0xEF:
			return append(out, s.with(frame{n: n, st: sUTF, a: 2, b: 0x80, c: 0xBF}))
		case c == 0xF0:
			return append(out, s.with(frame{n: n, st: sUTF, a: 3, b: 0x90, c: 0xBF}))
		case c >= 0xF1 && c <= 0xF3:
			return append(out, s.with(frame{n: n, st: sUTF, a: 3, b: 0x80, c: 0xBF}))
		case c == 0xF4:
			return append(out, s.with(frame{n: n, st: sUTF, a: 3, b: 0x80, c: 0x8F}))
		}
	case sUTF:
		if int32(c) >= f.b && int32(c) <= f.c {
			if f.a == 1 {
				return body()
			}
			return append(out, s.with(frame{n: n, st: sUTF, a: f.a - 1, b: 0x80, c: 0xBF}))
		}
	case sEsc:
		switch c {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			return body()
		case 'u':
			return append(out, s.with(frame{n: n, st: sHex}))
		}
	case sHex:
		if isHex(c) {
			if f.a == 3 {
				return body()
			}
			return append(out, s.with(frame{n: n, st: sHex, a: f.a + 1}))
		}
	}
	return out
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func stepNumber(s *stack, c byte, out []*stack) []*stack {
	f := s.f
	n := f.n
	to := func(st uint8, a int32) []*stack { return append(out, s.with(frame{n: n, st: st, a: a})) }
	real := n.kind == kNumber
	switch f.st {
	case stStart, nMinus:
		switch {
		case c == '-' && f.st == stStart:
			return to(nMinus, 0)
		case c == '0':
			return to(nZero, 1)
		case c >= '1' && c <= '9':
			return to(nInt, 1)
		}
		return out
	case nZero, nInt:
		switch {
		case f.st == nInt && isDigit(c) && f.a < maxIntDigits:
			return to(nInt, f.a+1)
		case real && c == '.':
			return to(nDot, 0)
		case real && (c == 'e' || c == 'E'):
			return to(nE, 0)
		}
	case nDot:
		if isDigit(c) {
			return to(nFrac, 1)
		}
		return out
	case nFrac:
		switch {
		case isDigit(c) && f.a < maxFracDigits:
			return to(nFrac, f.a+1)
		case c == 'e' || c == 'E':
			return to(nE, 0)
		}
	case nE, nESign:
		switch {
		case (c == '+' || c == '-') && f.st == nE:
			return to(nESign, 0)
		case isDigit(c):
			return to(nExp, 1)
		}
		return out
	case nExp:
		if isDigit(c) && f.a < maxExpDigits {
			return to(nExp, f.a+1)
		}
	}
	return pass(s, c, out)
}

// accepting reports whether f's value is complete without another byte
// (numbers and literals end where the next value's byte begins).
func accepting(f frame) bool {
	switch f.n.kind {
	case kNumber, kInteger:
		switch f.st {
		case nZero, nInt, nFrac, nExp:
			return true
		}
	case kLiteral:
		return len(f.n.lits[f.a]) == int(f.b)
	}
	return false
}

// dist is the fewest bytes that complete every value on s.
func dist(s *stack) int {
	d := 0
	for ; s != nil; s = s.up {
		d = addCap(d, cost(s.f))
	}
	return d
}

// restCost is the bytes of the required properties from i on, with a
// comma before each if comma (something came before) or between them.
func restCost(n *node, i int, comma bool) int {
	commas := n.reqCnt[i]
	if !comma {
		commas = max(0, commas-1)
	}
	return addCap(n.reqSum[i], commas)
}

// cost is the fewest bytes that complete f's own value, its children's
// counted in their frames.
func cost(f frame) int {
	n := f.n
	if f.st == stStart && n.kind != kLiteral {
		return n.minLen
	}
	switch n.kind {
	case kObject:
		switch f.st {
		case obOpen:
			return addCap(restCost(n, int(f.a), false), 1)
		case obAfter:
			return addCap(restCost(n, int(f.a), true), 1)
		case obComma, obKey:
			best := inf
			j := int(f.a)
			off := 0
			if f.st == obKey {
				off = int(f.b)
			}
			pre := n.props[j].key[:off]
			for k := j; k <= lastCand(n, j); k++ {
				p := n.props[k]
				if len(p.key) < off || !bytes.Equal(p.key[:off], pre) {
					continue
				}
				c := addCap(addCap(len(p.key)-off, p.value.minLen), addCap(restCost(n, k+1, true), 1))
				best = min(best, c)
			}
			return best
		}
	case kMap:
		switch f.st {
		case mpOpen, mpAfter:
			return 1
		case mpColon:
			return 3 // :0}
		case mpComma:
			return 5 // "":0}
		}
	case kArray:
		switch f.st {
		case arOpen, arAfter:
			return 1
		case arComma:
			return addCap(n.items.minLen, 1)
		}
	case kString:
		switch f.st {
		case sBody:
			return 1
		case sEsc:
			return 2
		case sHex:
			return int(4-f.a) + 1
		case sUTF:
			return int(f.a) + 1
		}
	case kNumber, kInteger:
		switch f.st {
		case nZero, nInt, nFrac, nExp:
			return 0
		}
		return 1
	case kLiteral:
		best := inf
		pre := n.lits[f.a][:f.b]
		for k := int(f.a); k < len(n.lits); k++ {
			l := n.lits[k]
			if len(l) < len(pre) || !bytes.Equal(l[:len(pre)], pre) {
				break
			}
			best = min(best, len(l)-len(pre))
		}
		return best
	}
	return inf
}

// appendKey appends a key identifying the matcher's state (for caching
// masks): the frames of every stack.
func (m *Matcher) appendKey(b []byte) []byte {
	for _, s := range m.stacks {
		for ; s != nil; s = s.up {
			b = binary.AppendVarint(b, int64(s.f.n.id))
			b = append(b, s.f.st)
			b = binary.AppendVarint(b, int64(s.f.a))
			b = binary.AppendVarint(b, int64(s.f.b))
			b = binary.AppendVarint(b, int64(s.f.c))
		}
		b = append(b, 0xff) // no varint starts a stack with 0xff 0xff
		b = append(b, 0xff)
	}
	return b
}
