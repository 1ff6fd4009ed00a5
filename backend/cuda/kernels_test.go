package cuda

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"orcd/tensor"
)

// TestKernelDefines checks, without a GPU, that every constant Go passes to
// NVRTC (kernelDefines) is one the kernels read, guarded so that the -D
// value wins, and that the default they keep for standalone syntax checks
// equals Go's: a mismatch would make those checks see other kernels than
// NVRTC compiles.
func TestKernelDefines(t *testing.T) {
	mods, headers, err := kernelSources()
	if err != nil {
		t.Fatal(err)
	}
	src := ""
	for _, m := range mods {
		src += m.src
	}
	for _, h := range headers {
		src += h
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
	if got := defineOptions(src); len(got) != len(kernelDefines) || got[0] != "-DMV_TOKENS=8" {
		t.Errorf("options %v", got)
	}
	// A module gets only the constants it reads: gemm.cu its stages, not
	// the grouped kernels'.
	for _, m := range mods {
		if m.name != "gemm.cu" {
			continue
		}
		text, _, err := moduleText(m.src, headers)
		if err != nil {
			t.Fatal(err)
		}
		opts := strings.Join(defineOptions(text), " ")
		if !strings.Contains(opts, "-DGM_STAGES=") || strings.Contains(opts, "MQG_STAGES") {
			t.Errorf("gemm.cu options %q", opts)
		}
	}
}

// TestKernelSources checks, without a GPU, that every kernel file is a
// module whose includes resolve to kernel headers, common.cuh among them
// (directly or through another header), as NVRTC will compile it alone.
func TestKernelSources(t *testing.T) {
	mods, headers, err := kernelSources()
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) < 9 || headers["common.cuh"] == "" || headers["mq.cuh"] == "" {
		t.Fatalf("%d modules, headers %d", len(mods), len(headers))
	}
	for _, m := range mods {
		_, included, err := moduleText(m.src, headers)
		if err != nil {
			t.Errorf("%s: %v", m.name, err)
		}
		if !slices.Contains(included, "common.cuh") {
			t.Errorf("%s includes %v, not common.cuh", m.name, included)
		}
	}
	if _, _, err := moduleText(`#include "nope.cuh"`, headers); err == nil || !strings.Contains(err.Error(), "nope.cuh") {
		t.Errorf("missing header: %v", err)
	}
}

// TestMoELayout checks, without a GPU, which kernels the experts of a step
// take by its size, and that the workspace regions of a layout lie apart
// inside it.
func TestMoELayout(t *testing.T) {
	const hidden, ff, nExp, k = 2880, 2880, 32, 4
	mx := tensor.MXFP4
	path := func(l moeWorkspace) string {
		switch {
		case l.mq:
			return "mq"
		case l.mqg:
			return "mqg"
		case l.gemm:
			return "gemm"
		case l.grouped:
			return "grouped"
		}
		return "matvec"
	}
	for _, c := range []struct {
		n                  int
		invariant, mqg, gm bool
		want               string
	}{
		{1, false, true, true, "mq"},
		{mqTokens + 1, false, true, true, "mqg"},
		{mqgTokens, false, true, true, "mqg"},
		{mqgTokens + 1, false, true, true, "gemm"},
		{2048, false, true, true, "gemm"},
		{2048, false, true, false, "grouped"}, // gemm.cu's block does not fit
		{1, true, true, true, "grouped"},      // batch invariant: one kernel at every size
		{2048, true, true, true, "grouped"},
	} {
		l := moeLayout(c.n, k, nExp, hidden, ff, mx, mx, c.invariant, c.mqg, c.gm)
		set := 0
		for _, f := range []bool{l.mq, l.mqg, l.gemm, l.grouped} {
			if f {
				set++
			}
		}
		if set > 1 {
			t.Errorf("n=%d invariant=%v: %d paths chosen", c.n, c.invariant, set)
		}
		if got := path(l); got != c.want {
			t.Errorf("n=%d invariant=%v: %s, want %s", c.n, c.invariant, got, c.want)
		}
		type region struct {
			name      string
			off, size int64
		}
		na := int64(c.n) * k
		var regs []region
		switch path(l) {
		case "gemm":
			// y holds x's halves (n·hidden·4 bytes) until down writes it.
			regs = []region{{"starts", l.starts, (nExp + 1) * 4}, {"xrows", l.xrows, na * 4}, {"slotRow", l.slotRow, na * 4},
				{"counts", l.counts, nExp * 4}, {"h", l.h, na * ff * 4}, {"y", l.y, na * hidden * 4}}
		case "grouped":
			regs = []region{{"starts", l.starts, (nExp + 1) * 4}, {"xrows", l.xrows, na * 4}, {"slotRow", l.slotRow, na * 4},
				{"counts", l.counts, nExp * 4}, {"h", l.h, na * ff * 4}, {"u", l.u, na * ff * 4}, {"y", l.y, na * hidden * 4}}
		}
		for i, a := range regs {
			if a.off < 0 || a.off+a.size > l.size {
				t.Errorf("n=%d %s: [%d, %d) outside the workspace of %d bytes", c.n, a.name, a.off, a.off+a.size, l.size)
			}
			for _, b := range regs[i+1:] {
				if a.off < b.off+b.size && b.off < a.off+a.size {
					t.Errorf("n=%d: %s and %s overlap", c.n, a.name, b.name)
				}
			}
		}
	}
}

