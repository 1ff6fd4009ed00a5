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

	"orcd/backend"
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

// TokenText returns the text of one token: its byte (not valid UTF-8 on
// its own above 127), or a special token's name.
func (Tokenizer) TokenText(id int32) string {
	switch {
	case id >= 0 && id < 256:
		return string([]byte{byte(id)})
	case id >= 256 && int(id) < VocabSize:
		return Specials[id-256]
	}
	return ""
}

// VocabSize is the number of token ids.
func (Tokenizer) VocabSize() int { return VocabSize }

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

// Model is a fake model.Model over the fake vocabulary. Its KV pool stores
// tokens instead of keys and values: a step writes each chunk's tokens into
// the blocks its tables name and reads the sequence's history back through
// them, so a mistake in block bookkeeping (a block shared or reused while
// in use, a missing entry) changes the output or fails the step.
type Model struct {
	// Next, when set, picks the token to make certain given the sequence so
	// far; otherwise the logits are a fixed pseudo-random function of the
	// whole sequence.
	Next func(history []int32) int32
	// Delay is added to every Step call.
	Delay time.Duration
	// Ctx is the context length reported in Config (default 512).
	Ctx int
	// MaxBatch is the most tokens a step takes (default 512).
	MaxBatch int
	// Windows are the KV layout's layers (default one full-attention
	// layer); a sliding window only checks that its blocks are there.
	Windows []int
	// FailAfter makes Step fail once this many calls have run (0: never).
	FailAfter int64
	// Fail, when set, is asked before each Step with the call's number
	// (from 1); a non-nil result fails that call alone, as a backend's
	// out-of-memory error would.
	Fail func(call int64) error
	// DeviceSampling makes the logits draw on a fake device, as
	// backend.Sampler does: the most likely token of every row (first of
	// ties), whatever the row's settings; drawing overwrites the logits
	// with NaN (a device may change them), and rows can be read alone
	// (model.RowReader).
	DeviceSampling bool

	calls      atomic.Int64
	running    atomic.Int32
	MaxRunning atomic.Int32 // the most Step calls seen running at once
	mu         sync.Mutex
	livePools  int
	// StepSizes records the tokens of every step, when not nil.
	StepSizes chan int
}

var _ model.Model = (*Model)(nil)

// Config describes the fake model.
func (m *Model) Config() model.Config {
	ctx, batch := m.Ctx, m.MaxBatch
	if ctx == 0 {
		ctx = 512
	}
	if batch == 0 {
		batch = 512
	}
	return model.Config{Arch: "fake", Name: "fake", VocabSize: VocabSize, ContextLength: ctx, Layers: 1, Hidden: 8, MaxBatch: batch}
}

// KVLayout is one full-attention layer unless Windows says otherwise.
func (m *Model) KVLayout() model.KVLayout {
	w := m.Windows
	if w == nil {
		w = []int{0}
	}
	return model.KVLayout{Windows: w, Cols: 1}
}

// NewKV returns a pool that stores tokens.
func (m *Model) NewKV(blocks, blockSize int) (model.KV, error) {
	if blocks < 1 || blockSize < 1 {
		return nil, fmt.Errorf("enginetest: pool of %d blocks of %d", blocks, blockSize)
	}
	m.mu.Lock()
	m.livePools++
	m.mu.Unlock()
	groups := m.KVLayout().Groups()
	p := &Pool{m: m, bs: blockSize, groups: groups, tokens: make([][]int32, len(groups))}
	for g := range groups {
		p.tokens[g] = make([]int32, blocks*blockSize)
	}
	return p, nil
}

// LivePools is the number of KV pools allocated and not freed.
func (m *Model) LivePools() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.livePools
}

// Calls is the number of Step calls so far.
func (m *Model) Calls() int64 { return m.calls.Load() }

