package cuda

import (
	"fmt"

	"orcd/backend"
	"orcd/tensor"
)

// The ops of backend.Backend: each validates its tensors, records an error
// instead of launching on a mismatch (or while an earlier error is
// pending), and queues its kernels through their wrappers (kernels.go).

func describe(t *Tensor) string {
	if t.typ == typeI32 {
		return fmt.Sprintf("I32 %v", t.dims)
	}
	return fmt.Sprintf("%s %v", t.typ, t.dims)
}

// tensorOf unwraps a handle, recording an error for nil, foreign or freed
// tensors. It returns nil (queueing nothing) while an error is pending.
func (b *Backend) tensorOf(t backend.Tensor, op, arg string) *Tensor {
	if b.closed {
		b.fail(errClosed)
		return nil
	}
	ct, ok := t.(*Tensor)
	switch {
	case t == nil || (ok && ct == nil):
		b.failf("%s: %s is nil", op, arg)
	case !ok:
		b.failf("%s: %s is a %T, not a cuda tensor", op, arg, t)
	case ct.freed || ct.base != nil && ct.base.freed:
		b.failf("%s: %s was freed", op, arg)
	default:
		if b.failed() {
			return nil
		}
		b.uses(ct)
		return ct
	}
	return nil
}

func (b *Backend) f32(t backend.Tensor, op, arg string) *Tensor {
	ct := b.tensorOf(t, op, arg)
	if ct != nil && ct.typ != tensor.F32 {
		b.failf("%s: %s must be an F32 tensor, is %s", op, arg, describe(ct))
		return nil
	}
	return ct
}

// out unwraps an F32 tensor an op writes. Only RMSNorm, AddRMSNorm and
// Attention keep a tensor's quantized copy current
// (backend.QuantizedActivations), so the others refuse such a tensor.
func (b *Backend) out(t backend.Tensor, op, arg string) *Tensor {
	ct := b.f32(t, op, arg)
	if ct != nil && ct.quant != 0 {
		b.failf("%s: %s has a quantized copy, which %s does not write", op, arg, op)
		return nil
	}
	return ct
}

func (b *Backend) matrix(t backend.Tensor, op, arg string, rows, cols int) *Tensor {
	ct := b.f32(t, op, arg)
	if ct != nil && (backend.Rows(ct) != rows || backend.Cols(ct) != cols || ct.elements() != int64(rows)*int64(cols)) {
		b.failf("%s: %s has dims %v, want %d×%d", op, arg, ct.dims, rows, cols)
		return nil
	}
	return ct
}

func (b *Backend) vector(t backend.Tensor, op, arg string, n int) *Tensor {
	ct := b.f32(t, op, arg)
	if ct != nil && ct.elements() != int64(n) {
		b.failf("%s: %s has %d elements (dims %v), want %d", op, arg, ct.elements(), ct.dims, n)
		return nil
	}
	return ct
}

// optVector is vector for an optional tensor; it returns 0 for nil and
// ok=false after recording an error.
func (b *Backend) optVector(t backend.Tensor, op, arg string, n int) (ptr uintptr, ok bool) {
	if t == nil {
		return 0, true
	}
	v := b.vector(t, op, arg, n)
	if v == nil {
		return 0, false
	}
	return v.ptr, true
}

func (b *Backend) i32(t backend.Tensor, op, arg string, n int) *Tensor {
	ct := b.tensorOf(t, op, arg)
	if ct == nil {
		return nil
	}
	if ct.typ != typeI32 || ct.elements() < int64(n) {
		b.failf("%s: %s must be an I32 vector of at least %d, is %s", op, arg, n, describe(ct))
		return nil
	}
	return ct
}

// weight unwraps a weight (or F32 activation) as a matrix of Dims[0]
// columns and the remaining dims flattened into rows.
func (b *Backend) weight(t backend.Tensor, op, arg string) *Tensor {
	ct := b.tensorOf(t, op, arg)
	if ct == nil {
		return nil
	}
	if _, ok := uploadTypes[ct.typ]; !ok || ct.typ == typeI32 {
		b.failf("%s: %s is %s, not a weight", op, arg, describe(ct))
		return nil
	}
	return ct
}

// View returns the first rows rows of t, sharing its memory.
func (b *Backend) View(t backend.Tensor, rows int) backend.Tensor {
	ct := b.tensorOf(t, "View", "t")
	if ct == nil {
		return t
	}
	base := ct
	if ct.base != nil {
		base = ct.base
	}
	switch {
	case ct.typ == typeI32 && len(ct.dims) == 1 && rows >= 1 && rows <= ct.dims[0]:
		return &Tensor{typ: typeI32, dims: []int{rows}, ptr: ct.ptr, size: int64(rows) * 4, base: base}
	case ct.typ == tensor.F32 && len(ct.dims) == 2 && rows >= 1 && rows <= ct.dims[1]:
		return &Tensor{typ: tensor.F32, dims: []int{ct.dims[0], rows}, ptr: ct.ptr, size: int64(rows) * int64(ct.dims[0]) * 4, base: base, quant: ct.quant}
	}
	b.failf("View: %d rows of %s", rows, describe(ct))
	return t
}

// Embed sets dst[i] to row ids[i] of table, dequantized.
func (b *Backend) Embed(dst, table, ids backend.Tensor) {
	const op = "Embed"
	tb := b.weight(table, op, "table")
	d := b.out(dst, op, "dst")
	if tb == nil || d == nil {
		return
	}
	in := tb.dims[0]
	rows := int(tb.elements() / int64(in))
	n := backend.Rows(d)
	if backend.Cols(d) != in || d.elements() != int64(n)*int64(in) {
		b.failf("%s: dst dims %v do not match table dims %v", op, d.dims, tb.dims)
		return
	}
	id := b.i32(ids, op, "ids", n)
	if id == nil {
		return
	}
	defer b.bind()()
	b.embed(tb, d.ptr, id.ptr, in, rows, n)
}

