package tokenizer

import (
	"unicode/utf8"
)

// replacement is U+FFFD, which stands for bytes that are not valid UTF-8.
const replacement = "\uFFFD"

// DecodeBytes returns the bytes the ids stand for; control tokens give their
// text. An id outside the vocabulary gives U+FFFD.
func (t *Tokenizer) DecodeBytes(ids []int32) []byte {
	var out []byte
	for _, id := range ids {
		out = t.appendToken(out, id)
	}
	return out
}

func (t *Tokenizer) appendToken(out []byte, id int32) []byte {
	if id < 0 || int(id) >= len(t.pieces) {
		return append(out, replacement...)
	}
	return append(out, t.pieces[id]...)
}

// Decode returns the text the ids stand for. Bytes that do not form valid
// UTF-8 become U+FFFD, one per maximal invalid subsequence (as Python's
// errors="replace" does).
func (t *Tokenizer) Decode(ids []int32) string {
	return toValidUTF8(t.DecodeBytes(ids))
}

// toValidUTF8 returns b as a string with each maximal ill-formed subsequence
// replaced by U+FFFD: a truncated but otherwise valid sequence counts as one.
func toValidUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	out := make([]byte, 0, len(b)+8)
	for i := 0; i < len(b); {
		r, w := utf8.DecodeRune(b[i:])
		if r != utf8.RuneError || w > 1 {
			out = append(out, b[i:i+w]...)
			i += w
			continue
		}
		out = append(out, replacement...)
		i += invalidPrefixLen(b[i:])
	}
	return string(out)
}

// invalidPrefixLen is the length of the maximal ill-formed subsequence at the
// start of b, which does not begin with a valid character: the longest
// prefix (up to 3 bytes) that could begin a valid character, or 1.
func invalidPrefixLen(b []byte) int {
	for n := min(3, len(b)); n > 1; n-- {
		if !utf8.FullRune(b[:n]) {
			return n
		}
	}
	return 1
}

// StreamDecoder turns a stream of token ids into text chunks, each of which
// is valid UTF-8: a character split across tokens is held back until its
// last byte arrives. Use one per stream; it is not safe for concurrent use.
type StreamDecoder struct {
	t       *Tokenizer
	pending []byte
}

// NewStreamDecoder returns a decoder for one stream of ids.
func (t *Tokenizer) NewStreamDecoder() *StreamDecoder {
	return &StreamDecoder{t: t}
}

// Push adds one token and returns the text that is now complete, possibly
// "". The result never ends inside a character: an incomplete character at
// the end stays pending. Bytes that can never form a character become
// U+FFFD at once.
func (d *StreamDecoder) Push(id int32) string {
	d.pending = d.t.appendToken(d.pending, id)
	keep := incompleteTail(d.pending)
	out := toValidUTF8(d.pending[:len(d.pending)-keep])
	d.pending = append(d.pending[:0], d.pending[len(d.pending)-keep:]...)
	return out
}

// Flush ends the stream: a character still incomplete becomes U+FFFD.
func (d *StreamDecoder) Flush() string {
	out := toValidUTF8(d.pending)
	d.pending = d.pending[:0]
	return out
}

// incompleteTail is the length of the valid but incomplete character at the
// end of b, which more bytes could still complete; 0 if there is none.
func incompleteTail(b []byte) int {
	// A character is at most 4 bytes, so its start is among the last 3.
	for n := 1; n <= 3 && n <= len(b); n++ {
		c := b[len(b)-n]
		if c&0xC0 == 0x80 {
			continue // a continuation byte: the start is further back
		}
		if !utf8.FullRune(b[len(b)-n:]) {
			return n
		}
		return 0
	}
	return 0
}
