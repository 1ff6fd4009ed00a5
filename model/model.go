// Package model holds one adapter per architecture (gpt2.go, gptoss.go,
// llama.go, qwen2.go), each written once against the backend interface and
// registered in the architecture registry (registry.go), the paged KV cache
// they share (kv.go), and the reading of Hugging Face checkpoints (hf.go).
//
// A forward step (Model.Step) runs a batch of sequences at once: each brings
// a chunk of tokens (a prompt chunk, or the one next token of a sequence
// that is decoding), its position and its block tables into one KV pool.
// Model.Forward is the one-sequence convenience on top of it.
package model

import (
	"fmt"
	"sync"

	"orcd/backend"
)

// Config is what the rest of orcd needs to know about a loaded model.
type Config struct {
	Arch          string     // the registered architecture's name ("gpt2", "gpt-oss", "llama", "qwen2")
	Chat          ChatFormat // how chat prompts are written
	Name          string     // general.name, if any
	VocabSize     int        // rows of the output projection
	ContextLength int        // training context from metadata
	Layers        int
	Hidden        int
	MaxBatch      int // most tokens one Step takes
}

// Model is a loaded architecture adapter. Its methods and those of its
// caches may be called from several goroutines; they run one at a time,
// because a backend serves one goroutine at a time.
type Model interface {
	Config() Config
	// KVLayout describes the KV cache the model's layers need.
	KVLayout() KVLayout
	// NewKV allocates a paged KV pool of blocks blocks of blockSize tokens,
	// shared by every sequence that Step runs on it.
	NewKV(blocks, blockSize int) (KV, error)
	// Step runs one forward pass over a batch of sequences on kv: it
	// stores their tokens' keys and values in the blocks their tables
	// name and returns the logits the chunks ask for. At most
	// Config().MaxBatch tokens in all. The logits are valid until the next
	// Step or Forward.
	Step(kv KV, b *Batch) (Logits, error)

	// NewCache allocates the KV cache of one sequence of up to ctx tokens,
	// for Forward.
	NewCache(ctx int) (Cache, error)
	// Forward runs tokens at the cache's current position and appends them
	// to it. It returns the logits of the last token (VocabSize values) or,
	// when all is true, of every token (len(tokens)·VocabSize values).
	// Running past the cache's capacity is an error and changes nothing.
	//
	// The returned slice may belong to the cache: it is valid until the
	// next Forward on the same cache, which may overwrite it, or until the
	// cache is freed. Callers that keep logits longer copy them.
	Forward(c Cache, tokens []int32, all bool) ([]float32, error)
	// Close frees the weights.
	Close() error
}

// Cache is the KV cache of one sequence, for Model.Forward.
type Cache interface {
	// Len is the number of tokens stored so far (the next position).
	Len() int
	// Cap is the maximum number of tokens the cache can hold.
	Cap() int
	// Reset forgets all tokens, keeping the memory.
	Reset()
	// Free releases the cache's memory.
	Free()
}

// Batch is the input of one Model.Step: a chunk of tokens from each of
// several sequences.
type Batch struct {
	Chunks []Chunk
}

// Chunk is one sequence's part of a step.
type Chunk struct {
	// Tokens are the sequence's next tokens, at positions Pos, Pos+1, ….
	Tokens []int32
	Pos    int
	// Tables[g] is the sequence's block table in KV group g (the groups of
	// KV.Groups): entry i is the pool block that holds positions
	// i·BlockSize … (i+1)·BlockSize-1, or -1 where no block is held. It must
	// cover every position written in this step and every key the chunk's
	// tokens can see; older entries of sliding-window groups may be -1.
	Tables [][]int32
	// Logits says which of the chunk's tokens get logits.
	Logits LogitsMode
	// Decode marks a chunk of one token that was generated (sampled from
	// the last step), as opposed to prompt tokens. The leading decode
	// chunks of a batch may take other kernels than prompt chunks
	// (backend.AttentionParams.Singles); the caller puts them first.
	Decode bool
}

// LogitsMode says which tokens of a chunk get logits.
type LogitsMode int