// MatMul sets dst = x·wᵀ + bias.
func (b *Backend) MatMul(dst, x, w, bias backend.Tensor) {
	a, ok := b.matmulArgs("MatMul", dst, x, w, bias)
	if !ok {
		return
	}
	defer b.bind()()
	if a.n <= mqTokens && mqTypes[a.w.typ] && !b.invariant {
		if q, ok := b.inputQuant("MatMul", a.x, a.n, a.in); ok {
			b.mqMatvec(a.w, a.dst.ptr, q, a.in, a.bias, a.n, a.out)
		}
		return
	}
	shape, gemm := b.denseGemm(a.w.typ, a.n, a.in, a.out)
	if !gemm && a.n <= mqgTokens && mqTypes[a.w.typ] && !b.invariant && b.mqgFits(a.w.typ, 1, a.in) {
		if q, ok := b.rowInput("MatMul", a.x, a.n, a.in); ok {
			b.mqgMatmul(a.w, a.dst.ptr, q, a.in, a.bias, a.n, a.out)
		}
		return
	}
	if gemm {
		if h, ok := b.halfInput("MatMul", a.x, a.n, a.in, a.w.typ); ok {
			b.gemmRows(a.w, a.dst.ptr, h, a.in, a.bias, 0, 0, a.n, a.out, 1, shape)
		}
		return
	}
	b.matmul(a.dst.ptr, a.x.ptr, a.n, a.w, a.bias, false)
}

// denseGemm says whether a dense product of n rows of type t takes
// gemm.cu, and in which block shape: every prefill step (more than
// mqgTokens rows), and steps of gmDenseTokens rows or more whose blocks fill
// the chip several times over (an LM head under continuous batching). The
// integer kernels of the middle sizes pay a float epilogue per token and
// chunk, which at 64 tokens outweighs gemm.cu's hi and lo MMAs; products
// with few blocks (q, k, v, o) stay on them, where gemm.cu would leave most
// SMs idle.
func (b *Backend) denseGemm(t tensor.Type, n, in, out int) (gmShape, bool) {
	shape := gmShapeFor(n)
	if b.invariant || !mqTypes[t] || n < gmDenseTokens || !b.gmFits(t, in, shape) {
		return shape, false
	}
	blocks := (out + shape.rows - 1) / shape.rows * ((n + shape.toks - 1) / shape.toks)
	return shape, n > mqgTokens || blocks >= 4*b.sms
}

// halfInput returns x's n rows as halves for weights of type t in the
// "gemm" workspace, for the prefill products.
func (b *Backend) halfInput(op string, x *Tensor, n, in int, t tensor.Type) (halves, bool) {
	count := int64(n) * int64(in)
	buf, ok := b.workspace(op, "gemm", 4*count)
	if !ok {
		return halves{}, false
	}
	h := halvesAt(buf, count)
	b.split(h, x.ptr, count, t)
	return h, true
}

// rowInput returns x's n rows quantized row-major (mq_quant_rows) in the
// "mqg" workspace, for the products of the middle sizes.
func (b *Backend) rowInput(op string, x *Tensor, n, in int) (rowQuant, bool) {
	qb, db := rowQuantBytes(n, in)
	buf, ok := b.workspace(op, "mqg", qb+db)
	if !ok {
		return rowQuant{}, false
	}
	q := rowQuant{q: buf, d: buf + uintptr(qb)}
	b.mqQuantRows(q, x.ptr, n, in)
	return q, true
}

// MatMulQKV runs the three products of one x. A decode step's (n ≤
// mqTokens, one Q8_0 or MXFP4 type) run as one launch: the k and v
// projections are too small to fill the chip on their own; so do steps of
// up to mqgTokens, which quantize x once for the three.
func (b *Backend) MatMulQKV(q, k, v, x, wq, wk, wv, bq, bk, bv backend.Tensor) {
	var a [3]matmulArgs
	for i, t := range [3][3]backend.Tensor{{q, wq, bq}, {k, wk, bk}, {v, wv, bv}} {
		var ok bool
		if a[i], ok = b.matmulArgs("MatMulQKV", t[0], x, t[1], t[2]); !ok {
			return
		}
	}
	typ := a[0].w.typ
	same := mqTypes[typ] && a[1].w.typ == typ && a[2].w.typ == typ && !b.invariant
	var m [3]mqMat // the three products as the one-launch kernels take them
	for i, x := range a {
		m[i] = mqMat{dst: x.dst.ptr, w: x.w, bias: x.bias, out: x.out}
	}
	if same && a[0].n > mqTokens && a[0].n <= mqgTokens && b.mqgFits(typ, 1, a[0].in) {
		// The middle sizes: x quantized once for the three products.
		defer b.bind()()
		if qx, ok := b.rowInput("MatMulQKV", a[0].x, a[0].n, a[0].in); ok {
			b.mqgMatmul3(qx, a[0].in, a[0].n, m)
		}
		return
	}
	if shape := gmShapeFor(a[0].n); same && a[0].n > mqgTokens && b.gmFits(typ, a[0].in, shape) {
		// Prefill: x split into halves once, the three products one launch.
		defer b.bind()()
		if h, ok := b.halfInput("MatMulQKV", a[0].x, a[0].n, a[0].in, typ); ok {
			b.gemmRows3(h, a[0].in, a[0].n, m, shape)
		}
		return
	}
	if a[0].n > mqTokens || !same {
		b.MatMul(q, x, wq, bq)
		b.MatMul(k, x, wk, bk)
		b.MatMul(v, x, wv, bv)
		return
	}
	defer b.bind()()
	qx, ok := b.inputQuant("MatMulQKV", a[0].x, a[0].n, a[0].in)
	if !ok {
		return
	}
	b.mqMatvec3(qx, a[0].in, a[0].n, m)
}

// matmulArgs are the checked operands of one MatMul.
type matmulArgs struct {
	dst, x, w  *Tensor
	bias       uintptr
	n, in, out int
}

// matmulArgs checks dst = x·wᵀ + bias for op, recording an error and
// returning ok=false on a mismatch.
func (b *Backend) matmulArgs(op string, dst, x, w, bias backend.Tensor) (a matmulArgs, ok bool) {
	wt := b.weight(w, op, "w")
	xs := b.f32(x, op, "x")
	if wt == nil || xs == nil {
		return a, false
	}
	if len(wt.dims) != 2 {
		b.failf("%s: w must be 2-D, has dims %v", op, wt.dims)
		return a, false
	}
	in, out, n := wt.dims[0], wt.dims[1], backend.Rows(xs)
	if backend.Cols(xs) != in {
		b.failf("%s: x dims %v do not match w dims %v (%s)", op, xs.dims, wt.dims, wt.typ)
		return a, false
	}
	d := b.matrix(dst, op, "dst", n, out)
	if d != nil && b.out(dst, op, "dst") == nil {
		return a, false
	}
	bp, ok := b.optVector(bias, op, "bias", out)
	if d == nil || !ok {
		return a, false
	}
	return matmulArgs{dst: d, x: xs, w: wt, bias: bp, n: n, in: in, out: out}, true
}

