package cuda

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"unsafe"

	"orcd/backend"
	"orcd/tensor"
)

// The kernels as Go functions: one typed wrapper per kernel (or family of
// kernels that differ only in the weight or cache type they read), whose
// parameters mirror the kernel's C signature, so a kernel's name and its
// argument list appear in one place. The constants both sides use are Go's,
// passed to NVRTC as -D options (kernelDefines); the kernel sources keep
// defaults only for standalone syntax checks, and a test checks that they
// equal Go's.

// Shared constants (see kernelDefines).
const (
	// mvTokens is the largest batch of the matrix-vector kernels: one read
	// of the weights serves up to 8 rows of x (MV_TOKENS).
	mvTokens = 8
	mvWarps  = 4 // warps of a matvec block, one row (or mvRows) each (MV_WARPS)
	mvRows   = 4 // rows per warp for Q8_0 and MXFP4 (MV_ROWS)
	// The integer tensor-core decode kernels (mqvec.cu) take up to
	// mqTokens rows of x (4 tokens × 2 digit columns fill the MMA's 8
	// columns) against Q8_0 or MXFP4 weights.
	mqTokens = 4
	mqChunk  = 256 // bytes of quantized x per 32-element chunk (MQ_CHUNK)
	mqWarps  = 8   // warps splitting the inner dimension in mq_matvec (MQ_WARPS)
	mqKSplit = 4   // warps splitting the inner dimension in mq_gateup (MQ_KSPLIT)
	// mqgTokens is the largest step of the integer tensor-core kernels of
	// the middle sizes (mqvec_grouped.cu), which take steps of more than
	// mqTokens tokens against Q8_0 or MXFP4 weights (MoE experts and dense
	// products); larger ones take gemm.cu's kernels (those types) or the
	// f16 tile kernels.
	mqgTokens = 256
	// The grouped kernels stream weights and x through shared memory
	// mqgStage 32-element chunks at a time, mqgStages stages in flight
	// (MQG_STAGE, MQG_STAGES). Two stages beat three and four (NOTES.md #29):
	// smaller blocks let more of them reside.
	mqgStage  = 4
	mqgStages = 2
	// mqDownWarps: an mq_down block has a warp per selected expert or
	// more, so top-k above it takes the float kernels (MQ_DOWN_WARPS).
	mqDownWarps = 16
	// The prefill products of Q8_0 and MXFP4 weights (gemm.cu) keep
	// gmStages stages of x and of raw weights in flight (GM_STAGES).
	gmStages = 3
	// gmDenseTokens is the smallest step whose large dense products (an LM
	// head) take gemm.cu rather than the grouped integer kernels: one
	// full 256 × 64 tile of tokens.
	gmDenseTokens = 64
	// moeMaxK is the most experts a token may use (MOE_MAX_K).
	moeMaxK = 32
	// mmTile is the output tile of the tensor-core matmul (MM_BM, MM_BN).
	mmTile = 64
	// The flash-attention kernels (attn_flash_*_d64) take flashRows query
	// rows a block with head dim flashDim (FA_ROWS, FA_D).
	flashDim     = 64
	flashRows    = 64
	flashThreads = 128 // FA_THREADS
	// sampleThreads is the block of sample_rows (SAMPLE_THREADS) and
	// sampleParamBytes the size of its SampleParams (SAMPLE_PARAM_BYTES).
	sampleThreads    = 1024
	sampleParamBytes = 40
)

// kernelDefines are the constants passed to NVRTC as -D options.
var kernelDefines = []struct {
	name  string
	value int
}{
	{"MV_TOKENS", mvTokens}, {"MV_WARPS", mvWarps}, {"MV_ROWS", mvRows},
	{"MQ_TOKENS", mqTokens}, {"MQ_CHUNK", mqChunk}, {"MQ_WARPS", mqWarps}, {"MQ_KSPLIT", mqKSplit},
	{"MQ_DOWN_WARPS", mqDownWarps}, {"MQG_STAGE", mqgStage}, {"MQG_STAGES", mqgStages},
	{"GM_STAGES", gmStages}, {"AG_WARPS", gqaWarps}, {"MOE_MAX_K", moeMaxK}, {"ROUTE_TOKENS", mqTokens}, {"ROUTE_WARPS", routeWarps},
	{"MM_BM", mmTile}, {"MM_BN", mmTile}, {"FA_D", flashDim}, {"FA_ROWS", flashRows}, {"FA_THREADS", flashThreads},
	{"SAMPLE_THREADS", sampleThreads}, {"SAMPLE_PARAM_BYTES", sampleParamBytes},
}

