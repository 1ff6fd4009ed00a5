package model

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"

	"orcd/backend"
)

// core is what both architectures keep beside their hyperparameters and
// weight layout: the backend, the mutex that serializes Model, KV and Cache
// calls (a backend serves one goroutine at a time), every tensor Close
// frees, and the buffers of a step: activations made once for MaxBatch
// tokens (a step of n tokens runs on views of their first n rows), the
// block tables and the logits, which grow on demand. Each adapter embeds
// it, so Config, Close, the KV plumbing and Forward are written once.
type core[B stepBuffers[B]] struct {
	be       backend.Backend
	cfg      Config
	layout   KVLayout
	weights  []backend.Tensor
	mu       sync.Mutex
	bufs     B
	haveBufs bool
	tables   []growable // per KV group: the block tables, nSeq × stride
	logits   growable   // rows × vocab
	picked   pickBuffers
	in       stepInput
	nextKV   int
}

// stepBuffers are an adapter's activations for MaxBatch tokens, which embed
// activations.
type stepBuffers[B any] interface {
	free()
	// view returns the buffers of the first n tokens.
	view(be backend.Backend, n int) B
	// acts returns the shared buffers.
	acts() *activations
}

// Config describes the model.
func (m *core[B]) Config() Config { return m.cfg }

// KVLayout describes the model's KV caches.
func (m *core[B]) KVLayout() KVLayout { return m.layout }

// Close frees the weights and activations. KV pools and caches are freed by
// their owners.
func (m *core[B]) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.haveBufs {
		m.bufs.free()
		m.haveBufs = false
	}
	for i := range m.tables {
		m.tables[i].free(m.be)
	}
	m.logits.free(m.be)
	m.picked.out.free(m.be)
	m.picked.ids.free(m.be)
	for _, t := range m.weights {
		m.be.Free(t)
	}
	m.weights = nil
	return nil
}

// NewKV allocates a paged KV pool of blocks blocks of blockSize tokens.
func (m *core[B]) NewKV(blocks, blockSize int) (KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextKV++
	return newKV(m.be, m, &m.mu, m.nextKV, m.layout, blocks, blockSize)
}

