package model

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"orcd/backend/cpu"
	"orcd/gguf"
	"orcd/internal/testutil"
)

// hfFixture is one reference run of HF transformers, written by
// tools/hf_conformance.py (see testdata/README.md).
type hfFixture struct {
	Fixture      string      `json:"fixture"`
	Arch         string      `json:"arch"`
	Prompt       []int32     `json:"prompt"`
	PromptLogits [][]float32 `json:"prompt_logits"` // every prompt position
	Greedy       []int32     `json:"greedy"`        // HF's greedy continuation
	// GreedyLogits[s] are the logits after prompt + Greedy[:s+1], which pick
	// Greedy[s+1].
	GreedyLogits [][]float32 `json:"greedy_logits"`
	Margins      []float32   `json:"margins"` // top-1 minus top-2 logit of each greedy step
	RopeInvFreq  []float64   `json:"rope_inv_freq"`
	RopeScaling  float64     `json:"rope_attention_scaling"`
}

var hfFixtures = []string{"gptoss_mxfp4_q8", "gptoss_f16_bf16", "gpt2_tied_q8", "gpt2_untied_mixed"}

// conformanceTolerance bounds max|ours - HF| / max|HF| over a set of logits.
const conformanceTolerance = 1e-4

func readFixture(t *testing.T, name string) *hfFixture {
	t.Helper()
	var fx hfFixture
	testutil.ReadGzipJSON(t, filepath.Join("testdata", name+".json.gz"), &fx)
	return &fx
}

func loadFixtureModel(t *testing.T, name string, maxBatch int) Model {
	t.Helper()
	return loadFixtureModelOn(t, name, maxBatch, cpu.New())
}