// The logits modes.
const (
	NoLogits   LogitsMode = iota // an early chunk of a prompt
	LastLogits                   // the last token's, to sample the next
	AllLogits                    // every token's (perplexity, conformance)
)

// KV is a paged key/value cache pool, made by Model.NewKV: Blocks blocks of
// BlockSize tokens in every layer. Which blocks a sequence holds is its
// caller's bookkeeping (the engine's block manager, or a Cache for Forward);
// Step only reads the block tables of each chunk.
type KV interface {
	BlockSize() int
	Blocks() int
	// Groups are the pool's KV groups; a Chunk has one block table per group.
	Groups() []KVGroup
	// Free releases the pool's memory. Using it afterwards is an error.
	Free()
}

// Logits are the logits one Step computed: one row of the vocabulary per
// token that asked for them, in batch order.
type Logits interface {
	// Rows is the number of rows.
	Rows() int
	// Read waits for the step and copies the logits to dst, which holds
	// Rows()·VocabSize values. It returns the step's error, if any.
	Read(dst []float32) error
	// Tensor is the Rows×VocabSize logits in backend memory, for ops that
	// read them on the device; nil when they are on the host.
	Tensor() backend.Tensor
	// Sample draws the first len(rows) rows' tokens into ids on the device
	// when the backend can (backend.Sampler), and reports whether it did;
	// otherwise the caller reads the logits and samples on the host.
	Sample(rows []backend.SampleParams, ids []int32) (bool, error)
}

// RowReader is an optional Logits interface: reading some rows only, so
// that a step whose tokens are drawn on the device (Logits.Sample) can
// still bring the few rows that the host needs (log probabilities) back
// without copying all of them.
type RowReader interface {
	// ReadRows waits for the step and copies the given rows (indexes
	// below Rows()) to dst, len(rows)·VocabSize values, in the order
	// given. It returns the step's error, if any.
	ReadRows(rows []int32, dst []float32) error
}

// deviceLogits are the Logits of a step run on a backend.
type deviceLogits struct {
	be     backend.Backend
	t      backend.Tensor
	rows   int
	picked *pickBuffers
}

// pickBuffers are the tensors ReadRows gathers rows into, kept by the
// model from step to step under its mutex.
type pickBuffers struct {
	mu      *sync.Mutex
	out     growable // rows × vocab
	ids     growable // the rows' indexes
	maxRows int
}

func (l *deviceLogits) Rows() int              { return l.rows }
func (l *deviceLogits) Tensor() backend.Tensor { return l.t }

func (l *deviceLogits) Sample(rows []backend.SampleParams, ids []int32) (bool, error) {
	s, ok := l.be.(backend.Sampler)
	if !ok || l.rows == 0 {
		return false, nil
	}
	return true, s.Sample(l.t, rows, ids)
}

// ReadRows gathers the rows on the backend (Embed reads an F32 activation
// as its table) into a tensor of their own, and reads that back.
func (l *deviceLogits) ReadRows(rows []int32, dst []float32) error {
	if len(rows) == 0 {
		return l.be.Sync()
	}
	for _, r := range rows {
		if r < 0 || int(r) >= l.rows {
			return fmt.Errorf("model: ReadRows: row %d is outside the step's %d rows", r, l.rows)
		}
	}
	vocab := backend.Cols(l.t)
	if len(dst) != len(rows)*vocab {
		return fmt.Errorf("model: ReadRows: %d values for %d rows of %d values", len(dst), len(rows), vocab)
	}
	p := l.picked
	p.mu.Lock()
	defer p.mu.Unlock()
	ids, err := p.ids.i32(l.be, len(rows))
	if err != nil {
		return fmt.Errorf("model: ReadRows: %w", err)
	}
	out, err := p.out.f32(l.be, len(rows), vocab, p.maxRows)
	if err != nil {
		return fmt.Errorf("model: ReadRows: %w", err)
	}
	l.be.WriteI32(ids, rows)
	l.be.Embed(out, l.t, ids)
	return l.be.ReadF32(out, dst)
}

func (l *deviceLogits) Read(dst []float32) error {
	if l.rows == 0 {
		return l.be.Sync()
	}
	return l.be.ReadF32(l.t, dst)
}