var mqTypes = map[tensor.Type]bool{tensor.Q8_0: true, tensor.MXFP4: true}

// quantized returns t's quantized copy for n rows: there when t carries
// one (NewF32Quantized) and the rows are a decode step's (at most
// mqTokens); the ops that write t wrote it then.
func (t *Tensor) quantized(n int) (quantBuf, bool) {
	if t.quant == 0 || n > mqTokens {
		return quantBuf{}, false
	}
	return quantAt(t.quant, t.dims[0]), true
}

// inputQuant returns x's n rows (n ≤ mqTokens) quantized for the decode
// products: x's own copy, or else a new one in the "mq" workspace.
func (b *Backend) inputQuant(op string, x *Tensor, n, in int) (quantBuf, bool) {
	if q, ok := x.quantized(n); ok {
		return q, true
	}
	buf, ok := b.workspace(op, "mq", quantBytes(in))
	if !ok {
		return quantBuf{}, false
	}
	q := quantAt(buf, in)
	b.mqQuant(q, x.ptr, n, in)
	return q, true
}

// matmul queues dst (n×out) = x (n×in)·wᵀ + bias for a 2-D weight. The
// tensor-core kernel rounds x to f16; exact keeps x in f32 at any batch size
// (the MoE router, whose top-k choice must match the reference's). Small
// batches take the matrix-vector kernels, unless the backend is batch
// invariant: then every batch size takes the tile kernel.
func (b *Backend) matmul(dst, x uintptr, n int, w *Tensor, bias uintptr, exact bool) {
	in := w.dims[0]
	out := int(w.elements() / int64(in))
	if exact || n <= mvTokens && !b.invariant || !tileTypes[w.typ] || in%32 != 0 {
		b.matvec(w, dst, x, in, bias, n, out)
		return
	}
	b.matmulTiles(w, dst, x, in, bias, n, out, n, 1, 0, 0)
}

// Add sets dst = a + b elementwise.
func (b *Backend) Add(dst, x, y backend.Tensor) {
	const op = "Add"
	d := b.out(dst, op, "dst")
	if d == nil {
		return
	}
	rows, cols := backend.Rows(d), backend.Cols(d)
	xa, ya := b.matrix(x, op, "a", rows, cols), b.matrix(y, op, "b", rows, cols)
	if xa == nil || ya == nil {
		return
	}
	defer b.bind()()
	n := d.elements()
	b.addF32(d.ptr, xa.ptr, ya.ptr, n)
}

// CopyCols copies columns srcCol..srcCol+Cols(dst)-1 of src into dst.
func (b *Backend) CopyCols(dst, src backend.Tensor, srcCol int) {
	const op = "CopyCols"
	d, s := b.out(dst, op, "dst"), b.f32(src, op, "src")
	if d == nil || s == nil {
		return
	}
	rows, cols, sc := backend.Rows(d), backend.Cols(d), backend.Cols(s)
	if backend.Rows(s) != rows || srcCol < 0 || srcCol+cols > sc {
		b.failf("%s: columns %d..%d of src %v into dst %v", op, srcCol, srcCol+cols-1, s.dims, d.dims)
		return
	}
	defer b.bind()()
	b.copyCols(d.ptr, s.ptr, rows, cols, sc, srcCol)
}

// LayerNorm normalizes each row of x, then scales by w and adds bias.
func (b *Backend) LayerNorm(dst, x, w, bias backend.Tensor, eps float32) {
	const op = "LayerNorm"
	d := b.out(dst, op, "dst")
	if d == nil {
		return
	}
	rows, cols := backend.Rows(d), backend.Cols(d)
	xs, ws, bs := b.matrix(x, op, "x", rows, cols), b.vector(w, op, "w", cols), b.vector(bias, op, "b", cols)
	if xs == nil || ws == nil || bs == nil {
		return
	}
	defer b.bind()()
	b.layerNorm(d.ptr, xs.ptr, ws.ptr, bs.ptr, rows, cols, eps)
}

// RMSNorm scales each row of x by 1/sqrt(mean(x²)+eps), then by w.
func (b *Backend) RMSNorm(dst, x, w backend.Tensor, eps float32) {
	b.rmsNorm("RMSNorm", dst, x, nil, w, eps)
}

// AddRMSNorm sets x += delta, then dst = RMSNorm(x, w), in one kernel.
func (b *Backend) AddRMSNorm(dst, x, delta, w backend.Tensor, eps float32) {
	b.rmsNorm("AddRMSNorm", dst, x, delta, w, eps)
}

// rmsNorm queues RMSNorm, first adding delta into x when delta is not nil.
// A dst with a quantized copy gets its rows quantized too, in the same
// kernel, for the decode products that read it.
func (b *Backend) rmsNorm(op string, dst, x, delta, w backend.Tensor, eps float32) {
	d := b.f32(dst, op, "dst")
	if d == nil {
		return
	}
	rows, cols := backend.Rows(d), backend.Cols(d)
	xs, ws := b.matrix(x, op, "x", rows, cols), b.vector(w, op, "w", cols)
	if xs == nil || ws == nil || (delta != nil && b.out(x, op, "x") == nil) {
		return
	}
	var dp uintptr
	if delta != nil {
		ds := b.matrix(delta, op, "delta", rows, cols)
		if ds == nil {
			return
		}
		dp = ds.ptr
	}
	defer b.bind()()
	if q, ok := d.quantized(rows); ok && !b.invariant {
		b.rmsNormMQ(d.ptr, xs.ptr, dp, ws.ptr, rows, cols, eps, q)
		return
	}
	b.rmsNormK(d.ptr, xs.ptr, dp, ws.ptr, rows, cols, eps)
}

// GELU applies the tanh approximation of GELU elementwise.
func (b *Backend) GELU(dst, x backend.Tensor) { b.elementwise("GELU", dst, x, b.geluTanh) }

