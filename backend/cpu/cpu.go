// Package cpu is the CPU backend: the executable reference that the CUDA
// backend is compared against, and the backend CI runs on. Every op is a
// loop over float32 rows split across goroutines; quantized weights stay in
// their file format and are decoded a row at a time inside MatMul. The inner
// loops have AVX2 assembly versions on amd64 (picked at run time with CPUID)
// and pure-Go versions everywhere else; the tests run both. The Fast
// precision (q8.go) multiplies Q8_0 weights by activations quantized to int8
// per 32 values. NOTES.md records the measurements behind each optimization.
package cpu

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"orcd/backend"
	"orcd/tensor"
)

var _ backend.Backend = (*Backend)(nil)

// typeI32 is ggml's type number for int32, the Type of NewI32 vectors. It is
// not a weight format, so it is not in tensor's table.
const typeI32 = tensor.Type(26)

// Backend runs each op synchronously on the calling goroutine plus up to
// threads-1 worker goroutines. Ops on distinct tensors may run from several
// goroutines at once; Err, Allocated and Sync may be called from any
// goroutine.
type Backend struct {
	threads   int
	k         kernels
	fast      bool // Q8_0 MatMuls run the integer kernels k.q8
	allocated atomic.Int64

	mu   sync.Mutex
	err  error
	live map[*Tensor]struct{}

	helpers []helper // parallel's worker goroutines, threads-1 of them
}

// Tensor is a block of host memory. Float32 data (activations and F32
// weights) is held as []float32, int32 vectors as []int32, the fast
// precision's F16 KV caches as []uint16, and every other weight type as its
// raw file bytes, except Q8_0 matrices in the fast precision, held only as
// packedQ8.
type Tensor struct {
	typ   tensor.Type
	dims  []int
	f32   []float32
	i32   []int32
	f16   []uint16 // binary16 KV caches (fast precision)
	raw   []byte
	q8    *packedQ8 // Q8_0 matrices in the fast precision
	freed bool
}

// Type is the element format of t.
func (t *Tensor) Type() tensor.Type { return t.typ }

// Dims are t's sizes in ggml order, innermost first.
func (t *Tensor) Dims() []int { return append([]int(nil), t.dims...) }

// rows and cols are backend.Rows and backend.Cols without the copy that
// Dims makes.
func (t *Tensor) rows() int {
	if len(t.dims) < 2 {
		return 1
	}
	return t.dims[1]
}

func (t *Tensor) cols() int { return t.dims[0] }

func (t *Tensor) bytes() int64 {
	n := int64(len(t.f32))*4 + int64(len(t.i32))*4 + int64(len(t.f16))*2 + int64(len(t.raw))
	if t.q8 != nil {
		n += int64(len(t.q8.scales))*2 + int64(len(t.q8.quants))
	}
	return n
}

func (t *Tensor) elements() int {
	n := 1
	for _, d := range t.dims {
		n *= d
	}
	return n
}

// Options configure a Backend.
type Options struct {
	// Threads is the most goroutines an op runs on; < 1 means
	// runtime.NumCPU().
	Threads int
	// Precision is Exact or Fast (see Precision). Fast needs AVX-512 VNNI
	// on amd64 and is Exact without it; other architectures run its
	// pure-Go loops.
	Precision Precision
}

// New returns an exact-precision backend that uses runtime.NumCPU()
// goroutines per op.
func New() *Backend { return NewWithThreads(runtime.NumCPU()) }

// NewWithThreads returns an exact-precision backend that splits each op
// over at most n goroutines (n < 1 means 1). It uses the assembly kernels
// where the CPU supports them.
func NewWithThreads(n int) *Backend { return newBackend(max(n, 1), true, Exact) }

// NewWithOptions returns a backend configured by o.
func NewWithOptions(o Options) *Backend {
	if o.Threads < 1 {
		o.Threads = runtime.NumCPU()
	}
	return newBackend(o.Threads, true, o.Precision)
}

// newBackend is NewWithOptions with the choice of kernels: simd false
// forces the pure-Go loops (tests run both).
func newBackend(threads int, simd bool, prec Precision) *Backend {
	k := goKernels
	if s, ok := simdKernels(); ok && simd {
		k = s
	}
	threads = max(threads, 1)
	return &Backend{threads: threads, k: k, fast: prec == Fast && k.q8 != nil, live: make(map[*Tensor]struct{}),
		helpers: make([]helper, threads-1)}
}

