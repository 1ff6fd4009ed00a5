// Package backend defines the small set of tensor operations that the model
// code is written against. The cpu backend (pure Go) is the reference; the
// cuda backend must compute the same function.
//
// Conventions:
//   - Activations are float32 matrices of rows×cols, row-major: one row per
//     token. They are created with NewF32 and written with WriteF32.
//   - Weights keep their file format (any tensor.Type). Dims are in ggml
//     order, innermost first: a linear layer mapping in→out features has
//     Dims() == [in, out]; stacked expert weights are [in, out, nExpert].
//   - Every op writes into an explicit dst that the caller allocated, so a
//     decode step uses the same buffers every time (CUDA graphs rely on it).
//   - Ops do not return errors. A backend records the first failure (shape
//     mismatch, device error, out of memory) and reports it from Err, Sync or
//     ReadF32. Shapes are validated when a model is loaded, so a failing op is
//     a bug or a device fault, never a user input error.
//   - Elementwise and row-wise ops (Add, norms, GELU) allow dst to alias an
//     input.
package backend

import (
	"errors"

	"orcd/tensor"
)

// The failures a backend's errors wrap, so that callers (the server, which
// maps them to its API codes) tell them apart with errors.Is without
// knowing the backend.
var (
	// ErrOutOfMemory: device memory ran out (or a configured cap on it).
	ErrOutOfMemory = errors.New("backend: out of device memory")
	// ErrDevice: the device or its driver failed.
	ErrDevice = errors.New("backend: device error")
)

// Tensor is a handle to memory owned by one backend.
type Tensor interface {
	// Type is the element format: F32 for activations, the file format for weights.
	Type() tensor.Type
	// Dims are the sizes in ggml order, innermost first. An activation of
	// rows×cols has Dims() == [cols, rows].
	Dims() []int
}

// Rows returns the number of rows of a 2-D tensor (Dims()[1], or 1).
func Rows(t Tensor) int {
	d := t.Dims()
	if len(d) < 2 {
		return 1
	}
	return d[1]
}

// Cols returns the innermost dimension of t.
func Cols(t Tensor) int { return t.Dims()[0] }

// AttentionParams describes one attention layer and the paged KV cache it
// reads.
//
// The cache is paged: K and V rows live in blocks of BlockSize rows of one
// pool tensor, and each sequence has a row of MaxBlocks entries in a block
// table. Key position j of sequence s lives in cache row
// table[s*MaxBlocks + j/BlockSize]*BlockSize + j%BlockSize. Entries of
// blocks that no query of the step can see (past the end, or out of a
// sliding window) may be -1.
type AttentionParams struct {
	Heads     int     // query heads
	KVHeads   int     // key/value heads; Heads is a multiple of it (GQA)
	HeadDim   int     // from attention.key_length, never hidden/heads
	Scale     float32 // applied to q·k, usually 1/sqrt(HeadDim)
	Window    int     // sliding window in tokens (key positions p-Window+1..p); 0 means full causal
	BlockSize int     // cache rows per block
	MaxBlocks int     // entries per sequence in the block table
	// Singles is how many leading rows are sequences of one token each
	// (decode steps). It is a hint a backend may use to pick kernels; the
	// result does not depend on it.
	Singles int
}

// ExpertWeights are the stacked feed-forward weights of a mixture of
// experts. Biases may be nil.
type ExpertWeights struct {
	Gate, GateBias Tensor // [hidden, ff, nExpert], [ff, nExpert]
	Up, UpBias     Tensor // [hidden, ff, nExpert], [ff, nExpert]
	Down, DownBias Tensor // [ff, hidden, nExpert], [hidden, nExpert]
}

// MoEWeights are the weights of one mixture-of-experts feed-forward block:
// the router and the experts. Biases may be nil.
type MoEWeights struct {
	Router, RouterBias Tensor // [hidden, nExpert], [nExpert]
	ExpertWeights
}

// SwiGLUParams configure a SwiGLU: h = g·σ(Alpha·g)·(u + UpShift), with g
// and u first clamped when Limit is set. Plain SwiGLU (Llama, Qwen) is
// Alpha 1 and the rest 0; gpt-oss's is Alpha 1.702, Limit 7, UpShift 1.
type SwiGLUParams struct {
	Alpha   float32 // sigmoid slope
	Limit   float32 // 0: no clamp; else g = min(g, Limit), u = clamp(u, -Limit, Limit)
	UpShift float32 // added to u after the clamp
}

// MoEParams configure routing and the experts' SwiGLU.
type MoEParams struct {
	TopK   int // experts used per token
	SwiGLU SwiGLUParams
}

// RoPEMode is how RoPE pairs the elements of a head.
type RoPEMode int