// elementwise checks dst and x (same dims) and queues kernel over them.
func (b *Backend) elementwise(op string, dst, x backend.Tensor, kernel func(dst, x uintptr, n int64)) {
	d := b.out(dst, op, "dst")
	if d == nil {
		return
	}
	xs := b.matrix(x, op, "x", backend.Rows(d), backend.Cols(d))
	if xs == nil {
		return
	}
	defer b.bind()()
	kernel(d.ptr, xs.ptr, d.elements())
}

// RoPE rotates x in place, pairing elements as p.Mode says.
func (b *Backend) RoPE(x, pos, invFreq backend.Tensor, p backend.RoPEParams) {
	const op = "RoPE"
	xs := b.out(x, op, "x")
	if xs == nil {
		return
	}
	rows, cols, headDim := backend.Rows(xs), backend.Cols(xs), p.HeadDim
	if headDim <= 0 || headDim%2 != 0 || cols%headDim != 0 {
		b.failf("%s: headDim %d does not split x's %d columns into heads of even size", op, headDim, cols)
		return
	}
	if p.Mode != backend.RoPENeoX && p.Mode != backend.RoPENormal {
		b.failf("%s: unknown mode %d", op, p.Mode)
		return
	}
	fs, ps := b.vector(invFreq, op, "invFreq", headDim/2), b.i32(pos, op, "pos", rows)
	if fs == nil || ps == nil {
		return
	}
	defer b.bind()()
	b.rope(xs.ptr, ps.ptr, fs.ptr, rows, cols/headDim, headDim, p.MScale, p.Mode == backend.RoPENormal)
}

// SiLU sets dst = x·σ(x) elementwise.
func (b *Backend) SiLU(dst, x backend.Tensor) { b.elementwise("SiLU", dst, x, b.silu) }

// SwiGLU sets dst = g·σ(Alpha·g)·(u+UpShift), clamped when Limit is set.
func (b *Backend) SwiGLU(dst, g, u backend.Tensor, p backend.SwiGLUParams) {
	const op = "SwiGLU"
	d := b.out(dst, op, "dst")
	if d == nil {
		return
	}
	rows, cols := backend.Rows(d), backend.Cols(d)
	gs, us := b.matrix(g, op, "g", rows, cols), b.matrix(u, op, "u", rows, cols)
	if gs == nil || us == nil {
		return
	}
	defer b.bind()()
	n := d.elements()
	b.swiglu(d.ptr, gs.ptr, us.ptr, n, p)
}

// RMSNormHeads normalizes each head of each row on its own, then scales it
// by w.
func (b *Backend) RMSNormHeads(dst, x, w backend.Tensor, headDim int, eps float32) {
	const op = "RMSNormHeads"
	d := b.out(dst, op, "dst")
	if d == nil {
		return
	}
	rows, cols := backend.Rows(d), backend.Cols(d)
	if headDim <= 0 || cols%headDim != 0 {
		b.failf("%s: headDim %d does not split %d columns", op, headDim, cols)
		return
	}
	xs, ws := b.matrix(x, op, "x", rows, cols), b.vector(w, op, "w", headDim)
	if xs == nil || ws == nil {
		return
	}
	defer b.bind()()
	b.rmsNormHeads(d.ptr, xs.ptr, ws.ptr, rows, cols, headDim, eps)
}

// kvCache unwraps a K or V cache made by NewKVCache (f32 or f16).
func (b *Backend) kvCache(t backend.Tensor, op, arg string) *Tensor {
	ct := b.tensorOf(t, op, arg)
	if ct != nil && ((ct.typ != tensor.F16 && ct.typ != tensor.F32) || len(ct.dims) != 2) {
		b.failf("%s: %s must be a cache from NewKVCache, is %s", op, arg, describe(ct))
		return nil
	}
	return ct
}

// StoreKV writes the rows of k and v into the caches at the rows in slots.
// A slot outside the cache is a device fault, not a recorded error, since
// slots live on the device; the model computes them.
func (b *Backend) StoreKV(kCache, vCache, k, v, slots backend.Tensor) {
	const op = "StoreKV"
	kc, vc := b.kvCache(kCache, op, "kCache"), b.kvCache(vCache, op, "vCache")
	ks := b.f32(k, op, "k")
	if kc == nil || vc == nil || ks == nil {
		return
	}
	cols := backend.Cols(kc)
	if vc.dims[0] != cols || vc.dims[1] != kc.dims[1] || vc.typ != kc.typ {
		b.failf("%s: vCache %s differs from kCache %s", op, describe(vc), describe(kc))
		return
	}
	n := backend.Rows(ks)
	if backend.Cols(ks) != cols {
		b.failf("%s: k dims %v do not match cache dims %v", op, ks.dims, kc.dims)
		return
	}
	vs, ss := b.matrix(v, op, "v", n, cols), b.i32(slots, op, "slots", n)
	if vs == nil || ss == nil {
		return
	}
	defer b.bind()()
	b.storeKV(kc.typ, kc.ptr, vc.ptr, ks.ptr, vs.ptr, ss.ptr, n, cols)
}

// attnMaxDim is the largest head dim the attention kernels are built for
// (the _d256 variants in attention.cu).
const attnMaxDim = 256

// flashMinRows is the fewest rows that take the flash-attention kernels
// (head dim flashDim); smaller batches (decode) keep the split-K kernels,
// whose grid spreads a few rows' keys over the chip.
const flashMinRows = 16