// defineWords matches each of kernelDefines' names as a whole word, in
// the same order (compiled once, not for every module at every start).
var defineWords = func() []*regexp.Regexp {
	res := make([]*regexp.Regexp, len(kernelDefines))
	for i, d := range kernelDefines {
		res[i] = regexp.MustCompile(`\b` + d.name + `\b`)
	}
	return res
}()

// defineOptions are the kernelDefines that src names, as NVRTC options:
// a module gets only its own, so changing one constant recompiles only the
// modules that read it.
func defineOptions(src string) []string {
	var opts []string
	for i, d := range kernelDefines {
		if defineWords[i].MatchString(src) {
			opts = append(opts, "-D"+d.name+"="+strconv.Itoa(d.value))
		}
	}
	return opts
}

// arg is one kernel parameter in the 8-byte slot cuLaunchKernel copies it
// from. Its constructors name the C type.
type arg uint64

func dptr(p uintptr) arg       { return arg(p) }                   // a device pointer (T*)
func cint(v int) arg           { return arg(uint32(int32(v))) }    // int
func clong(v int64) arg        { return arg(v) }                   // long long
func cfloat(v float32) arg     { return arg(math.Float32bits(v)) } // float
func threads(n int) [3]int     { return [3]int{n, 1, 1} }
func grid1(n int) [3]int       { return [3]int{max(n, 1), 1, 1} }
func grid2(x, y int) [3]int    { return [3]int{x, y, 1} }
func grid3(x, y, z int) [3]int { return [3]int{x, y, z} }

// maxArgs bounds a kernel's parameters (the pinned argument area).
const maxArgs = 32

// function looks kernel name up in the modules (each kernel file is one)
// and remembers it; it records an error and returns 0 when no module has
// it.
func (b *Backend) function(name string) uintptr {
	cname := cString(name)
	var err error
	for _, m := range b.modules {
		var p uintptr
		if err = b.d.call("cuModuleGetFunction", uintptr(unsafe.Pointer(&p)), m, uintptr(unsafe.Pointer(&cname[0]))); err == nil {
			b.funcs[name] = p
			return p
		}
	}
	b.fail(fmt.Errorf("kernel %s: in none of the %d modules: %v", name, len(b.modules), err))
	return 0
}

// launch queues kernel name on the stream. Only the wrappers below call it.
func (b *Backend) launch(name string, grid, block [3]int, shmem int, args ...arg) {
	f, ok := b.funcs[name]
	if !ok {
		if f = b.function(name); f == 0 {
			return
		}
	}
	if shmem > 48<<10 && b.bigShmem[name] < shmem {
		// Beyond 48 KiB a kernel must opt in to dynamic shared memory.
		if err := b.d.call("cuFuncSetAttribute", f, cuFuncAttrMaxDynamicSharedSize, uintptr(shmem)); err != nil {
			b.fail(fmt.Errorf("kernel %s: %w", name, err))
			return
		}
		b.bigShmem[name] = shmem
	}
	if b.prof != nil {
		defer b.prof.time(b, fmt.Sprintf("%s %dx%dx%d", name, grid[0], grid[1], grid[2]))()
	}
	vals := (*[maxArgs]arg)(b.argMem)
	ptrs := (*[maxArgs]uintptr)(unsafe.Add(b.argMem, 8*maxArgs))
	for i, a := range args {
		vals[i] = a
		ptrs[i] = uintptr(unsafe.Pointer(&vals[i]))
	}
	if err := b.d.call("cuLaunchKernel", f, uintptr(grid[0]), uintptr(grid[1]), uintptr(grid[2]),
		uintptr(block[0]), uintptr(block[1]), uintptr(block[2]), uintptr(shmem), b.stream,
		uintptr(unsafe.Pointer(ptrs)), 0); err != nil {
		b.fail(fmt.Errorf("kernel %s: %w", name, err))
	}
}

// gridFor returns a 1-D grid of 256-thread blocks covering n elements,
// capped for grid-stride loops.
func (b *Backend) gridFor(n int64) [3]int {
	g := (n + 255) / 256
	g = min(g, int64(b.sms)*32)
	return grid1(int(g))
}

// suffix is the kernel name suffix of a weight or cache type.
func suffix(t tensor.Type) string { return uploadTypes[t] }

// quantBuf is a quantized copy of up to mqTokens rows of an activation of
// in columns, as mq_quant writes it: the chunks (mqChunk bytes each, two
// int8 digits of every row) and the rows' scales (mqTokens a chunk).
type quantBuf struct{ qx, dx uintptr }

// quantBytes is the size of a quantBuf of in columns.
func quantBytes(in int) int64 { return int64(in/32) * (mqChunk + 4*mqTokens) }

// quantAt lays a quantBuf of in columns out at p.
func quantAt(p uintptr, in int) quantBuf {
	return quantBuf{qx: p, dx: p + uintptr(int64(in/32)*mqChunk)}
}

