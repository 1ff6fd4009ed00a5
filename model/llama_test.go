package model

import (
	"math/rand/v2"
	"slices"
	"testing"

	"orcd/backend/cpu"
	"orcd/gguf"
	"orcd/internal/testgguf"
	"orcd/tensor"
)

// synthFile writes a preset's model with random weights (Q8_0 matrices, a
// vocabulary of 300) and opens it.
func synthFile(t *testing.T, preset string, seed uint64) *gguf.File {
	t.Helper()
	p, a, ok := LookupPreset(preset)
	if !ok {
		t.Fatalf("no preset %q", preset)
	}
	w := gguf.NewWriter()
	w.SetString("general.architecture", a.Name)
	data := map[string][]byte{}
	r := rand.New(rand.NewPCG(seed, 1))
	for _, st := range p.Synth(w, 300, SynthTypes{Matrix: tensor.Q8_0, Experts: tensor.Q8_0}) {
		if err := w.AddTensor(st.Name, st.Type, st.Dims); err != nil {
			t.Fatal(err)
		}
		n := int64(1)
		for _, d := range st.Dims {
			n *= d
		}
		vals := make([]float32, n)
		for i := range vals {
			vals[i] = st.Fill + st.Std*float32(r.NormFloat64())
		}
		b, err := tensor.Quantize(st.Type, vals)
		if err != nil {
			t.Fatal(err)
		}
		data[st.Name] = b
	}
	return testgguf.Open(t, w, data)
}

// loadTestModel loads a conformance fixture, or a preset's random model.
func loadTestModel(t *testing.T, name string, maxBatch int) Model {
	t.Helper()
	return loadTestModelOn(t, name, maxBatch, cpu.New())
}

// loadTestModelOn is loadTestModel on the backend be.
func loadTestModelOn(t *testing.T, name string, maxBatch int, be *cpu.Backend) Model {
	t.Helper()
	if _, _, ok := LookupPreset(name); !ok {
		return loadFixtureModelOn(t, name, maxBatch, be)
	}
	m, err := Load(synthFile(t, name, 5), be, LoadOptions{MaxBatch: maxBatch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestLlamaFamilyPresets loads the Llama-family presets and checks what the
// registry and the loaded model say about them: architecture, chat format,
// full-attention KV layout of kvHeads·headDim, tied output, and logits that
// depend on every token (a prompt and its last token alone differ).
func TestLlamaFamilyPresets(t *testing.T) {
	for _, c := range []struct {
		preset, arch string
		layers, cols int
	}{{"tiny-llama", "llama", 2, 32}, {"tiny-qwen2", "qwen2", 2, 32}} {
		t.Run(c.preset, func(t *testing.T) {
			f := synthFile(t, c.preset, 3)
			layout, err := LayoutOf(f)
			if err != nil {
				t.Fatal(err)
			}
			if len(layout.Windows) != c.layers || layout.Cols != c.cols || slices.ContainsFunc(layout.Windows, func(w int) bool { return w != 0 }) {
				t.Errorf("layout %+v", layout)
			}
			m, err := Load(f, cpu.New(), LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			cfg := m.Config()
			if cfg.Arch != c.arch || cfg.Chat != ChatTemplate || cfg.VocabSize != 300 {
				t.Errorf("config %+v", cfg)
			}
			cache, err := m.NewCache(8)
			if err != nil {
				t.Fatal(err)
			}
			defer cache.Free()
			full, err := m.Forward(cache, []int32{5, 17, 250, 3}, false)
			if err != nil {
				t.Fatal(err)
			}
			full = slices.Clone(full)
			cache.Reset()
			alone, err := m.Forward(cache, []int32{3}, false)
			if err != nil {
				t.Fatal(err)
			}
			if slices.Equal(full, alone) {
				t.Error("the logits do not depend on the earlier tokens")
			}
		})
	}
}
