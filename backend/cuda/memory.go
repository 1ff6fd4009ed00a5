package cuda

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"unsafe"
)

// allocator hands out device memory with cuMemAlloc and counts every byte it
// holds, so the backend can report exact usage and tests can cap it to
// exercise the out-of-memory paths.
type allocator struct {
	d     *driver
	limit int64 // 0: no cap below what the device has

	// mu is the backend's one mutex (Backend.mu): the counters are read
	// by other goroutines (DeviceBytes, FreeMemory for /metrics).
	mu    *sync.Mutex
	used  int64
	peak  int64
	sizes map[uintptr]int64
}

// memLimitFromEnv reads ORCD_CUDA_MEM_LIMIT (bytes, or with a K/M/G suffix
// meaning KiB/MiB/GiB); 0 when unset.
func memLimitFromEnv() (int64, error) {
	s := os.Getenv("ORCD_CUDA_MEM_LIMIT")
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	switch s[len(s)-1] {
	case 'K', 'k':
		mult = 1 << 10
	case 'M', 'm':
		mult = 1 << 20
	case 'G', 'g':
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("cuda: ORCD_CUDA_MEM_LIMIT=%q is not a byte count", os.Getenv("ORCD_CUDA_MEM_LIMIT"))
	}
	return v * mult, nil
}

// alloc returns n bytes of device memory. what names the use in errors.
func (a *allocator) alloc(n int64, what string) (uintptr, error) {
	if n <= 0 {
		n = 1
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.limit > 0 && a.used+n > a.limit {
		return 0, fmt.Errorf("%w: %s needs %d bytes, %d of the %d-byte limit in use", ErrOutOfMemory, what, n, a.used, a.limit)
	}
	var p uintptr
	if err := a.d.call("cuMemAlloc_v2", uintptr(unsafe.Pointer(&p)), uintptr(n)); err != nil {
		return 0, fmt.Errorf("%s (%d bytes, %d in use): %w", what, n, a.used, err)
	}
	a.sizes[p] = n
	a.used += n
	a.peak = max(a.peak, a.used)
	return p, nil
}

// free returns memory from alloc. Callers make sure no queued work still
// uses it.
func (a *allocator) free(p uintptr) error {
	if p == 0 {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	n, ok := a.sizes[p]
	if !ok {
		return fmt.Errorf("cuda: free of unknown device pointer %#x", p)
	}
	delete(a.sizes, p)
	a.used -= n
	return a.d.call("cuMemFree_v2", p)
}

// inUse is the number of device bytes held now.
func (a *allocator) inUse() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.used
}

// pointers lists every live allocation (for the residency check).
func (a *allocator) pointers() []uintptr {
	a.mu.Lock()
	defer a.mu.Unlock()
	ps := make([]uintptr, 0, len(a.sizes))
	for p := range a.sizes {
		ps = append(ps, p)
	}
	return ps
}

// pinned is page-locked host memory from cuMemAllocHost; the driver can DMA
// from it while the host fills another buffer.
type pinned struct {
	p     unsafe.Pointer
	buf   []byte
	event uintptr // recorded after the last copy out of buf
}

func (d *driver) allocPinned(n int) (*pinned, error) {
	var p unsafe.Pointer
	if err := d.call("cuMemAllocHost_v2", uintptr(unsafe.Pointer(&p)), uintptr(n)); err != nil {
		return nil, err
	}
	pb := &pinned{p: p, buf: unsafe.Slice((*byte)(p), n)}
	if err := d.call("cuEventCreate", uintptr(unsafe.Pointer(&pb.event)), cuEventDisableTiming); err != nil {
		d.call("cuMemFreeHost", uintptr(p))
		return nil, err
	}
	return pb, nil
}

func (d *driver) freePinned(pb *pinned) {
	if pb == nil {
		return
	}
	d.call("cuEventDestroy_v2", pb.event)
	d.call("cuMemFreeHost", uintptr(pb.p))
}
