package cuda

import (
	"regexp"
	"strconv"
	"testing"
)

// TestKernelDefines checks, without a GPU, that every constant Go passes to
// NVRTC (kernelDefines) is one the kernels read, guarded so that the -D
// value wins, and that the default they keep for standalone syntax checks
// equals Go's: a mismatch would make those checks see other kernels than
// NVRTC compiles.
func TestKernelDefines(t *testing.T) {
	src, err := kernelSource()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range kernelDefines {
		re := regexp.MustCompile(`#ifndef ` + d.name + `\b[^\n]*\n#define ` + d.name + ` (\d+)`)
		m := re.FindStringSubmatch(src)
		if m == nil {
			t.Errorf("%s: no #ifndef-guarded #define in the kernels", d.name)
			continue
		}
		if v, _ := strconv.Atoi(m[1]); v != d.value {
			t.Errorf("%s: the kernels' default is %d, Go passes %d", d.name, v, d.value)
		}
		if n := len(regexp.MustCompile(`#define `+d.name+`\b`).FindAllString(src, -1)); n != 1 {
			t.Errorf("%s: defined %d times", d.name, n)
		}
	}
	if got := defineOptions(); len(got) != len(kernelDefines) || got[0] != "-DMV_TOKENS=8" {
		t.Errorf("options %v", got)
	}
}
