package cuda

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
)

// NVRTC compiles the embedded CUDA C kernels for the device at run time. The
// cubin is cached on disk, keyed by a hash of the source, the options, the
// target architecture, the driver version and the NVRTC version, so only the
// first start on a machine pays for compilation.

// nvrtcCandidates are the places libnvrtc is looked for, after $ORCD_LIBNVRTC.
// Bare names go through the dynamic loader's search path.
var nvrtcCandidates = []string{
	"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so",
	"/usr/local/cuda/lib64/libnvrtc.so.13", "/usr/local/cuda/lib64/libnvrtc.so.12", "/usr/local/cuda/lib64/libnvrtc.so",
	"/usr/local/cuda/targets/x86_64-linux/lib/libnvrtc.so",
}

// nvrtcGlobs find the copies that pip's nvidia-cuda-nvrtc packages install.
var nvrtcGlobs = []string{
	"/opt/*/.venv/lib/python3*/site-packages/nvidia/cu1*/lib/libnvrtc.so*",
	"/opt/*/.venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so*",
	"/usr/local/lib/python3*/dist-packages/nvidia/cu1*/lib/libnvrtc.so*",
	"/usr/local/lib/python3*/dist-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so*",
	"/usr/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so*",
	"/usr/local/cuda-*/lib64/libnvrtc.so*",
}

var nvrtcFuncs = []string{
	"nvrtcVersion", "nvrtcGetErrorString", "nvrtcCreateProgram", "nvrtcDestroyProgram",
	"nvrtcCompileProgram", "nvrtcGetProgramLogSize", "nvrtcGetProgramLog", "nvrtcGetCUBINSize", "nvrtcGetCUBIN",
}

type nvrtcLib struct {
	path    string
	fn      map[string]uintptr
	version string
}

var (
	nvrtcOnce   sync.Once
	theNVRTC    *nvrtcLib
	nvrtcLoadEr error
)

// loadNVRTC dlopens the first libnvrtc that loads.
func loadNVRTC() (*nvrtcLib, error) {
	nvrtcOnce.Do(func() {
		var paths []string
		if p := os.Getenv("ORCD_LIBNVRTC"); p != "" {
			paths = append(paths, p)
		}
		paths = append(paths, nvrtcCandidates...)
		for _, g := range nvrtcGlobs {
			m, _ := filepath.Glob(g)
			paths = append(paths, m...)
		}
		var tried []string
		for _, p := range paths {
			h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL)
			if err != nil {
				tried = append(tried, p)
				continue
			}
			lib := &nvrtcLib{path: p, fn: map[string]uintptr{}}
			ok := true
			for _, name := range nvrtcFuncs {
				f, err := purego.Dlsym(h, name)
				if err != nil {
					ok = false
					break
				}
				lib.fn[name] = f
			}
			if !ok {
				tried = append(tried, p+" (missing symbols)")
				continue
			}
			var major, minor int32
			if err := lib.call("nvrtcVersion", uintptr(unsafe.Pointer(&major)), uintptr(unsafe.Pointer(&minor))); err != nil {
				nvrtcLoadEr = err
				return
			}
			lib.version = fmt.Sprintf("%d.%d", major, minor)
			theNVRTC = lib
			return
		}
		nvrtcLoadEr = fmt.Errorf("cuda: libnvrtc not found (set ORCD_LIBNVRTC); tried %s", strings.Join(tried, ", "))
	})
	return theNVRTC, nvrtcLoadEr
}

//go:uintptrescapes
func (l *nvrtcLib) call(name string, args ...uintptr) error {
	r, _, _ := purego.SyscallN(l.fn[name], args...)
	if code := int(int32(r)); code != 0 {
		msg := "unknown error"
		if s, _, _ := purego.SyscallN(l.fn["nvrtcGetErrorString"], uintptr(code)); s != 0 {
			msg = goString(*(**byte)(unsafe.Pointer(&s))) // s is a C pointer
		}
		return &Error{Call: name, Code: code, Msg: msg}
	}
	return nil
}

// cString returns a NUL-terminated copy of s.
func cString(s string) []byte { return append([]byte(s), 0) }

// kernelModule is one kernel file: NVRTC compiles each on its own (with
// the headers it includes), so a first start compiles them in parallel and
// a change to one file recompiles only its module.
type kernelModule struct{ name, src string }

// gpuArch is NVRTC's target for compute capability arch: Hopper's with
// its architecture-specific features (sm_90a: wgmma), which run on sm_90
// cards only, as the cubins are compiled for the card found.
func gpuArch(arch int) string {
	if arch == 90 {
		return "sm_90a"
	}
	return fmt.Sprintf("sm_%d", arch)
}