// rowQuant is a row-major quantized activation, as mq_store_row writes it:
// for each row, mqChunk/4 bytes (two int8 digits of 32 elements) and one
// scale a 32-element chunk.
type rowQuant struct{ q, d uintptr }

// rowQuantBytes is the size of a rowQuant of rows rows of in columns.
func rowQuantBytes(rows, in int) (q, d int64) {
	chunks := int64(rows) * int64(in/32)
	return chunks * 64, chunks * 4
}

// --- elementwise.cu

func (b *Backend) addF32(dst, x, y uintptr, n int64) {
	b.launch("add_f32", b.gridFor(n), threads(256), 0, dptr(dst), dptr(x), dptr(y), clong(n))
}

func (b *Backend) copyCols(dst, src uintptr, rows, cols, scols, col0 int) {
	b.launch("copy_cols", b.gridFor(int64(rows)*int64(cols)), threads(256), 0, dptr(dst), dptr(src), cint(rows), cint(cols), cint(scols), cint(col0))
}

func (b *Backend) geluTanh(dst, x uintptr, n int64) {
	b.launch("gelu_tanh", b.gridFor(n), threads(256), 0, dptr(dst), dptr(x), clong(n))
}

func (b *Backend) silu(dst, x uintptr, n int64) {
	b.launch("silu", b.gridFor(n), threads(256), 0, dptr(dst), dptr(x), clong(n))
}

func (b *Backend) swiglu(dst, g, u uintptr, n int64, p backend.SwiGLUParams) {
	b.launch("swiglu", b.gridFor(n), threads(256), 0, dptr(dst), dptr(g), dptr(u), clong(n), cfloat(p.Alpha), cfloat(p.Limit), cfloat(p.UpShift))
}

// normBlock is the block size of the row-norm kernels.
func normBlock(cols int) int { return min(1024, max(32, (cols+31)/32*32)) }

func (b *Backend) rmsNormK(dst, x, delta, w uintptr, rows, cols int, eps float32) {
	b.launch("rms_norm", grid1(rows), threads(normBlock(cols)), 0, dptr(dst), dptr(x), dptr(delta), dptr(w), cint(cols), cfloat(eps))
}

func (b *Backend) rmsNormHeads(dst, x, w uintptr, rows, cols, dim int, eps float32) {
	b.launch("rms_norm_heads", grid2(cols/dim, rows), threads(normBlock(dim)), 0, dptr(dst), dptr(x), dptr(w), cint(cols), cint(dim), cfloat(eps))
}

func (b *Backend) layerNorm(dst, x, w, bias uintptr, rows, cols int, eps float32) {
	b.launch("layer_norm", grid1(rows), threads(normBlock(cols)), 0, dptr(dst), dptr(x), dptr(w), dptr(bias), cint(cols), cfloat(eps))
}

func (b *Backend) rope(x, pos, invFreq uintptr, rows, heads, dim int, mscale float32, normal bool) {
	mode := 0
	if normal {
		mode = 1
	}
	b.launch("rope", b.gridFor(int64(rows)*int64(heads*dim)/2), threads(256), 0,
		dptr(x), dptr(pos), dptr(invFreq), cint(rows), cint(heads), cint(dim), cfloat(mscale), cint(mode))
}

func (b *Backend) storeKV(cache tensor.Type, kc, vc, k, v, slots uintptr, n, cols int) {
	b.launch("store_kv_"+suffix(cache), grid1(n), threads(min(1024, (cols+31)/32*32)), 0,
		dptr(kc), dptr(vc), dptr(k), dptr(v), dptr(slots), cint(cols))
}

// repack splits blocks file blocks of a Q8_0 or MXFP4 weight into its
// quant and scale planes.
func (b *Backend) repack(typ tensor.Type, q, s, raw uintptr, blocks int64) {
	b.launch("repack_"+suffix(typ), b.gridFor(blocks), threads(256), 0, dptr(q), dptr(s), dptr(raw), clong(blocks))
}

// --- matvec.cu, matmul.cu

func (b *Backend) embed(w *Tensor, dst, ids uintptr, in, rows, n int) {
	b.launch("embed_"+suffix(w.typ), grid1(n), threads(128), 0, dptr(dst), dptr(w.ptr), dptr(w.aux), cint(in), dptr(ids), cint(rows))
}

