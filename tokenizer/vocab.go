package tokenizer

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// The vocabularies orcd ships, gzipped (see vocab/README.md for provenance).
//
//go:embed vocab/*.gz
var vocabFS embed.FS

// Names of the embedded vocabularies.
const (
	VocabGPT2         = "gpt2"
	VocabO200kHarmony = "o200k_harmony"
)

// GGUFVocab is a byte-level BPE vocabulary in llama.cpp's GGUF form: the
// values of the tokenizer.ggml.* metadata keys. Normal tokens are spelled in
// GPT-2's byte-level alphabet; control tokens are plain text.
type GGUFVocab struct {
	Model      string   // tokenizer.ggml.model: "gpt2" (byte-level BPE)
	Pre        string   // tokenizer.ggml.pre: "gpt-2" or "gpt-4o"
	Tokens     []string // tokenizer.ggml.tokens
	TokenTypes []int32  // tokenizer.ggml.token_type (TypeNormal, TypeControl, ...)
	Merges     []string // tokenizer.ggml.merges: "left right", highest priority first
	// Special token ids; -1 where the vocabulary has none.
	BOS, EOS, PAD, EOT, EOM int32
	AddBOS, AddEOS          bool
}

var embedded = map[string]func() (*GGUFVocab, error){
	VocabGPT2:         sync.OnceValues(loadGPT2Vocab),
	VocabO200kHarmony: sync.OnceValues(loadO200kHarmonyVocab),
}

// VocabGGUF returns an embedded vocabulary ("gpt2" or "o200k_harmony") in
// GGUF form, so that synthetic models can carry a working tokenizer. The
// result is shared: callers must not modify it.
func VocabGGUF(name string) (*GGUFVocab, error) {
	load, ok := embedded[name]
	if !ok {
		return nil, fmt.Errorf("tokenizer: no embedded vocabulary %q (have %q, %q)", name, VocabGPT2, VocabO200kHarmony)
	}
	return load()
}

// Embedded returns the tokenizer of an embedded vocabulary, as FromGGUF
// would load it from a model that carries VocabGGUF(name).
func Embedded(name string) (*Tokenizer, error) {
	v, err := VocabGGUF(name)
	if err != nil {
		return nil, err
	}
	return FromVocab(v)
}

func readEmbedded(name string) ([]byte, error) {
	f, err := vocabFS.Open("vocab/" + name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: embedded %s: %w", name, err)
	}
	return io.ReadAll(zr)
}

// loadGPT2Vocab builds GPT-2's vocabulary from OpenAI's encoder.json (token
// → id) and vocab.bpe (merges in priority order after a version line).
func loadGPT2Vocab() (*GGUFVocab, error) {
	enc, err := readEmbedded("gpt2-encoder.json.gz")
	if err != nil {
		return nil, err
	}
	var ids map[string]int32
	if err := json.Unmarshal(enc, &ids); err != nil {
		return nil, fmt.Errorf("tokenizer: embedded gpt2 encoder.json: %w", err)
	}
	v := &GGUFVocab{
		Model: "gpt2", Pre: "gpt-2",
		Tokens:     make([]string, len(ids)),
		TokenTypes: make([]int32, len(ids)),
		BOS:        -1, EOS: -1, PAD: -1, EOT: -1, EOM: -1,
	}
	for tok, id := range ids {
		if id < 0 || int(id) >= len(ids) || v.Tokens[id] != "" {
			return nil, fmt.Errorf("tokenizer: embedded gpt2 encoder.json: id %d of %q is not dense", id, tok)
		}
		v.Tokens[id] = tok
		v.TokenTypes[id] = TypeNormal
	}
	eot := ids["<|endoftext|>"]
	v.TokenTypes[eot] = TypeControl
	v.BOS, v.EOS, v.EOT = eot, eot, eot

	bpe, err := readEmbedded("gpt2-vocab.bpe.gz")
	if err != nil {
		return nil, err
	}
	for line := range strings.SplitSeq(string(bpe), "\n") {
		if line == "" || strings.HasPrefix(line, "#version") {
			continue
		}
		v.Merges = append(v.Merges, line)
	}
	return v, nil
}

// o200kHarmonySpecials names the special tokens of o200k_harmony that are
// not <|reserved_N|>.
var o200kHarmonySpecials = map[int32]string{
	199998: "<|startoftext|>",
	199999: "<|endoftext|>",
	200002: "<|return|>",
	200003: "<|constrain|>",
	200005: "<|channel|>",
	200006: "<|start|>",
	200007: "<|end|>",
	200008: "<|message|>",
	200012: "<|call|>",
}

