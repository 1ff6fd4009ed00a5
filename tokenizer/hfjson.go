package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// hfJSON is the part of a Hugging Face tokenizer.json that byte-level BPE
// uses.
type hfJSON struct {
	AddedTokens []struct {
		ID      int32  `json:"id"`
		Content string `json:"content"`
		Special bool   `json:"special"`
	} `json:"added_tokens"`
	Normalizer   json.RawMessage `json:"normalizer"`
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Decoder      json.RawMessage `json:"decoder"`
	Model        struct {
		Type                    string           `json:"type"`
		Vocab                   map[string]int32 `json:"vocab"`
		Merges                  json.RawMessage  `json:"merges"`
		IgnoreMerges            bool             `json:"ignore_merges"`
		ByteFallback            bool             `json:"byte_fallback"`
		ContinuingSubwordPrefix string           `json:"continuing_subword_prefix"`
		EndOfWordSuffix         string           `json:"end_of_word_suffix"`
		Dropout                 *float64         `json:"dropout"`
	} `json:"model"`
}

// hfPreTokenizer is one node of tokenizer.json's pre_tokenizer tree.
type hfPreTokenizer struct {
	Type           string           `json:"type"`
	Pretokenizers  []hfPreTokenizer `json:"pretokenizers"` // Sequence
	UseRegex       *bool            `json:"use_regex"`     // ByteLevel; absent means true
	AddPrefixSpace bool             `json:"add_prefix_space"`
	Pattern        struct {
		Regex  *string `json:"Regex"`
		String *string `json:"String"`
	} `json:"pattern"` // Split
	Behavior string `json:"behavior"`
	Invert   bool   `json:"invert"`
}

// FromHFJSONBytes loads a byte-level BPE tokenizer from the contents of a
// Hugging Face tokenizer.json file. (Load reads the file itself, taking
// special token ids from the GGUF file when it has them.)
func FromHFJSONBytes(data []byte) (*Tokenizer, error) {
	sp, err := hfSpec(data)
	if err != nil {
		return nil, err
	}
	return newTokenizer(sp)
}

// hfSpec parses a tokenizer.json. It accepts what byte-level BPE models use:
// model BPE; no normalizer; a pre-tokenizer that is ByteLevel (with its
// GPT-2 regex, or after a Split by a recognised regex), alone or in a
// Sequence; a ByteLevel decoder. Anything else is an error, never a silent
// approximation. Special token ids follow the well-known names
// (<|startoftext|>, <|endoftext|>, <|return|>); Load takes them from the GGUF
// when it has one.
func hfSpec(data []byte) (*spec, error) {
	var h hfJSON
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, fmt.Errorf("tokenizer.json: %w", err)
	}
	m := &h.Model
	switch {
	case m.Type != "BPE":
		return nil, fmt.Errorf("tokenizer.json: model type %q is not supported (only BPE)", m.Type)
	case m.ByteFallback:
		return nil, fmt.Errorf("tokenizer.json: model.byte_fallback is not supported")
	case m.ContinuingSubwordPrefix != "" || m.EndOfWordSuffix != "":
		return nil, fmt.Errorf("tokenizer.json: model.continuing_subword_prefix and end_of_word_suffix are not supported")
	case m.Dropout != nil && *m.Dropout != 0:
		return nil, fmt.Errorf("tokenizer.json: model.dropout is not supported")
	}
	nfc, err := hfNormalizer(h.Normalizer)
	if err != nil {
		return nil, err
	}
	var dec struct{ Type string }
	if err := json.Unmarshal(h.Decoder, &dec); err != nil || dec.Type != "ByteLevel" {
		return nil, fmt.Errorf("tokenizer.json: decoder %s is not supported (only ByteLevel)", clip(h.Decoder))
	}
	if isJSONNull(h.PreTokenizer) {
		return nil, fmt.Errorf("tokenizer.json: pre_tokenizer is missing (byte-level BPE needs ByteLevel)")
	}
	var pre hfPreTokenizer
	if err := json.Unmarshal(h.PreTokenizer, &pre); err != nil {
		return nil, fmt.Errorf("tokenizer.json: pre_tokenizer: %w", err)
	}
	var r preResolver
	if err := r.add(&pre); err != nil {
		return nil, fmt.Errorf("tokenizer.json: pre_tokenizer: %w", err)
	}
	if !r.byteLevel || r.split == nil {
		return nil, fmt.Errorf("tokenizer.json: pre_tokenizer must include ByteLevel and split the text (by ByteLevel's regex or a Split)")
	}

	// Vocabulary: ids must be dense from 0, from the vocab and added tokens.
	n := 0
	for _, id := range m.Vocab {
		n = max(n, int(id)+1)
	}
	for _, a := range h.AddedTokens {
		n = max(n, int(a.ID)+1)
	}
	if n > len(m.Vocab)+len(h.AddedTokens) {
		return nil, fmt.Errorf("tokenizer.json: token id %d is beyond the %d tokens given (ids must be 0..n-1 without gaps)", n-1, len(m.Vocab)+len(h.AddedTokens))
	}
	sp := &spec{
		kind:       KindHFJSON,
		pieces:     make([][]byte, n),
		types:      make([]int32, n),
		pretok:     r.split,
		nfc:        nfc,
		wholeWords: m.IgnoreMerges,
		bos:        -1, eos: -1, pad: -1, eot: -1, eom: -1,
	}
	arena := newByteArena(len(m.Vocab) * 8)
	for tok, id := range m.Vocab {
		if id < 0 {
			return nil, fmt.Errorf("tokenizer.json: vocab token %q has negative id %d", tok, id)
		}
		if sp.types[id] != 0 {
			return nil, fmt.Errorf("tokenizer.json: vocab id %d is used twice", id)
		}
		b, ok := arena.byteLevelDecode(tok)
		if !ok {
			return nil, fmt.Errorf("tokenizer.json: vocab token %q (id %d) is not in GPT-2's byte-level alphabet", tok, id)
		}
		sp.pieces[id] = b
		sp.types[id] = TypeNormal
	}
	names := map[string]int32{}
	for _, a := range h.AddedTokens {
		if a.ID < 0 || a.Content == "" {
			return nil, fmt.Errorf("tokenizer.json: added token %q has id %d", a.Content, a.ID)
		}
		sp.pieces[a.ID] = []byte(a.Content)
		sp.types[a.ID] = TypeUserDefined
		if a.Special {
			sp.types[a.ID] = TypeControl
			names[a.Content] = a.ID
		}
	}
	for id, typ := range sp.types {
		if typ == 0 {
			return nil, fmt.Errorf("tokenizer.json: no token has id %d (ids must be 0..%d without gaps)", id, n-1)
		}
	}
	lookup := func(name string) int32 {
		if id, ok := names[name]; ok {
			return id
		}
		return -1
	}
	sp.bos = lookup("<|startoftext|>")
	if sp.bos < 0 {
		sp.bos = lookup("<|endoftext|>")
	}
	sp.eos = lookup("<|return|>")
	if sp.eos < 0 {
		sp.eos = lookup("<|endoftext|>")
	}

	if sp.merges, err = hfMerges(m.Merges, m.Vocab); err != nil {
		return nil, err
	}
	return sp, nil
}