// NewCache allocates the cache of one sequence of up to ctx tokens.
func (m *core[B]) NewCache(ctx int) (Cache, error) {
	if ctx <= 0 || ctx > m.cfg.ContextLength {
		return nil, fmt.Errorf("model: cache size %d out of range [1, %d] (the model's context length)", ctx, m.cfg.ContextLength)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextKV++
	return newSeqCache(m.be, m, &m.mu, m.nextKV, m.layout, ctx, m.cfg.MaxBatch)
}

// growable is a backend tensor that is reallocated, larger, when a step
// needs more than it holds.
type growable struct {
	t    backend.Tensor
	size int // elements (I32) or rows (F32)
}

func (g *growable) free(be backend.Backend) {
	be.Free(g.t)
	*g = growable{}
}

// i32 returns a view of n values, growing the tensor to a power of two.
func (g *growable) i32(be backend.Backend, n int) (backend.Tensor, error) {
	if n > g.size {
		g.free(be)
		size := 1 << bits.Len(uint(n-1))
		t, err := be.NewI32(size)
		if err != nil {
			return nil, fmt.Errorf("model: allocating %d int32: %w", size, err)
		}
		g.t, g.size = t, size
	}
	return be.View(g.t, n), nil
}

// f32 returns a view of rows×cols, growing the tensor up to maxRows rows.
func (g *growable) f32(be backend.Backend, rows, cols, maxRows int) (backend.Tensor, error) {
	if rows > g.size {
		g.free(be)
		size := min(max(rows, 2*g.size), maxRows)
		t, err := be.NewF32(size, cols)
		if err != nil {
			return nil, fmt.Errorf("model: allocating a %d×%d activation: %w", size, cols, err)
		}
		g.t, g.size = t, size
	}
	return be.View(g.t, rows), nil
}

// stepInput is the host side of one step: the tensors' contents, rebuilt
// for every batch in slices reused from step to step.
type stepInput struct {
	n       int       // tokens
	ids     []int32   // token ids
	pos     []int32   // positions
	seq     []int32   // chunk index of each token
	last    []int32   // rows whose logits are wanted
	slots   [][]int32 // per group: the cache row each token's K and V go to
	tables  [][]int32 // per group: nSeq × stride block ids, -1 padded
	stride  int       // entries per sequence in tables: a power of two
	singles int       // leading decode chunks
	decode  bool      // every chunk is one token that wants its logits
}

// prepare checks b against kv and the model and fills in.
func (m *core[B]) prepare(kv *kvPool, b *Batch) error {
	in := &m.in
	in.n, in.stride, in.singles, in.decode = 0, 1, 0, len(b.Chunks) > 0
	in.ids, in.pos, in.seq, in.last = in.ids[:0], in.pos[:0], in.seq[:0], in.last[:0]
	groups := kv.groups
	if len(in.slots) != len(groups) {
		in.slots, in.tables = make([][]int32, len(groups)), make([][]int32, len(groups))
	}
	for g := range groups {
		in.slots[g] = in.slots[g][:0]
	}
	bs, vocab := kv.blockSize, m.cfg.VocabSize
	counting := true
	for c, ch := range b.Chunks {
		n := len(ch.Tokens)
		if n == 0 {
			return fmt.Errorf("model: Step: chunk %d has no tokens", c)
		}
		if ch.Pos < 0 || ch.Pos+n > m.cfg.ContextLength {
			return fmt.Errorf("model: Step: chunk %d: positions %d..%d outside the model's context [0, %d)",
				c, ch.Pos, ch.Pos+n-1, m.cfg.ContextLength)
		}
		if len(ch.Tables) != len(groups) {
			return fmt.Errorf("model: Step: chunk %d has %d block tables, the pool has %d KV groups", c, len(ch.Tables), len(groups))
		}
		if counting && n == 1 && ch.Decode {
			in.singles++
		} else {
			counting = false
		}
		if n != 1 || ch.Logits == NoLogits {
			in.decode = false
		}
		for g, grp := range groups {
			t := ch.Tables[g]
			end := ch.Pos + n - 1 // the last position written and seen
			if end/bs >= len(t) {
				return fmt.Errorf("model: Step: chunk %d: group %d's table has %d blocks, position %d needs %d",
					c, g, len(t), end, end/bs+1)
			}
			for blk := firstKey(ch.Pos, grp.Window) / bs; blk <= end/bs; blk++ {
				if t[blk] < 0 || int(t[blk]) >= kv.blocks {
					return fmt.Errorf("model: Step: chunk %d: group %d's block %d (positions %d..%d) is %d, not a block of the %d-block pool",
						c, g, blk, blk*bs, (blk+1)*bs-1, t[blk], kv.blocks)
				}
			}
			in.stride = max(in.stride, 1<<bits.Len(uint(end/bs)))
		}
		for i, tok := range ch.Tokens {
			if tok < 0 || int(tok) >= vocab {
				return fmt.Errorf("model: Step: chunk %d: token %d (index %d) is outside the vocabulary [0, %d)", c, tok, i, vocab)
			}
			p := ch.Pos + i
			if ch.Logits == AllLogits || ch.Logits == LastLogits && i == n-1 {
				in.last = append(in.last, int32(in.n))
			}
			in.ids = append(in.ids, tok)
			in.pos = append(in.pos, int32(p))
			in.seq = append(in.seq, int32(c))
			for g := range groups {
				in.slots[g] = append(in.slots[g], ch.Tables[g][p/bs]*int32(bs)+int32(p%bs))
			}
			in.n++
		}
	}
	if in.n == 0 || in.n > m.cfg.MaxBatch {
		return fmt.Errorf("model: Step: %d tokens, want 1 to %d", in.n, m.cfg.MaxBatch)
	}
	for g := range groups {
		t := in.tables[g][:0]
		for _, ch := range b.Chunks {
			row := ch.Tables[g][:min(len(ch.Tables[g]), in.stride)]
			t = append(t, row...)
			for range in.stride - len(row) {
				t = append(t, -1)
			}
		}
		in.tables[g] = t
	}
	return nil
}

// firstKey is the oldest key position a query at position pos sees.
func firstKey(pos, window int) int {
	if window == 0 {
		return 0
	}
	return max(0, pos-window+1)
}

// stepView is what an adapter's ops need for one step: its buffers (views of
// n rows), the pool and the step's tables and attention settings.
type stepView[B any] struct {
	bufs   B
	kv     *kvPool
	tables []backend.Tensor // per group
	slots  []backend.Tensor // per group
	last   backend.Tensor   // I32: the m rows whose logits are wanted; nil when none
	lastX  backend.Tensor   // those rows gathered, m×hidden
	lastH  backend.Tensor   // those rows normed, when the adapter's activations have it
	logits backend.Tensor   // m×vocab
	stride int
	single int
}

// attention returns the attention settings of layer l for this step, from
// the adapter's base settings (heads, head dim, scale).
func (v *stepView[B]) attention(base backend.AttentionParams, window int) backend.AttentionParams {
	p := base
	p.Window, p.BlockSize, p.MaxBlocks, p.Singles = window, v.kv.blockSize, v.stride, v.single
	return p
}

// layerCache is one layer's K and V pool tensors, its group's block table
// and the cache rows of the step's tokens.
type layerCache struct{ k, v, table, slots backend.Tensor }

// cache returns layer l's cache tensors.
func (v *stepView[B]) cache(l int) layerCache {
	g, s := v.kv.groupOf[l], v.kv.slotOf[l]
	return layerCache{v.kv.k[s], v.kv.v[s], v.tables[g], v.slots[g]}
}

// step is Model.Step for both architectures: under the model's mutex it
// checks the batch, writes its inputs, and queues the adapter's ops (through
// backend.Graph for a decode-only batch, whose ops are the same every step
// for a given number of sequences).
func (m *core[B]) step(kv KV, b *Batch, alloc func() (B, error), ops func(*stepView[B], B)) (Logits, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	pool, err := poolOf(kv, m)
	if err != nil {
		return nil, err
	}
	return m.stepLocked(pool, b, alloc, ops)
}

func (m *core[B]) stepLocked(kv *kvPool, b *Batch, alloc func() (B, error), ops func(*stepView[B], B)) (Logits, error) {
	if err := m.prepare(kv, b); err != nil {
		return nil, err
	}
	be, in := m.be, &m.in
	if !m.haveBufs {
		bufs, err := alloc()
		if err != nil {
			return nil, err
		}
		m.bufs, m.haveBufs = bufs, true
	}
	if len(m.tables) != len(kv.groups) {
		for i := range m.tables {
			m.tables[i].free(be)
		}
		m.tables = make([]growable, len(kv.groups))
	}
	v := &stepView[B]{kv: kv, stride: in.stride, single: in.singles, bufs: m.bufs.view(be, in.n)}
	a := v.bufs.acts()
	for g := range kv.groups {
		t, err := m.tables[g].i32(be, len(in.tables[g]))
		if err != nil {
			return nil, err
		}
		be.WriteI32(t, in.tables[g])
		v.tables = append(v.tables, t)
		slots := be.View(a.slots[g], in.n)
		be.WriteI32(slots, in.slots[g])
		v.slots = append(v.slots, slots)
	}
	be.WriteI32(a.ids, in.ids)
	be.WriteI32(a.pos, in.pos)
	be.WriteI32(a.seq, in.seq)
	rows := len(in.last)
	if rows > 0 {
		var err error
		if v.logits, err = m.logits.f32(be, rows, m.cfg.VocabSize, m.cfg.MaxBatch); err != nil {
			return nil, err
		}
		last := be.View(a.last, rows)
		be.WriteI32(last, in.last)
		v.last, v.lastX = last, be.View(a.lastX, rows)
		if a.lastH != nil {
			v.lastH = be.View(a.lastH, rows)
		}
	}
	run := func() { ops(v, v.bufs) }
	if in.decode {
		be.Graph(fmt.Sprintf("%s/decode/n=%d/stride=%d/kv#%d", m.cfg.Arch, in.n, in.stride, kv.id), run)
	} else {
		run()
	}
	if rows == 0 {
		return &deviceLogits{be: be}, be.Sync()
	}
	m.picked.mu, m.picked.maxRows = &m.mu, m.cfg.MaxBatch
	return &deviceLogits{be: be, t: v.logits, rows: rows, picked: &m.picked}, be.Err()
}

// forward is Model.Forward for both architectures: it splits the tokens
// into steps of at most MaxBatch, gives the cache blocks for each, and
// advances it after each successful step.
func (m *core[B]) forward(cache Cache, tokens []int32, all bool, alloc func() (B, error), ops func(*stepView[B], B)) ([]float32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := cache.(*seqCache)
	if !ok || c.kv.owner != m {
		return nil, errors.New("model: Forward: the cache was not made by this model's NewCache")
	}
	if c.kv.freed {
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
	batch := Batch{Chunks: []Chunk{{Tables: c.tables}}}
	ch := &batch.Chunks[0]
	for lo := 0; lo < len(tokens); lo += m.cfg.MaxBatch {
		hi := min(lo+m.cfg.MaxBatch, len(tokens))
		mode, dst := NoLogits, []float32(nil)
		switch {
		case all:
			mode, dst = AllLogits, out[lo*vocab:hi*vocab]
		case hi == len(tokens):
			mode, dst = LastLogits, out
		}
		c.grow(c.n, c.n+hi-lo)
		// A one-token call is a decode step: it takes the backend's
		// one-row kernels (AttentionParams.Singles), as the engine's do.
		ch.Tokens, ch.Pos, ch.Logits, ch.Tables, ch.Decode = tokens[lo:hi], c.n, mode, c.tables, hi-lo == 1
		logits, err := m.stepLocked(c.kv, &batch, alloc, ops)
		if err == nil && dst != nil {
			err = logits.Read(dst)
		}
		if err != nil {
			return nil, err
		}
		c.n += hi - lo
	}
	return out, nil
}

// activations are the buffers of MaxBatch tokens that both architectures
// need; each adapter's buffers embed them and add their own to set.
type activations struct {
	ids, pos, seq, last backend.Tensor   // I32: token ids, positions, chunk of each token, rows with logits
	slots               []backend.Tensor // I32 per KV group: cache rows
	x, h                backend.Tensor   // residual stream, normed stream, n×hidden
	lastX               backend.Tensor   // the rows with logits, gathered
	lastH               backend.Tensor   // and normed (quantH only)
	set                 tensorSet
}

// newActivations allocates the shared buffers of n tokens. The caller adds
// its own to set and then calls ready, which reports any failed allocation.
// With quantH, the normed stream h and the normed rows with logits lastH
// carry quantized copies when the backend has them
// (backend.QuantizedActivations): they are then written only by RMSNorm
// and AddRMSNorm and read by the products after them.
func newActivations(be backend.Backend, n, groups, hidden int, quantH bool) activations {
	a := activations{set: tensorSet{be: be}}
	s := &a.set
	a.ids, a.pos, a.seq, a.last = s.i32(n), s.i32(n), s.i32(n), s.i32(n)
	for range groups {
		a.slots = append(a.slots, s.i32(n))
	}
	a.x, a.lastX = s.f32(n, hidden), s.f32(n, hidden)
	if quantH {
		a.h, a.lastH = s.f32q(n, hidden), s.f32q(n, hidden)
	} else {
		a.h = s.f32(n, hidden)
	}
	return a
}

// ready frees everything if an allocation failed.
func (a *activations) ready() error {
	if a.set.err != nil {
		a.set.free()
		return a.set.err
	}
	return nil
}

func (a *activations) free() { a.set.free() }

// acts returns a itself, so that core reaches the shared buffers of any
// adapter's buffers.
func (a *activations) acts() *activations { return a }

// view returns the shared buffers of the first n tokens. slots, last and
// lastX stay whole: core views them per step, knowing their lengths.
func (a *activations) view(be backend.Backend, n int) activations {
	v := *a
	v.ids, v.pos, v.seq = be.View(a.ids, n), be.View(a.pos, n), be.View(a.seq, n)
	v.x, v.h = be.View(a.x, n), be.View(a.h, n)
	return v
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

// f32q is f32 for an activation the backend may give a quantized copy
// (backend.QuantizedActivations).
func (s *tensorSet) f32q(rows, cols int) backend.Tensor {
	q, ok := s.be.(backend.QuantizedActivations)
	if !ok || s.err != nil {
		return s.f32(rows, cols)
	}
	t, err := q.NewF32Quantized(rows, cols)
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

// routeBuffers are the mixture of experts' routing between its ops (router
// logits, the chosen experts and their weights), for backends without a
// fused MoE.
type routeBuffers struct {
	logits, ids, weights backend.Tensor
	k                    int
}

func newRouteBuffers(s *tensorSet, n, experts, k int) routeBuffers {
	return routeBuffers{logits: s.f32(n, experts), ids: s.i32(n * k), weights: s.f32(n, k), k: k}
}

// view returns the buffers of the first n tokens (none when unallocated).
func (r routeBuffers) view(be backend.Backend, n int) routeBuffers {
	if r.logits == nil {
		return r
	}
	return routeBuffers{logits: be.View(r.logits, n), ids: be.View(r.ids, n*r.k), weights: be.View(r.weights, n), k: r.k}
}

// upload makes an F32 weight of host values (RoPE frequencies), which the
// model then owns; after a failure it closes the model.
func (m *core[B]) upload(what string, v []float32) (backend.Tensor, error) {
	t, err := m.be.NewF32(1, len(v))
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("model: allocating %s: %w", what, err)
	}
	m.weights = append(m.weights, t)
	m.be.WriteF32(t, v)
	return t, nil
}

// rmsLogits queues the last RMSNorm and the output projection for the
// rows whose logits are wanted (gpt-oss, the Llama family): the rows are
// gathered from the residual stream x and normed into lastH, whose
// quantized copy, where the backend has them, the projection reads.
func (v *stepView[B]) rmsLogits(be backend.Backend, x, norm, output backend.Tensor, eps float32) {
	if v.last == nil {
		return
	}
	be.Embed(v.lastX, x, v.last)
	be.RMSNorm(v.lastH, v.lastX, norm, eps)
	be.MatMul(v.logits, v.lastH, output, nil)
}

// ropeAttention is one layer's attention half in gpt-oss and the Llama
// family: RMSNorm → Q, K, V (optional biases) → RoPE on Q and K → causal
// GQA (optional sinks) → O.
type ropeAttention struct {
	norm           backend.Tensor
	qW, kW, vW, oW backend.Tensor
	qB, kB, vB, oB backend.Tensor // nil without biases
	sinks          backend.Tensor // one logit per query head, or nil
}

// ropeSettings are a model's settings for ropeAttention.
type ropeSettings struct {
	eps     float32
	invFreq backend.Tensor
	rope    backend.RoPEParams
}

// queue queues layer l's attention half for a step. The residual stream is
// a.x; out holds the previous half's output, which joins the residual
// stream in the norm (AddRMSNorm) unless l is 0, and receives this half's.
// q, k, v and att are the step's buffers for the projections and the
// attention output.
func (w *ropeAttention) queue(be backend.Backend, s ropeSettings, l int, a *activations, q, k, v, att, out backend.Tensor,
	c layerCache, p backend.AttentionParams) {
	if l == 0 {
		be.RMSNorm(a.h, a.x, w.norm, s.eps)
	} else {
		be.AddRMSNorm(a.h, a.x, out, w.norm, s.eps)
	}
	be.MatMulQKV(q, k, v, a.h, w.qW, w.kW, w.vW, w.qB, w.kB, w.vB)
	be.RoPE(q, a.pos, s.invFreq, s.rope)
	be.RoPE(k, a.pos, s.invFreq, s.rope)
	be.StoreKV(c.k, c.v, k, v, c.slots)
	be.Attention(att, q, c.k, c.v, a.pos, a.seq, c.table, w.sinks, p)
	be.MatMul(out, att, w.oW, w.oB)
}

// loadAttention loads layer ll's attention weights: q heads·headDim wide
// queries and kv-wide keys and values of a hidden-wide stream, with biases
// when withBias, and the alternative spellings of the output projection
// that ollama's files use.
func loadAttention(ll layerLoader, hidden, q, kv int, withBias bool) ropeAttention {
	var w ropeAttention
	w.norm = ll.get(true, []int{hidden}, "attn_norm.weight")
	w.qW = ll.get(false, []int{hidden, q}, "attn_q.weight")
	w.kW = ll.get(false, []int{hidden, kv}, "attn_k.weight")
	w.vW = ll.get(false, []int{hidden, kv}, "attn_v.weight")
	w.oW = ll.get(false, []int{q, hidden}, "attn_output.weight", "attn_out.weight")
	if withBias {
		w.qB = ll.get(true, []int{q}, "attn_q.bias")
		w.kB = ll.get(true, []int{kv}, "attn_k.bias")
		w.vB = ll.get(true, []int{kv}, "attn_v.bias")
	}
	if ll.has("attn_output.bias") || ll.has("attn_out.bias") {
		w.oB = ll.get(true, []int{hidden}, "attn_output.bias", "attn_out.bias")
	}
	return w
}