const (
	o200kBaseSize    = 199998
	o200kHarmonySize = 201088
)

// loadO200kHarmonyVocab builds gpt-oss's vocabulary: the o200k_base ranks
// (tiktoken's file: one "base64(token) rank" per line), then the harmony
// special tokens, with merges derived from the ranks.
func loadO200kHarmonyVocab() (*GGUFVocab, error) {
	data, err := readEmbedded("o200k_base.tiktoken.gz")
	if err != nil {
		return nil, err
	}
	ranks, err := parseTiktoken(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: embedded o200k_base.tiktoken: %w", err)
	}
	if len(ranks) != o200kBaseSize {
		return nil, fmt.Errorf("tokenizer: embedded o200k_base.tiktoken has %d ranks, want %d", len(ranks), o200kBaseSize)
	}
	merges, err := mergesFromRanks(ranks)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: embedded o200k_base.tiktoken: %w", err)
	}
	v := &GGUFVocab{
		Model: "gpt2", Pre: "gpt-4o",
		Tokens:     make([]string, o200kHarmonySize),
		TokenTypes: make([]int32, o200kHarmonySize),
		Merges:     make([]string, len(merges)),
		BOS:        199998, EOS: 200002, PAD: 199999, EOT: -1, EOM: -1,
	}
	for id, tok := range ranks {
		v.Tokens[id] = byteLevelEncode(tok)
		v.TokenTypes[id] = TypeNormal
	}
	for id := int32(o200kBaseSize); id < o200kHarmonySize; id++ {
		name, ok := o200kHarmonySpecials[id]
		if !ok {
			name = "<|reserved_" + strconv.Itoa(int(id)) + "|>"
		}
		v.Tokens[id] = name
		v.TokenTypes[id] = TypeControl
	}
	for i, m := range merges {
		v.Merges[i] = v.Tokens[m[0]] + " " + v.Tokens[m[1]]
	}
	return v, nil
}

// parseTiktoken reads a tiktoken ranks file and returns the token bytes
// indexed by rank; the ranks must be 0..n-1.
func parseTiktoken(data []byte) ([][]byte, error) {
	var out [][]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := sc.Bytes()
		if len(text) == 0 {
			continue
		}
		sp := bytes.IndexByte(text, ' ')
		if sp < 0 {
			return nil, fmt.Errorf("line %d: want \"base64 rank\"", line)
		}
		rank, err := strconv.Atoi(string(text[sp+1:]))
		if err != nil || rank != len(out) {
			return nil, fmt.Errorf("line %d: rank %q, want %d", line, text[sp+1:], len(out))
		}
		tok := make([]byte, base64.StdEncoding.DecodedLen(sp))
		n, err := base64.StdEncoding.Decode(tok, text[:sp])
		if err != nil || n == 0 {
			return nil, fmt.Errorf("line %d: bad base64 token", line)
		}
		out = append(out, tok[:n])
	}
	return out, sc.Err()
}

// mergesFromRanks derives BPE merges from tiktoken ranks, the way the
// llama.cpp and HF converters do: for each token of more than one byte, in
// rank order, run tiktoken's BPE over its bytes allowing only lower-ranked
// tokens, until two parts remain; those two parts are the token's merge.
// The i-th merge returned (left, right rank) produces the i-th multi-byte
// token, so merge priority follows rank.
func mergesFromRanks(tokens [][]byte) ([][2]int32, error) {
	ids := make([]int32, len(tokens))
	for r := range ids {
		ids[r] = int32(r)
	}
	ranks, err := newWordTable(tokens, ids)
	if err != nil {
		return nil, err
	}
	rankOf := func(s string, limit int) int32 { // the rank of s if below limit, else -1
		if rk, ok := ranks.get(s); ok && int(rk) < limit {
			return rk
		}
		return -1
	}
	var merges [][2]int32
	var bounds []int  // part i is tok[bounds[i]:bounds[i+1]]
	var pairs []int32 // pairs[i] is the rank of parts i and i+1 joined, -1 if none below r
	for r, b := range tokens {
		if len(b) < 2 {
			continue
		}
		tok := string(b)
		bounds, pairs = bounds[:0], pairs[:0]
		for i := 0; i <= len(tok); i++ {
			bounds = append(bounds, i)
		}
		for i := 0; i+2 < len(bounds); i++ {
			pairs = append(pairs, rankOf(tok[bounds[i]:bounds[i+2]], r))
		}
		for len(bounds) > 3 {
			at := -1
			for i, rk := range pairs {
				if rk >= 0 && (at < 0 || rk < pairs[at]) {
					at = i
				}
			}
			if at < 0 {
				break
			}
			bounds = append(bounds[:at+1], bounds[at+2:]...)
			pairs = append(pairs[:at], pairs[at+1:]...)
			if at < len(pairs) {
				pairs[at] = rankOf(tok[bounds[at]:bounds[at+2]], r)
			}
			if at > 0 {
				pairs[at-1] = rankOf(tok[bounds[at-1]:bounds[at+1]], r)
			}
		}
		if len(bounds) != 3 {
			return nil, fmt.Errorf("token of rank %d (%q) is not the merge of two lower-ranked tokens", r, tok)
		}
		left, right := rankOf(tok[:bounds[1]], r), rankOf(tok[bounds[1]:], r)
		if left < 0 || right < 0 {
			return nil, fmt.Errorf("token of rank %d (%q): parts not in the vocabulary", r, tok)
		}
		merges = append(merges, [2]int32{left, right})
	}
	return merges, nil
}

