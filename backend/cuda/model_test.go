package cuda

import (
	"compress/gzip"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"orcd/backend"
	"orcd/backend/cpu"
	"orcd/internal/batchtest"
	"orcd/model"
)

// End-to-end checks with the model package's conformance fixtures (tiny
// gpt-oss and GPT-2 GGUFs whose provenance is model/testdata/README.md):
// the cuda backend must give the cpu backend's logits within 1e-2, and the
// same greedy token wherever the cpu's top-1/top-2 margin exceeds that.

const fixtureDir = "../../model/testdata"

var fixtures = []string{"gptoss_mxfp4_q8", "gptoss_f16_bf16", "gpt2_tied_q8", "gpt2_untied_mixed"}

// hfFixtures are the checkpoint directories of model/testdata/hf (tiny
// llama, qwen2 and gpt-oss as HF publishes them), made on the GPU machine
// by tools/hf_arch_fixtures.py.
var hfFixtures = []string{"hf/tiny_llama", "hf/tiny_qwen2", "hf/tiny_gptoss"}

// allFixtures are the GGUF fixtures and the checkpoint directories.
func allFixtures() []string {
	return append(slices.Clone(fixtures), hfFixtures...)
}

// modelTolerance bounds max|gpu−cpu| / max|cpu| over one position's logits.
const modelTolerance = 1e-2