// Attention computes causal attention over the paged caches; see
// backend.Backend. The leading Singles rows (one-token sequences: decode)
// take the split-K kernels, which spread a row's keys over the chip; the
// rest (prompt chunks) take the tensor-core flash kernel when the head dim
// is 64 and there are enough rows, else the split-K kernels with 4 rows a
// block. Every kernel walks its rows' sequences in turn, so a block may
// span the end of one chunk and the start of the next.
func (b *Backend) Attention(dst, q, kCache, vCache, pos, seq, table, sinks backend.Tensor, p backend.AttentionParams) {
	const op = "Attention"
	if p.Heads <= 0 || p.KVHeads <= 0 || p.HeadDim <= 0 || p.Heads%p.KVHeads != 0 || p.Window < 0 ||
		p.BlockSize <= 0 || p.MaxBlocks <= 0 || p.Singles < 0 {
		b.failf("%s: bad params %+v", op, p)
		return
	}
	if p.HeadDim%8 != 0 || p.HeadDim > attnMaxDim {
		b.failf("%s: head dim %d unsupported on cuda (a multiple of 8 up to %d)", op, p.HeadDim, attnMaxDim)
		return
	}
	qs := b.f32(q, op, "q")
	if qs == nil {
		return
	}
	n, qCols, kvCols := backend.Rows(qs), p.Heads*p.HeadDim, p.KVHeads*p.HeadDim
	if backend.Cols(qs) != qCols {
		b.failf("%s: q dims %v, want %d columns (%d heads × %d)", op, qs.dims, qCols, p.Heads, p.HeadDim)
		return
	}
	d := b.matrix(dst, op, "dst", n, qCols)
	kc, vc := b.kvCache(kCache, op, "kCache"), b.kvCache(vCache, op, "vCache")
	ps, ss := b.i32(pos, op, "pos", n), b.i32(seq, op, "seq", n)
	ts := b.i32(table, op, "table", p.MaxBlocks)
	if d == nil || kc == nil || vc == nil || ps == nil || ss == nil || ts == nil {
		return
	}
	for _, c := range []*Tensor{kc, vc} {
		if c.dims[0] != kvCols || c.dims[1] != kc.dims[1] || c.dims[1]%p.BlockSize != 0 || c.typ != kc.typ {
			b.failf("%s: cache %s, want %s with %d columns and whole blocks of %d rows", op, describe(c), kc.typ, kvCols, p.BlockSize)
			return
		}
	}
	if ts.elements()%int64(p.MaxBlocks) != 0 {
		b.failf("%s: table %s is not whole rows of %d entries", op, describe(ts), p.MaxBlocks)
		return
	}
	sp, ok := b.optVector(sinks, op, "sinks", p.Heads)
	if !ok {
		return
	}
	singles := min(p.Singles, n)
	if b.invariant && p.HeadDim != flashDim {
		singles = n // one row a block: no row shares its key tiles with another
	}
	defer b.bind()()
	// rowPtr points at row lo of a tensor of cols 4-byte values a row.
	rowPtr := func(t *Tensor, lo, cols int) uintptr { return t.ptr + uintptr(lo*cols*4) }
	// A dst with a quantized copy (a decode step's rows) gets it from the
	// combine kernel when one split-K call covers every row, else from
	// mq_quant after the kernels.
	qc, quant := d.quantized(n)
	quant = quant && !b.invariant
	var whole *quantBuf
	if quant && p.HeadDim%32 == 0 {
		whole = &qc
	}
	wrote := false
	if singles > 0 {
		var qw *quantBuf
		if singles == n {
			qw, wrote = whole, whole != nil
		}
		b.attnSplitK(d.ptr, qs.ptr, kc, vc, ps.ptr, ss.ptr, ts.ptr, sp, singles, 1, qw, p)
	}
	rest := n - singles
	switch {
	case rest == 0:
	case p.HeadDim == flashDim && (rest >= flashMinRows || b.invariant):
		// Prompt chunks: one tensor-core kernel, no partial results (attention.cu).
		b.attnFlash(kc.typ, rowPtr(d, singles, qCols), rowPtr(qs, singles, qCols), kc.ptr, vc.ptr, rowPtr(ps, singles, 1),
			rowPtr(ss, singles, 1), ts.ptr, sp, rest, p)
	default:
		var qw *quantBuf
		if singles == 0 {
			qw, wrote = whole, whole != nil
		}
		b.attnSplitK(rowPtr(d, singles, qCols), rowPtr(qs, singles, qCols), kc, vc, rowPtr(ps, singles, 1), rowPtr(ss, singles, 1),
			ts.ptr, sp, rest, 4, qw, p)
	}
	if quant && !wrote {
		b.mqQuant(qc, d.ptr, n, qCols)
	}
}

// attnSplitK queues the split-K kernels for n rows, rowsPer of them a block
// (1 or 4): attn_partial (or attn_gqa) and the combine, which also writes the rows into
// q when it is not nil (the output's quantized copy, for the output
// projection).
func (b *Backend) attnSplitK(dst, q uintptr, kc, vc *Tensor, pos, seq, table, sinks uintptr, n, rowsPer int, quant *quantBuf, p backend.AttentionParams) {
	group := p.Heads / p.KVHeads
	warps := min(group, 8)
	hgroups := (group + warps - 1) / warps
	rowBlocks := (n + rowsPer - 1) / rowsPer
	// Decode rows of head dim 64 against an f16 cache take the tensor-core
	// kernel (a warp a KV head, its group as the MMA's 16 rows).
	gqa := rowsPer == 1 && p.HeadDim == flashDim && kc.typ == tensor.F16 && group <= 16 && !b.invariant
	blocks := rowBlocks * p.KVHeads * hgroups
	if gqa {
		blocks = n * ((p.KVHeads + gqaWarps - 1) / gqaWarps)
	}
	splits := attnSplits(p, blocks, b.sms)
	// A batch-invariant split is a fixed run of keys, so a row's splits do
	// not depend on the other rows (or the longest sequence); splits past a
	// row's keys are empty.
	fixed := 0
	if b.invariant {
		fixed = invariantSplitKeys
		maxKeys := p.MaxBlocks * p.BlockSize
		if p.Window > 0 {
			maxKeys = min(maxKeys, p.Window)
		}
		splits = (maxKeys + fixed - 1) / fixed
	}
	l := attnLayout(n, splits, p)
	ws, ok := b.workspace("Attention", "attention", l.size)
	if !ok {
		return
	}
	pm, pl, pacc := ws+l.pm, ws+l.pl, ws+l.pacc
	shmem := attnShmem(kc.typ, warps, rowsPer, p.HeadDim)
	// Kernels are built for head dims up to 64 and up to attnMaxDim.
	maxDim := 64
	if p.HeadDim > 64 {
		maxDim = attnMaxDim
	}
	if gqa {
		b.attnGQA(grid3((p.KVHeads+gqaWarps-1)/gqaWarps, n, splits), q, kc.ptr, vc.ptr, pos, seq, table, p, pm, pl, pacc)
	} else {
		b.attnPartial(kc.typ, rowsPer, maxDim, grid3(p.KVHeads*hgroups, rowBlocks, splits), warps, shmem,
			q, kc.ptr, vc.ptr, pos, seq, table, n, p, hgroups, fixed, pm, pl, pacc)
	}
	if quant != nil {
		b.attnCombineMQ(dst, pm, pl, pacc, sinks, p.Heads, p.HeadDim, splits, n, *quant)
		return
	}
	b.attnCombine(dst, pm, pl, pacc, sinks, p.Heads, p.HeadDim, splits, n)
}

