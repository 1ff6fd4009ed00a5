// Package enginetest provides a fake model and a fake byte-level tokenizer
// for tests of the engine and the servers built on it. The fake model needs
// no weights: its logits are a fixed function of the sequence, or follow a
// script.
package enginetest

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"orcd/engine"
	"orcd/model"
)

// Specials are the special tokens of the fake tokenizer, with ids 256,
// 257, ... in this order: the harmony control tokens, <|endoftext|> and a
// reserved token no format uses.
var Specials = []string{
	"<|endoftext|>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>",
	"<|constrain|>", "<|return|>", "<|call|>", "<|reserved_0|>",
}

// VocabSize is the fake vocabulary: 256 bytes and the specials.
var VocabSize = 256 + len(Specials)

// Tokenizer is a byte-level tokenizer: token b < 256 is byte b.
type Tokenizer struct{}

var _ engine.Tokenizer = Tokenizer{}

// Encode returns one token per byte of text; special-token text stays text.
func (Tokenizer) Encode(text string) []int32 {
	ids := make([]int32, len(text))
	for i := 0; i < len(text); i++ {
		ids[i] = int32(text[i])
	}
	return ids
}

// TokenID returns the id of a special token.
func (Tokenizer) TokenID(name string) (int32, bool) {
	for i, s := range Specials {
		if s == name {
			return int32(256 + i), true
		}
	}
	return 0, false
}

// MustID is TokenID for names known to exist.
func MustID(name string) int32 {
	id, ok := Tokenizer{}.TokenID(name)
	if !ok {
		panic("enginetest: no special token " + name)
	}
	return id
}

// Decode returns the text of ids.
func (t Tokenizer) Decode(ids []int32) string {
	d := t.NewStreamDecoder()
	s := ""
	for _, id := range ids {
		s += d.Push(id)
	}
	return s + d.Flush()
}

// IsSpecial reports whether id is a special token.
func (Tokenizer) IsSpecial(id int32) bool { return id >= 256 && int(id) < VocabSize }

// IsEOG reports <|endoftext|>, <|return|> and <|call|>.
func (Tokenizer) IsEOG(id int32) bool {
	return id == MustID("<|endoftext|>") || id == MustID("<|return|>") || id == MustID("<|call|>")
}

// NewStreamDecoder returns a decoder that emits complete UTF-8 only.
func (Tokenizer) NewStreamDecoder() engine.StreamDecoder { return &decoder{} }

type decoder struct{ pending []byte }

func (d *decoder) Push(id int32) string {
	if id >= 0 && id < 256 {
		d.pending = append(d.pending, byte(id))
		return d.complete(false)
	}
	out := d.complete(true)
	if i := int(id) - 256; i >= 0 && i < len(Specials) {
		out += Specials[i]
	}
	return out
}

func (d *decoder) Flush() string { return d.complete(true) }

// complete returns the complete characters of pending; invalid bytes (and,
// at the end, an incomplete tail) become U+FFFD.
func (d *decoder) complete(final bool) string {
	var out []byte
	for len(d.pending) > 0 {
		r, n := utf8.DecodeRune(d.pending)
		if r == utf8.RuneError && n <= 1 {
			if !final && !utf8.FullRune(d.pending) {
				break
			}
			out = utf8.AppendRune(out, utf8.RuneError)
			d.pending = d.pending[1:]
			continue
		}
		out = append(out, d.pending[:n]...)
		d.pending = d.pending[n:]
	}
	return string(out)
}

// Model is a fake model.Model over the fake vocabulary.
type Model struct {
	// Next, when set, picks the token to make certain given the sequence so
	// far; otherwise the logits are a fixed pseudo-random function of the
	// last token and the position.
	Next func(history []int32) int32
	// Delay is added to every Forward call.
	Delay time.Duration
	// Ctx is the context length reported in Config (default 512).
	Ctx int
	// FailAfter makes Forward fail once this many calls have run (0: never).
	FailAfter int64
	// Fail, when set, is asked before each Forward with the call's number
	// (from 1); a non-nil result fails that call alone, as a backend's
	// out-of-memory error would.
	Fail func(call int64) error

	calls      atomic.Int64
	running    atomic.Int32
	MaxRunning atomic.Int32 // the most Forward calls seen running at once
	mu         sync.Mutex
	liveCaches int
}

var _ model.Model = (*Model)(nil)

// Config describes the fake model.
func (m *Model) Config() model.Config {
	ctx := m.Ctx
	if ctx == 0 {
		ctx = 512
	}
	return model.Config{Arch: "fake", Name: "fake", VocabSize: VocabSize, ContextLength: ctx, Layers: 1, Hidden: 8}
}

// NewCache returns a cache of ctx tokens.
func (m *Model) NewCache(ctx int) (model.Cache, error) {
	if ctx <= 0 {
		return nil, fmt.Errorf("enginetest: cache size %d", ctx)
	}
	m.mu.Lock()
	m.liveCaches++
	m.mu.Unlock()
	return &Cache{m: m, cap: ctx}, nil
}

// LiveCaches is the number of caches allocated and not freed.
func (m *Model) LiveCaches() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.liveCaches
}

// Calls is the number of Forward calls so far.
func (m *Model) Calls() int64 { return m.calls.Load() }