// hfMerges parses model.merges, either "left right" strings or
// [left, right] pairs.
func hfMerges(raw json.RawMessage, byText map[string]int32) ([]merge, error) {
	// The first element's opening character tells the form, which saves
	// decoding (and validating) the whole list twice.
	badForm := fmt.Errorf("tokenizer.json: model.merges is neither [\"a b\", ...] nor [[\"a\", \"b\"], ...]")
	body, _ := bytes.CutPrefix(bytes.TrimSpace(raw), []byte("["))
	if body = bytes.TrimSpace(body); len(body) > 0 && body[0] == '"' {
		var asStrings []string
		if err := json.Unmarshal(raw, &asStrings); err != nil {
			return nil, badForm
		}
		ms, err := parseMerges(asStrings, byText)
		if err != nil {
			return nil, fmt.Errorf("tokenizer.json: %w", err)
		}
		return ms, nil
	}
	var asPairs [][2]string
	if err := json.Unmarshal(raw, &asPairs); err != nil {
		return nil, badForm
	}
	out := make([]merge, len(asPairs))
	var buf []byte
	for i, p := range asPairs {
		var err error
		if out[i], err = resolveMerge(i, p[0], p[1], byText, &buf); err != nil {
			return nil, fmt.Errorf("tokenizer.json: %w", err)
		}
	}
	return out, nil
}

// hfNormalizer accepts no normalizer or NFC (Qwen2's), and reports NFC.
func hfNormalizer(raw json.RawMessage) (bool, error) {
	if isJSONNull(raw) {
		return false, nil
	}
	var n struct{ Type string }
	if err := json.Unmarshal(raw, &n); err != nil || n.Type != "NFC" {
		return false, fmt.Errorf("tokenizer.json: normalizer %s is not supported (only null or NFC)", clip(raw))
	}
	return true, nil
}

// preResolver folds a pre_tokenizer tree into one splitting scanner plus the
// byte-level mapping.
type preResolver struct {
	split     preTokenizer
	pre       string // the split's tokenizer.ggml.pre name
	byteLevel bool
}

func (r *preResolver) setSplit(p preTokenizer, pre string) error {
	if r.split != nil {
		return fmt.Errorf("more than one splitting step is not supported")
	}
	r.split, r.pre = p, pre
	return nil
}

func (r *preResolver) add(p *hfPreTokenizer) error {
	switch p.Type {
	case "Sequence":
		for i := range p.Pretokenizers {
			if err := r.add(&p.Pretokenizers[i]); err != nil {
				return err
			}
		}
		return nil
	case "ByteLevel":
		if p.AddPrefixSpace {
			return fmt.Errorf("ByteLevel add_prefix_space is not supported")
		}
		if r.byteLevel {
			return fmt.Errorf("ByteLevel appears twice")
		}
		r.byteLevel = true
		if p.UseRegex == nil || *p.UseRegex {
			return r.setSplit(gpt2Next, "gpt-2")
		}
		return nil
	case "Split":
		if r.byteLevel {
			return fmt.Errorf("Split after ByteLevel is not supported")
		}
		if p.Pattern.Regex == nil {
			return fmt.Errorf("Split pattern must be a Regex")
		}
		scan, ok := pretokenizerByRegex[*p.Pattern.Regex]
		if !ok {
			return fmt.Errorf("Split regex %q is not one orcd implements (GPT-2's, o200k's, Llama 3's or Qwen2's)", clip([]byte(*p.Pattern.Regex)))
		}
		if p.Behavior != "Isolated" || p.Invert {
			return fmt.Errorf("Split behavior %q (invert %v) is not supported (only Isolated)", p.Behavior, p.Invert)
		}
		return r.setSplit(scan, preByRegex[*p.Pattern.Regex])
	}
	return fmt.Errorf("type %q is not supported", p.Type)
}

func isJSONNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// clip shortens a JSON fragment for an error message.
func clip(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}