// Step stores the chunks' tokens and returns the logits they ask for.
func (m *Model) Step(kv model.KV, b *model.Batch) (model.Logits, error) {
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
	p := kv.(*Pool)
	if p.freed {
		return nil, errors.New("enginetest: step on a freed pool")
	}
	total := 0
	var out []float32
	rows := 0
	for c, ch := range b.Chunks {
		total += len(ch.Tokens)
		history, err := p.store(ch)
		if err != nil {
			return nil, fmt.Errorf("enginetest: chunk %d: %w", c, err)
		}
		for i := range ch.Tokens {
			if ch.Logits == model.AllLogits || ch.Logits == model.LastLogits && i == len(ch.Tokens)-1 {
				out = append(out, m.logits(history[:ch.Pos+i+1])...)
				rows++
			}
		}
	}
	if total == 0 || total > m.Config().MaxBatch {
		return nil, fmt.Errorf("enginetest: %d tokens in a step", total)
	}
	if m.StepSizes != nil {
		select {
		case m.StepSizes <- total:
		default:
		}
	}
	if m.DeviceSampling {
		return &deviceLogits{hostLogits{rows: rows, data: out}}, nil
	}
	return &hostLogits{rows: rows, data: out}, nil
}

// Forward is not used by the engine; the fake has no per-sequence caches.
func (m *Model) Forward(model.Cache, []int32, bool) ([]float32, error) {
	return nil, errors.New("enginetest: Forward is not supported")
}

// NewCache is not supported by the fake.
func (m *Model) NewCache(int) (model.Cache, error) {
	return nil, errors.New("enginetest: NewCache is not supported")
}

// Logits returns the logits the model gives after history (for tests that
// compute what the engine should report from them).
func (m *Model) Logits(history []int32) []float32 { return m.logits(history) }

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
	for _, t := range history {
		h.Write([]byte{byte(t), byte(t >> 8)})
	}
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

// Pool is the fake KV pool: per group, a token per cache row.
type Pool struct {
	m      *Model
	bs     int
	groups []model.KVGroup
	tokens [][]int32
	freed  bool
}

// BlockSize is the tokens per block.
func (p *Pool) BlockSize() int { return p.bs }

// Blocks is the number of blocks.
func (p *Pool) Blocks() int { return len(p.tokens[0]) / p.bs }

// Groups are the layout's groups.
func (p *Pool) Groups() []model.KVGroup { return p.groups }

// Free releases the pool.
func (p *Pool) Free() {
	if p.freed {
		return
	}
	p.freed = true
	p.m.mu.Lock()
	p.m.livePools--
	p.m.mu.Unlock()
}

// store writes ch's tokens through its tables and returns the sequence's
// tokens up to the chunk's end, read back through the first full-attention
// group's table; every sliding group must hold its window.
func (p *Pool) store(ch model.Chunk) ([]int32, error) {
	end := ch.Pos + len(ch.Tokens)
	row := func(g, pos int) (int, error) {
		t := ch.Tables[g]
		if pos/p.bs >= len(t) || t[pos/p.bs] < 0 || int(t[pos/p.bs]) >= p.Blocks() {
			return 0, fmt.Errorf("group %d has no block for position %d (table %v)", g, pos, t)
		}
		return int(t[pos/p.bs])*p.bs + pos%p.bs, nil
	}
	for g := range p.groups {
		for i, tok := range ch.Tokens {
			r, err := row(g, ch.Pos+i)
			if err != nil {
				return nil, err
			}
			p.tokens[g][r] = tok
		}
	}
	history := make([]int32, end)
	for pos := range history {
		r, err := row(0, pos)
		if err != nil {
			return nil, err
		}
		history[pos] = p.tokens[0][r]
	}
	for g, grp := range p.groups {
		for pos := max(0, ch.Pos-grp.Window+1); grp.Window > 0 && pos < end; pos++ {
			r, err := row(g, pos)
			if err != nil {
				return nil, err
			}
			if p.tokens[g][r] != history[pos] {
				return nil, fmt.Errorf("group %d holds token %d at position %d, the sequence has %d", g, p.tokens[g][r], pos, history[pos])
			}
		}
	}
	return history, nil
}

// hostLogits are logits computed on the host.
type hostLogits struct {
	rows int
	data []float32
}

func (l *hostLogits) Rows() int                { return l.rows }
func (l *hostLogits) Tensor() backend.Tensor   { return nil }
func (l *hostLogits) Read(dst []float32) error { copy(dst, l.data); return nil }
func (l *hostLogits) Sample([]backend.SampleParams, []int32) (bool, error) {
	return false, nil
}