func (b *Backend) matvec(w *Tensor, dst, x uintptr, in int, bias uintptr, n, out int) {
	rowsPerBlock := mvWarps // one row a warp, or mvRows for Q8_0 and MXFP4 (matvec.cu)
	if w.typ == tensor.Q8_0 || w.typ == tensor.MXFP4 {
		rowsPerBlock = mvWarps * mvRows
	}
	b.launch("matvec_"+suffix(w.typ), grid2((out+rowsPerBlock-1)/rowsPerBlock, (n+mvTokens-1)/mvTokens), threads(32*mvWarps), 0,
		dptr(dst), dptr(x), dptr(w.ptr), dptr(w.aux), cint(in), dptr(bias), cint(n), cint(out))
}

// matmulTiles is the tensor-core matmul; with starts (grouped, one grid z
// per expert of groups) the rows of x are gathered through xrows.
func (b *Backend) matmulTiles(w *Tensor, dst, x uintptr, in int, bias uintptr, n, out, tileRows, groups int, starts, xrows uintptr) {
	b.launch("matmul_"+suffix(w.typ), grid3((out+mmTile-1)/mmTile, (tileRows+mmTile-1)/mmTile, groups), threads(128), 0,
		dptr(dst), dptr(x), dptr(w.ptr), dptr(w.aux), cint(in), dptr(bias), cint(n), cint(out), dptr(starts), dptr(xrows))
}

func (b *Backend) moeGateup(gate, up *Tensor, h, x uintptr, in int, gb, ub, ids uintptr, k, ff, assignments int, act backend.SwiGLUParams) {
	b.launch("moe_gateup_"+suffix(gate.typ), grid2((ff+7)/8, assignments), threads(128), 0,
		dptr(h), dptr(x), dptr(gate.ptr), dptr(gate.aux), dptr(up.ptr), dptr(up.aux), cint(in), dptr(gb), dptr(ub), dptr(ids),
		cint(k), cint(ff), cfloat(act.Alpha), cfloat(act.Limit), cfloat(act.UpShift))
}

func (b *Backend) moeDown(down *Tensor, dst, h uintptr, in int, db, ids, wts uintptr, k, hidden, n int) {
	b.launch("moe_down_"+suffix(down.typ), grid2((hidden+3)/4, n), threads(32*k), 0,
		dptr(dst), dptr(h), dptr(down.ptr), dptr(down.aux), cint(in), dptr(db), dptr(ids), dptr(wts), cint(k), cint(hidden))
}

// --- mqvec.cu

func (b *Backend) mqQuant(q quantBuf, x uintptr, n, in int) {
	b.launch("mq_quant", grid1((in/32+3)/4), threads(128), 0, dptr(q.qx), dptr(q.dx), dptr(x), cint(n), cint(in))
}

func (b *Backend) mqMatvec(w *Tensor, dst uintptr, q quantBuf, in int, bias uintptr, n, out int) {
	b.launch("mq_matvec_"+suffix(w.typ), grid1((out+15)/16), threads(32*mqWarps), 0,
		dptr(dst), dptr(q.qx), dptr(q.dx), dptr(w.ptr), dptr(w.aux), cint(in), dptr(bias), cint(n), cint(out))
}

// mqMat is one of mq_matvec3's products.
type mqMat struct {
	dst  uintptr
	w    *Tensor
	bias uintptr
	out  int
}

// mqMatArgs appends the three products' kernel arguments (output, weights,
// scales, bias, rows) to args, and returns the most rows of the three.
func mqMatArgs(args []arg, m [3]mqMat) ([]arg, int) {
	most := 0
	for _, x := range m {
		args = append(args, dptr(x.dst), dptr(x.w.ptr), dptr(x.w.aux), dptr(x.bias), cint(x.out))
		most = max(most, x.out)
	}
	return args, most
}

func (b *Backend) mqMatvec3(q quantBuf, in, n int, m [3]mqMat) {
	args, _ := mqMatArgs([]arg{dptr(q.qx), dptr(q.dx), cint(in), cint(n)}, m)
	blocks := 0
	for _, x := range m {
		blocks += (x.out + 15) / 16
	}
	b.launch("mq_matvec3_"+suffix(m[0].w.typ), grid1(blocks), threads(32*mqWarps), 0, args...)
}

func (b *Backend) mqGateup(gate, up *Tensor, h quantBuf, q quantBuf, in int, gb, ub, ids uintptr, k, ff, assignments int, act backend.SwiGLUParams) {
	b.launch("mq_gateup_"+suffix(gate.typ), grid2(ff/32, assignments), threads(64*mqKSplit), 0,
		dptr(h.qx), dptr(h.dx), dptr(q.qx), dptr(q.dx), dptr(gate.ptr), dptr(gate.aux), dptr(up.ptr), dptr(up.aux), cint(in),
		dptr(gb), dptr(ub), dptr(ids), cint(k), cint(ff), cfloat(act.Alpha), cfloat(act.Limit), cfloat(act.UpShift))
}

