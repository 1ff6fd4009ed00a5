package cuda

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"

	"orcd/backend"
)

// This file binds the CUDA driver API (libcuda.so.1) through purego, so orcd
// builds with CGO_ENABLED=0 and needs no CUDA toolkit to build. Every call
// goes through drv.call, which turns a non-zero CUresult into an *Error that
// names the call and carries CUDA's own error string.

// ErrOutOfMemory is wrapped by every error caused by device memory running
// out, whether the driver refused an allocation or the allocator's cap did.
// It wraps backend.ErrOutOfMemory.
var ErrOutOfMemory = fmt.Errorf("cuda: out of device memory: %w", backend.ErrOutOfMemory)

// ErrNoDriver is returned by New when libcuda.so.1 cannot be loaded or finds
// no device.
var ErrNoDriver = errors.New("cuda: no CUDA driver or device")

// Error is a failed driver or NVRTC call.
type Error struct {
	Call string // the API function, e.g. "cuMemAlloc_v2"
	Code int    // CUresult or nvrtcResult
	Msg  string // the library's description of Code
}

func (e *Error) Error() string {
	return fmt.Sprintf("cuda: %s failed: %s (code %d)", e.Call, e.Msg, e.Code)
}

// Is makes errors.Is(err, ErrOutOfMemory) and errors.Is(err,
// backend.ErrOutOfMemory) true for CUDA_ERROR_OUT_OF_MEMORY, and
// errors.Is(err, backend.ErrDevice) true for every driver or NVRTC failure.
func (e *Error) Is(target error) bool {
	oom := strings.HasPrefix(e.Call, "cu") && e.Code == cudaErrorOutOfMemory
	switch target {
	case ErrOutOfMemory, backend.ErrOutOfMemory:
		return oom
	case backend.ErrDevice:
		return true
	}
	return false
}

const (
	cudaErrorOutOfMemory = 2

	cuDeviceAttrMultiprocessorCount    = 16
	cuDeviceAttrComputeCapabilityMajor = 75
	cuDeviceAttrComputeCapabilityMinor = 76
	cuDeviceAttrMaxSharedPerBlockOptin = 97

	cuFuncAttrMaxDynamicSharedSize = 8

	cuPointerAttrMemoryType = 2
	cuPointerAttrIsManaged  = 8
	cuMemoryTypeDevice      = 2

	cuStreamNonBlocking        = 1
	cuStreamCaptureModeRelaxed = 2
	cuEventDisableTiming       = 2
)

// driverFuncs lists the driver entry points orcd uses, by exported symbol.
var driverFuncs = []string{
	"cuInit", "cuDriverGetVersion", "cuGetErrorString",
	"cuDeviceGetCount", "cuDeviceGet", "cuDeviceGetName", "cuDeviceGetAttribute", "cuDeviceTotalMem_v2",
	"cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRelease_v2", "cuCtxSetCurrent", "cuCtxSynchronize",
	"cuStreamCreate", "cuStreamDestroy_v2", "cuStreamSynchronize",
	"cuStreamBeginCapture_v2", "cuStreamEndCapture",
	"cuGraphInstantiateWithFlags", "cuGraphLaunch", "cuGraphDestroy", "cuGraphExecDestroy",
	"cuEventCreate", "cuEventRecord", "cuEventSynchronize", "cuEventDestroy_v2",
	"cuMemAlloc_v2", "cuMemFree_v2", "cuMemGetInfo_v2", "cuMemAllocHost_v2", "cuMemFreeHost",
	"cuMemcpyHtoDAsync_v2", "cuMemcpyDtoHAsync_v2", "cuMemcpyDtoDAsync_v2", "cuMemsetD32Async",
	"cuPointerGetAttribute",
	"cuModuleLoadData", "cuModuleUnload", "cuModuleGetFunction", "cuFuncSetAttribute", "cuLaunchKernel",
}

// driver holds the resolved entry points of libcuda.
type driver struct {
	fn      map[string]uintptr
	version int // cuDriverGetVersion, e.g. 13000
}

var (
	driverOnce sync.Once
	theDriver  *driver
	driverErr  error
)

// loadDriver dlopens libcuda.so.1 (or $ORCD_LIBCUDA) once and calls cuInit.
func loadDriver() (*driver, error) {
	driverOnce.Do(func() {
		path := "libcuda.so.1"
		if p := os.Getenv("ORCD_LIBCUDA"); p != "" {
			path = p
		}
		h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			driverErr = fmt.Errorf("%w: dlopen %s: %v", ErrNoDriver, path, err)
			return
		}
		d := &driver{fn: make(map[string]uintptr, len(driverFuncs))}
		for _, name := range driverFuncs {
			p, err := purego.Dlsym(h, name)
			if err != nil {
				driverErr = fmt.Errorf("%w: %s lacks %s: %v", ErrNoDriver, path, name, err)
				return
			}
			d.fn[name] = p
		}
		if err := d.call("cuInit", 0); err != nil {
			driverErr = fmt.Errorf("%w: %v", ErrNoDriver, err)
			return
		}
		var v int32
		if err := d.call("cuDriverGetVersion", uintptr(unsafe.Pointer(&v))); err != nil {
			driverErr = err
			return
		}
		d.version = int(v)
		theDriver = d
	})
	return theDriver, driverErr
}

// call invokes a driver function and converts its CUresult into an error.
//
//go:uintptrescapes
func (d *driver) call(name string, args ...uintptr) error {
	r, _, _ := purego.SyscallN(d.fn[name], args...)
	if code := int(int32(r)); code != 0 {
		return &Error{Call: name, Code: code, Msg: d.errorString(code)}
	}
	return nil
}

// errorString asks the driver to describe a CUresult.
func (d *driver) errorString(code int) string {
	var s *byte
	r, _, _ := purego.SyscallN(d.fn["cuGetErrorString"], uintptr(code), uintptr(unsafe.Pointer(&s)))
	if r != 0 || s == nil {
		return "unknown error"
	}
	return goString(s)
}

// goString copies a NUL-terminated C string.
func goString(p *byte) string {
	if p == nil {
		return ""
	}
	n := 0
	for *(*byte)(unsafe.Add(unsafe.Pointer(p), n)) != 0 {
		n++
	}
	return string(unsafe.Slice(p, n))
}

// deviceAttr reads one CUdevice_attribute.
func (d *driver) deviceAttr(dev int32, attr int) (int, error) {
	var v int32
	err := d.call("cuDeviceGetAttribute", uintptr(unsafe.Pointer(&v)), uintptr(attr), uintptr(dev))
	return int(v), err
}

// Available reports whether the CUDA driver loads and sees at least one
// device. Tests use it to skip when there is no GPU.
func Available() bool {
	d, err := loadDriver()
	if err != nil {
		return false
	}
	var n int32
	return d.call("cuDeviceGetCount", uintptr(unsafe.Pointer(&n))) == nil && n > 0
}
