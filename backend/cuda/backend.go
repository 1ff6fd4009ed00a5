// Package cuda is the GPU backend: the ops of backend.Backend as CUDA
// kernels, compiled at run time by NVRTC and launched through the driver API
// (purego, no cgo). Weights, KV caches and activations all live in device
// memory from cuMemAlloc.
//
// The backend is used by one goroutine at a time. Every driver call is made
// with the context current on a locked OS thread (bind), since Go moves
// goroutines between threads.
package cuda

import (
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"unsafe"

	"orcd/backend"
	"orcd/tensor"
)

var _ backend.Backend = (*Backend)(nil)

//go:embed kernels/*.cu kernels/*.cuh
var kernelFS embed.FS

// kernelSources returns the kernel files (*.cu), one module each, in name
// order, and the headers they may include (*.cuh, by name).
func kernelSources() ([]kernelModule, map[string]string, error) {
	entries, err := kernelFS.ReadDir("kernels")
	if err != nil {
		return nil, nil, err
	}
	var mods []kernelModule
	headers := map[string]string{}
	for _, e := range entries {
		n := e.Name()
		b, err := kernelFS.ReadFile("kernels/" + n)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case strings.HasSuffix(n, ".cu"):
			mods = append(mods, kernelModule{name: n, src: string(b)})
		case strings.HasSuffix(n, ".cuh"):
			headers[n] = string(b)
		}
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].name < mods[j].name })
	return mods, headers, nil
}

var includeRE = regexp.MustCompile(`(?m)^#include "([^"]+)"`)

// moduleText is src followed by the headers it includes, directly or
// through other headers, each once (their names in included): all that
// its compilation reads, which keys its cache entry and picks its defines.
func moduleText(src string, headers map[string]string) (text string, included []string, err error) {
	var b strings.Builder
	seen := map[string]bool{}
	var walk func(s string) error
	walk = func(s string) error {
		b.WriteString(s)
		for _, m := range includeRE.FindAllStringSubmatch(s, -1) {
			h, ok := headers[m[1]]
			if !ok {
				return fmt.Errorf("#include %q: no such kernel header", m[1])
			}
			if !seen[m[1]] {
				seen[m[1]] = true
				included = append(included, m[1])
				if err := walk(h); err != nil {
					return err
				}
			}
		}
		return nil
	}
	err = walk(src)
	return b.String(), included, err
}

// Options configure New.
type Options struct {
	// Device is the CUDA device ordinal.
	Device int
	// MemLimit caps the device bytes the backend may hold (weights, caches,
	// activations and workspace). 0 reads ORCD_CUDA_MEM_LIMIT, and no cap
	// below the device's own memory if that is unset too.
	MemLimit int64
	// StagingBytes is the size of each of the two pinned upload buffers
	// (default 64 MiB).
	StagingBytes int
	// NoGraphs makes Graph run its function eagerly instead of capturing
	// and replaying CUDA graphs.
	NoGraphs bool
	// KVF16 stores every KV cache as f16. By default only caches whose f32
	// form would exceed kvF32MaxBytes (long contexts) are f16.
	KVF16 bool
	// Log receives the backend's reports of long work: compiling the
	// kernels on a first start (nil: none).
	Log *slog.Logger
	// BatchInvariant makes every row's result independent of the other
	// rows of its call: one matmul kernel family at every batch size, the
	// flash kernel for every prompt row, key splits of a fixed size for
	// decode rows. Batch-1 decode is slower (see docs/PERFORMANCE.md).
	BatchInvariant bool
	// NoWGMMA keeps the experts' prefill products on mma.sync where the
	// card has Hopper's warpgroup MMA (sm_90), as does ORCD_CUDA_WGMMA=0.
	// wgmma is the default there: the experts of a 2,048-token step 24%
	// faster, of a 512-token step 17% (backend/cuda/NOTES.md #39, #40).
	NoWGMMA bool
}

// kvF32MaxBytes is the largest KV cache tensor kept in f32 by default:
// small caches keep full precision (f16 keys can flip a near-tie in MoE
// routing), long contexts take half the memory. For gpt-oss-20b (512
// columns) the switch is at 16,384 tokens.
const kvF32MaxBytes = 32 << 20

// typeI32 is the element type of NewI32 tensors (ggml's I32).
const typeI32 = tensor.Type(26)