// attnShmem is the shared memory of an attn_partial block (attention.cu):
// the warps' queries in f32, two stages of a 32-key K and V tile as the
// cache stores them (f32 K rows padded by 4), and for f16 caches the tile
// widened to f32.
func attnShmem(cache tensor.Type, warps, rowsPer, dim int) int {
	queries := warps * rowsPer * dim * 4
	wide := 32 * (2*dim + 4) * 4
	if cache == tensor.F32 {
		return queries + 2*wide
	}
	return queries + 2*32*2*dim*2 + wide
}

// attnWorkspace is the layout of the "attention" workspace, in bytes from
// its start: each (row, head, split)'s running max and sum and its partial
// output of HeadDim values.
type attnWorkspace struct {
	pm, pl, pacc uintptr
	size         int64
}

func attnLayout(n, splits int, p backend.AttentionParams) attnWorkspace {
	parts := int64(n) * int64(p.Heads) * int64(splits)
	return attnWorkspace{pm: 0, pl: uintptr(parts * 4), pacc: uintptr(parts * 8), size: parts * int64(p.HeadDim+2) * 4}
}

// invariantSplitKeys is the keys of one split of the split-K attention
// kernels in batch-invariant mode.
const invariantSplitKeys = 4096

// attnSplits picks how many parts the keys of each row are split into. It
// depends only on shapes (never on positions), so recorded graphs stay
// valid: enough parts that a long cache is spread over the chip, each of at
// least attnSplitKeys keys, and fewer when the rows alone fill the chip.
func attnSplits(p backend.AttentionParams, blocks, sms int) int {
	maxKeys := p.MaxBlocks * p.BlockSize
	if p.Window > 0 {
		maxKeys = min(maxKeys, p.Window)
	}
	s := min((maxKeys+attnSplitKeys-1)/attnSplitKeys, 64)
	if blocks*s > 4*sms {
		s = max(1, 4*sms/blocks)
	}
	return max(s, 1)
}

// attnSplitKeys is the fewest keys of a split: one tile of the kernel.
// Few rows (a decode step of one sequence is 8 blocks for gpt-oss's 8 KV
// heads) leave most of the chip idle, so splitting even short caches into
// tiles pays (NOTES.md #20).
const attnSplitKeys = 32

// MoE is the fused mixture of experts (backend.FusedMoE): the router's
// product and top-k (for F32 router weights: moe_router with the top-k
// fused up to routeWarps tokens, moe_router then moe_topk up to mqgTokens,
// a tiled f32 product for prefill), then the experts as Experts runs them.
func (b *Backend) MoE(dst, x backend.Tensor, w *backend.MoEWeights, p backend.MoEParams) {
	const op = "MoE"
	if w == nil {
		b.failf("%s: nil weights", op)
		return
	}
	xs := b.f32(x, op, "x")
	router := b.weight(w.Router, op, "Router")
	if xs == nil || router == nil {
		return
	}
	n, hidden := backend.Rows(xs), backend.Cols(xs)
	if len(router.dims) != 2 || router.dims[0] != hidden {
		b.failf("%s: Router dims %v, want [%d nExpert]", op, router.dims, hidden)
		return
	}
	nExp := router.dims[1]
	if p.TopK < 1 || p.TopK > nExp || p.TopK > moeMaxK {
		b.failf("%s: TopK %d with %d experts (cuda supports up to %d)", op, p.TopK, nExp, moeMaxK)
		return
	}
	e, ok := b.expertArgs(op, dst, xs, n, p.TopK, &w.ExpertWeights)
	rb, ok2 := b.optVector(w.RouterBias, op, "RouterBias", nExp)
	if !ok || !ok2 {
		return
	}
	if e.nExp != nExp {
		b.failf("%s: Router has %d experts, Gate %d", op, nExp, e.nExp)
		return
	}
	defer b.bind()()
	// Workspace, in 4-byte words: logits, ids, weights.
	na := int64(n) * int64(p.TopK)
	ws, ok := b.workspace(op, "moe-route", (int64(n)*int64(nExp)+2*na)*4)
	if !ok {
		return
	}
	logits, ids, wts := ws, ws+uintptr(n*nExp*4), ws+uintptr((int64(n)*int64(nExp)+na)*4)
	if n <= routeWarps && router.typ == tensor.F32 && !b.invariant {
		done, err := b.routerTicket()
		if err != nil {
			b.fail(fmt.Errorf("%s: %w", op, err))
			return
		}
		b.moeRouter(ids, wts, logits, done, xs.ptr, router.ptr, rb, n, hidden, nExp, p.TopK)
	} else if n <= mqgTokens && router.typ == tensor.F32 && !b.invariant {
		b.moeRouter(0, 0, logits, 0, xs.ptr, router.ptr, rb, n, hidden, nExp, 0) // logits only
		b.moeTopK(ids, wts, logits, n, nExp, p.TopK)
	} else if n > mqgTokens && router.typ == tensor.F32 && hidden%32 == 0 && !b.invariant {
		b.moeLogits(logits, xs.ptr, router.ptr, rb, n, hidden, nExp)
		b.moeTopK(ids, wts, logits, n, nExp, p.TopK)
	} else {
		b.matmul(logits, xs.ptr, n, router, rb, true)
		b.moeTopK(ids, wts, logits, n, nExp, p.TopK)
	}
	b.experts(op, e, ids, wts, p.SwiGLU)
}