func (b *Backend) mqDown(down *Tensor, dst uintptr, h quantBuf, in int, db, ids, wts uintptr, k, hidden, n int) {
	ksplit := max(1, mqDownWarps/k) // k·ksplit warps a block
	b.launch("mq_down_"+suffix(down.typ), grid2((hidden+15)/16, n), threads(32*k*ksplit), 0,
		dptr(dst), dptr(h.qx), dptr(h.dx), dptr(down.ptr), dptr(down.aux), cint(in), dptr(db), dptr(ids), dptr(wts), cint(k), cint(hidden), cint(ksplit))
}

// --- mqvec_grouped.cu

func (b *Backend) mqQuantRows(q rowQuant, x uintptr, n, in int) {
	b.launch("mq_quant_rows", grid2((in/32+3)/4, n), threads(128), 0, dptr(q.q), dptr(q.d), dptr(x), cint(in))
}

// mqgQuads is the quads of tokens (Q) of a grouped launch when each weight
// row meets perRow tokens a step on average (an expert's share of the
// assignments, or every row of a dense product). A pass holds 4Q tokens,
// and an expert with more takes a second pass that decodes its weights
// again; a pass with fewer rows runs a smaller instance (mqg_fit), so Q
// is sized for the experts above the average: about 1.5 times it.
func mqgQuads(perRow int) int {
	switch {
	case perRow <= 4:
		return 2
	case perRow <= 10:
		return 4
	}
	return 8
}

// mqgShmem is the dynamic shared memory of a grouped block of rows rows of
// np matrices of type t, in columns, and q token quads (mqvec_grouped.cu's
// MqgSmem): the weights' scales, x's scales and rows, the weight and x
// stages.
func mqgShmem(t tensor.Type, np, q, rows, in int) int {
	chunk, scale := 16, 1 // MXFP4
	if t == tensor.Q8_0 {
		chunk, scale = 32, 2
	}
	nblk, tokens := in/32, 4*q
	return np*rows*nblk*scale + tokens*nblk*4 + tokens*4 +
		mqgStages*np*rows*(mqgStage*chunk+16) + mqgStages*tokens*(mqgStage*64+64)
}

// mqgFits says whether a grouped block of np matrices of type t, in
// columns, fits the device's shared memory at its largest.
func (b *Backend) mqgFits(t tensor.Type, np, in int) bool {
	return mqgShmem(t, np, 8, 64, in) <= b.maxShmem
}

// mqgGrid is the grid of a grouped launch: passes of 4q tokens (the most
// any expert can hold: every one of the step's n tokens) by tiles of rows
// rows by experts. The passes of one tile are neighbours, so all but the
// first find its weights in L2, and passes past an expert's tokens return
// at once.
func mqgGrid(n, q, rows, out, nExp int) [3]int {
	return grid3((n+4*q-1)/(4*q), (out+rows-1)/rows, nExp)
}

func (b *Backend) mqgGateup(gate, up *Tensor, h, x rowQuant, in int, gb, ub, starts, xrows uintptr, ff, n, k, nExp int, act backend.SwiGLUParams) {
	q := mqgQuads((n*k + nExp - 1) / nExp)
	b.launch(fmt.Sprintf("mqg_gateup_%s_q%d", suffix(gate.typ), q), mqgGrid(n, q, 64, ff, nExp), threads(128), mqgShmem(gate.typ, 2, q, 64, in),
		dptr(h.q), dptr(h.d), dptr(x.q), dptr(x.d), dptr(gate.ptr), dptr(gate.aux), dptr(up.ptr), dptr(up.aux), cint(in),
		dptr(gb), dptr(ub), dptr(starts), dptr(xrows), cint(ff), cfloat(act.Alpha), cfloat(act.Limit), cfloat(act.UpShift))
}

// mqgMatmul takes 64-row blocks, or 16-row ones (mqg_matmul16_*, whose
// warps split the inner dimension) where 64-row blocks would not give each
// SM two.
func (b *Backend) mqgMatmul(w *Tensor, dst uintptr, x rowQuant, in int, bias uintptr, n, out int) {
	q := mqgQuads(n)
	name, rows := "mqg_matmul_", 64
	if g := mqgGrid(n, q, rows, out, 1); g[0]*g[1] < 2*b.sms {
		name, rows = "mqg_matmul16_", 16
	}
	b.launch(fmt.Sprintf("%s%s_q%d", name, suffix(w.typ), q), mqgGrid(n, q, rows, out, 1), threads(128), mqgShmem(w.typ, 1, q, rows, in),
		dptr(dst), dptr(x.q), dptr(x.d), dptr(w.ptr), dptr(w.aux), cint(in), dptr(bias), cint(n), cint(out))
}

