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

// byteLevelDecode maps a byte-level token string back to its raw bytes.
// It reports false if the string holds a rune outside the alphabet.
func byteLevelDecode(s string) ([]byte, bool) {
	out := make([]byte, 0, len(s))
	for _, r := range s {
		if r < 0 || int(r) >= len(runeToByte) || runeToByte[r] < 0 {
			return nil, false
		}
		out = append(out, byte(runeToByte[r]))
	}
	return out, true
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