// The RoPE pairings.
const (
	// RoPENeoX pairs element i with i+headDim/2 (GPT-NeoX, HF's
	// rotate_half; gpt-oss and Qwen2 in GGUF files).
	RoPENeoX RoPEMode = iota
	// RoPENormal pairs elements 2i and 2i+1 (the original RoPE; Llama in
	// GGUF files, whose converter permutes the Q and K rows to match).
	RoPENormal
)

// RoPEParams configure RoPE.
type RoPEParams struct {
	HeadDim int
	Mode    RoPEMode
	// MScale multiplies cos and sin (YaRN's attention factor; 1 otherwise).
	MScale float32
}

// Backend is the set of operations the architectures are written against.
type Backend interface {
	// Name is "cpu" or "cuda".
	Name() string

	// Upload copies a weight tensor, in its file format, into backend memory.
	Upload(name string, typ tensor.Type, dims []int, data []byte) (Tensor, error)
	// NewF32 allocates a rows×cols float32 tensor.
	NewF32(rows, cols int) (Tensor, error)
	// NewI32 allocates a vector of n int32 (token ids, positions, cache slots).
	NewI32(n int) (Tensor, error)
	// View returns a tensor that is the first rows rows of t, an F32 matrix
	// or I32 vector made by NewF32 or NewI32, sharing its memory: a step of
	// fewer tokens than the buffers were made for runs on views. A view is
	// not freed on its own and is invalid once t is freed.
	View(t Tensor, rows int) Tensor
	// NewKVCache allocates a rows×cols K or V cache tensor. The backend picks
	// the storage precision (cpu: f32, f16 in its fast precision; cuda may
	// store f16 to halve the memory of long contexts); StoreKV converts on
	// write; besides Free, only StoreKV and Attention take a cache.
	NewKVCache(rows, cols int) (Tensor, error)
	// Free releases a tensor's memory. Freeing nil is a no-op.
	Free(t Tensor)
	// WriteF32 and WriteI32 copy host data into the first len(src) elements of dst.
	WriteF32(dst Tensor, src []float32)
	WriteI32(dst Tensor, src []int32)
	// ReadF32 waits for pending work and copies the first len(dst) elements
	// of src to the host. It returns the first recorded error.
	ReadF32(src Tensor, dst []float32) error

	// Embed sets dst[i] to row ids[i] of table (dequantized). Only the first
	// Rows(dst) ids are used. table may also be an F32 activation: the models
	// gather the last row of the residual stream this way.
	Embed(dst, table, ids Tensor)
	// MatMul sets dst = x·wᵀ (+ bias): x is n×in, w has Dims [in, out], dst
	// is n×out. Quantized w is read in its block format, never expanded.
	MatMul(dst, x, w, bias Tensor)
	// MatMulQKV is MatMul(q, x, wq, bq), MatMul(k, x, wk, bk) and
	// MatMul(v, x, wv, bv): three products of one x (an attention block's
	// projections), which a backend may run as one launch.
	MatMulQKV(q, k, v, x, wq, wk, wv, bq, bk, bv Tensor)
	// Add sets dst = a + b, elementwise. dst may alias a or b.
	Add(dst, a, b Tensor)
	// CopyCols copies the columns srcCol..srcCol+Cols(dst)-1 of src into dst
	// (used to split a fused QKV projection).
	CopyCols(dst, src Tensor, srcCol int)
	// LayerNorm normalizes each row of x over its columns, then scales by w
	// and adds b.
	LayerNorm(dst, x, w, b Tensor, eps float32)
	// RMSNorm scales each row of x by 1/sqrt(mean(x²)+eps), then by w.
	RMSNorm(dst, x, w Tensor, eps float32)
	// AddRMSNorm adds delta into the residual stream x (x += delta) and then
	// sets dst = RMSNorm(x, w): Add followed by RMSNorm, in one op so a
	// backend can read and write the residual once.
	AddRMSNorm(dst, x, delta, w Tensor, eps float32)
	// GELU applies the tanh approximation of GELU elementwise.
	GELU(dst, x Tensor)
	// SiLU sets dst = x·σ(x) elementwise. dst may alias x.
	SiLU(dst, x Tensor)
	// SwiGLU sets dst = g·σ(Alpha·g)·(u + UpShift), elementwise over rows
	// of the same dims, clamping g and u first when p.Limit is set. dst may
	// alias g or u.
	SwiGLU(dst, g, u Tensor, p SwiGLUParams)
	// RMSNormHeads normalizes each head (each run of headDim columns) of
	// each row of x on its own, then scales it by w (headDim values): the
	// per-head QK-norm of Qwen3-style attention. dst may alias x.
	RMSNormHeads(dst, x, w Tensor, headDim int, eps float32)
	// RoPE rotates x (n × heads*HeadDim) in place, pairing elements as
	// p.Mode says. Row r uses angle pos[r]·invFreq[i] for pair i; cos and
	// sin are multiplied by p.MScale. invFreq is an f32 tensor of
	// HeadDim/2 values computed by the model (frequency scaling such as
	// YaRN's or Llama 3's lives there).
	RoPE(x, pos, invFreq Tensor, p RoPEParams)
	// StoreKV writes the rows of k and v into kCache and vCache at the row
	// indices in slots (one per row of k).
	StoreKV(kCache, vCache, k, v, slots Tensor)
	// Attention computes causal attention for the rows of q (n ×
	// Heads*HeadDim) of a batch of sequences, over the keys already stored
	// in the paged caches (StoreKV runs first). seq[r] is the sequence of
	// row r (its row of table, I32 nSeq×MaxBlocks); the rows of a sequence
	// are consecutive. A row at position p sees its own sequence's key
	// positions max(0, p-Window+1)..p (0..p when Window is 0). sinks, if
	// not nil, holds one logit per query head that joins the softmax
	// denominator only. dst is n × Heads*HeadDim.
	Attention(dst, q, kCache, vCache, pos, seq, table, sinks Tensor, p AttentionParams)
	// Route picks each row's experts from its router logits (n × nExpert):
	// the k largest logits (ties to the lower index), in ascending expert
	// order, into ids (I32, n·k values, row-major), and the softmax over
	// those k logits into weights (F32 n×k), in the same order.
	Route(ids, weights, logits Tensor, k int)
	// Experts sets each row of dst to Σ weights[r][j]·FFN_e(x[r]) over the
	// row's k experts e = ids[r·k+j], summed in ascending expert order,
	// where FFN_e(x) = SwiGLU(x·Gate[e]ᵀ+GateBias[e], x·Up[e]ᵀ+UpBias[e])
	// ·Down[e]ᵀ + DownBias[e]. k is Cols(weights).
	Experts(dst, x, ids, weights Tensor, w *ExpertWeights, p SwiGLUParams)

	// Graph runs fn, which only queues ops on tensors that already exist (no
	// allocation, no WriteF32/WriteI32/ReadF32 inside). A backend may record
	// the ops the first time it sees key and, on later calls with the same
	// key, replay the recording instead of calling fn (CUDA graphs). So key
	// must name the exact op sequence and tensors, e.g. "decode/cache#3";
	// values that change between calls must live in tensors (pos, slots,
	// ids), not in Go variables captured by fn.
	Graph(key string, fn func())

	// Allocated is the number of bytes of backend memory now held by
	// tensors (weights, caches, activations).
	Allocated() int64
	// Sync waits for all queued work and returns the first error recorded
	// since the last Sync, clearing it.
	Sync() error
	// Err returns the first recorded error without waiting.
	Err() error
	// Close frees everything the backend holds.
	Close() error
}