// deviceLogits are hostLogits drawn on a fake device (Model.DeviceSampling).
type deviceLogits struct{ hostLogits }

var _ model.RowReader = (*deviceLogits)(nil)

func (l *deviceLogits) Sample(rows []backend.SampleParams, ids []int32) (bool, error) {
	if len(rows) != l.rows || len(ids) < l.rows {
		return true, fmt.Errorf("enginetest: %d sampling rows and %d ids for %d rows", len(rows), len(ids), l.rows)
	}
	vocab := len(l.data) / max(l.rows, 1)
	for r := range l.rows {
		row := l.data[r*vocab : (r+1)*vocab]
		best := 0
		for i, v := range row {
			if v > row[best] {
				best = i
			}
		}
		ids[r] = int32(best)
		for i := range row {
			row[i] = float32(math.NaN())
		}
	}
	return true, nil
}

func (l *deviceLogits) ReadRows(rows []int32, dst []float32) error {
	vocab := len(l.data) / max(l.rows, 1)
	if len(dst) != len(rows)*vocab {
		return fmt.Errorf("enginetest: ReadRows: %d values for %d rows", len(dst), len(rows))
	}
	for i, r := range rows {
		if r < 0 || int(r) >= l.rows {
			return fmt.Errorf("enginetest: ReadRows: row %d of %d", r, l.rows)
		}
		copy(dst[i*vocab:], l.data[int(r)*vocab:(int(r)+1)*vocab])
	}
	return nil
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

// FixedModel is a model.Model whose Step does no work and returns the same
// Logits for every row, so that a benchmark of the engine measures the
// per-token work on the host alone (sampling, detokenizing, stop matching)
// at a realistic vocabulary size.
type FixedModel struct {
	// Logits are returned for every row; their length is the vocabulary.
	Logits []float32
	// Ctx is the context length reported in Config (default 4096).
	Ctx   int
	inner Model
}

var _ model.Model = (*FixedModel)(nil)

// Config describes the fixed model.
func (m *FixedModel) Config() model.Config {
	ctx := m.Ctx
	if ctx == 0 {
		ctx = 4096
	}
	return model.Config{Arch: "fixed", Name: "fixed", VocabSize: len(m.Logits), ContextLength: ctx, Layers: 1, Hidden: 8, MaxBatch: 512}
}

// KVLayout is one full-attention layer.
func (m *FixedModel) KVLayout() model.KVLayout { return m.inner.KVLayout() }

// NewKV returns a pool that stores tokens.
func (m *FixedModel) NewKV(blocks, blockSize int) (model.KV, error) {
	return m.inner.NewKV(blocks, blockSize)
}

// Step returns Logits for every row that asks for logits.
func (m *FixedModel) Step(kv model.KV, b *model.Batch) (model.Logits, error) {
	rows := 0
	for _, ch := range b.Chunks {
		switch ch.Logits {
		case model.LastLogits:
			rows++
		case model.AllLogits:
			rows += len(ch.Tokens)
		}
	}
	return &fixedLogits{rows: rows, row: m.Logits}, nil
}

// Forward is not supported.
func (m *FixedModel) Forward(model.Cache, []int32, bool) ([]float32, error) {
	return nil, errors.New("enginetest: Forward is not supported")
}

// NewCache is not supported.
func (m *FixedModel) NewCache(int) (model.Cache, error) {
	return nil, errors.New("enginetest: NewCache is not supported")
}

// Close does nothing.
func (m *FixedModel) Close() error { return nil }

// fixedLogits are rows copies of one row.
type fixedLogits struct {
	rows int
	row  []float32
}

func (l *fixedLogits) Rows() int              { return l.rows }
func (l *fixedLogits) Tensor() backend.Tensor { return nil }
func (l *fixedLogits) Sample([]backend.SampleParams, []int32) (bool, error) {
	return false, nil
}
func (l *fixedLogits) Read(dst []float32) error {
	for i := range l.rows {
		copy(dst[i*len(l.row):], l.row)
	}
	return nil
}