// Tensor is a device allocation. Q8_0 and MXFP4 weights are repacked at
// upload into a plane of quants at ptr and a plane of block scales at aux;
// every other type keeps its file layout at ptr.
type Tensor struct {
	typ   tensor.Type
	dims  []int
	ptr   uintptr
	aux   uintptr
	size  int64
	freed bool
	base  *Tensor // the tensor a View shares memory with; nil for an allocation
	// quant is the quantized copy of an activation made by
	// NewF32Quantized (a quantBuf of Dims[0] columns), 0 for none.
	quant uintptr
}

// Type is the element format (F16 for KV caches, which store f16).
func (t *Tensor) Type() tensor.Type { return t.typ }

// Dims are the sizes in ggml order, innermost first.
func (t *Tensor) Dims() []int { return append([]int(nil), t.dims...) }

func (t *Tensor) elements() int64 {
	n := int64(1)
	for _, d := range t.dims {
		n *= int64(d)
	}
	return n
}

// Backend runs the ops on one CUDA device.
type Backend struct {
	d      *driver
	dev    int32
	ctx    uintptr
	stream uintptr
	// modules holds one loaded module per kernel file; funcs the kernels
	// found in them so far, by name.
	modules []uintptr
	funcs   map[string]uintptr
	// bigShmem is the dynamic shared memory each kernel has been allowed
	// beyond the default 48 KiB.
	bigShmem map[string]int

	name string
	arch int // compute capability, e.g. 90
	// wgmma: gemm.cu's MXFP4 experts run on Hopper's warpgroup MMA (the
	// _wg kernels, compiled for sm_90a).
	wgmma bool
	// maxShmem is the most shared memory a block may opt into, in bytes.
	maxShmem int
	sms      int
	total    int64

	mem       allocator
	noGraphs  bool
	kvF16     bool
	invariant bool
	prof      *profile // non-nil when ORCD_CUDA_PROFILE is set

	argMem  unsafe.Pointer // pinned host memory for kernel parameters
	staging [2]*pinned
	stageN  int

	// mu is the backend's one serialization point for the state other
	// goroutines read (the pending error, the tensors and their bytes, the
	// allocator's counters); ops themselves run on one goroutine at a time,
	// which the model's mutex ensures.
	mu     sync.Mutex
	err    error
	live   map[*Tensor]struct{}
	tbytes int64

	work   map[string]*devBuf
	graphs map[string]*graph
	// ticketZeroed is the moe_router counter last zeroed (routerTicket).
	ticketZeroed uintptr
	cap          *capture // non-nil while Graph records
	closed       bool
}

type devBuf struct {
	ptr  uintptr
	size int64
}

