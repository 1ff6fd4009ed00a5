package tokenizer

import "unicode/utf8"

// The pre-tokenizer as first written, kept as the reference that the
// faster scanners in pretok.go are tested against (FuzzPretok,
// TestPretokCorpora): one rune at a time through utf8.DecodeRuneInString
// and computeClass, no tables.

// refRuneAt decodes the rune at s[i] and returns its class and width. Invalid
// UTF-8 is one byte of class 0 (like a symbol), so scanning never stalls.
func refRuneAt(s string, i int) (r rune, class uint8, width int) {
	if b := s[i]; b < utf8.RuneSelf {
		return rune(b), computeClass(rune(b)), 1
	}
	r, width = utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError && width == 1 {
		return r, 0, 1
	}
	return r, computeClass(r), width
}

// refScanWhile returns the end of the run of runes from i that have any of the
// class bits in want.
func refScanWhile(s string, i int, want uint8) int {
	for i < len(s) {
		_, c, w := refRuneAt(s, i)
		if c&want == 0 {
			break
		}
		i += w
	}
	return i
}

// refScanOther returns the end of the run of runes from i that are none of
// \s, \p{L}, \p{N}.
func refScanOther(s string, i int) int {
	for i < len(s) {
		_, c, w := refRuneAt(s, i)
		if c&(cS|cL|cN) != 0 {
			break
		}
		i += w
	}
	return i
}

// refWhitespaceTail handles the shared ending of both patterns,
// `\s+(?!\S)|\s+`, at a whitespace rune at i: the whole run if it ends the
// text, else the run less its last rune (which the next piece takes as its
// leading space), else (a run of one rune) that rune.
func refWhitespaceTail(s string, i int) int {
	j, last := i, i
	for j < len(s) {
		_, c, w := refRuneAt(s, j)
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

// refGpt2Next scans one piece of gpt2Pattern.
func refGpt2Next(s string, i int) int {
	r, c, w := refRuneAt(s, i)
	if r == '\'' && i+1 < len(s) {
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
	if r == ' ' && i+1 < len(s) {
		_, c2, w2 := refRuneAt(s, i+1)
		switch {
		case c2&cL != 0:
			return refScanWhile(s, i+1+w2, cL)
		case c2&cN != 0:
			return refScanWhile(s, i+1+w2, cN)
		case c2&cS == 0:
			return refScanOther(s, i+1+w2)
		}
	}
	switch {
	case c&cL != 0:
		return refScanWhile(s, i+w, cL)
	case c&cN != 0:
		return refScanWhile(s, i+w, cN)
	case c&cS == 0:
		return refScanOther(s, i+w)
	}
	return refWhitespaceTail(s, i)
}

// refO200kWord matches `[U]*[W]+` at p, falling back to `[U]+[W]*`, where U is
// [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] and W is [\p{Ll}\p{Lm}\p{Lo}\p{M}]. The
// first form is tried with every amount of backtracking before the second.
// firstOnly restricts it to the first form. It returns -1 if neither matches.
func refO200kWord(s string, p int, firstOnly bool) int {
	// Greedy U*: q is its end; lastW is the end of the last rune in [p,q)
	// that is also in W (Lm, Lo, M), the end a backtracking W+ would reach.
	q, lastW := p, -1
	for q < len(s) {
		_, c, w := refRuneAt(s, q)
		if c&cU == 0 {
			break
		}
		q += w
		if c&cW != 0 {
			lastW = q
		}
	}
	if q < len(s) {
		if _, c, _ := refRuneAt(s, q); c&cW != 0 {
			return refScanWhile(s, q, cW) // U* then W+ with no backtracking
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

// refO200kContraction extends a word ending at e by
// `(?i:'s|'t|'re|'ve|'m|'ll|'d)?`. Case folding follows Unicode simple case
// folding, under which 'ſ' (U+017F) matches s.
func refO200kContraction(s string, e int) int {
	if e+1 >= len(s) || s[e] != '\'' {
		return e
	}
	r, _, w := refRuneAt(s, e+1)
	switch r {
	case 's', 'S', 'ſ', 't', 'T', 'm', 'M', 'd', 'D':
		return e + 1 + w
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

// refO200kNext scans one piece of o200kPattern.
func refO200kNext(s string, i int) int {
	r, c, w := refRuneAt(s, i)
	// [^\r\n\p{L}\p{N}]? : may this rune be a word's one-rune prefix?
	prefixable := c&(cL|cN|cCRLF) == 0
	// Alternatives 1 and 2: a word, with the optional prefix tried first.
	if prefixable {
		if e := refO200kWord(s, i+w, true); e >= 0 {
			return refO200kContraction(s, e)
		}
	}
	if c&(cU|cW) != 0 {
		if e := refO200kWord(s, i, true); e >= 0 {
			return refO200kContraction(s, e)
		}
	}
	if prefixable {
		if e := refO200kWord(s, i+w, false); e >= 0 {
			return refO200kContraction(s, e)
		}
	}
	if c&cU != 0 {
		if e := refO200kWord(s, i, false); e >= 0 {
			return refO200kContraction(s, e)
		}
	}
	// \p{N}{1,3}
	if c&cN != 0 {
		j := i + w
		for n := 1; n < 3 && j < len(s); n++ {
			_, c2, w2 := refRuneAt(s, j)
			if c2&cN == 0 {
				break
			}
			j += w2
		}
		return j
	}
	// ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
	start := -1
	if c&(cS|cL|cN) == 0 {
		start = i + w
	} else if r == ' ' && i+1 < len(s) {
		if _, c2, w2 := refRuneAt(s, i+1); c2&(cS|cL|cN) == 0 {
			start = i + 1 + w2
		}
	}
	if start >= 0 {
		j := refScanOther(s, start)
		for j < len(s) && (s[j] == '\r' || s[j] == '\n' || s[j] == '/') {
			j++
		}
		return j
	}
	// `\s*[\r\n]+`: the whitespace run up to and including its last \r or \n.
	lastNL := -1
	for j := i; j < len(s); {
		_, c2, w2 := refRuneAt(s, j)
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
	return refWhitespaceTail(s, i)
}