// FromVocab builds a tokenizer from a vocabulary in GGUF form. FromGGUF reads
// the vocabulary from a model file and calls it.
func FromVocab(v *GGUFVocab) (*Tokenizer, error) {
	if v.Model != "gpt2" {
		return nil, fmt.Errorf("tokenizer: tokenizer.ggml.model %q is not supported (only \"gpt2\", byte-level BPE)", v.Model)
	}
	pretok, ok := pretokenizerByPre[v.Pre]
	if !ok {
		return nil, fmt.Errorf("tokenizer: tokenizer.ggml.pre %q is not supported (known: %s)", v.Pre,
			strings.Join(slices.Sorted(maps.Keys(pretokenizerByPre)), ", "))
	}
	n := len(v.Tokens)
	if len(v.TokenTypes) != n {
		return nil, fmt.Errorf("tokenizer: %d token types for %d tokens", len(v.TokenTypes), n)
	}
	sp := &spec{
		kind:   KindGGUF,
		pieces: make([][]byte, n),
		types:  v.TokenTypes,
		pretok: pretok,
		nfc:    v.Pre == "qwen2", // HF's Qwen2 tokenizer normalizes to NFC
		// A piece that is a whole token is that token (tiktoken; HF's
		// ignore_merges, which Llama 3's tokenizer sets), except for Qwen2,
		// whose tokenizer always runs the merges.
		wholeWords: v.Pre != "qwen2",
		bos:        v.BOS, eos: v.EOS, pad: v.PAD, eot: v.EOT, eom: v.EOM,
		addBOS: v.AddBOS,
	}
	byText := make(map[string]int32, n)
	arena := newByteArena(n * 8)
	for id, tok := range v.Tokens {
		switch v.TokenTypes[id] {
		case TypeControl, TypeUserDefined, TypeUnknown, TypeUnused:
			sp.pieces[id] = []byte(tok)
		default:
			b, ok := arena.byteLevelDecode(tok)
			if !ok {
				return nil, fmt.Errorf("tokenizer: token %d (%q) is not in GPT-2's byte-level alphabet", id, tok)
			}
			sp.pieces[id] = b
		}
		if _, dup := byText[tok]; !dup {
			byText[tok] = int32(id)
		}
	}
	var err error
	if sp.merges, err = parseMerges(v.Merges, byText); err != nil {
		return nil, err
	}
	return newTokenizer(sp)
}

// parseMerges resolves "left right" merge strings against the byte-level
// token strings.
func parseMerges(merges []string, byText map[string]int32) ([]merge, error) {
	out := make([]merge, len(merges))
	var buf []byte
	for i, m := range merges {
		left, right, ok := strings.Cut(m, " ")
		if !ok {
			return nil, fmt.Errorf("tokenizer: merge %d (%q) is not \"left right\"", i, m)
		}
		var err error
		if out[i], err = resolveMerge(i, left, right, byText, &buf); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// resolveMerge finds the ids of a merge's parts and result; buf is scratch
// space for joining the parts.
func resolveMerge(i int, left, right string, byText map[string]int32, buf *[]byte) (merge, error) {
	l, lok := byText[left]
	r, rok := byText[right]
	*buf = append(append((*buf)[:0], left...), right...)
	res, resok := byText[string(*buf)] // no allocation for a map index
	if !lok || !rok || !resok {
		return merge{}, fmt.Errorf("tokenizer: merge %d (%q %q): a part or the result is not in the vocabulary", i, left, right)
	}
	return merge{l, r, res}, nil
}