// mqgMatmul3 queues the three dense products of one x (q, k and v) as one
// launch, in 64-row tiles or, where those would not give each SM two
// blocks, 16-row ones.
func (b *Backend) mqgMatmul3(x rowQuant, in, n int, m [3]mqMat) {
	q := mqgQuads(n)
	name, rows := "mqg_matmul3_", 64
	if tiles := (m[0].out + m[1].out + m[2].out + 3*(rows-1)) / rows; tiles*mqgGrid(n, q, rows, 0, 1)[0] < 2*b.sms {
		name, rows = "mqg_matmul3_16_", 16
	}
	args, most := mqMatArgs([]arg{dptr(x.q), dptr(x.d), cint(in), cint(n)}, m)
	b.launch(fmt.Sprintf("%s%s_q%d", name, suffix(m[0].w.typ), q), mqgGrid(n, q, rows, most, 3), threads(128), mqgShmem(m[0].w.typ, 1, q, rows, in), args...)
}

func (b *Backend) mqgDown(down *Tensor, y uintptr, h rowQuant, in int, db, starts uintptr, hidden, n, k, nExp int) {
	q := mqgQuads((n*k + nExp - 1) / nExp)
	b.launch(fmt.Sprintf("mqg_down_%s_q%d", suffix(down.typ), q), mqgGrid(n, q, 64, hidden, nExp), threads(128), mqgShmem(down.typ, 1, q, 64, in),
		dptr(y), dptr(h.q), dptr(h.d), dptr(down.ptr), dptr(down.aux), cint(in), dptr(db), dptr(starts), cint(hidden))
}

// --- gemm.cu

// halves are x as gemm.cu reads it: two 16-bit planes, hi and lo,
// row-major (bf16 against MXFP4 weights, f16 against Q8_0).
type halves struct{ hi, lo uintptr }

// halvesAt lays out the planes of n elements from p (4n bytes).
func halvesAt(p uintptr, n int64) halves { return halves{hi: p, lo: p + uintptr(2*n)} }

// split writes n elements of x as halves for weights of type t.
func (b *Backend) split(h halves, x uintptr, n int64, t tensor.Type) {
	name := "split_h"
	if t == tensor.MXFP4 {
		name = "split_bf16"
	}
	b.launch(name, b.gridFor(n), threads(256), 0, dptr(h.hi), dptr(h.lo), dptr(x), clong(n))
}

// gmShape is a gemm.cu block shape: rows weight rows × toks tokens, on
// wgmma (the _wg kernels) or mma.sync.
type gmShape struct {
	rows, toks int
	wg         bool
}

// gmShapeFor picks the block shape for perRow tokens a weight row (an
// expert's share of the assignments, or every row of a dense product):
// 128 × 128, or 256 × 64 where a 128-token tile would leave half its warps
// idle.
func gmShapeFor(perRow int) gmShape {
	if perRow <= 64 {
		return gmShape{rows: 256, toks: 64}
	}
	return gmShape{rows: 128, toks: 128}
}

// moeShape picks the block shape of the experts (of type t) for perRow
// tokens an expert: gmShapeFor's, but MXFP4 on wgmma where the backend has
// it, in 256-row blocks (a warpgroup's two m64 tiles share each x tile).
// Dense products stay on mma.sync: before the swizzled tiles (NOTES.md
// #40) wgmma was 4% slower on a dense MXFP4 product of 2,048 tokens (#39),
// not measured since; gpt-oss has none.
func (b *Backend) moeShape(t tensor.Type, perRow int) gmShape {
	s := gmShapeFor(perRow)
	if b.wgmma && t == tensor.MXFP4 {
		s.rows, s.wg = 256, true
	}
	return s
}

// gmName is the kernel name of family (gemm_rows, gemm_rows3 or
// gemm_gateup) for weights of type t in shape s.
func gmName(family string, t tensor.Type, s gmShape) string {
	name := fmt.Sprintf("%s_%s_%dx%d", family, suffix(t), s.rows, s.toks)
	if s.wg {
		name += "_wg"
	}
	return name
}

// gmShmem is the dynamic shared memory of a gemm.cu block of shape s
// against weights of type t and in columns (GmSmem): x's hi and lo stages
// (64 + 8 halves a row), the raw weight stages (64 bytes a row), two
// decoded f16 tiles and their chunk scales, the tokens' row offsets and
// every weight scale of the block's rows; on wgmma (MXFP4) no padding, 32
// raw bytes a row, no chunk scales, and 1,024 bytes to align the start
// (the swizzled tiles' atoms).
func gmShmem(t tensor.Type, in int, s gmShape) int {
	scale := 1 // MXFP4's E8M0
	if t == tensor.Q8_0 {
		scale = 2
	}
	if s.wg {
		return 1024 + 2*gmStages*s.toks*64*2 + gmStages*s.rows*32 + 2*s.rows*64*2 + s.toks*8 + s.rows*in/32
	}
	return 2*gmStages*s.toks*72*2 + gmStages*s.rows*64 + 2*s.rows*72*2 + 4*s.rows*4 + s.toks*8 + s.rows*in/32*scale
}

