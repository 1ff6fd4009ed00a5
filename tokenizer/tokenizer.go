// Package tokenizer implements the byte-level BPE tokenizers of the models
// orcd serves (GPT-2, gpt-oss's o200k_harmony, Llama 3's and Qwen2's), loaded from GGUF metadata
// or from a Hugging Face tokenizer.json, with a pre-tokenizer that matches the
// reference regexes exactly and a streaming decoder that never splits a
// UTF-8 character.
package tokenizer

import (
	"fmt"
	"slices"
)

// Token types, numbered as llama.cpp's GGUF tokenizer.ggml.token_type.
const (
	TypeNormal      int32 = 1
	TypeUnknown     int32 = 2
	TypeControl     int32 = 3 // special tokens: parsed from text only by EncodeSpecial
	TypeUserDefined int32 = 4 // added tokens that are always parsed from text
	TypeUnused      int32 = 5
	TypeByte        int32 = 6
)

// Kinds of tokenizer source, as returned by Kind.
const (
	KindGGUF   = "gguf-bpe"
	KindHFJSON = "hf-json"
)

// eogNames are the texts of control tokens that end generation in the
// families orcd serves (gpt-oss: <|return|>, <|call|>; GPT-2, gpt-oss and
// Qwen2: <|endoftext|>; Qwen2's turns: <|im_end|>; Llama 3: <|eot_id|>,
// <|eom_id|>, <|end_of_text|>), as llama.cpp also recognises them by text.
var eogNames = []string{"<|endoftext|>", "<|return|>", "<|call|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"}

// Tokenizer encodes text to token ids and back. It is safe for concurrent
// use.
type Tokenizer struct {
	kind string
	// pieces[id] is the raw bytes a token stands for (a control token's text).
	pieces [][]byte
	types  []int32
	// words finds a normal token's id by its bytes.
	words *wordTable
	// byteID[b] is the token of the single byte b.
	byteID [256]int32
	// merges maps a pair of adjacent tokens to the rank (a lower rank
	// merges first) and result of their merge.
	merges *pairTable
	// byteRank[b0<<8|b1] is merges' rank for the tokens of bytes b0 and b1:
	// the first lookups of every BPE, without hashing.
	byteRank *[1 << 16]uint32
	// chars lets BPE start from whole characters; nil where the merges do
	// not allow it.
	chars  *charTable
	pretok preTokenizer
	// nfc normalizes text to Unicode NFC before pre-tokenizing it (Qwen2's
	// tokenizer.json normalizer).
	nfc bool
	// wholeWords looks a whole piece up in the vocabulary before running BPE
	// on it, as tiktoken does (and HF's ignore_merges).
	wholeWords bool
	// maxTokenLen is the length of the longest normal token: no longer
	// piece is a whole word.
	maxTokenLen int
	// userDefined holds the tokens always parsed from text; control the
	// special tokens EncodeSpecial also parses.
	userDefined, control *specialSet

	bos, eos, pad int32
	eog           []int32
	addBOS        bool
	// maxTokenBytes is the longest piece Encode can produce (control
	// tokens excluded: Encode keeps their text as text).
	maxTokenBytes int
}

// merge is one BPE merge rule: left and right join into result.
type merge struct{ left, right, result int32 }

// spec is the plain description of a tokenizer that every loader produces.
type spec struct {
	kind   string
	pieces [][]byte
	types  []int32
	merges []merge // in priority order
	pretok preTokenizer
	nfc    bool
	// wholeWords: see Tokenizer.wholeWords.
	wholeWords         bool
	bos, eos, pad, eot int32 // -1 if none
	eom                int32
	addBOS             bool
}

const noRank = ^uint32(0)

