package tokenizer

import (
	"sync"
	"unicode"
	"unicode/utf8"
)

// Pre-tokenization splits text into pieces that BPE encodes independently.
// The reference tokenizers define the pieces by a regular expression with a
// negative lookahead, which Go's regexp lacks, so each pattern has a
// hand-written scanner below that follows the regex engine's leftmost-first,
// backtracking semantics exactly.

// The pre-tokenizer patterns, byte for byte as the reference tokenizers
// (tiktoken, HF tokenizer.json) spell them: GPT-2's, o200k's (gpt-oss),
// Llama 3's (cl100k's) and Qwen2's, which is Llama 3's with one digit per
// piece.
const (
	gpt2Pattern   = `'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	qwen2Pattern  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	o200kPattern  = `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// preTokenizer returns the end of the piece that starts at byte offset i
// (i < len(s)); the result is always > i.
type preTokenizer func(s string, i int) int

// pretokenizers maps the names used by GGUF's tokenizer.ggml.pre, and the
// regexes used by tokenizer.json, to scanners.
var (
	pretokenizerByPre = map[string]preTokenizer{
		"gpt-2":     gpt2Next,
		"gpt-4o":    o200kNext,
		"llama-bpe": llama3Next,
		"qwen2":     qwen2Next,
	}
	pretokenizerByRegex = map[string]preTokenizer{
		gpt2Pattern:   gpt2Next,
		o200kPattern:  o200kNext,
		llama3Pattern: llama3Next,
		qwen2Pattern:  qwen2Next,
	}
	// preByRegex is the tokenizer.ggml.pre name llama.cpp gives each
	// pattern, which a converted file carries.
	preByRegex = map[string]string{
		gpt2Pattern: "gpt-2", o200kPattern: "gpt-4o", llama3Pattern: "llama-bpe", qwen2Pattern: "qwen2",
	}
)

// Character classes, as bits. A rune may have several.
const (
	cL    = 1 << iota // \p{L}
	cN                // \p{N}
	cS                // \s (Unicode White_Space)
	cU                // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
	cW                // [\p{Ll}\p{Lm}\p{Lo}\p{M}]
	cCRLF             // \r or \n
)

// The class of a rune and its width in bytes travel together as one uint,
// class | width<<8 (see classAt).

// asciiInfo holds class | 1<<8 for every ASCII byte, and bmpClass the
// class of every rune in the Basic Multilingual Plane; bmpClass is built on
// first use, since most programs that link this package never tokenize.
var (
	asciiInfo    [utf8.RuneSelf]uint16
	bmpClass     *[0x10000]uint8
	bmpClassOnce sync.Once
)

func init() {
	for b := range asciiInfo {
		asciiInfo[b] = uint16(computeClass(rune(b))) | 1<<8
	}
}

func buildClassTable() {
	bmpClassOnce.Do(func() {
		t := new([0x10000]uint8)
		for r := range t {
			t[r] = computeClass(rune(r))
		}
		bmpClass = t
	})
}

func computeClass(r rune) uint8 {
	var c uint8
	switch {
	case unicode.IsLetter(r):
		c = cL
		switch {
		case unicode.Is(unicode.Ll, r):
			c |= cW
		case unicode.Is(unicode.Lu, r), unicode.Is(unicode.Lt, r):
			c |= cU
		default: // Lm, Lo
			c |= cU | cW
		}
	case unicode.IsMark(r):
		c = cU | cW
	case unicode.IsNumber(r):
		c = cN
	case unicode.IsSpace(r):
		c = cS
		if r == '\r' || r == '\n' {
			c |= cCRLF
		}
	}
	return c
}

// classAt returns class | width<<8 for the rune at s[i]. Invalid UTF-8 is
// one byte of class 0 (like a symbol), so scanning never stalls. It is
// small enough for the compiler to inline, which matters for ASCII text;
// other runes take classSlow.
func classAt(s string, i int) uint {
	if b := s[i]; b < utf8.RuneSelf {
		return uint(asciiInfo[b])
	}
	return classSlow(s, i)
}

// split separates classAt's result into the class and the width.
func split(info uint) (class uint8, width int) { return uint8(info), int(info >> 8) }

// classSlow is classAt for a byte >= 0x80.
func classSlow(s string, i int) uint {
	r, w := decodeRune(s, i)
	switch {
	case w == 1:
		return 1 << 8 // invalid: class 0
	case r < 0x10000:
		return uint(bmpClass[r]) | uint(w)<<8
	}
	return uint(computeClass(r)) | 4<<8
}

// decodeRune decodes the UTF-8 sequence at s[i] (s[i] >= 0x80) as
// utf8.DecodeRuneInString does, a malformed sequence being one byte of
// utf8.RuneError, with the two- and three-byte forms by hand.
func decodeRune(s string, i int) (r rune, width int) {
	b0 := s[i]
	switch {
	case b0 < 0xE0:
		if b0 >= 0xC2 && i+1 < len(s) && isCont(s[i+1]) {
			return rune(b0&0x1F)<<6 | rune(s[i+1]&0x3F), 2
		}
	case b0 < 0xF0:
		if i+2 < len(s) && isCont(s[i+1]) && isCont(s[i+2]) {
			r = rune(b0&0x0F)<<12 | rune(s[i+1]&0x3F)<<6 | rune(s[i+2]&0x3F)
			if r >= 0x800 && (r < 0xD800 || r > 0xDFFF) { // not overlong, not a surrogate
				return r, 3
			}
		}
	default:
		return utf8.DecodeRuneInString(s[i:])
	}
	return utf8.RuneError, 1
}

func isCont(b byte) bool { return b&0xC0 == 0x80 }

// scanWhile returns the end of the run of runes from i that have any of the
// class bits in want.
func scanWhile(s string, i int, want uint8) int {
	for i < len(s) {
		c, w := split(classAt(s, i))
		if c&want == 0 {
			break
		}
		i += w
	}
	return i
}

// scanOther returns the end of the run of runes from i that are none of
// \s, \p{L}, \p{N}.
func scanOther(s string, i int) int {
	for i < len(s) {
		c, w := split(classAt(s, i))
		if c&(cS|cL|cN) != 0 {
			break
		}
		i += w
	}
	return i
}

// whitespaceTail handles the shared ending of both patterns,
// `\s+(?!\S)|\s+`, at a whitespace rune at i: the whole run if it ends the
// text, else the run less its last rune (which the next piece takes as its
// leading space), else (a run of one rune) that rune.
func whitespaceTail(s string, i int) int {
	j, last := i, i
	for j < len(s) {
		c, w := split(classAt(s, j))
		if c&cS == 0 {
			break
		}
		last = j
		j += w
	}
	if j == len(s) || last == i {
		return j
	}
	return last
}

// gpt2Next scans one piece of gpt2Pattern.
func gpt2Next(s string, i int) int {
	c, w := split(classAt(s, i))
	if s[i] == '\'' && i+1 < len(s) {
		switch s[i+1] {
		case 's', 'd', 'm', 't':
			return i + 2
		case 'l', 'v', 'r':
			if i+2 < len(s) {
				pair := s[i+1 : i+3]
				if pair == "ll" || pair == "ve" || pair == "re" {
					return i + 3
				}
			}
		}
	}
	if s[i] == ' ' && i+1 < len(s) {
		c2, w2 := split(classAt(s, i+1))
		switch {
		case c2&cL != 0:
			return scanWhile(s, i+1+w2, cL)
		case c2&cN != 0:
			return scanWhile(s, i+1+w2, cN)
		case c2&cS == 0:
			return scanOther(s, i+1+w2)
		}
	}
	switch {
	case c&cL != 0:
		return scanWhile(s, i+w, cL)
	case c&cN != 0:
		return scanWhile(s, i+w, cN)
	case c&cS == 0:
		return scanOther(s, i+w)
	}
	return whitespaceTail(s, i)
}

// o200kWord matches `[U]*[W]+` at p, falling back to `[U]+[W]*`, where U is
// [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] and W is [\p{Ll}\p{Lm}\p{Lo}\p{M}]. The
// first form is tried with every amount of backtracking before the second.
// firstOnly restricts it to the first form. It returns -1 if neither matches.
func o200kWord(s string, p int, firstOnly bool) int {
	// Greedy U*: q is its end; lastW is the end of the last rune in [p,q)
	// that is also in W (Lm, Lo, M), the end a backtracking W+ would reach.
	q, lastW := p, -1
	for q < len(s) {
		c, w := split(classAt(s, q))
		if c&cU == 0 {
			break
		}
		q += w
		if c&cW != 0 {
			lastW = q
		}
	}
	if q < len(s) {
		if c, _ := split(classAt(s, q)); c&cW != 0 {
			return scanWhile(s, q, cW) // U* then W+ with no backtracking
		}
	}
	if lastW >= 0 {
		return lastW
	}
	if firstOnly || q == p {
		return -1
	}
	return q // U+ then an empty W* (the rune at q is not in W)
}

// o200kContraction extends a word ending at e by
// `(?i:'s|'t|'re|'ve|'m|'ll|'d)?`. Case folding follows Unicode simple case
// folding, under which 'ſ' (U+017F) matches s.
func o200kContraction(s string, e int) int {
	if e+1 >= len(s) || s[e] != '\'' {
		return e
	}
	switch s[e+1] {
	case 's', 'S', 't', 'T', 'm', 'M', 'd', 'D':
		return e + 2
	case 0xC5: // 'ſ' is C5 BF
		if e+2 < len(s) && s[e+2] == 0xBF {
			return e + 3
		}
	case 'r', 'R', 'v', 'V':
		if e+2 < len(s) && s[e+2]|0x20 == 'e' { // 'e' or 'E'
			return e + 3
		}
	case 'l', 'L':
		if e+2 < len(s) && s[e+2]|0x20 == 'l' {
			return e + 3
		}
	}
	return e
}

// o200kASCIIWord is o200kNext for the commonest piece: ASCII letters, with
// an ASCII prefix or none, followed by an ASCII byte or the end. There the
// pattern's first two alternatives reduce to [A-Z]*[a-z]+ and then
// [A-Z]+. It returns the piece's end, or 0 where o200kNext must decide.
func o200kASCIIWord(s string, i int) int {
	p := i // the start of the letters
	if s[i]-'A' >= 26 && s[i]-'a' >= 26 {
		if s[i] >= utf8.RuneSelf || asciiInfo[s[i]]&(cN|cCRLF) != 0 {
			return 0
		}
		p++ // [^\r\n\p{L}\p{N}]
	}
	q := p
	for q < len(s) && s[q]-'A' < 26 {
		q++
	}
	e := q
	for e < len(s) && s[e]-'a' < 26 {
		e++
	}
	if e == p || (e < len(s) && s[e] >= utf8.RuneSelf) {
		return 0 // no letters, or a rune that may continue the word
	}
	return o200kContraction(s, e)
}

// o200kNext scans one piece of o200kPattern.
func o200kNext(s string, i int) int {
	if e := o200kASCIIWord(s, i); e > 0 {
		return e
	}
	c, w := split(classAt(s, i))
	// [^\r\n\p{L}\p{N}]? : may this rune be a word's one-rune prefix?
	prefixable := c&(cL|cN|cCRLF) == 0
	// Alternatives 1 and 2: a word, with the optional prefix tried first.
	if prefixable {
		if e := o200kWord(s, i+w, true); e >= 0 {
			return o200kContraction(s, e)
		}
	}
	if c&(cU|cW) != 0 {
		if e := o200kWord(s, i, true); e >= 0 {
			return o200kContraction(s, e)
		}
	}
	if prefixable {
		if e := o200kWord(s, i+w, false); e >= 0 {
			return o200kContraction(s, e)
		}
	}
	if c&cU != 0 {
		if e := o200kWord(s, i, false); e >= 0 {
			return o200kContraction(s, e)
		}
	}
	return digitsSymbolsSpace(s, i, 3, true)
}

// digitsSymbolsSpace scans the alternatives that o200k's, Llama 3's and
// Qwen2's patterns share after their words: `\p{N}{1,maxDigits}`, then
// ` ?[^\s\p{L}\p{N}]+[\r\n]*` (o200k also takes '/' after the symbols),
// then `\s*[\r\n]+`, then `\s+(?!\S)|\s+`.
func digitsSymbolsSpace(s string, i, maxDigits int, slash bool) int {
	c, w := split(classAt(s, i))
	if c&cN != 0 {
		j := i + w
		for n := 1; n < maxDigits && j < len(s); n++ {
			c2, w2 := split(classAt(s, j))
			if c2&cN == 0 {
				break
			}
			j += w2
		}
		return j
	}
	start := -1
	if c&(cS|cL|cN) == 0 {
		start = i + w
	} else if s[i] == ' ' && i+1 < len(s) {
		if c2, w2 := split(classAt(s, i+1)); c2&(cS|cL|cN) == 0 {
			start = i + 1 + w2
		}
	}
	if start >= 0 {
		j := scanOther(s, start)
		for j < len(s) && (s[j] == '\r' || s[j] == '\n' || slash && s[j] == '/') {
			j++
		}
		return j
	}
	// `\s*[\r\n]+`: the whitespace run up to and including its last \r or \n.
	lastNL := -1
	for j := i; j < len(s); {
		c2, w2 := split(classAt(s, j))
		if c2&cS == 0 {
			break
		}
		j += w2
		if c2&cCRLF != 0 {
			lastNL = j
		}
	}
	if lastNL >= 0 {
		return lastNL
	}
	return whitespaceTail(s, i)
}

// llama3Next scans one piece of llama3Pattern.
func llama3Next(s string, i int) int { return llamaFamilyNext(s, i, 3) }

// qwen2Next scans one piece of qwen2Pattern.
func qwen2Next(s string, i int) int { return llamaFamilyNext(s, i, 1) }

// llamaFamilyNext scans one piece of Llama 3's pattern, whose digit runs
// are at most maxDigits long (Qwen2's: 1).
func llamaFamilyNext(s string, i, maxDigits int) int {
	// (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if e := o200kContraction(s, i); e > i {
		return e
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	c, w := split(classAt(s, i))
	if c&(cL|cN|cCRLF) == 0 && i+w < len(s) {
		if c2, _ := split(classAt(s, i+w)); c2&cL != 0 {
			return scanWhile(s, i+w, cL)
		}
	}
	if c&cL != 0 {
		return scanWhile(s, i+w, cL)
	}
	return digitsSymbolsSpace(s, i, maxDigits, false)
}