// gmFits says whether gemm.cu takes products of type t with in columns in
// blocks of shape s: the quantized types it decodes, when the block fits
// the device's shared memory.
func (b *Backend) gmFits(t tensor.Type, in int, s gmShape) bool {
	return mqTypes[t] && in%32 == 0 && gmShmem(t, in, s) <= b.maxShmem
}

// gemmRows queues y = x·wᵀ + bias: dense for x's n rows (starts 0), or
// grouped, one grid z per expert of nExp (rows of x gathered through xrows
// when not 0), in blocks of shape s.
func (b *Backend) gemmRows(w *Tensor, y uintptr, x halves, in int, bias, starts, xrows uintptr, n, out, nExp int, s gmShape) {
	b.launch(gmName("gemm_rows", w.typ, s), grid3((n+s.toks-1)/s.toks, (out+s.rows-1)/s.rows, nExp), threads(256), gmShmem(w.typ, in, s),
		dptr(y), dptr(x.hi), dptr(x.lo), dptr(w.ptr), dptr(w.aux), cint(in), dptr(bias), dptr(starts), dptr(xrows), cint(n), cint(out))
}

// gemmRows3 queues the three dense products of one x (q, k and v) as one
// launch, grid z picking the product: k and v alone fill half the chip.
func (b *Backend) gemmRows3(x halves, in, n int, m [3]mqMat, s gmShape) {
	args, most := mqMatArgs([]arg{dptr(x.hi), dptr(x.lo), cint(in), cint(n)}, m)
	b.launch(gmName("gemm_rows3", m[0].w.typ, s), grid3((n+s.toks-1)/s.toks, (most+s.rows-1)/s.rows, 3), threads(256), gmShmem(m[0].w.typ, in, s), args...)
}

// gemmGateup queues the experts' gate and up products of the grouped rows
// and their SwiGLU, written as halves for the down projection.
func (b *Backend) gemmGateup(gate, up *Tensor, h, x halves, in int, gb, ub, starts, xrows uintptr, n, ff, nExp int, act backend.SwiGLUParams, s gmShape) {
	b.launch(gmName("gemm_gateup", gate.typ, s), grid3((n+s.toks-1)/s.toks, (ff+s.rows/2-1)/(s.rows/2), nExp), threads(256), gmShmem(gate.typ, in, s),
		dptr(h.hi), dptr(h.lo), dptr(x.hi), dptr(x.lo), dptr(gate.ptr), dptr(gate.aux), dptr(up.ptr), dptr(up.aux), cint(in),
		dptr(gb), dptr(ub), dptr(starts), dptr(xrows), cint(ff), cfloat(act.Alpha), cfloat(act.Limit), cfloat(act.UpShift))
}

// rmsNormMQ is rms_norm that also writes the rows (at most mqTokens, of a
// multiple of 32 columns) into q.
func (b *Backend) rmsNormMQ(dst, x, delta, w uintptr, rows, cols int, eps float32, q quantBuf) {
	b.launch("rms_norm_mq", grid1(rows), threads(normBlock(cols)), 0,
		dptr(dst), dptr(x), dptr(delta), dptr(w), cint(cols), cfloat(eps), dptr(q.qx), dptr(q.dx))
}

// --- moe.cu

func (b *Backend) moeTopK(ids, wts, logits uintptr, n, nExp, k int) {
	b.launch("moe_topk", grid1((n+3)/4), threads(128), 0, dptr(ids), dptr(wts), dptr(logits), cint(n), cint(nExp), cint(k))
}

// routeWarps is the warps of a moe_router block (ROUTE_WARPS): its last
// block picks the top-k of up to that many tokens, one a warp.
const routeWarps = 8

// moeRouter queues moe_router: with k > 0 the logits and top-k of at most
// routeWarps tokens, with k = 0 (ids, wts and done unused) the logits.
func (b *Backend) moeRouter(ids, wts, logits, done, x, w, bias uintptr, n, in, nExp, k int) {
	shmem := 0
	if k > 0 {
		shmem = n * nExp * 4
	}
	b.launch("moe_router", grid2(nExp, (n+mqTokens-1)/mqTokens), threads(32*routeWarps), shmem,
		dptr(ids), dptr(wts), dptr(logits), dptr(done), dptr(x), dptr(w), dptr(bias), cint(n), cint(in), cint(nExp), cint(k))
}

