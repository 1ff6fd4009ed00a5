package tokenizer

import "strings"

// GPT-2's byte-level alphabet: every byte value is shown as one printable
// rune, so that BPE vocabularies can be stored as text. Printable Latin-1
// bytes stand for themselves; the other 68 bytes are numbered from U+0100 in
// byte order (space 0x20 becomes 'Ġ' U+0120, newline 0x0A becomes 'Ċ' U+010A).
var (
	byteToRune [256]rune
	// runeToByte is indexed by rune; every rune of the alphabet is below 0x144.
	runeToByte [0x144]int16
)

func init() {
	for i := range runeToByte {
		runeToByte[i] = -1
	}
	next := rune(0x100)
	for b := 0; b < 256; b++ {
		printable := (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
		r := rune(b)
		if !printable {
			r = next
			next++
		}
		byteToRune[b] = r
		runeToByte[r] = int16(b)
	}
}

// byteArena holds the bytes of many tokens in few allocations.
type byteArena struct{ buf []byte }

func newByteArena(size int) *byteArena { return &byteArena{buf: make([]byte, 0, size)} }

// byteLevelDecode maps a byte-level token string back to its raw bytes,
// stored in the arena. It reports false if the string holds a rune outside
// the alphabet.
func (a *byteArena) byteLevelDecode(s string) ([]byte, bool) {
	if cap(a.buf)-len(a.buf) < len(s) {
		// A fresh block: slices already handed out keep the old one.
		a.buf = make([]byte, 0, max(len(s), 1<<20))
	}
	start := len(a.buf)
	for _, r := range s {
		if r < 0 || int(r) >= len(runeToByte) || runeToByte[r] < 0 {
			a.buf = a.buf[:start]
			return nil, false
		}
		a.buf = append(a.buf, byte(runeToByte[r]))
	}
	return a.buf[start:len(a.buf):len(a.buf)], true
}

// byteLevelEncode maps raw bytes to their byte-level token string.
func byteLevelEncode(b []byte) string {
	var sb strings.Builder
	sb.Grow(2 * len(b))
	for _, c := range b {
		sb.WriteRune(byteToRune[c])
	}
	return sb.String()
}
