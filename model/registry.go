package model

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"orcd/backend"
	"orcd/gguf"
	"orcd/tensor"
)

// The architecture registry: each architecture's file registers an Arch in
// its init function, and everything outside this package (loading, the
// memory estimate, the chat format, synthetic models, checkpoint
// conversion) asks the registry instead of naming architectures.

// ChatFormat says how an architecture's chat prompts are written.
type ChatFormat string

// The chat formats.
const (
	// ChatPlain is plain "User:"/"Assistant:" text, for models trained
	// without a chat format (gpt2).
	ChatPlain ChatFormat = "plain"
	// ChatHarmony is OpenAI's harmony format (gpt-oss).
	ChatHarmony ChatFormat = "harmony"
	// ChatTemplate is the model's own Jinja chat template, from GGUF
	// tokenizer.chat_template or tokenizer_config.json.
	ChatTemplate ChatFormat = "template"
)

// Arch is one architecture.
type Arch struct {
	// Name is general.architecture as llama.cpp writes it.
	Name string
	// Aliases are other general.architecture values that mean the same
	// architecture (ollama's "gptoss").
	Aliases []string
	// HFModelTypes are the model_type values of HF config.json files.
	HFModelTypes []string
	// Chat is the architecture's chat format.
	Chat ChatFormat
	// Load reads the hyperparameters from f's metadata (whose keys start
	// with arch, the name f uses), checks every tensor and uploads them.
	Load func(f *gguf.File, arch string, be backend.Backend, opts LoadOptions) (Model, error)
	// Layout is the KV layout Load's model will have, from metadata alone
	// (memory estimates before loading).
	Layout func(f *gguf.File, arch string) (KVLayout, error)
	// FromHF describes an HF checkpoint as a GGUF file: it sets the
	// metadata keys llama.cpp's converter writes and maps each tensor to
	// its GGUF name, type and layout.
	FromHF func(c *HFCheckpoint) error
	// Presets are synthetic models of this architecture, by name.
	Presets map[string]Preset
}

// Preset is the shape of a synthetic model.
type Preset struct {
	// Vocab names the embedded tokenizer vocabulary the model carries
	// (tokenizer.VocabGGUF); its size is the model's vocabulary.
	Vocab string
	// Synth sets the metadata keys on w and lists the tensors, in file
	// order, for a vocabulary of vocab tokens.
	Synth func(w *gguf.Writer, vocab int, types SynthTypes) []SynthTensor
}

// SynthTypes are the storage types of a synthetic model's weight matrices
// and of its experts; norms and biases are F32.
type SynthTypes struct {
	Matrix, Experts tensor.Type
}

// SynthTensor is one tensor of a synthetic model: uniform random values of
// standard deviation Std, or the constant Fill when Std is 0.
type SynthTensor struct {
	Name string
	Type tensor.Type
	Dims []int64 // ggml order
	Std  float32
	Fill float32
}

var (
	arches  = map[string]*Arch{} // by name and alias
	hfTypes = map[string]*Arch{}
	presets = map[string]*Arch{}
)

// Register adds an architecture. It panics on a name, alias, model type or
// preset already taken: registrations are init-time code.
func Register(a Arch) {
	p := &a
	claim := func(m map[string]*Arch, key, what string) {
		if _, dup := m[key]; dup {
			panic(fmt.Sprintf("model: %s %q registered twice", what, key))
		}
		m[key] = p
	}
	claim(arches, a.Name, "architecture")
	for _, n := range a.Aliases {
		claim(arches, n, "architecture")
	}
	for _, n := range a.HFModelTypes {
		claim(hfTypes, n, "HF model type")
	}
	for n := range a.Presets {
		claim(presets, n, "preset")
	}
}

// Architectures lists the general.architecture values Load accepts, sorted.
func Architectures() []string { return slices.Sorted(maps.Keys(arches)) }

// Presets lists the synthetic model presets of every architecture, sorted.
func Presets() []string { return slices.Sorted(maps.Keys(presets)) }

// LookupPreset returns a preset and its architecture.
func LookupPreset(name string) (Preset, *Arch, bool) {
	a, ok := presets[name]
	if !ok {
		return Preset{}, nil, false
	}
	return a.Presets[name], a, true
}

// archOf returns the architecture of f and the name f gives it.
func archOf(f *gguf.File) (*Arch, string, error) {
	name, err := f.GetString("general.architecture")
	if err != nil {
		return nil, "", fmt.Errorf("model: %w", err)
	}
	a, ok := arches[name]
	if !ok {
		return nil, "", fmt.Errorf("model: %s: unsupported architecture %q (supported: %s)",
			f.Path, name, strings.Join(Architectures(), ", "))
	}
	return a, name, nil
}

// ArchOf returns the architecture of f's general.architecture.
func ArchOf(f *gguf.File) (*Arch, error) {
	a, _, err := archOf(f)
	return a, err
}

// LayoutOf returns the KV layout the model in f will have.
func LayoutOf(f *gguf.File) (KVLayout, error) {
	a, name, err := archOf(f)
	if err != nil {
		return KVLayout{}, err
	}
	return a.Layout(f, name)
}

// synthList collects a preset's tensors.
type synthList []SynthTensor

func (l *synthList) add(name string, typ tensor.Type, std, fill float32, dims ...int64) {
	*l = append(*l, SynthTensor{Name: name, Type: typ, Dims: dims, Std: std, Fill: fill})
}

// norm adds prefix.weight of ones and, with bias, prefix.bias of zeros.
func (l *synthList) norm(prefix string, n int64, bias bool) {
	l.add(prefix+".weight", tensor.F32, 0, 1, n)
	if bias {
		l.add(prefix+".bias", tensor.F32, 0, 0, n)
	}
}

// invSqrt is 1/sqrt(n), the std that keeps a product of fan-in n at unit
// scale.
func invSqrt(n int64) float32 { return float32(1 / math.Sqrt(float64(n))) }