// TestGemmShapes checks gemm.cu's block choice and shared memory against
// Hopper's 227 KiB a block: the experts of gpt-oss-20b fit either shape;
// a 4,096-column Q8_0 product (its o projection) fits only 128 × 128,
// which dense products take.
func TestGemmShapes(t *testing.T) {
	const hopper = 232448
	if s := gmShapeFor(64); s != (gmShape{rows: 256, toks: 64}) {
		t.Errorf("64 tokens a row: %v", s)
	}
	if s := gmShapeFor(65); s != (gmShape{rows: 128, toks: 128}) {
		t.Errorf("65 tokens a row: %v", s)
	}
	if s := gmShapeFor(mqgTokens + 1); s != (gmShape{rows: 128, toks: 128}) {
		t.Errorf("dense prefill: %v", s)
	}
	for _, c := range []struct {
		t    tensor.Type
		in   int
		s    gmShape
		fits bool
	}{
		{tensor.MXFP4, 2880, gmShape{rows: 128, toks: 128}, true},
		{tensor.MXFP4, 2880, gmShape{rows: 256, toks: 64}, true},
		{tensor.Q8_0, 2880, gmShape{rows: 128, toks: 128}, true},
		{tensor.Q8_0, 4096, gmShape{rows: 128, toks: 128}, true},
		{tensor.Q8_0, 4096, gmShape{rows: 256, toks: 64}, false},
	} {
		b := &Backend{maxShmem: hopper}
		if got := b.gmFits(c.t, c.in, c.s); got != c.fits {
			t.Errorf("%s in=%d %v: fits %v (%d bytes), want %v", c.t, c.in, c.s, got, gmShmem(c.t, c.in, c.s), c.fits)
		}
	}
	if (&Backend{maxShmem: hopper}).gmFits(tensor.F16, 2880, gmShape{rows: 128, toks: 128}) {
		t.Error("gemm.cu takes F16 weights")
	}
}