// compileModules returns the cubins of mods for sm_<arch>, from the cache
// where it can; the rest compile in parallel. A compilation (tens of
// seconds on a first start) is logged to log, before and after, when log is
// not nil.
func compileModules(mods []kernelModule, headers map[string]string, arch, driverVersion int, log *slog.Logger) ([][]byte, error) {
	lib, err := loadNVRTC()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(headers))
	for n := range headers {
		names = append(names, n)
	}
	sort.Strings(names)
	cubins := make([][]byte, len(mods))
	files := make([]string, len(mods))
	opts := make([][]string, len(mods))
	var todo []int
	dir := cacheDir()
	for i, m := range mods {
		text, _, err := moduleText(m.src, headers)
		if err != nil {
			return nil, fmt.Errorf("cuda: %s: %w", m.name, err)
		}
		opts[i] = append([]string{"--gpu-architecture=" + gpuArch(arch), "--std=c++17", "-default-device"}, defineOptions(text)...)
		h := sha256.New()
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00%s\x00%s", text, arch, driverVersion, lib.version, strings.Join(opts[i], " "))
		key := hex.EncodeToString(h.Sum(nil))[:32]
		if dir != "" {
			files[i] = filepath.Join(dir, fmt.Sprintf("kernels-sm%d-%s-%s.cubin", arch, strings.TrimSuffix(m.name, ".cu"), key))
			if b, err := os.ReadFile(files[i]); err == nil && len(b) > 0 {
				cubins[i] = b
				continue
			}
		}
		todo = append(todo, i)
	}
	if len(todo) == 0 {
		return cubins, nil
	}
	start := time.Now()
	if log != nil {
		log.Info("compiling the CUDA kernels (first use of this GPU type, driver and orcd build; cached afterwards)",
			"arch", fmt.Sprintf("sm_%d", arch), "nvrtc", lib.version, "modules", len(todo), "cache", dir)
	}
	errs := make([]error, len(mods))
	var wg sync.WaitGroup
	for _, i := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cubins[i], errs[i] = lib.compile(mods[i].name, mods[i].src, headers, names, opts[i])
		}()
	}
	wg.Wait()
	for _, i := range todo {
		if errs[i] != nil {
			return nil, fmt.Errorf("cuda: compiling %s: %w", mods[i].name, errs[i])
		}
	}
	if log != nil {
		log.Info("compiled the CUDA kernels", "seconds", time.Since(start).Round(100*time.Millisecond).Seconds())
	}
	for _, i := range todo {
		if files[i] != "" {
			writeCache(files[i], cubins[i])
		}
	}
	return cubins, nil
}

// writeCache stores a cubin. A cache that cannot be written only costs the
// next start a compilation, so failures are ignored; the rename makes a
// concurrent reader see either nothing or the whole file.
func writeCache(file string, cubin []byte) {
	if os.MkdirAll(filepath.Dir(file), 0o755) != nil {
		return
	}
	tmp := fmt.Sprintf("%s.%d.tmp", file, os.Getpid())
	if os.WriteFile(tmp, cubin, 0o644) == nil {
		_ = os.Rename(tmp, file)
	}
}

// cacheDir is $ORCD_CUDA_CACHE, else <user cache dir>/orcd/cuda; "" if neither exists.
func cacheDir() string {
	if d := os.Getenv("ORCD_CUDA_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "orcd", "cuda")
	}
	return ""
}

// compile runs NVRTC on src (file name, for its messages) with opts and
// the headers (their names, in order) it may include, and returns the
// cubin. A compile error carries NVRTC's log.
func (l *nvrtcLib) compile(name, src string, headers map[string]string, names []string, opts []string) ([]byte, error) {
	var prog uintptr
	csrc, cname := cString(src), cString(name)
	// The source, header and option arrays hold pointers to Go memory, so
	// each string is pinned for the duration of the calls.
	var pin runtime.Pinner
	defer pin.Unpin()
	cstr := func(s string) *byte {
		c := cString(s)
		pin.Pin(&c[0])
		return &c[0]
	}
	var hsrc, hname uintptr
	if len(names) > 0 {
		hs, hn := make([]*byte, len(names)), make([]*byte, len(names))
		for i, n := range names {
			hs[i], hn[i] = cstr(headers[n]), cstr(n)
		}
		pin.Pin(&hs[0])
		pin.Pin(&hn[0])
		hsrc, hname = uintptr(unsafe.Pointer(&hs[0])), uintptr(unsafe.Pointer(&hn[0]))
	}
	if err := l.call("nvrtcCreateProgram", uintptr(unsafe.Pointer(&prog)), uintptr(unsafe.Pointer(&csrc[0])),
		uintptr(unsafe.Pointer(&cname[0])), uintptr(len(names)), hsrc, hname); err != nil {
		return nil, err
	}
	defer l.call("nvrtcDestroyProgram", uintptr(unsafe.Pointer(&prog)))

	copts := make([]*byte, len(opts))
	for i, o := range opts {
		copts[i] = cstr(o)
	}
	pin.Pin(&copts[0])
	compileErr := l.call("nvrtcCompileProgram", prog, uintptr(len(copts)), uintptr(unsafe.Pointer(&copts[0])))
	if compileErr != nil {
		var n uintptr
		log := ""
		if l.call("nvrtcGetProgramLogSize", prog, uintptr(unsafe.Pointer(&n))) == nil && n > 1 {
			buf := make([]byte, n)
			if l.call("nvrtcGetProgramLog", prog, uintptr(unsafe.Pointer(&buf[0]))) == nil {
				log = string(buf[:n-1])
			}
		}
		return nil, fmt.Errorf("%w\n%s", compileErr, log)
	}
	var n uintptr
	if err := l.call("nvrtcGetCUBINSize", prog, uintptr(unsafe.Pointer(&n))); err != nil {
		return nil, err
	}
	cubin := make([]byte, n)
	if err := l.call("nvrtcGetCUBIN", prog, uintptr(unsafe.Pointer(&cubin[0]))); err != nil {
		return nil, err
	}
	return cubin, nil
}
