package cuda

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"
)

// TestCompileCache compiles two small modules that include a header with
// NVRTC (skipped where no libnvrtc loads; ORCD_LIBNVRTC names one): the
// first call logs the compilation and writes one cubin each, the second
// returns the same cubins from the cache and logs nothing, a changed header
// recompiles. A module that does not compile gives an error naming it and
// carrying NVRTC's log.
func TestCompileCache(t *testing.T) {
	if _, err := loadNVRTC(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	t.Setenv("ORCD_CUDA_CACHE", dir)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	headers := map[string]string{"h.cuh": "#pragma once\n#define ONE 1.f\n"}
	mods := []kernelModule{
		{"a.cu", "#include \"h.cuh\"\nextern \"C\" __global__ void a(float* p) { p[threadIdx.x] = ONE; }"},
		{"b.cu", "#include \"h.cuh\"\nextern \"C\" __global__ void b(float* p) { p[threadIdx.x] = 2 * ONE; }"},
	}
	first, err := compileModules(mods, headers, 80, 12000, log)
	if err != nil {
		t.Fatal(err)
	}
	if s := buf.String(); !strings.Contains(s, "compiling the CUDA kernels") || !strings.Contains(s, "modules=2") ||
		!strings.Contains(s, "compiled the CUDA kernels") {
		t.Errorf("first compile logged %q", s)
	}
	if files, _ := os.ReadDir(dir); len(files) != 2 {
		t.Errorf("cache holds %v, want two cubins", files)
	}
	buf.Reset()
	again, err := compileModules(mods, headers, 80, 12000, log)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first[0], again[0]) || !bytes.Equal(first[1], again[1]) || buf.Len() != 0 {
		t.Errorf("cached compile logged %q", buf.String())
	}
	headers["h.cuh"] = "#pragma once\n#define ONE 3.f\n"
	if _, err := compileModules(mods, headers, 80, 12000, log); err != nil || !strings.Contains(buf.String(), "modules=2") {
		t.Errorf("changed header: %v, logged %q", err, buf.String())
	}
	// A constant from Go recompiles only the module that reads it.
	mods[0].src += "\n#ifndef MV_TOKENS\n#define MV_TOKENS 8\n#endif\n__device__ int tokens = MV_TOKENS;\n"
	if _, err := compileModules(mods, headers, 80, 12000, nil); err != nil {
		t.Fatal(err)
	}
	saved := kernelDefines[0]
	t.Cleanup(func() { kernelDefines[0] = saved })
	if saved.name != "MV_TOKENS" {
		t.Fatalf("kernelDefines[0] is %s", saved.name)
	}
	kernelDefines[0].value++
	buf.Reset()
	if _, err := compileModules(mods, headers, 80, 12000, log); err != nil || !strings.Contains(buf.String(), "modules=1") {
		t.Errorf("changed MV_TOKENS: %v, logged %q", err, buf.String())
	}
	bad := []kernelModule{{"bad.cu", "extern \"C\" __global__ void k() { undefined_name; }"}}
	if _, err := compileModules(bad, nil, 80, 12000, nil); err == nil || !strings.Contains(err.Error(), "bad.cu") ||
		!strings.Contains(err.Error(), "undefined_name") {
		t.Errorf("bad source: %v", err)
	}
}
