package tokenizer

import (
	"fmt"
	"regexp"
	"strings"
)

// The reference pre-tokenizers that the scanners in pretok.go are tested
// against (FuzzPretok, TestPretokMatchesReference, TestPretokCorpora): the
// patterns themselves, run by Go's regexp, which returns the match a
// backtracking engine would (leftmost-first). Two things need help: Go's
// \s is ASCII only, so it is spelled out as Unicode's White_Space (as
// unicode.IsSpace and the reference tokenizers have it), and regexp has no
// lookahead, so the patterns' common ending `\s+(?!\S)|\s+` becomes
// `([ws]+)$|([ws]+)[ws]|[ws]` with the piece ending where the group does:
// the whole run at the end of the text, else the run less its last rune
// (which the lookahead leaves to the next piece), else one rune.
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
	headRe := regexp.MustCompile(`^(?:` + head + `)`)
	ws := `[` + whiteSpace + `]`
	tailRe := regexp.MustCompile(`^(?:(` + ws + `+)$|(` + ws + `+)` + ws + `|` + ws + `)`)
	return func(s string, i int) int {
		if m := headRe.FindStringIndex(s[i:]); m != nil {
			return i + m[1]
		}
		m := tailRe.FindStringSubmatchIndex(s[i:])
		switch {
		case m == nil:
			return i // no piece: the test reports it
		case m[3] > 0:
			return i + m[3]
		case m[5] > 0:
			return i + m[5]
		}
		return i + m[1]
	}
}