func newTokenizer(sp *spec) (*Tokenizer, error) {
	buildClassTable()
	n := len(sp.pieces)
	if n == 0 {
		return nil, fmt.Errorf("tokenizer: empty vocabulary")
	}
	if n > maxTokens {
		return nil, fmt.Errorf("tokenizer: %d tokens, more than the %d supported", n, maxTokens)
	}
	if len(sp.types) != n {
		return nil, fmt.Errorf("tokenizer: %d token types for %d tokens", len(sp.types), n)
	}
	if sp.pretok == nil {
		return nil, fmt.Errorf("tokenizer: no pre-tokenizer")
	}
	t := &Tokenizer{
		kind:       sp.kind,
		pieces:     sp.pieces,
		types:      sp.types,
		pretok:     sp.pretok,
		nfc:        sp.nfc,
		wholeWords: sp.wholeWords,
		addBOS:     sp.addBOS,
	}
	for i := range t.byteID {
		t.byteID[i] = -1
	}
	var userDefined, control, normal []int32
	for id, p := range sp.pieces {
		if sp.types[id] != TypeControl {
			t.maxTokenBytes = max(t.maxTokenBytes, len(p))
		}
		switch sp.types[id] {
		case TypeControl:
			control = append(control, int32(id))
		case TypeUserDefined:
			userDefined = append(userDefined, int32(id))
		case TypeNormal, TypeByte:
			normal = append(normal, int32(id))
			t.maxTokenLen = max(t.maxTokenLen, len(p))
			if len(p) == 1 && t.byteID[p[0]] < 0 {
				t.byteID[p[0]] = int32(id)
			}
		}
	}
	for b, id := range t.byteID {
		if id < 0 {
			return nil, fmt.Errorf("tokenizer: byte-level vocabulary has no token for byte 0x%02x", b)
		}
	}
	for rank, m := range sp.merges {
		for _, id := range [3]int32{m.left, m.right, m.result} {
			if id < 0 || int(id) >= n {
				return nil, fmt.Errorf("tokenizer: merge %d refers to token %d, outside the vocabulary of %d", rank, id, n)
			}
		}
	}
	var err error
	if t.words, err = newWordTable(sp.pieces, normal); err != nil {
		return nil, err
	}
	if t.merges, err = newPairTable(sp.merges); err != nil {
		return nil, err
	}
	t.byteRank = new([1 << 16]uint32)
	for i := range t.byteRank {
		t.byteRank[i] = t.merges.rank(t.byteID[i>>8], t.byteID[i&0xFF])
	}
	t.chars = newCharTable(t, sp.merges)
	t.userDefined = newSpecialSet(sp.pieces, userDefined)
	t.control = newSpecialSet(sp.pieces, control)

	valid := func(what string, id int32) (int32, error) {
		if id < -1 || int(id) >= n {
			return -1, fmt.Errorf("tokenizer: %s token id %d is outside the vocabulary of %d", what, id, n)
		}
		return id, nil
	}
	if t.bos, err = valid("BOS", sp.bos); err != nil {
		return nil, err
	}
	if t.eos, err = valid("EOS", sp.eos); err != nil {
		return nil, err
	}
	if t.pad, err = valid("PAD", sp.pad); err != nil {
		return nil, err
	}
	for _, id := range []int32{sp.eos, sp.eot, sp.eom} {
		if _, err := valid("end-of-generation", id); err != nil {
			return nil, err
		}
		if id >= 0 {
			t.eog = append(t.eog, id)
		}
	}
	for _, name := range eogNames {
		if id, ok := t.control.ids[name]; ok {
			t.eog = append(t.eog, id)
		}
	}
	slices.Sort(t.eog)
	t.eog = slices.Compact(t.eog)
	return t, nil
}

// Kind reports where the tokenizer came from: KindGGUF or KindHFJSON.
func (t *Tokenizer) Kind() string { return t.kind }

// VocabSize is the number of token ids, special tokens included.
func (t *Tokenizer) VocabSize() int { return len(t.pieces) }

// MaxTokenBytes is the most bytes of text one token from Encode stands
// for, so that a text of n bytes encodes to at least n/MaxTokenBytes tokens.
// Servers use it to refuse a prompt that cannot fit before tokenizing it.
func (t *Tokenizer) MaxTokenBytes() int { return t.maxTokenBytes }

// BOS is the beginning-of-sequence token id, or -1 if there is none.
func (t *Tokenizer) BOS() int32 { return t.bos }

// EOS is the end-of-sequence token id, or -1 if there is none.
func (t *Tokenizer) EOS() int32 { return t.eos }

// PAD is the padding token id, or -1 if there is none.
func (t *Tokenizer) PAD() int32 { return t.pad }

// AddBOS reports whether the model expects BOS before a prompt (GGUF's
// tokenizer.ggml.add_bos_token); the caller adds it.
func (t *Tokenizer) AddBOS() bool { return t.addBOS }

// EOG returns the end-of-generation ids in increasing order: EOS, the
// end-of-turn token, and the control tokens <|endoftext|>, <|return|> and
// <|call|> where the vocabulary has them. The caller must not modify it.
func (t *Tokenizer) EOG() []int32 { return t.eog }

// IsEOG reports whether id ends generation.
func (t *Tokenizer) IsEOG(id int32) bool {
	_, found := slices.BinarySearch(t.eog, id)
	return found
}

// TokenID returns the id of a special token's text (such as "<|start|>") or
// of a normal token's raw text.
func (t *Tokenizer) TokenID(text string) (int32, bool) {
	if id, ok := t.control.ids[text]; ok {
		return id, true
	}
	if id, ok := t.userDefined.ids[text]; ok {
		return id, true
	}
	return t.words.get(text)
}

// TokenText returns the text a token stands for, for display. A normal
// token may hold part of a UTF-8 character, so the result need not be valid
// UTF-8; an id outside the vocabulary gives "".
func (t *Tokenizer) TokenText(id int32) string {
	if id < 0 || int(id) >= len(t.pieces) {
		return ""
	}
	return string(t.pieces[id])
}

// IsSpecial reports whether id is a control token (such as <|start|>).
func (t *Tokenizer) IsSpecial(id int32) bool {
	return id >= 0 && int(id) < len(t.types) && t.types[id] == TypeControl
}