// loadFixtureModelOn is loadFixtureModel on the backend be.
func loadFixtureModelOn(t *testing.T, name string, maxBatch int, be *cpu.Backend) Model {
	t.Helper()
	f, err := gguf.Open(filepath.Join("testdata", name+".gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := Load(f, be, LoadOptions{MaxBatch: maxBatch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// relErr is max|got - want| / max|want|.
func relErr(got, want []float32) float64 {
	var maxErr, maxRef float64
	for i := range want {
		maxErr = max(maxErr, math.Abs(float64(got[i])-float64(want[i])))
		maxRef = max(maxRef, math.Abs(float64(want[i])))
	}
	return maxErr / maxRef
}

func argmax(v []float32) int32 {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return int32(best)
}

// TestConformanceHF runs each fixture's prompt through the CPU backend and
// compares every position's logits with HF's, then feeds HF's greedy tokens
// one at a time (the decode path) and checks each step's logits and, where
// HF's top-1/top-2 margin exceeds the tolerance, the greedy choice. Each
// fixture runs twice: the whole prompt in one step, and in steps of 7
// tokens, which wraps the sliding-window rings several times.
func TestConformanceHF(t *testing.T) {
	for _, name := range hfFixtures {
		fx := readFixture(t, name)
		for _, maxBatch := range []int{0, 7} {
			t.Run(name+"/maxbatch="+map[int]string{0: "default", 7: "7"}[maxBatch], func(t *testing.T) {
				m := loadFixtureModel(t, name, maxBatch)
				checkConformance(t, m, fx)
			})
		}
	}
}

// checkConformance runs a fixture's prompt through m and compares every
// position's logits with HF's, then feeds HF's greedy tokens one at a time
// (the decode path) and checks each step's logits and, where HF's
// top-1/top-2 margin exceeds the tolerance, the greedy choice.
func checkConformance(t *testing.T, m Model, fx *hfFixture) {
	t.Helper()
	vocab := m.Config().VocabSize
	c, err := m.NewCache(m.Config().ContextLength)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Free()

	logits, err := m.Forward(c, fx.Prompt, true)
	if err != nil {
		t.Fatal(err)
	}
	var worst float64
	for p, want := range fx.PromptLogits {
		e := relErr(logits[p*vocab:(p+1)*vocab], want)
		worst = max(worst, e)
		if e > conformanceTolerance {
			t.Errorf("prompt position %d: relative error %.3g > %g", p, e, conformanceTolerance)
		}
	}
	t.Logf("prompt (%d tokens): max relative error %.3g", len(fx.Prompt), worst)

	last := logits[(len(fx.Prompt)-1)*vocab:]
	worst = 0
	for s, tok := range fx.Greedy {
		maxLogit := 0.0
		for _, v := range last {
			maxLogit = max(maxLogit, math.Abs(float64(v)))
		}
		if float64(fx.Margins[s]) > 2*conformanceTolerance*maxLogit && argmax(last) != tok {
			t.Errorf("greedy step %d: picked %d, HF picked %d (margin %.3g)", s, argmax(last), tok, fx.Margins[s])
		}
		if s == len(fx.GreedyLogits) {
			break
		}
		// Feed HF's token, so that a near-tie cannot derail later steps.
		if last, err = m.Forward(c, []int32{tok}, false); err != nil {
			t.Fatal(err)
		}
		e := relErr(last, fx.GreedyLogits[s])
		worst = max(worst, e)
		if e > conformanceTolerance {
			t.Errorf("decode step %d: relative error %.3g > %g", s, e, conformanceTolerance)
		}
	}
	t.Logf("decode (%d steps): max relative error %.3g", len(fx.GreedyLogits), worst)
}

// hfDirFixtures are the checkpoint directories of testdata/hf, made by
// tools/hf_arch_fixtures.py on the GPU machine (see testdata/README.md).
var hfDirFixtures = []string{"tiny_llama", "tiny_qwen2", "tiny_gptoss"}

// TestConformanceHFDirs loads each checkpoint directory (llama with llama3
// rope scaling and f32 weights, qwen2 in bf16 shards with QKV biases and a
// tied embedding, gpt-oss with MXFP4 experts as published) and checks HF's
// logits and greedy tokens, whole and in steps of 7; then the GGUF that
// convert writes must give the directory's logits exactly.
func TestConformanceHFDirs(t *testing.T) {
	if _, err := os.Stat(filepath.Join("testdata", "hf")); err != nil {
		t.Fatalf("testdata/hf is missing (tools/hf_arch_fixtures.py makes it): %v", err)
	}
	for _, name := range hfDirFixtures {
		fx := readFixture(t, filepath.Join("hf", name))
		for _, maxBatch := range []int{0, 7} {
			t.Run(fmt.Sprintf("%s/maxbatch=%d", name, maxBatch), func(t *testing.T) {
				f, err := Open(filepath.Join("testdata", "hf", name))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				m, err := Load(f, cpu.New(), LoadOptions{MaxBatch: maxBatch})
				if err != nil {
					t.Fatal(err)
				}
				defer m.Close()
				checkConformance(t, m, fx)
				if maxBatch != 0 {
					return
				}
				checkConverted(t, f, checkAgainstHF(t, m, fx), fx)
			})
		}
	}
}

// TestRopeFrequenciesHF compares the YaRN frequencies and attention factor
// with those HF computed for the fixtures and for gpt-oss-20b's real
// settings (head_dim 64, base 150000, factor 32 over 4096, betas 32 and 1).
func TestRopeFrequenciesHF(t *testing.T) {
	check := func(what string, headDim int, base float64, y yarnParams, want []float64, wantScale float64) {
		t.Helper()
		inv, mscale := ropeFrequencies(headDim, base, y)
		if len(inv) != len(want) {
			t.Fatalf("%s: %d frequencies, want %d", what, len(inv), len(want))
		}
		for i := range want {
			if math.Abs(float64(inv[i])-want[i]) > 1e-6*want[i] {
				t.Errorf("%s: inv_freq[%d] = %.9g, HF %.9g", what, i, inv[i], want[i])
			}
		}
		if math.Abs(float64(mscale)-wantScale) > 1e-6 {
			t.Errorf("%s: attention factor %.9g, HF %.9g", what, mscale, wantScale)
		}
	}
	for _, name := range []string{"gptoss_mxfp4_q8", "gptoss_f16_bf16"} {
		fx := readFixture(t, name)
		f, err := gguf.Open(filepath.Join("testdata", name+".gguf"))
		if err != nil {
			t.Fatal(err)
		}
		p, err := readGPTOSSParams(f, "gpt-oss")
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		check(name, p.headDim, p.ropeBase, p.yarn, fx.RopeInvFreq, fx.RopeScaling)
	}

	raw, err := os.ReadFile(filepath.Join("testdata", "gptoss_20b_rope.json"))
	if err != nil {
		t.Fatal(err)
	}
	var real struct {
		HeadDim  int       `json:"head_dim"`
		InvFreq  []float64 `json:"inv_freq"`
		AttScale float64   `json:"attention_scaling"`
	}
	if err := json.Unmarshal(raw, &real); err != nil {
		t.Fatal(err)
	}
	check("gpt-oss-20b", real.HeadDim, 150000, yarnParams{factor: 32, originalCtx: 4096, betaFast: 32, betaSlow: 1},
		real.InvFreq, real.AttScale)
}
