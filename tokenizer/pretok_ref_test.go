package tokenizer

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The reference pre-tokenizers that the scanners in pretok.go are tested
// against (FuzzPretok, TestPretokMatchesReference, TestPretokCorpora): the
// patterns themselves, run by Go's regexp, which returns the match a
// backtracking engine would (leftmost-first). Two things need help: Go's
// \s is ASCII only, so it is spelled out as Unicode's White_Space (as
// unicode.IsSpace and the reference tokenizers have it), and regexp has no
// lookahead, so the patterns' common ending `\s+(?!\S)|\s+` is done by hand.
var (
	refO200kNext = regexNext(o200kPattern)
	refGpt2Next  = regexNext(gpt2Pattern)
)

// whiteSpace is Unicode's White_Space, for use inside a character class.
const whiteSpace = `\t\n\v\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}`

func regexNext(pattern string) preTokenizer {
	const tail = `|\s+(?!\S)|\s+`
	head, ok := strings.CutSuffix(pattern, tail)
	if !ok {
		panic(fmt.Sprintf("pattern %q does not end in %q", pattern, tail))
	}
	head = strings.ReplaceAll(head, `[^\s`, `[^`+whiteSpace)
	head = strings.ReplaceAll(head, `\s`, `[`+whiteSpace+`]`)
	re := regexp.MustCompile(`^(?:` + head + `)`)
	return func(s string, i int) int {
		if m := re.FindStringIndex(s[i:]); m != nil {
			return i + m[1]
		}
		// \s+(?!\S)|\s+ : the run of white space, less its last rune if a
		// non-space follows and the run has more than one rune.
		j, last := i, i
		for j < len(s) {
			r, w := utf8.DecodeRuneInString(s[j:])
			if !unicode.IsSpace(r) {
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
}
