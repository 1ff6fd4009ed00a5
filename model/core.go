package model

import (
	"errors"
	"fmt"
	"sync"

	"orcd/backend"
)

// core is what both architectures keep beside their hyperparameters and
// weight layout: the backend, the mutex that serializes Model and Cache calls
// (a backend serves one goroutine at a time), every tensor Close frees, and
// the activation buffers of recent batch sizes. Each adapter embeds it, so
// Config, Close and the Forward plumbing are written once.
type core[B stepBuffers] struct {
	be        backend.Backend
	cfg       Config
	maxBatch  int
	weights   []backend.Tensor
	mu        sync.Mutex
	buffers   bufferPool[B]
	nextCache int
}

// Config describes the model.
func (m *core[B]) Config() Config { return m.cfg }

// Close frees the weights and activations. Caches are freed by their owners.
func (m *core[B]) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.buffers.freeAll()
	for _, t := range m.weights {
		m.be.Free(t)
	}
	m.weights = nil
	return nil
}

// stepBuffers are an adapter's activation buffers of one batch size, which
// embed activations.
type stepBuffers interface {
	free()
	input(tokens []int32, start int, mode logitsMode, vocab int) error
}

// buffersFor returns the buffers of len(tokens) tokens, made with alloc
// unless kept from an earlier step, with the tokens and their positions
// start… written.
func (m *core[B]) buffersFor(tokens []int32, start int, mode logitsMode, alloc func(n, id int) (B, error)) (B, error) {
	b, err := m.buffers.get(len(tokens), alloc)
	if err != nil {
		return b, err
	}
	return b, b.input(tokens, start, mode, m.cfg.VocabSize)
}