// SampleParams are one row's settings for Sampler.Sample: the engine's
// sampling pipeline (repetition penalty, temperature, top-k, top-p, min-p)
// and the draw's seed and counter.
type SampleParams struct {
	Temperature, TopP, MinP, RepetitionPenalty float32
	TopK                                       int32
	// Seed and Counter key the row's random number: the same pair gives
	// the same number whatever else the batch holds.
	Seed, Counter uint64
	// Penalized are the distinct tokens the repetition penalty applies to.
	Penalized []int32
}

// FusedMoE is an optional Backend interface: a whole mixture-of-experts
// block in one op, the router's product, Route and Experts, which lets a
// backend keep the routing on the device between its kernels. A model uses
// it when the backend has it; the result is that of the three ops.
type FusedMoE interface {
	MoE(dst, x Tensor, w *MoEWeights, p MoEParams)
}

// QuantizedActivations is an optional Backend interface: activations that
// carry a copy in the backend's quantized input format for small-batch
// products. The ops that write such a tensor (RMSNorm, AddRMSNorm,
// Attention: the others refuse it) write the copy too, and the products
// that take it as x (MatMul, MatMulQKV, and the MoE ops) read the copy,
// so that an activation read by several products is quantized once, by the
// op that wrote it. The results are those of plain tensors.
type QuantizedActivations interface {
	// NewF32Quantized allocates a rows×cols F32 activation with a
	// quantized copy.
	NewF32Quantized(rows, cols int) (Tensor, error)
}

// Sampler is an optional Backend interface: drawing tokens on the device,
// so that only the chosen ids cross to the host.
type Sampler interface {
	// Sample draws one token for each of the first len(rows) rows of logits
	// (an F32 rows×vocab tensor, which it may change) into ids, waiting for
	// the result. It returns the first recorded error.
	Sample(logits Tensor, rows []SampleParams, ids []int32) error
}