// Forward appends tokens to the cache and returns the last token's logits.
func (m *Model) Forward(c model.Cache, tokens []int32, all bool) ([]float32, error) {
	n := m.running.Add(1)
	defer m.running.Add(-1)
	for {
		old := m.MaxRunning.Load()
		if n <= old || m.MaxRunning.CompareAndSwap(old, n) {
			break
		}
	}
	call := m.calls.Add(1)
	if m.Delay > 0 {
		time.Sleep(m.Delay)
	}
	if m.FailAfter > 0 && call > m.FailAfter {
		return nil, errors.New("enginetest: injected model failure")
	}
	if m.Fail != nil {
		if err := m.Fail(call); err != nil {
			return nil, err
		}
	}
	fc := c.(*Cache)
	if len(fc.tokens)+len(tokens) > fc.cap {
		return nil, fmt.Errorf("enginetest: %d tokens do not fit a cache of %d holding %d", len(tokens), fc.cap, len(fc.tokens))
	}
	if all {
		return nil, errors.New("enginetest: all-token logits not supported")
	}
	fc.tokens = append(fc.tokens, tokens...)
	return m.logits(fc.tokens), nil
}

// logits returns the next-token logits after history.
func (m *Model) logits(history []int32) []float32 {
	out := make([]float32, VocabSize)
	if m.Next != nil {
		for i := range out {
			out[i] = float32(math.Inf(-1))
		}
		out[m.Next(history)] = 0
		return out
	}
	h := fnv.New64a()
	last := history[len(history)-1]
	fmt.Fprintf(h, "%d/%d", last, len(history))
	state := h.Sum64()
	for i := range out {
		state = state*6364136223846793005 + 1442695040888963407
		out[i] = float32(int64(state>>40)%800) / 100 // 0..8
	}
	// Keep end-of-text unlikely so that random text runs long.
	out[MustID("<|endoftext|>")] = -10
	out[MustID("<|return|>")] = -10
	out[MustID("<|call|>")] = -10
	return out
}

// Close does nothing.
func (m *Model) Close() error { return nil }

// Cache is the fake KV cache: it remembers the tokens.
type Cache struct {
	m      *Model
	cap    int
	tokens []int32
	freed  bool
}

// Len is the number of tokens stored.
func (c *Cache) Len() int { return len(c.tokens) }

// Cap is the capacity.
func (c *Cache) Cap() int { return c.cap }

// Reset forgets the tokens.
func (c *Cache) Reset() { c.tokens = c.tokens[:0] }

// Free releases the cache.
func (c *Cache) Free() {
	if c.freed {
		return
	}
	c.freed = true
	c.m.mu.Lock()
	c.m.liveCaches--
	c.m.mu.Unlock()
}

// Script returns a Next function that makes the model generate script after
// any prompt and then end-of-text. It finds its place by the longest prefix
// of script that ends the sequence, so script should not start with the
// prompt's last token.
func Script(script []int32) func([]int32) int32 {
	return func(h []int32) int32 {
		for k := min(len(script), len(h)); k > 0; k-- {
			if slices.Equal(h[len(h)-k:], script[:k]) {
				if k == len(script) {
					return MustID("<|endoftext|>")
				}
				return script[k]
			}
		}
		return script[0]
	}
}

// TextScript is Script for plain text followed by end-of-text.
func TextScript(text string) func([]int32) int32 {
	return Script(Tokenizer{}.Encode(text))
}

// FixedModel is a model.Model whose Forward does no work and returns the
// same Logits slice every call, so that a benchmark of the engine measures
// the per-token work on the host alone (sampling, detokenizing, stop
// matching) at a realistic vocabulary size.
type FixedModel struct {
	// Logits are returned by every Forward; their length is the vocabulary.
	Logits []float32
	// Ctx is the context length reported in Config (default 4096).
	Ctx int
}

var _ model.Model = (*FixedModel)(nil)

// Config describes the fixed model.
func (m *FixedModel) Config() model.Config {
	ctx := m.Ctx
	if ctx == 0 {
		ctx = 4096
	}
	return model.Config{Arch: "fixed", Name: "fixed", VocabSize: len(m.Logits), ContextLength: ctx, Layers: 1, Hidden: 8}
}

// NewCache returns a cache that counts tokens.
func (m *FixedModel) NewCache(ctx int) (model.Cache, error) {
	if ctx <= 0 {
		return nil, fmt.Errorf("enginetest: cache size %d", ctx)
	}
	return &countingCache{cap: ctx}, nil
}

// Forward advances the cache and returns Logits.
func (m *FixedModel) Forward(c model.Cache, tokens []int32, all bool) ([]float32, error) {
	cc := c.(*countingCache)
	if all {
		return nil, errors.New("enginetest: all-token logits not supported")
	}
	if cc.n+len(tokens) > cc.cap {
		return nil, fmt.Errorf("enginetest: %d tokens do not fit a cache of %d holding %d", len(tokens), cc.cap, cc.n)
	}
	cc.n += len(tokens)
	return m.Logits, nil
}

// Close does nothing.
func (m *FixedModel) Close() error { return nil }

// countingCache is FixedModel's cache: only a length.
type countingCache struct{ n, cap int }

func (c *countingCache) Len() int { return c.n }
func (c *countingCache) Cap() int { return c.cap }
func (c *countingCache) Reset()   { c.n = 0 }
func (c *countingCache) Free()    {}
