package cuda

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"
)

// TestCompileCache compiles a small kernel twice with NVRTC (skipped where
// no libnvrtc loads; ORCD_LIBNVRTC names one): the first call logs the
// compilation and writes one cache file, the second returns the same cubin
// from the cache and logs nothing. A source that does not compile gives an
// error carrying NVRTC's log.
func TestCompileCache(t *testing.T) {
	if _, err := loadNVRTC(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	t.Setenv("ORCD_CUDA_CACHE", dir)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	src := `extern "C" __global__ void k(float* p) { p[threadIdx.x] = 1.f; }`
	first, err := compile(src, 80, 12000, log)
	if err != nil {
		t.Fatal(err)
	}
	if s := buf.String(); !strings.Contains(s, "compiling the CUDA kernels") || !strings.Contains(s, "compiled the CUDA kernels") {
		t.Errorf("first compile logged %q", s)
	}
	files, _ := os.ReadDir(dir)
	if len(files) != 1 || !strings.HasSuffix(files[0].Name(), ".cubin") {
		t.Errorf("cache holds %v, want one cubin", files)
	}
	buf.Reset()
	again, err := compile(src, 80, 12000, log)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, again) || buf.Len() != 0 {
		t.Errorf("cached compile: same cubin %v, logged %q", bytes.Equal(first, again), buf.String())
	}
	if _, err := compile(`extern "C" __global__ void k() { undefined_name; }`, 80, 12000, nil); err == nil || !strings.Contains(err.Error(), "undefined_name") {
		t.Errorf("bad source: %v", err)
	}
}