// Route picks each row's top k experts, in ascending expert order, and
// their softmax weights (moe_topk).
func (b *Backend) Route(ids, weights, logits backend.Tensor, k int) {
	const op = "Route"
	lg := b.f32(logits, op, "logits")
	if lg == nil {
		return
	}
	n, nExp := backend.Rows(lg), backend.Cols(lg)
	if k < 1 || k > nExp || k > moeMaxK {
		b.failf("%s: k %d with %d experts (cuda supports up to %d)", op, k, nExp, moeMaxK)
		return
	}
	wt, id := b.matrix(weights, op, "weights", n, k), b.i32(ids, op, "ids", n*k)
	if wt == nil || id == nil {
		return
	}
	defer b.bind()()
	b.moeTopK(id.ptr, wt.ptr, lg.ptr, n, nExp, k)
}

// Experts runs each row's k experts and sums them; see backend.Backend.
func (b *Backend) Experts(dst, x, ids, weights backend.Tensor, w *backend.ExpertWeights, p backend.SwiGLUParams) {
	const op = "Experts"
	xs, wt := b.f32(x, op, "x"), b.f32(weights, op, "weights")
	if xs == nil || wt == nil || w == nil {
		if w == nil {
			b.failf("%s: nil weights", op)
		}
		return
	}
	n, k := backend.Rows(xs), backend.Cols(wt)
	if k > moeMaxK || backend.Rows(wt) != n {
		b.failf("%s: weights %v for %d rows (cuda supports k up to %d)", op, wt.dims, n, moeMaxK)
		return
	}
	id := b.i32(ids, op, "ids", n*k)
	e, ok := b.expertArgs(op, dst, xs, n, k, w)
	if id == nil || !ok {
		return
	}
	defer b.bind()()
	b.experts(op, e, id.ptr, wt.ptr, p)
}

// expertCall are the checked operands of the experts of n rows.
type expertCall struct {
	d, xs, gate, up, down *Tensor
	gb, ub, db            uintptr
	n, k, hidden, ff      int
	nExp                  int
}

// expertArgs checks dst, the expert weights and their biases against x.
func (b *Backend) expertArgs(op string, dst backend.Tensor, xs *Tensor, n, k int, w *backend.ExpertWeights) (e expertCall, ok bool) {
	hidden := backend.Cols(xs)
	d := b.matrix(dst, op, "dst", n, hidden)
	if d != nil && b.out(dst, op, "dst") == nil {
		return e, false
	}
	gate := b.weight(w.Gate, op, "Gate")
	if d == nil || gate == nil {
		return e, false
	}
	if len(gate.dims) != 3 || gate.dims[0] != hidden {
		b.failf("%s: Gate dims %v, want [%d ff nExpert]", op, gate.dims, hidden)
		return e, false
	}
	ff, nExp := gate.dims[1], gate.dims[2]
	up := b.expert(w.Up, op, "Up", hidden, ff, nExp)
	down := b.expert(w.Down, op, "Down", ff, hidden, nExp)
	if up == nil || down == nil {
		return e, false
	}
	if gate.typ != up.typ {
		b.failf("%s: Gate is %s and Up is %s; cuda needs one type for both", op, gate.typ, up.typ)
		return e, false
	}
	if hidden%32 != 0 || ff%32 != 0 {
		b.failf("%s: hidden %d and ff %d must be multiples of 32 on cuda", op, hidden, ff)
		return e, false
	}
	gb, ok1 := b.optVector(w.GateBias, op, "GateBias", ff*nExp)
	ub, ok2 := b.optVector(w.UpBias, op, "UpBias", ff*nExp)
	db, ok3 := b.optVector(w.DownBias, op, "DownBias", hidden*nExp)
	if !ok1 || !ok2 || !ok3 {
		return e, false
	}
	return expertCall{d: d, xs: xs, gate: gate, up: up, down: down, gb: gb, ub: ub, db: db,
		n: n, k: k, hidden: hidden, ff: ff, nExp: nExp}, true
}

// experts queues the expert FFNs of the (token, expert) assignments in ids
// and wts (device pointers, n·k each, ascending expert order per token).
// Small batches run matrix-vector kernels that read only the selected
// experts' rows (of Q8_0 or MXFP4 experts, on the integer tensor cores, x
// and the SwiGLU output quantized to two int8 digits: x's own quantized
// copy when it has one); larger ones sort the assignments by expert, so each
// selected expert's weights are read once per call, and run the grouped
// integer tensor-core kernels (up to mqgTokens rows of Q8_0 or MXFP4
// experts), gemm.cu's pipelined tensor-core kernels (more rows of those
// types) or one grouped f16 tensor-core matmul per projection (other
// types).
func (b *Backend) experts(op string, e expertCall, ids, wts uintptr, act backend.SwiGLUParams) {
	n, k, hidden, ff, nExp := e.n, e.k, e.hidden, e.ff, e.nExp
	fits := b.mqgFits(e.gate.typ, 2, hidden) && b.mqgFits(e.down.typ, 1, ff)
	shape := b.moeShape(e.gate.typ, (n*k+nExp-1)/nExp)
	gm := b.gmFits(e.gate.typ, hidden, shape) && b.gmFits(e.down.typ, ff, shape)
	l := moeLayout(n, k, nExp, hidden, ff, e.gate.typ, e.down.typ, b.invariant, fits, gm)
	ws, ok := b.workspace(op, "moe", l.size)
	if !ok {
		return
	}
	at := func(off int64) uintptr { return ws + uintptr(off) }
	na := n * k
	d, xs := e.d, e.xs
	switch {
	case l.mq:
		q, ok := xs.quantized(n)
		if !ok {
			q = quantAt(at(l.qx), hidden)
			b.mqQuant(q, xs.ptr, n, hidden)
		}
		h := quantBuf{qx: at(l.qh), dx: at(l.dh)}
		b.mqGateup(e.gate, e.up, h, q, hidden, e.gb, e.ub, ids, k, ff, na, act)
		b.mqDown(e.down, d.ptr, h, ff, e.db, ids, wts, k, hidden, n)
	case l.mqg:
		starts, xrows, slotRow := at(l.starts), at(l.xrows), at(l.slotRow)
		b.moeGroup(starts, xrows, slotRow, at(l.counts), ids, n, k, nExp)
		q, h := rowQuant{q: at(l.qx), d: at(l.dx)}, rowQuant{q: at(l.qh), d: at(l.dh)}
		b.mqQuantRows(q, xs.ptr, n, hidden)
		b.mqgGateup(e.gate, e.up, h, q, hidden, e.gb, e.ub, starts, xrows, ff, n, k, nExp, act)
		b.mqgDown(e.down, at(l.y), h, ff, e.db, starts, hidden, n, k, nExp)
		b.moeCombine(d.ptr, at(l.y), wts, slotRow, k, hidden, n)
	case l.gemm:
		starts, xrows, slotRow := at(l.starts), at(l.xrows), at(l.slotRow)
		b.moeGroup(starts, xrows, slotRow, at(l.counts), ids, n, k, nExp)
		x := halvesAt(at(l.y), int64(n)*int64(hidden)) // y is free until the down projection
		h := halvesAt(at(l.h), int64(na)*int64(ff))
		b.split(x, xs.ptr, int64(n)*int64(hidden), e.gate.typ)
		b.gemmGateup(e.gate, e.up, h, x, hidden, e.gb, e.ub, starts, xrows, n, ff, nExp, act, shape)
		b.gemmRows(e.down, at(l.y), h, ff, e.db, starts, 0, n, hidden, nExp, shape)
		b.moeCombine(d.ptr, at(l.y), wts, slotRow, k, hidden, n)
	case !l.grouped:
		b.moeGateup(e.gate, e.up, at(l.h), xs.ptr, hidden, e.gb, e.ub, ids, k, ff, na, act)
		b.moeDown(e.down, d.ptr, at(l.h), ff, e.db, ids, wts, k, hidden, n)
	default:
		starts, xrows, slotRow := at(l.starts), at(l.xrows), at(l.slotRow)
		b.moeGroup(starts, xrows, slotRow, at(l.counts), ids, n, k, nExp)
		b.matmulTiles(e.gate, at(l.h), xs.ptr, hidden, e.gb, na, ff, n, nExp, starts, xrows)
		b.matmulTiles(e.up, at(l.u), xs.ptr, hidden, e.ub, na, ff, n, nExp, starts, xrows)
		b.swiglu(at(l.h), at(l.h), at(l.u), int64(na)*int64(ff), act)
		b.matmulTiles(e.down, at(l.y), at(l.h), ff, e.db, na, hidden, n, nExp, starts, 0)
		b.moeCombine(d.ptr, at(l.y), wts, slotRow, k, hidden, n)
	}
}