func (b *Backend) moeLogits(logits, x, w, bias uintptr, n, in, nExp int) {
	b.launch("moe_logits", grid2((n+7)/8, (nExp+31)/32), threads(256), 0,
		dptr(logits), dptr(x), dptr(w), dptr(bias), cint(n), cint(in), cint(nExp))
}

func (b *Backend) moeGroup(starts, xrows, slotRow, counts, ids uintptr, n, k, nExp int) {
	b.launch("moe_group", grid1(1), threads(1024), 0, dptr(starts), dptr(xrows), dptr(slotRow), dptr(counts), dptr(ids), cint(n), cint(k), cint(nExp))
}

func (b *Backend) moeCombine(dst, y, wts, slotRow uintptr, k, hidden, n int) {
	b.launch("moe_combine", grid1(n), threads(256), 0, dptr(dst), dptr(y), dptr(wts), dptr(slotRow), cint(k), cint(hidden))
}

// --- attention.cu

func (b *Backend) attnPartial(cache tensor.Type, rowsPer, maxDim int, grid [3]int, warps, shmem int,
	q, kc, vc, pos, seq, table uintptr, n int, p backend.AttentionParams, hgroups, fixed int, pm, pl, pacc uintptr) {
	b.launch(fmt.Sprintf("attn_partial_%s_r%d_d%d", suffix(cache), rowsPer, maxDim), grid, threads(32*warps), shmem,
		dptr(q), dptr(kc), dptr(vc), dptr(pos), dptr(seq), dptr(table), cint(n), cint(p.Heads), cint(p.KVHeads), cint(p.HeadDim),
		cfloat(p.Scale), cint(p.Window), cint(p.BlockSize), cint(p.MaxBlocks), cint(hgroups), cint(fixed), dptr(pm), dptr(pl), dptr(pacc))
}

// gqaWarps is the KV heads (warps) of an attn_gqa block (AG_WARPS), and
// gqaShmem its shared memory: each warp's two stages of a 32-key K and V
// tile, rows of 72 halves.
const (
	gqaWarps = 4
	gqaShmem = gqaWarps * 2 * 2 * 32 * 72 * 2
)

func (b *Backend) attnGQA(grid [3]int, q, kc, vc, pos, seq, table uintptr, p backend.AttentionParams, pm, pl, pacc uintptr) {
	b.launch("attn_gqa_f16_d64", grid, threads(32*gqaWarps), gqaShmem,
		dptr(q), dptr(kc), dptr(vc), dptr(pos), dptr(seq), dptr(table), cint(p.Heads), cint(p.KVHeads),
		cfloat(p.Scale), cint(p.Window), cint(p.BlockSize), cint(p.MaxBlocks), dptr(pm), dptr(pl), dptr(pacc))
}

func (b *Backend) attnCombine(dst, pm, pl, pacc, sinks uintptr, heads, dim, splits, n int) {
	b.launch("attn_combine", grid2(heads, n), threads(dim), 0, dptr(dst), dptr(pm), dptr(pl), dptr(pacc), dptr(sinks), cint(heads), cint(dim), cint(splits))
}

// attnCombineMQ is attn_combine that also writes the rows (at most
// mqTokens; dim a multiple of 32) into q.
func (b *Backend) attnCombineMQ(dst, pm, pl, pacc, sinks uintptr, heads, dim, splits, n int, q quantBuf) {
	b.launch("attn_combine_mq", grid2(heads, n), threads(dim), 0,
		dptr(dst), dptr(pm), dptr(pl), dptr(pacc), dptr(sinks), cint(heads), cint(dim), cint(splits), dptr(q.qx), dptr(q.dx))
}

func (b *Backend) attnFlash(cache tensor.Type, dst, q, kc, vc, pos, seq, table, sinks uintptr, n int, p backend.AttentionParams) {
	b.launch("attn_flash_"+suffix(cache)+"_d64", grid2(p.Heads, (n+flashRows-1)/flashRows), threads(flashThreads), 0,
		dptr(dst), dptr(q), dptr(kc), dptr(vc), dptr(pos), dptr(seq), dptr(table), dptr(sinks), cint(n), cint(p.Heads), cint(p.KVHeads),
		cfloat(p.Scale), cint(p.Window), cint(p.BlockSize), cint(p.MaxBlocks))
}

// --- sample.cu

func (b *Backend) sampleRows(ids, logits uintptr, vocab int, params, penOff, penIDs uintptr, n int) {
	b.launch("sample_rows", grid1(n), threads(sampleThreads), 0, dptr(ids), dptr(logits), cint(vocab), dptr(params), dptr(penOff), dptr(penIDs))
}