func fixturePrompt(t *testing.T, name string) []int32 {
	t.Helper()
	f, err := os.Open(filepath.Join(fixtureDir, name+".json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var fx struct {
		Prompt []int32 `json:"prompt"`
	}
	if err := json.NewDecoder(zr).Decode(&fx); err != nil {
		t.Fatal(err)
	}
	return fx.Prompt
}

func loadFixture(t *testing.T, name string, be backend.Backend, maxBatch int) model.Model {
	t.Helper()
	path := filepath.Join(fixtureDir, name+".gguf")
	if model.IsHFDir(filepath.Join(fixtureDir, name)) {
		path = filepath.Join(fixtureDir, name)
	}
	f, err := model.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := model.Load(f, be, model.LoadOptions{MaxBatch: maxBatch})
	if err != nil {
		t.Fatalf("%s on %s: %v", name, be.Name(), err)
	}
	return m
}

func maxRelErr(got, want []float32) float64 {
	var maxErr, maxRef float64
	for i := range want {
		maxErr = max(maxErr, math.Abs(float64(got[i])-float64(want[i])))
		maxRef = max(maxRef, math.Abs(float64(want[i])))
	}
	return maxErr / maxRef
}

// top2 returns the index of the largest value and its margin over the next.
func top2(v []float32) (int32, float64) {
	best, second := 0, -1
	for i := 1; i < len(v); i++ {
		switch {
		case v[i] > v[best]:
			best, second = i, best
		case second < 0 || v[i] > v[second]:
			second = i
		}
	}
	return int32(best), float64(v[best] - v[second])
}

func TestModelsMatchCPU(t *testing.T) {
	p := newPair(t)
	for _, name := range allFixtures() {
		for _, maxBatch := range []int{0, 7} {
			t.Run(name, func(t *testing.T) {
				prompt := fixturePrompt(t, name)
				gm := loadFixture(t, name, p.gpu, maxBatch)
				defer gm.Close()
				cm := loadFixture(t, name, cpu.New(), maxBatch)
				defer cm.Close()
				vocab := cm.Config().VocabSize
				ctx := cm.Config().ContextLength
				gc, err := gm.NewCache(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer gc.Free()
				cc, err := cm.NewCache(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer cc.Free()

				gl, err := gm.Forward(gc, prompt, true)
				if err != nil {
					t.Fatal(err)
				}
				cl, err := cm.Forward(cc, prompt, true)
				if err != nil {
					t.Fatal(err)
				}
				var worst float64
				for pos := range prompt {
					e := maxRelErr(gl[pos*vocab:(pos+1)*vocab], cl[pos*vocab:(pos+1)*vocab])
					worst = max(worst, e)
					if e > modelTolerance {
						t.Errorf("maxbatch %d, prompt position %d: relative error %.3g", maxBatch, pos, e)
					}
				}
				// Greedy decode on the cpu's choices, checking the cuda
				// logits and choice at every step.
				glast, clast := gl[(len(prompt)-1)*vocab:], cl[(len(prompt)-1)*vocab:]
				for s := 0; s < 20 && gc.Len() < ctx; s++ {
					tok, margin := top2(clast)
					maxLogit := 0.0
					for _, v := range clast {
						maxLogit = max(maxLogit, math.Abs(float64(v)))
					}
					if got, _ := top2(glast); margin > modelTolerance*maxLogit && got != tok {
						t.Errorf("maxbatch %d, greedy step %d: cuda picked %d, cpu %d (margin %.3g)", maxBatch, s, got, tok, margin)
					}
					if glast, err = gm.Forward(gc, []int32{tok}, false); err != nil {
						t.Fatal(err)
					}
					if clast, err = cm.Forward(cc, []int32{tok}, false); err != nil {
						t.Fatal(err)
					}
					e := maxRelErr(glast, clast)
					worst = max(worst, e)
					if e > modelTolerance {
						t.Errorf("maxbatch %d, decode step %d: relative error %.3g", maxBatch, s, e)
					}
				}
				t.Logf("maxbatch %d: max relative error %.3g over %d prompt positions and 20 decode steps", maxBatch, worst, len(prompt))
			})
		}
	}
}

// TestNoLeaks runs 100 requests (new cache, prompt, a few decode steps,
// free) and checks that device memory returns to its level after the
// first, which sets up the workspace and recorded graphs.
func TestNoLeaks(t *testing.T) {
	p := newPair(t)
	m := loadFixture(t, "gptoss_mxfp4_q8", p.gpu, 0)
	defer m.Close()
	prompt := fixturePrompt(t, "gptoss_mxfp4_q8")
	var base, baseTensors int64
	for i := 0; i < 100; i++ {
		c, err := m.NewCache(m.Config().ContextLength)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Forward(c, prompt[:24], false); err != nil {
			t.Fatal(err)
		}
		for s := 0; s < 5; s++ {
			if _, err := m.Forward(c, []int32{int32(s)}, false); err != nil {
				t.Fatal(err)
			}
		}
		c.Free()
		if err := p.gpu.Sync(); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			base, baseTensors = p.gpu.DeviceBytes(), p.gpu.Allocated()
			continue
		}
		if got := p.gpu.DeviceBytes(); got != base {
			t.Fatalf("request %d: %d device bytes held, %d after the first", i, got, base)
		}
		if got := p.gpu.Allocated(); got != baseTensors {
			t.Fatalf("request %d: %d tensor bytes held, %d after the first", i, got, baseTensors)
		}
	}
	t.Logf("100 requests: device memory steady at %d bytes (%d in tensors)", base, baseTensors)
}

// TestStepMatchesCPU runs the fixtures' sequences together through Step
// on cuda (batchtest.Run: prompt chunks and decode steps of several
// sequences in each step, shuffled and recycled blocks, sequences longer
// than the sliding windows) and compares every row with the same sequence
// run alone on the cpu: within 1e-2, and the same greedy token wherever
// the cpu's top-1/top-2 margin exceeds that.
func TestStepMatchesCPU(t *testing.T) {
	p := newPair(t)
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			gm := loadFixture(t, name, p.gpu, 16)
			defer gm.Close()
			cm := loadFixture(t, name, cpu.New(), 16)
			defer cm.Close()
			vocab := cm.Config().VocabSize
			r := rand.New(rand.NewPCG(11, uint64(len(name))))
			seqs := batchtest.RandomSeqs(r, vocab, 23, 1, 9, 40, 17, 30, 5, 33)
			want := make([][]float32, len(seqs))
			for i, s := range seqs {
				c, err := cm.NewCache(len(s.Tokens))
				if err != nil {
					t.Fatal(err)
				}
				if want[i], err = cm.Forward(c, s.Tokens, true); err != nil {
					t.Fatal(err)
				}
				c.Free()
			}
			var worst float64
			err := batchtest.Run(gm, seqs, 16, r, func(seq, pos int, got []float32) {
				w := want[seq][pos*vocab : (pos+1)*vocab]
				e := maxRelErr(got, w)
				worst = max(worst, e)
				tok, margin := top2(w)
				maxLogit := 0.0
				for _, v := range w {
					maxLogit = max(maxLogit, math.Abs(float64(v)))
				}
				if g, _ := top2(got); e > modelTolerance || margin > modelTolerance*maxLogit && g != tok {
					t.Errorf("sequence %d, position %d: relative error %.3g, greedy %d vs cpu %d", seq, pos, e, g, tok)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("max relative error %.3g", worst)
		})
	}
}
