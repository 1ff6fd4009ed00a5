package cuda

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"orcd/backend"
	"orcd/tensor"
)

// Host↔device copies: weight uploads through pinned staging buffers, and the
// small activation reads and writes of the op interface.

// uploadTypes are the weight formats the kernels read.
var uploadTypes = map[tensor.Type]string{
	tensor.F32: "f32", tensor.F16: "f16", tensor.BF16: "bf16", tensor.Q8_0: "q8_0",
	tensor.MXFP4: "mxfp4", tensor.Q4_K: "q4_k", tensor.Q6_K: "q6_k",
}

// tileTypes have a tensor-core matmul kernel; the others use the
// matrix-vector kernel for every batch size.
var tileTypes = map[tensor.Type]bool{
	tensor.F32: true, tensor.F16: true, tensor.BF16: true, tensor.Q8_0: true, tensor.MXFP4: true,
}

// planeAlign aligns the scale plane of a repacked weight.
const planeAlign = 256

// Upload copies a weight tensor into device memory. Q8_0 and MXFP4 are
// repacked on the device into separate quant and scale planes, so kernels
// read them with aligned 16-byte loads; other types keep the file layout.
func (b *Backend) Upload(name string, typ tensor.Type, dims []int, data []byte) (backend.Tensor, error) {
	if _, ok := uploadTypes[typ]; !ok {
		return nil, fmt.Errorf("cuda: upload %s: type %s is unsupported on cuda (supported: F32, F16, BF16, Q8_0, MXFP4, Q4_K, Q6_K)", name, typ)
	}
	if len(dims) == 0 || len(dims) > 4 {
		return nil, fmt.Errorf("cuda: upload %s: %d dims, want 1 to 4", name, len(dims))
	}
	n := int64(1)
	for _, d := range dims {
		if d <= 0 {
			return nil, fmt.Errorf("cuda: upload %s: bad dims %v", name, dims)
		}
		n *= int64(d)
		if n > 1<<40 {
			return nil, fmt.Errorf("cuda: upload %s: dims %v too large", name, dims)
		}
	}
	if dims[0]%typ.BlockSize() != 0 {
		return nil, fmt.Errorf("cuda: upload %s: innermost dim %d is not a multiple of the %s block size %d",
			name, dims[0], typ, typ.BlockSize())
	}
	size, err := typ.RowSize(n)
	if err != nil {
		return nil, fmt.Errorf("cuda: upload %s: %w", name, err)
	}
	if int64(len(data)) != size {
		return nil, fmt.Errorf("cuda: upload %s: %d bytes of data, %s %v needs %d", name, len(data), typ, dims, size)
	}
	if b.cap != nil {
		return nil, fmt.Errorf("cuda: upload %s inside Graph", name)
	}
	defer b.bind()()
	if err := b.Err(); err != nil {
		return nil, err
	}
	dims = append([]int(nil), dims...)
	what := "upload " + name

	if typ != tensor.Q8_0 && typ != tensor.MXFP4 {
		t, err := b.newTensor(what, typ, dims, size)
		if err != nil {
			return nil, err
		}
		if err := b.copyIn(t.ptr, data); err != nil {
			b.Free(t)
			return nil, fmt.Errorf("cuda: %s: %w", what, err)
		}
		return t, nil
	}

	blocks := n / 32
	qBytes, sBytes := n, blocks*2 // Q8_0: int8 quants, f16 scales
	if typ == tensor.MXFP4 {
		qBytes, sBytes = n/2, blocks
	}
	sOff := (qBytes + planeAlign - 1) &^ (planeAlign - 1)
	t, err := b.newTensor(what, typ, dims, sOff+sBytes)
	if err != nil {
		return nil, err
	}
	t.aux = t.ptr + uintptr(sOff)
	raw, err := b.scratch("upload", size)
	if err == nil {
		err = b.copyIn(raw, data)
	}
	if err != nil {
		b.Free(t)
		return nil, fmt.Errorf("cuda: %s: %w", what, err)
	}
	b.repack(typ, t.ptr, t.aux, raw, blocks)
	if err := b.Err(); err != nil {
		b.Free(t)
		return nil, err
	}
	return t, nil
}