// TestGmName checks gemm.cu's kernel names and the experts' shapes:
// MXFP4's experts on wgmma, in 256-row blocks, where the backend has it,
// and every other product on mma.sync; gpuArch checks that Hopper's
// cubins are built with wgmma.
func TestGmName(t *testing.T) {
	for _, c := range []struct {
		family string
		t      tensor.Type
		s      gmShape
		want   string
	}{
		{"gemm_rows", tensor.MXFP4, gmShape{rows: 256, toks: 128, wg: true}, "gemm_rows_mxfp4_256x128_wg"},
		{"gemm_gateup", tensor.MXFP4, gmShape{rows: 256, toks: 64, wg: true}, "gemm_gateup_mxfp4_256x64_wg"},
		{"gemm_rows3", tensor.MXFP4, gmShape{rows: 128, toks: 128}, "gemm_rows3_mxfp4_128x128"},
		{"gemm_gateup", tensor.MXFP4, gmShape{rows: 256, toks: 64}, "gemm_gateup_mxfp4_256x64"},
	} {
		if got := gmName(c.family, c.t, c.s); got != c.want {
			t.Errorf("%s %s %v: %s, want %s", c.family, c.t, c.s, got, c.want)
		}
	}
	wg, mma := &Backend{wgmma: true}, &Backend{}
	for _, c := range []struct {
		b      *Backend
		t      tensor.Type
		perRow int
		want   gmShape
	}{
		{wg, tensor.MXFP4, 64, gmShape{rows: 256, toks: 64, wg: true}},
		{wg, tensor.MXFP4, 65, gmShape{rows: 256, toks: 128, wg: true}},
		{wg, tensor.Q8_0, 65, gmShape{rows: 128, toks: 128}},
		{mma, tensor.MXFP4, 64, gmShape{rows: 256, toks: 64}},
		{mma, tensor.MXFP4, 65, gmShape{rows: 128, toks: 128}},
	} {
		if got := c.b.moeShape(c.t, c.perRow); got != c.want {
			t.Errorf("wgmma %v %s %d tokens an expert: %v, want %v", c.b.wgmma, c.t, c.perRow, got, c.want)
		}
	}
	// wgmma's blocks of gpt-oss-20b's experts fit Hopper's 227 KiB: the
	// alignment 1,024, x's stages 2·3·128·64·2, raw 3·256·32, tiles
	// 2·256·64·2, offsets 128·8, scales 256·90.
	if got := gmShmem(tensor.MXFP4, 2880, gmShape{rows: 256, toks: 128, wg: true}); got != 1024+98304+24576+65536+1024+23040 {
		t.Errorf("wgmma 256x128 shared memory: %d", got)
	}
	if !(&Backend{maxShmem: 232448, wgmma: true}).gmFits(tensor.MXFP4, 2880, gmShape{rows: 256, toks: 128, wg: true}) {
		t.Error("wgmma 256x128 does not fit")
	}
	if gpuArch(90) != "sm_90a" || gpuArch(89) != "sm_89" || gpuArch(100) != "sm_100" {
		t.Errorf("gpuArch: %s %s %s", gpuArch(90), gpuArch(89), gpuArch(100))
	}
}

// TestDenseGemm checks which dense products take gemm.cu on a 132-SM
// Hopper: gpt-oss-20b's LM head (201,088 rows) from 64 tokens, its q
// projection (4,096) only in prefill, never in batch-invariant mode or for
// F16 weights.
func TestDenseGemm(t *testing.T) {
	b := &Backend{maxShmem: 232448, sms: 132}
	for _, c := range []struct {
		t         tensor.Type
		n, out    int
		invariant bool
		gemm      bool
	}{
		{tensor.Q8_0, 63, 201088, false, false},
		{tensor.Q8_0, 64, 201088, false, true},
		{tensor.Q8_0, 256, 201088, false, true},
		{tensor.MXFP4, 64, 201088, false, true},
		{tensor.Q8_0, 64, 201088, true, false},
		{tensor.F16, 64, 201088, false, false},
		{tensor.Q8_0, 256, 4096, false, false},
		{tensor.Q8_0, 257, 4096, false, true},
		// 528 blocks of 256 rows: exactly four per SM.
		{tensor.Q8_0, 64, 528 * 256, false, true},
		{tensor.Q8_0, 64, 527 * 256, false, false},
	} {
		b.invariant = c.invariant
		if _, got := b.denseGemm(c.t, c.n, 2880, c.out); got != c.gemm {
			t.Errorf("%s n=%d out=%d invariant=%v: gemm.cu %v, want %v", c.t, c.n, c.out, c.invariant, got, c.gemm)
		}
	}
}

// TestAttnShmem checks attn_partial's shared memory against sums worked
// by hand from attention.cu's layout (queries, two KT stages of 32 keys'
// K and V, f16: the tile widened to f32 with K rows of dim + 4) and that
// the largest configuration fits Hopper's 227 KiB.
func TestAttnShmem(t *testing.T) {
	// f16, 8 warps × 1 row × 64: 2,048 + 2·32·(64+64)·2 = 16,384 + 32·(68+64)·4 = 16,896.
	if got := attnShmem(tensor.F16, 8, 1, 64); got != 2048+16384+16896 {
		t.Errorf("f16 r1 d64: %d", got)
	}
	// f32, 8 warps × 4 rows × 64: 8,192 + 2·32·(68+64)·4 = 33,792.
	if got := attnShmem(tensor.F32, 8, 4, 64); got != 8192+33792 {
		t.Errorf("f32 r4 d64: %d", got)
	}
	if got := attnShmem(tensor.F32, 8, 4, attnMaxDim); got > 232448 {
		t.Errorf("f32 r4 d%d: %d bytes, over Hopper's 232,448", attnMaxDim, got)
	}
}