// Fast reports whether Q8_0 MatMuls run in the fast precision.
func (b *Backend) Fast() bool { return b.fast }

// Threads is the most goroutines an op runs on.
func (b *Backend) Threads() int { return b.threads }

// Name returns "cpu".
func (b *Backend) Name() string { return "cpu" }

// fail records err if it is the first failure since the last Sync.
func (b *Backend) fail(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = fmt.Errorf("cpu: "+format, args...)
	}
}

// Err returns the first recorded error without clearing it.
func (b *Backend) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Sync returns the first error recorded since the last Sync and clears it.
// Ops run synchronously, so there is nothing to wait for.
func (b *Backend) Sync() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	err := b.err
	b.err = nil
	return err
}

// Allocated is the number of bytes held by live tensors.
func (b *Backend) Allocated() int64 { return b.allocated.Load() }

func (b *Backend) track(t *Tensor) *Tensor {
	b.mu.Lock()
	b.live[t] = struct{}{}
	b.mu.Unlock()
	b.allocated.Add(t.bytes())
	return t
}

// Upload copies a weight tensor into backend memory. F32 data is decoded to
// float32 once; every other type keeps its file bytes.
func (b *Backend) Upload(name string, typ tensor.Type, dims []int, data []byte) (backend.Tensor, error) {
	if !typ.Valid() {
		return nil, fmt.Errorf("cpu: upload %s: unsupported type %s", name, typ)
	}
	if len(dims) == 0 || len(dims) > 4 {
		return nil, fmt.Errorf("cpu: upload %s: %d dims, want 1 to 4", name, len(dims))
	}
	n := int64(1)
	for _, d := range dims {
		if d <= 0 {
			return nil, fmt.Errorf("cpu: upload %s: bad dims %v", name, dims)
		}
		n *= int64(d)
		if n > 1<<40 {
			return nil, fmt.Errorf("cpu: upload %s: dims %v too large", name, dims)
		}
	}
	if dims[0]%typ.BlockSize() != 0 {
		return nil, fmt.Errorf("cpu: upload %s: innermost dim %d is not a multiple of the %s block size %d",
			name, dims[0], typ, typ.BlockSize())
	}
	size, err := typ.RowSize(n)
	if err != nil {
		return nil, fmt.Errorf("cpu: upload %s: %w", name, err)
	}
	if int64(len(data)) != size {
		return nil, fmt.Errorf("cpu: upload %s: %d bytes of data, %s %v needs %d", name, len(data), typ, dims, size)
	}
	t := &Tensor{typ: typ, dims: append([]int(nil), dims...)}
	if typ == tensor.F32 {
		t.f32 = make([]float32, n)
		for i := range t.f32 {
			t.f32[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		}
	} else {
		t.raw = append([]byte(nil), data...)
	}
	if b.fast && typ == tensor.Q8_0 && len(dims) == 2 {
		// The packed copy replaces the file bytes: MatMul and Embed read
		// it, so the weights are not held twice.
		t.q8, t.raw = packQ8(t.raw, dims[0], dims[1]), nil
	}
	return b.track(t), nil
}

// NewF32 allocates a zeroed rows×cols float32 tensor.
func (b *Backend) NewF32(rows, cols int) (backend.Tensor, error) {
	if rows <= 0 || cols <= 0 || int64(rows)*int64(cols) > 1<<40 {
		return nil, fmt.Errorf("cpu: NewF32: bad shape %d×%d", rows, cols)
	}
	return b.track(&Tensor{typ: tensor.F32, dims: []int{cols, rows}, f32: make([]float32, rows*cols)}), nil
}

// NewI32 allocates a zeroed vector of n int32. Its Type is typeI32.
func (b *Backend) NewI32(n int) (backend.Tensor, error) {
	if n <= 0 || int64(n) > 1<<40 {
		return nil, fmt.Errorf("cpu: NewI32: bad length %d", n)
	}
	return b.track(&Tensor{typ: typeI32, dims: []int{n}, i32: make([]int32, n)}), nil
}

// Free releases t's memory. Later use of t is a recorded error.
func (b *Backend) Free(t backend.Tensor) {
	if t == nil {
		return
	}
	ct, ok := t.(*Tensor)
	if !ok || ct == nil {
		return
	}
	b.mu.Lock()
	_, live := b.live[ct]
	delete(b.live, ct)
	b.mu.Unlock()
	if !live {
		return
	}
	b.allocated.Add(-ct.bytes())
	ct.f32, ct.i32, ct.f16, ct.raw, ct.q8, ct.freed = nil, nil, nil, nil, nil, true
}

// Close frees every live tensor.
func (b *Backend) Close() error {
	b.mu.Lock()
	ts := make([]*Tensor, 0, len(b.live))
	for t := range b.live {
		ts = append(ts, t)
	}
	b.mu.Unlock()
	for _, t := range ts {
		b.Free(t)
	}
	return nil
}

// WriteF32 copies src into the first len(src) elements of dst.
func (b *Backend) WriteF32(dst backend.Tensor, src []float32) {
	d := b.f32(dst, "WriteF32", "dst")
	if d == nil {
		return
	}
	if len(src) > len(d.f32) {
		b.fail("WriteF32: %d values into a tensor of %d", len(src), len(d.f32))
		return
	}
	copy(d.f32, src)
}

// WriteI32 copies src into the first len(src) elements of dst.
func (b *Backend) WriteI32(dst backend.Tensor, src []int32) {
	d := b.i32(dst, "WriteI32", "dst", len(src))
	if d == nil {
		return
	}
	copy(d.i32, src)
}

// ReadF32 copies the first len(dst) elements of src into dst and returns the
// first recorded error (without clearing it).
func (b *Backend) ReadF32(src backend.Tensor, dst []float32) error {
	s := b.f32(src, "ReadF32", "src")
	if s != nil {
		if len(dst) > len(s.f32) {
			b.fail("ReadF32: %d values from a tensor of %d", len(dst), len(s.f32))
		} else {
			copy(dst, s.f32)
		}
	}
	return b.Err()
}

// tensorOf unwraps a handle, recording an error for nil, foreign or freed
// tensors.
func (b *Backend) tensorOf(t backend.Tensor, op, arg string) *Tensor {
	ct, ok := t.(*Tensor)
	switch {
	case t == nil || (ok && ct == nil):
		b.fail("%s: %s is nil", op, arg)
	case !ok:
		b.fail("%s: %s is a %T, not a cpu tensor", op, arg, t)
	case ct.freed:
		b.fail("%s: %s was freed", op, arg)
	default:
		return ct
	}
	return nil
}

// f32 unwraps a float32 tensor (activation or F32 weight).
func (b *Backend) f32(t backend.Tensor, op, arg string) *Tensor {
	ct := b.tensorOf(t, op, arg)
	if ct == nil {
		return nil
	}
	if ct.typ != tensor.F32 {
		b.fail("%s: %s must be an F32 tensor, is %s", op, arg, describe(ct))
		return nil
	}
	return ct
}

// matrix unwraps a float32 tensor that must be rows×cols (2-D or a vector
// when rows is 1).
func (b *Backend) matrix(t backend.Tensor, op, arg string, rows, cols int) *Tensor {
	ct := b.f32(t, op, arg)
	if ct == nil {
		return nil
	}
	if ct.rows() != rows || ct.cols() != cols || len(ct.f32) != rows*cols {
		b.fail("%s: %s has dims %v, want %d×%d (dims [%d %d])", op, arg, ct.dims, rows, cols, cols, rows)
		return nil
	}
	return ct
}

// vector unwraps a float32 tensor of exactly n elements, whatever its dims.
func (b *Backend) vector(t backend.Tensor, op, arg string, n int) *Tensor {
	ct := b.f32(t, op, arg)
	if ct == nil {
		return nil
	}
	if len(ct.f32) != n {
		b.fail("%s: %s has %d elements (dims %v), want %d", op, arg, len(ct.f32), ct.dims, n)
		return nil
	}
	return ct
}

// i32 unwraps an int32 vector of at least n elements.
func (b *Backend) i32(t backend.Tensor, op, arg string, n int) *Tensor {
	ct := b.tensorOf(t, op, arg)
	if ct == nil {
		return nil
	}
	if ct.typ != typeI32 {
		b.fail("%s: %s must be an I32 vector, is %s", op, arg, describe(ct))
		return nil
	}
	if len(ct.i32) < n {
		b.fail("%s: %s has %d elements, need %d", op, arg, len(ct.i32), n)
		return nil
	}
	return ct
}

func describe(t *Tensor) string {
	if t.typ == typeI32 {
		return fmt.Sprintf("I32 %v", t.dims)
	}
	return fmt.Sprintf("%s %v", t.typ, t.dims)
}

// parallel runs fn over [0, n) on up to b.threads goroutines, the caller
// being one of them. The range is cut into chunks of at least minChunk items,
// about eight per worker, that workers claim in turn, so a core slowed by
// other load takes fewer chunks instead of holding everyone up. worker
// (0 to b.threads-1) is unique among concurrently running calls, for
// per-worker scratch buffers.
//
// The other workers are helper goroutines that, after their part, spin for
// helperSpin waiting for the next call's part before they exit: a decode
// step is ~60 parallel ops of 10-100 µs, and starting a goroutine on an
// idle core (waking its thread) costs a good part of that.
func (b *Backend) parallel(n, minChunk int, fn func(worker, lo, hi int)) {
	if n <= 0 {
		return
	}
	minChunk = max(minChunk, 1)
	workers := min(b.threads, (n+minChunk-1)/minChunk)
	if workers <= 1 {
		fn(0, 0, n)
		return
	}
	chunk := max(minChunk, n/(8*workers))
	var next atomic.Int64
	run := func(worker int) {
		for {
			lo := int(next.Add(int64(chunk))) - chunk
			if lo >= n {
				return
			}
			fn(worker, lo, min(lo+chunk, n))
		}
	}
	c := &call{run: run}
	c.pending.Store(int32(workers - 1))
	c.wg.Add(workers - 1)
	var handed [maxHanded]*helperWork
	for w := 1; w < workers; w++ {
		hw := &helperWork{c, w}
		if b.helpers[w-1].hand(hw) && w-1 < maxHanded {
			handed[w-1] = hw
		}
	}
	run(0)
	// Every chunk is claimed now: work a helper has not picked up (its
	// thread descheduled by other load, or not started yet) is taken back
	// rather than waited for.
	for i, hw := range handed[:min(workers-1, maxHanded)] {
		if hw != nil && b.helpers[i].next.CompareAndSwap(hw, nil) {
			c.pending.Add(-1)
			c.wg.Done()
		}
	}
	// The helpers' last chunks are usually done within microseconds.
	for deadline := time.Now().Add(helperSpin); c.pending.Load() != 0; {
		if time.Now().After(deadline) {
			c.wg.Wait()
			break
		}
	}
}

// maxHanded bounds the helpers whose work parallel can take back (an array
// on the stack, not an allocation per call); helpers beyond it are waited
// for.
const maxHanded = 63

// helperSpin is how long a helper goroutine waits, spinning, for more work
// before it exits, and how long parallel spins for the helpers to finish
// before it blocks.
const helperSpin = 50 * time.Microsecond

// call is one parallel call's work for its helpers.
type call struct {
	run     func(worker int)
	pending atomic.Int32 // helpers not yet done
	wg      sync.WaitGroup
}

// helper is a slot for one of a Backend's helper goroutines: work is
// handed over in next, and alive says a goroutine is (or is about to be)
// watching next.
type helper struct {
	next  atomic.Pointer[helperWork]
	alive atomic.Bool
}

// helperWork is a call and the worker number to run it as.
type helperWork struct {
	c      *call
	worker int
}

// hand gives w to h's goroutine, starting one if none is alive, and
// reports whether it went through h (and so can be taken back from next).
// If h still holds another call's work (calls from several goroutines),
// w runs on a goroutine of its own.
func (h *helper) hand(w *helperWork) bool {
	if !h.next.CompareAndSwap(nil, w) {
		go w.do()
		return false
	}
	// With loop's store of alive and load of next, one side sees the
	// other's store: the work is never left without a goroutine.
	if !h.alive.Load() && h.alive.CompareAndSwap(false, true) {
		go h.loop()
	}
	return true
}

// do runs the work and reports it done.
func (w *helperWork) do() {
	w.c.run(w.worker)
	w.c.pending.Add(-1)
	w.c.wg.Done()
}

// loop runs the work handed to h, spinning for up to helperSpin after
// each for the next, and exits when none comes.
func (h *helper) loop() {
	deadline := time.Now().Add(helperSpin)
	for {
		if w := h.next.Swap(nil); w != nil {
			w.do()
			deadline = time.Now().Add(helperSpin)
			continue
		}
		if time.Now().After(deadline) {
			h.alive.Store(false)
			if h.next.Load() == nil || !h.alive.CompareAndSwap(false, true) {
				return
			}
		}
	}
}