// copyIn copies data to device address dst through the two pinned staging
// buffers: while the DMA engine drains one, the host fills the other.
func (b *Backend) copyIn(dst uintptr, data []byte) error {
	for i := range b.staging {
		if b.staging[i] == nil {
			pb, err := b.d.allocPinned(b.stageN)
			if err != nil {
				return err
			}
			b.staging[i] = pb
		}
	}
	for k, off := 0, 0; off < len(data); k++ {
		pb := b.staging[k%2]
		if err := b.d.call("cuEventSynchronize", pb.event); err != nil {
			return err
		}
		m := min(len(pb.buf), len(data)-off)
		parallelCopy(pb.buf[:m], data[off:off+m])
		if err := b.d.call("cuMemcpyHtoDAsync_v2", dst+uintptr(off), uintptr(pb.p), uintptr(m), b.stream); err != nil {
			return err
		}
		if err := b.d.call("cuEventRecord", pb.event, b.stream); err != nil {
			return err
		}
		off += m
	}
	return nil
}

// parallelCopy copies src to dst with several goroutines when it is large:
// one core cannot keep up with the copy engine, and reading an mmap'd file
// also takes its page faults here.
func parallelCopy(dst, src []byte) {
	const piece = 4 << 20
	workers := min(runtime.NumCPU(), 8, (len(src)+piece-1)/piece)
	if workers <= 1 {
		copy(dst, src)
		return
	}
	var wg sync.WaitGroup
	step := (len(src) + workers - 1) / workers
	for lo := 0; lo < len(src); lo += step {
		hi := min(lo+step, len(src))
		wg.Add(1)
		go func() {
			defer wg.Done()
			copy(dst[lo:hi], src[lo:hi])
		}()
	}
	wg.Wait()
}

// WriteF32 copies src into the first len(src) elements of dst.
func (b *Backend) WriteF32(dst backend.Tensor, src []float32) {
	d := b.tensorOf(dst, "WriteF32", "dst")
	if d == nil || len(src) == 0 {
		return
	}
	if d.typ != tensor.F32 || int64(len(src)) > d.elements() {
		b.failf("WriteF32: %d values into %s", len(src), describe(d))
		return
	}
	b.write(d, unsafe.Pointer(&src[0]), len(src)*4, "WriteF32")
}

// WriteI32 copies src into the first len(src) elements of dst.
func (b *Backend) WriteI32(dst backend.Tensor, src []int32) {
	d := b.tensorOf(dst, "WriteI32", "dst")
	if d == nil || len(src) == 0 {
		return
	}
	if d.typ != typeI32 || int64(len(src)) > d.elements() {
		b.failf("WriteI32: %d values into %s", len(src), describe(d))
		return
	}
	b.write(d, unsafe.Pointer(&src[0]), len(src)*4, "WriteI32")
}

// write queues a copy of n host bytes at p into d.
func (b *Backend) write(d *Tensor, p unsafe.Pointer, n int, op string) {
	if d.quant != 0 {
		b.failf("%s: the tensor has a quantized copy, which a write would leave stale", op)
		return
	}
	b.writeRaw(d.ptr, p, n, op)
}

// writeRaw queues a copy of n host bytes at p to device address dst. The
// driver stages pageable memory before the call returns, so the caller may
// reuse it.
func (b *Backend) writeRaw(dst uintptr, p unsafe.Pointer, n int, op string) {
	if b.cap != nil {
		b.failf("%s inside Graph", op)
		return
	}
	defer b.bind()()
	var pin runtime.Pinner
	pin.Pin(p)
	defer pin.Unpin()
	if err := b.d.call("cuMemcpyHtoDAsync_v2", dst, uintptr(p), uintptr(n), b.stream); err != nil {
		b.fail(fmt.Errorf("%s: %w", op, err))
	}
}

// readRaw waits for queued work and copies n bytes from device address src
// to host memory at p.
func (b *Backend) readRaw(p unsafe.Pointer, src uintptr, n int, op string) {
	defer b.bind()()
	var pin runtime.Pinner
	pin.Pin(p)
	defer pin.Unpin()
	if err := b.d.call("cuMemcpyDtoHAsync_v2", uintptr(p), src, uintptr(n), b.stream); err != nil {
		b.fail(fmt.Errorf("%s: %w", op, err))
	}
	b.syncStream()
}

// ReadF32 waits for queued work and copies the first len(dst) elements of
// src to dst. It returns the first recorded error (without clearing it).
func (b *Backend) ReadF32(src backend.Tensor, dst []float32) error {
	s := b.tensorOf(src, "ReadF32", "src")
	if s != nil && len(dst) > 0 {
		switch {
		case b.cap != nil:
			b.failf("ReadF32 inside Graph")
		case s.typ != tensor.F32 || int64(len(dst)) > s.elements():
			b.failf("ReadF32: %d values from %s", len(dst), describe(s))
		default:
			b.readRaw(unsafe.Pointer(&dst[0]), s.ptr, len(dst)*4, "ReadF32")
		}
	}
	return b.Err()
}