// New opens device opts.Device, compiles (or loads from the cache) the
// kernels and returns a backend ready for uploads.
func New(opts Options) (*Backend, error) {
	d, err := loadDriver()
	if err != nil {
		return nil, err
	}
	limit := opts.MemLimit
	if limit == 0 {
		if limit, err = memLimitFromEnv(); err != nil {
			return nil, err
		}
	}
	var count int32
	if err := d.call("cuDeviceGetCount", uintptr(unsafe.Pointer(&count))); err != nil {
		return nil, err
	}
	if opts.Device < 0 || opts.Device >= int(count) {
		return nil, fmt.Errorf("cuda: device %d does not exist (%d devices)", opts.Device, count)
	}
	b := &Backend{
		d: d, funcs: map[string]uintptr{}, bigShmem: map[string]int{}, live: map[*Tensor]struct{}{},
		work: map[string]*devBuf{}, graphs: map[string]*graph{}, noGraphs: opts.NoGraphs, kvF16: opts.KVF16, invariant: opts.BatchInvariant,
		wgmma: !opts.NoWGMMA && os.Getenv("ORCD_CUDA_WGMMA") != "0",
	}
	if os.Getenv("ORCD_CUDA_PROFILE") != "" {
		b.prof = newProfile()
		b.noGraphs = true // kernels are timed one by one
	}
	b.mem = allocator{d: d, limit: limit, sizes: map[uintptr]int64{}, mu: &b.mu}
	b.stageN = opts.StagingBytes
	if b.stageN <= 0 {
		b.stageN = 64 << 20
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := b.open(opts.Device, opts.Log); err != nil {
		b.release()
		return nil, err
	}
	return b, nil
}

func (b *Backend) open(device int, log *slog.Logger) error {
	d := b.d
	if err := d.call("cuDeviceGet", uintptr(unsafe.Pointer(&b.dev)), uintptr(device)); err != nil {
		return err
	}
	name := make([]byte, 256)
	if err := d.call("cuDeviceGetName", uintptr(unsafe.Pointer(&name[0])), 256, uintptr(b.dev)); err != nil {
		return err
	}
	b.name = goString(&name[0])
	major, err := d.deviceAttr(b.dev, cuDeviceAttrComputeCapabilityMajor)
	if err != nil {
		return err
	}
	minor, err := d.deviceAttr(b.dev, cuDeviceAttrComputeCapabilityMinor)
	if err != nil {
		return err
	}
	b.arch = major*10 + minor
	b.wgmma = b.wgmma && b.arch == 90 // where the card has it, unless New was told not to
	if b.maxShmem, err = d.deviceAttr(b.dev, cuDeviceAttrMaxSharedPerBlockOptin); err != nil {
		return err
	}
	if b.sms, err = d.deviceAttr(b.dev, cuDeviceAttrMultiprocessorCount); err != nil {
		return err
	}
	var total uintptr
	if err := d.call("cuDeviceTotalMem_v2", uintptr(unsafe.Pointer(&total)), uintptr(b.dev)); err != nil {
		return err
	}
	b.total = int64(total)
	if err := d.call("cuDevicePrimaryCtxRetain", uintptr(unsafe.Pointer(&b.ctx)), uintptr(b.dev)); err != nil {
		return err
	}
	if err := d.call("cuCtxSetCurrent", b.ctx); err != nil {
		return err
	}
	if err := d.call("cuStreamCreate", uintptr(unsafe.Pointer(&b.stream)), cuStreamNonBlocking); err != nil {
		return err
	}
	if err := d.call("cuMemAllocHost_v2", uintptr(unsafe.Pointer(&b.argMem)), 1024); err != nil {
		return err
	}
	mods, headers, err := kernelSources()
	if err != nil {
		return fmt.Errorf("cuda: reading embedded kernels: %w", err)
	}
	cubins, err := compileModules(mods, headers, b.arch, d.version, log)
	if err != nil {
		return err
	}
	b.modules = make([]uintptr, len(cubins))
	for i, c := range cubins {
		if err := d.call("cuModuleLoadData", uintptr(unsafe.Pointer(&b.modules[i])), uintptr(unsafe.Pointer(&c[0]))); err != nil {
			return fmt.Errorf("cuda: loading %s: %w", mods[i].name, err)
		}
	}
	return nil
}

// DeviceName is the device's marketing name, e.g. "NVIDIA H100 80GB HBM3".
func (b *Backend) DeviceName() string { return b.name }

// ComputeCapability is major*10+minor (90 on Hopper).
func (b *Backend) ComputeCapability() int { return b.arch }

// Name returns "cuda".
func (b *Backend) Name() string { return "cuda" }

// bind makes the backend's context current on a locked OS thread; call the
// returned function to unlock. Use as `defer b.bind()()`.
func (b *Backend) bind() func() {
	runtime.LockOSThread()
	if err := b.d.call("cuCtxSetCurrent", b.ctx); err != nil {
		b.fail(err)
	}
	return runtime.UnlockOSThread
}

// fail records err if it is the first failure since the last Sync.
func (b *Backend) fail(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
}

func (b *Backend) failf(format string, args ...any) { b.fail(fmt.Errorf("cuda: "+format, args...)) }

// Err returns the first recorded error without waiting or clearing it.
func (b *Backend) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// failed reports whether an error is pending; ops queue nothing then.
func (b *Backend) failed() bool { return b.Err() != nil }

// Sync waits for all queued work and returns the first error recorded since
// the last Sync, clearing it.
func (b *Backend) Sync() error {
	defer b.bind()()
	if err := b.d.call("cuStreamSynchronize", b.stream); err != nil {
		b.fail(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	err := b.err
	b.err = nil
	return err
}

// syncStream waits for queued work, recording a failure.
func (b *Backend) syncStream() {
	if err := b.d.call("cuStreamSynchronize", b.stream); err != nil {
		b.fail(err)
	}
}

// Allocated is the number of device bytes held by live tensors. Workspace
// (attention and MoE scratch, upload buffers) is reported by DeviceBytes.
func (b *Backend) Allocated() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tbytes
}

// DeviceBytes is every device byte the backend holds: tensors plus workspace.
func (b *Backend) DeviceBytes() int64 { return b.mem.inUse() }

// PeakDeviceBytes is the most DeviceBytes has been.
func (b *Backend) PeakDeviceBytes() int64 {
	b.mem.mu.Lock()
	defer b.mem.mu.Unlock()
	return b.mem.peak
}

// TotalMemory is the device's memory in bytes.
func (b *Backend) TotalMemory() int64 { return b.total }

// FreeMemory is the device memory the backend could still allocate: what
// the driver reports free, lowered to the allocator's cap if one is set.
func (b *Backend) FreeMemory() (int64, error) {
	defer b.bind()()
	var free, total uintptr
	if err := b.d.call("cuMemGetInfo_v2", uintptr(unsafe.Pointer(&free)), uintptr(unsafe.Pointer(&total))); err != nil {
		return 0, err
	}
	f := int64(free)
	if b.mem.limit > 0 {
		f = min(f, b.mem.limit-b.mem.inUse())
	}
	return max(f, 0), nil
}

// Resident reports whether every allocation the backend holds is plain
// device memory (not managed or host-mapped), asking the driver about each
// pointer.
func (b *Backend) Resident() (bool, error) {
	defer b.bind()()
	for _, p := range b.mem.pointers() {
		var memType uint32
		if err := b.d.call("cuPointerGetAttribute", uintptr(unsafe.Pointer(&memType)), cuPointerAttrMemoryType, p); err != nil {
			return false, err
		}
		var managed uint32
		if err := b.d.call("cuPointerGetAttribute", uintptr(unsafe.Pointer(&managed)), cuPointerAttrIsManaged, p); err != nil {
			return false, err
		}
		if memType != cuMemoryTypeDevice || managed != 0 {
			return false, nil
		}
	}
	return true, nil
}

// newTensor allocates size device bytes for a tensor.
func (b *Backend) newTensor(what string, typ tensor.Type, dims []int, size int64) (*Tensor, error) {
	p, err := b.mem.alloc(size, what)
	if err != nil {
		return nil, err
	}
	t := &Tensor{typ: typ, dims: dims, ptr: p, size: size}
	b.mu.Lock()
	b.live[t] = struct{}{}
	b.tbytes += size
	b.mu.Unlock()
	return t, nil
}

// zeroed allocates a tensor and clears it.
func (b *Backend) zeroed(what string, typ tensor.Type, dims []int, size int64) (backend.Tensor, error) {
	if b.cap != nil {
		return nil, fmt.Errorf("cuda: %s: allocation inside Graph", what)
	}
	defer b.bind()()
	t, err := b.newTensor(what, typ, dims, size)
	if err != nil {
		return nil, err
	}
	if err := b.d.call("cuMemsetD32Async", t.ptr, 0, uintptr((size+3)/4), b.stream); err != nil {
		b.Free(t)
		return nil, err
	}
	return t, nil
}

func checkShape(op string, rows, cols int) error {
	if rows <= 0 || cols <= 0 || int64(rows)*int64(cols) > 1<<40 {
		return fmt.Errorf("cuda: %s: bad shape %d×%d", op, rows, cols)
	}
	return nil
}

// NewF32 allocates a zeroed rows×cols float32 tensor.
func (b *Backend) NewF32(rows, cols int) (backend.Tensor, error) {
	if err := checkShape("NewF32", rows, cols); err != nil {
		return nil, err
	}
	return b.zeroed("NewF32", tensor.F32, []int{cols, rows}, int64(rows)*int64(cols)*4)
}

var _ backend.QuantizedActivations = (*Backend)(nil)

// NewF32Quantized allocates a zeroed rows×cols float32 tensor that also
// holds a copy of its rows in the decode products' quantized format: the
// ops that write it (RMSNorm, AddRMSNorm, Attention) write the copy as well
// when the rows are at most mqTokens, and the products that read it
// (MatMul, MatMulQKV, MoE, Experts) take the copy instead of quantizing the
// rows again. A width that is not whole 32-element chunks gets no copy.
func (b *Backend) NewF32Quantized(rows, cols int) (backend.Tensor, error) {
	t, err := b.NewF32(rows, cols)
	if err != nil || cols%32 != 0 {
		return t, err
	}
	ct := t.(*Tensor)
	p, err := b.mem.alloc(quantBytes(cols), "quantized activation")
	if err != nil {
		b.Free(t)
		return nil, err
	}
	ct.quant = p
	return ct, nil
}

// NewI32 allocates a zeroed vector of n int32.
func (b *Backend) NewI32(n int) (backend.Tensor, error) {
	if err := checkShape("NewI32", 1, n); err != nil {
		return nil, err
	}
	return b.zeroed("NewI32", typeI32, []int{n}, int64(n)*4)
}

// NewKVCache allocates a zeroed rows×cols cache tensor: f32 when that takes
// at most kvF32MaxBytes (and Options.KVF16 is off), else f16, which halves
// the memory of long contexts (StoreKV rounds on write). Type reports which.
func (b *Backend) NewKVCache(rows, cols int) (backend.Tensor, error) {
	if err := checkShape("NewKVCache", rows, cols); err != nil {
		return nil, err
	}
	n := int64(rows) * int64(cols)
	if !b.kvF16 && n*4 <= kvF32MaxBytes {
		return b.zeroed("NewKVCache", tensor.F32, []int{cols, rows}, n*4)
	}
	return b.zeroed("NewKVCache", tensor.F16, []int{cols, rows}, n*2)
}

// Free releases a tensor's memory after the work queued so far. Freeing nil
// or an already freed tensor is a no-op. Recorded graphs that use the tensor
// are dropped.
func (b *Backend) Free(t backend.Tensor) {
	ct, ok := t.(*Tensor)
	if !ok || ct == nil {
		return
	}
	b.mu.Lock()
	_, live := b.live[ct]
	delete(b.live, ct)
	if live {
		b.tbytes -= ct.size
	}
	b.mu.Unlock()
	if !live {
		return
	}
	defer b.bind()()
	b.syncStream()
	b.dropGraphsUsing(ct)
	if err := b.mem.free(ct.ptr); err != nil {
		b.fail(err)
	}
	if err := b.mem.free(ct.quant); err != nil {
		b.fail(err)
	}
	ct.ptr, ct.aux, ct.quant, ct.freed = 0, 0, 0, true
}

// release frees what New set up, tolerating a partial setup.
func (b *Backend) release() {
	d := b.d
	if b.stream != 0 {
		d.call("cuStreamSynchronize", b.stream)
	}
	for k := range b.graphs {
		b.dropGraph(k)
	}
	for _, w := range b.work {
		b.mem.free(w.ptr)
	}
	b.work = map[string]*devBuf{}
	b.ticketZeroed = 0
	for _, s := range b.staging {
		d.freePinned(s)
	}
	b.staging = [2]*pinned{}
	if b.argMem != nil {
		d.call("cuMemFreeHost", uintptr(b.argMem))
		b.argMem = nil
	}
	for _, m := range b.modules {
		if m != 0 {
			d.call("cuModuleUnload", m)
		}
	}
	b.modules = nil
	if b.stream != 0 {
		d.call("cuStreamDestroy_v2", b.stream)
		b.stream = 0
	}
	if b.ctx != 0 {
		d.call("cuDevicePrimaryCtxRelease_v2", uintptr(b.dev))
		b.ctx = 0
	}
}

// Close frees every tensor and the backend's own resources. The backend
// must not be used afterwards.
func (b *Backend) Close() error {
	if b.closed {
		return nil
	}
	b.mu.Lock()
	ts := make([]*Tensor, 0, len(b.live))
	for t := range b.live {
		ts = append(ts, t)
	}
	b.mu.Unlock()
	for _, t := range ts {
		b.Free(t)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.d.call("cuCtxSetCurrent", b.ctx)
	b.release()
	b.closed = true
	return b.Err()
}

// scratch returns a device buffer of at least n bytes kept under name for
// reuse. Buffers only grow. Growing outside a capture drops recorded graphs
// (they point at the old buffer); inside one, the old buffer lives until
// the capture ends.
func (b *Backend) scratch(name string, n int64) (uintptr, error) {
	w := b.work[name]
	if w != nil && w.size >= n {
		return w.ptr, nil
	}
	size := n
	if w != nil {
		size = max(n, w.size+w.size/2)
	}
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	if w != nil {
		if b.cap != nil {
			b.cap.retired = append(b.cap.retired, w.ptr)
		} else {
			b.syncStream()
			b.dropAllGraphs()
			if err := b.mem.free(w.ptr); err != nil {
				return 0, err
			}
		}
		delete(b.work, name)
	}
	p, err := b.mem.alloc(size, "workspace "+name)
	if err != nil {
		return 0, err
	}
	b.work[name] = &devBuf{ptr: p, size: size}
	return p, nil
}

// workspace is scratch for op: on failure it records the error (named by
// op) and returns false, and the op queues nothing.
func (b *Backend) workspace(op, name string, n int64) (uintptr, bool) {
	p, err := b.scratch(name, n)
	if err != nil {
		b.fail(fmt.Errorf("%s: %w", op, err))
		return 0, false
	}
	return p, true
}

// errClosed is recorded by ops on a closed backend.
var errClosed = errors.New("cuda: backend is closed")