// newCache allocates the caches of one sequence of up to capacity tokens,
// rows[l]×cols in layer l.
func (m *core[B]) newCache(capacity int, rows []int, cols int) (Cache, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextCache++
	c, err := newKVCache(m.be, m, &m.mu, m.nextCache, capacity, rows, cols)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// logitsMode says which logits one forward step computes.
type logitsMode int

const (
	noLogits   logitsMode = iota // an early chunk of a long prompt
	lastLogits                   // the last token's
	allLogits                    // every token's
)

// stepFunc runs one forward step of at most maxBatch tokens starting at
// position start of cache c and writes the requested logits into out.
type stepFunc func(c *kvCache, tokens []int32, start int, mode logitsMode, out []float32) error

// forward is Model.Forward for both architectures: under the model's mutex
// it checks the cache and tokens, splits the tokens into steps of at most
// maxBatch, and advances the cache after each successful step.
func (m *core[B]) forward(cache Cache, tokens []int32, all bool, step stepFunc) ([]float32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := cache.(*kvCache)
	if !ok || c.owner != m {
		return nil, errors.New("model: Forward: the cache was not made by this model's NewCache")
	}
	if c.freed {
		return nil, errors.New("model: Forward: the cache has been freed")
	}
	if len(tokens) == 0 {
		return nil, errors.New("model: Forward: no tokens")
	}
	if c.n+len(tokens) > c.capacity {
		return nil, fmt.Errorf("model: context overflow: %d tokens in the cache + %d new > capacity %d",
			c.n, len(tokens), c.capacity)
	}
	vocab := m.cfg.VocabSize
	for i, t := range tokens {
		if t < 0 || int(t) >= vocab {
			return nil, fmt.Errorf("model: token %d (index %d) is outside the vocabulary [0, %d)", t, i, vocab)
		}
	}
	// The last token's logits go to the cache's own buffer, reused every
	// step (a decode step would otherwise allocate VocabSize floats: 0.8 MB
	// for gpt-oss). Every token's logits, a large and rare request, get
	// their own slice.
	var out []float32
	if all {
		out = make([]float32, len(tokens)*vocab)
	} else {
		if len(c.logits) != vocab {
			c.logits = make([]float32, vocab)
		}
		out = c.logits
	}
	for lo := 0; lo < len(tokens); lo += m.maxBatch {
		hi := min(lo+m.maxBatch, len(tokens))
		mode, dst := noLogits, []float32(nil)
		switch {
		case all:
			mode, dst = allLogits, out[lo*vocab:hi*vocab]
		case hi == len(tokens):
			mode, dst = lastLogits, out
		}
		if err := step(c, tokens[lo:hi], c.n, mode, dst); err != nil {
			return nil, err
		}
		c.n += hi - lo
	}
	return out, nil
}

// activations are the buffers of one batch size that both architectures
// need; each adapter's buffers embed them and add their own to set.
type activations struct {
	id             int            // distinguishes buffer sets in backend.Graph keys
	n              int            // tokens per step
	ids, pos, last backend.Tensor // I32: token ids, positions, [n-1]
	x, h           backend.Tensor // residual stream, normed stream, n×hidden
	lastX, logits  backend.Tensor // last row and its logits
	allLogits      backend.Tensor // n×vocab, made on first use
	set            tensorSet
	hostPos        []int32
}

// newActivations allocates the shared buffers of n tokens. The caller adds
// its own to set and then calls ready, which reports any failed allocation.
func newActivations(be backend.Backend, n, id, hidden, vocab int) activations {
	a := activations{id: id, n: n, set: tensorSet{be: be}}
	s := &a.set
	a.ids, a.pos, a.last = s.i32(n), s.i32(n), s.i32(1)
	a.x, a.h = s.f32(n, hidden), s.f32(n, hidden)
	a.lastX, a.logits = s.f32(1, hidden), s.f32(1, vocab)
	a.hostPos = make([]int32, n)
	return a
}

// ready frees everything if an allocation failed; otherwise it writes the
// index of the last row, which never changes for this batch size.
func (a *activations) ready() error {
	if a.set.err != nil {
		a.set.free()
		return a.set.err
	}
	a.set.be.WriteI32(a.last, []int32{int32(a.n - 1)})
	return nil
}

func (a *activations) free() { a.set.free() }

// input starts a step over tokens at positions start…: it makes the
// all-rows logits buffer on first use and writes the token ids and
// positions (left in hostPos for the caller).
func (a *activations) input(tokens []int32, start int, mode logitsMode, vocab int) error {
	if mode == allLogits && a.allLogits == nil {
		if a.allLogits = a.set.f32(len(tokens), vocab); a.allLogits == nil {
			return a.set.err
		}
	}
	a.set.be.WriteI32(a.ids, tokens)
	a.set.be.WriteI32(a.pos, positions(a.hostPos, start))
	return nil
}

// run queues a step's ops and reads the logits mode asks for into out. A
// single-token decode step queues the same ops on the same tensors every
// token, so it goes through backend.Graph, keyed by the architecture, the
// buffers and the cache, for a backend to record once and replay.
func (a *activations) run(arch string, c *kvCache, mode logitsMode, out []float32, ops func()) error {
	be := a.set.be
	if a.n == 1 && mode == lastLogits {
		be.Graph(fmt.Sprintf("%s/decode/buffers#%d/cache#%d", arch, a.id, c.id), ops)
	} else {
		ops()
	}
	switch mode {
	case lastLogits:
		return be.ReadF32(a.logits, out)
	case allLogits:
		return be.ReadF32(a.allLogits, out)
	}
	return be.Sync()
}

// positions returns start, start+1, … for n tokens.
func positions(dst []int32, start int) []int32 {
	for i := range dst {
		dst[i] = int32(start + i)
	}
	return dst
}

// tensorSet allocates backend tensors and remembers them, so that a group
// (one batch size's activations) is freed together, and so that a failed
// allocation is reported once at the end.
type tensorSet struct {
	be      backend.Backend
	tensors []backend.Tensor
	err     error
}

func (s *tensorSet) f32(rows, cols int) backend.Tensor {
	if s.err != nil {
		return nil
	}
	t, err := s.be.NewF32(rows, cols)
	if err != nil {
		s.err = fmt.Errorf("model: allocating a %d×%d activation: %w", rows, cols, err)
		return nil
	}
	s.tensors = append(s.tensors, t)
	return t
}

func (s *tensorSet) i32(n int) backend.Tensor {
	if s.err != nil {
		return nil
	}
	t, err := s.be.NewI32(n)
	if err != nil {
		s.err = fmt.Errorf("model: allocating %d int32: %w", n, err)
		return nil
	}
	s.tensors = append(s.tensors, t)
	return t
}

func (s *tensorSet) free() {
	for _, t := range s.tensors {
		s.be.Free(t)
	}
	s.tensors = nil
}

// bufferPool keeps the activation buffers of recent batch sizes, so that
// decode steps (size 1) and full prompt chunks (size maxBatch) reuse theirs
// and a decode step allocates nothing.
type bufferPool[B interface{ free() }] struct {
	sets   map[int]B
	nextID int
}

// maxBufferSets bounds the batch sizes whose buffers are kept: decode, full
// chunks and one odd remainder.
const maxBufferSets = 3

// get returns the buffers for n tokens, making them with alloc (given a
// fresh id for Graph keys) and freeing other sizes' buffers when too many
// are kept.
func (p *bufferPool[B]) get(n int, alloc func(n, id int) (B, error)) (B, error) {
	if b, ok := p.sets[n]; ok {
		return b, nil
	}
	if p.sets == nil {
		p.sets = map[int]B{}
	}
	if len(p.sets) >= maxBufferSets {
		for size, b := range p.sets {
			if size != 1 {
				b.free()
				delete(p.sets, size)
			}
		}
	}
	p.nextID++
	b, err := alloc(n, p.nextID)
	if err != nil {
		return b, err
	}
	p.sets[n] = b
	return b, nil
}

// freeAll frees and drops every kept set.
func (p *bufferPool[B]) freeAll() {
	for size, b := range p.sets {
		b.free()
		delete(p.sets, size)
	}
}