// moeWorkspace is the layout of the "moe" workspace of one experts call,
// in bytes from its start. grouped: the counting sort of the assignments
// (starts, rows, slot rows, counts) and the gate/up/down outputs of every
// assignment (h, u, y); mq: x quantized (when it carries no copy) and the
// SwiGLU output quantized (qh, dh); mqg: the counting sort, x and the SwiGLU
// output quantized row-major (qx, dx, qh, dh) and the down outputs y; gemm:
// the counting sort, the SwiGLU output as halves (h) and the down outputs y
// (which hold x's halves before); else the SwiGLU outputs h.
type moeWorkspace struct {
	grouped, mq, mqg, gemm         bool
	starts, xrows, slotRow, counts int64
	h, u, y                        int64
	qx, dx, qh, dh                 int64
	size                           int64
}

// moeLayout picks the experts' kernels for n rows (a batch-invariant
// backend takes the grouped tiles at every n; mqgFits, gmFits: the grouped
// integer kernels' and gemm.cu's blocks fit in shared memory) and lays out
// their workspace.
func moeLayout(n, k, nExp, hidden, ff int, gate, down tensor.Type, invariant, mqgFits, gmFits bool) moeWorkspace {
	var l moeWorkspace
	l.mq = n <= mqTokens && mqTypes[gate] && down == gate && k <= mqDownWarps && !invariant
	l.mqg = n > mqTokens && n <= mqgTokens && mqTypes[gate] && down == gate && !invariant && mqgFits
	l.gemm = n > mqgTokens && mqTypes[gate] && down == gate && !invariant && gmFits
	l.grouped = !l.mqg && !l.gemm && (n > mqTokens || invariant) && tileTypes[gate] && tileTypes[down]
	na := int64(n) * int64(k)
	var off int64
	take := func(bytes int64) int64 {
		at := off
		off += (bytes + 255) &^ 255
		return at
	}
	if l.mqg || l.gemm || l.grouped {
		// The counting sort of the assignments by expert.
		l.starts = take(int64(nExp+1) * 4)
		l.xrows = take(na * 4)
		l.slotRow = take(na * 4)
		l.counts = take(int64(nExp) * 4)
	}
	switch {
	case l.mq:
		l.qx = take(quantBytes(hidden))
		l.qh = take(na * int64(ff/32) * 64) // 2 columns × 32 bytes a chunk
		l.dh = take(na * int64(ff/32) * 4)
	case l.mqg:
		q, d := rowQuantBytes(n, hidden)
		l.qx, l.dx = take(q), take(d)
		q, d = rowQuantBytes(int(na), ff)
		l.qh, l.dh = take(q), take(d)
		l.y = take(na * int64(hidden) * 4)
	case l.gemm:
		l.h = take(na * int64(ff) * 4)
		l.y = take(na * int64(hidden) * 4)
	case l.grouped:
		l.h = take(na * int64(ff) * 4)
		l.u = take(na * int64(ff) * 4)
		l.y = take(na * int64(hidden) * 4)
	default:
		l.h = take(na * int64(ff) * 4)
	}
	l.size = max(off, 4)
	return l
}

// routerTicket returns moe_router's block counter: a workspace word of its
// own that is zero between launches (the last block resets it), zeroed when
// first handed out.
func (b *Backend) routerTicket() (uintptr, error) {
	p, err := b.scratch("moe-ticket", 4)
	if err == nil && p != b.ticketZeroed {
		err = b.d.call("cuMemsetD32Async", p, 0, 1, b.stream)
		b.ticketZeroed = p
	}
	return p, err
}

// expert unwraps a stacked expert weight with Dims [in, out, nExp] (out 0
// means any).
func (b *Backend) expert(t backend.Tensor, op, arg string, in, out, nExp int) *Tensor {
	w := b.weight(t, op, arg)
	if w == nil {
		return nil
	}
	if len(w.dims) != 3 || w.dims[0] != in || (out != 0 && w.dims[1] != out) || w.dims[2] != nExp {
		b.failf("%s: %s dims %v, want [%d %d %d]", op, arg, w.dims, in, out, nExp)
		return nil
	}
	return w
}
