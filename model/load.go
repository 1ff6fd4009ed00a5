package model

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"orcd/backend"
	"orcd/gguf"
	"orcd/tensor"
)

// DefaultMaxBatch is the number of tokens one Forward step processes when
// LoadOptions.MaxBatch is zero. Longer inputs are split into steps of this
// size.
const DefaultMaxBatch = 512

// LoadOptions configures Load.
type LoadOptions struct {
	// MaxBatch is the largest number of tokens one forward step processes;
	// Forward splits longer inputs. It also sizes the ring of rows that
	// sliding-window layers keep (Window + MaxBatch - 1). Zero means
	// DefaultMaxBatch.
	MaxBatch int
	// Progress, if set, is called after each uploaded tensor with the bytes
	// uploaded so far and the total, for progress bars and logs.
	Progress func(done, total int64)
}

// Load uploads the weights of the model in f to be and returns its adapter,
// chosen by general.architecture from the registry. It checks every
// metadata key and tensor shape the adapter uses and names the first that
// is missing or wrong. The file may be closed once Load returns.
func Load(f *gguf.File, be backend.Backend, opts LoadOptions) (Model, error) {
	a, name, err := archOf(f)
	if err != nil {
		return nil, err
	}
	if opts.MaxBatch < 0 {
		return nil, fmt.Errorf("model: MaxBatch %d is negative", opts.MaxBatch)
	}
	if opts.MaxBatch == 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	return a.Load(f, name, be, opts)
}

// metadata reads the hyperparameters of one architecture, whose keys all
// start with "<arch>.".
type metadata struct {
	f      *gguf.File
	prefix string
}

// count reads a positive integer key, at most max.
func (m metadata) count(key string, max int) (int, error) {
	v, err := m.f.GetUint32(m.prefix + key)
	if err != nil {
		return 0, fmt.Errorf("model: %w", err)
	}
	if v == 0 || int64(v) > int64(max) {
		return 0, fmt.Errorf("model: %s: key %q: value %d out of range [1, %d]", m.f.Path, m.prefix+key, v, max)
	}
	return int(v), nil
}

// optionalCount reads an integer key that may be absent (then def).
func (m metadata) optionalCount(key string, def, max int) (int, error) {
	if !m.f.Has(m.prefix + key) {
		return def, nil
	}
	return m.count(key, max)
}

// positive reads a finite float key greater than zero.
func (m metadata) positive(key string) (float32, error) {
	v, err := m.f.GetFloat32(m.prefix + key)
	if err != nil {
		return 0, fmt.Errorf("model: %w", err)
	}
	if !(v > 0) || math.IsInf(float64(v), 0) {
		return 0, fmt.Errorf("model: %s: key %q: value %g must be finite and positive", m.f.Path, m.prefix+key, v)
	}
	return v, nil
}

// optionalPositive reads a float key that may be absent (then def).
func (m metadata) optionalPositive(key string, def float32) (float32, error) {
	if _, err := m.f.GetFloat32(m.prefix + key); errors.Is(err, gguf.ErrMissingKey) {
		return def, nil
	}
	return m.positive(key)
}

// readVocab returns the vocabulary size, the rows of token_embd.weight,
// whose dims are [hidden vocab] in ggml order.
func readVocab(f *gguf.File, arch string, hidden int) (int, error) {
	embd, ok := f.Tensor("token_embd.weight")
	if !ok {
		return 0, fmt.Errorf("model: %s: %s: tensor token_embd.weight is missing", f.Path, arch)
	}
	if len(embd.Dims) != 2 || embd.Dims[1] < 1 || embd.Dims[1] > math.MaxInt32 {
		return 0, fmt.Errorf("model: %s: %s: tensor token_embd.weight has dims %v, want [%d vocab]",
			f.Path, arch, embd.Dims, hidden)
	}
	return int(embd.Dims[1]), nil
}

// weights uploads tensors of one file to a backend, checking each one's type
// and shape, and keeps them so that a failed load can free what it took. It
// records the first error and then loads nothing more, so that a model's
// tensors read as a list with one check at the end (finish).
type weights struct {
	f        *gguf.File
	be       backend.Backend
	arch     string
	done     int64
	total    int64
	progress func(done, total int64)
	tensors  []backend.Tensor
	err      error
}

func newWeights(f *gguf.File, be backend.Backend, arch string, progress func(done, total int64)) *weights {
	w := &weights{f: f, be: be, arch: arch, progress: progress}
	for _, ti := range f.Tensors {
		w.total += ti.Size
	}
	return w
}

// has reports whether the file holds a tensor of one of the names.
func (w *weights) has(names ...string) bool {
	for _, n := range names {
		if _, ok := w.f.Tensor(n); ok {
			return true
		}
	}
	return false
}

// load uploads the first tensor found among names (alternative spellings of
// one tensor), after checking that its dims are want (ggml order) and, if
// f32 is set, that it is stored as F32 (norms, biases, sinks). After an
// error it returns nil.
func (w *weights) load(f32 bool, want []int, names ...string) backend.Tensor {
	if w.err != nil {
		return nil
	}
	t, err := w.upload(f32, want, names...)
	w.err = err
	return t
}

func (w *weights) upload(f32 bool, want []int, names ...string) (backend.Tensor, error) {
	var ti *gguf.TensorInfo
	for _, n := range names {
		if t, ok := w.f.Tensor(n); ok {
			ti = t
			break
		}
	}
	if ti == nil {
		what := names[0]
		if len(names) > 1 {
			what += " (or " + strings.Join(names[1:], ", ") + ")"
		}
		return nil, fmt.Errorf("model: %s: %s: tensor %s is missing", w.f.Path, w.arch, what)
	}
	dims := make([]int, len(ti.Dims))
	for i, d := range ti.Dims {
		dims[i] = int(d)
	}
	if !slices.Equal(dims, want) {
		return nil, fmt.Errorf("model: %s: %s: tensor %s has dims %v, want %v", w.f.Path, w.arch, ti.Name, dims, want)
	}
	if f32 && ti.Type != tensor.F32 {
		return nil, fmt.Errorf("model: %s: %s: tensor %s is %s, want F32", w.f.Path, w.arch, ti.Name, ti.Type)
	}
	if size, err := ti.Type.RowSize(ti.Elements()); err != nil || size != ti.Size {
		return nil, fmt.Errorf("model: %s: %s: tensor %s: %d bytes do not hold %v elements of %s",
			w.f.Path, w.arch, ti.Name, ti.Size, dims, ti.Type)
	}
	data := w.f.TensorData(ti)
	if int64(len(data)) != ti.Size {
		return nil, fmt.Errorf("model: %s: tensor %s: data unavailable (file closed?)", w.f.Path, ti.Name)
	}
	t, err := w.be.Upload(ti.Name, ti.Type, dims, data)
	if err != nil {
		return nil, fmt.Errorf("model: uploading %s: %w", ti.Name, err)
	}
	w.tensors = append(w.tensors, t)
	w.done += ti.Size
	if w.progress != nil {
		w.progress(w.done, w.total)
	}
	return t, nil
}

// finish returns the uploaded tensors, which the model now owns, and
// reports completion; or, after an error, frees them and returns it.
func (w *weights) finish() ([]backend.Tensor, error) {
	if w.err != nil {
		for _, t := range w.tensors {
			w.be.Free(t)
		}
		w.tensors = nil
		return nil, w.err
	}
	if w.progress != nil {
		w.progress(w.total, w.total)
	}
	return w.tensors, nil
}

// layerLoader binds the tensor names of one block ("blk.N.").
type layerLoader struct {
	w     *weights
	layer int
}

// get loads blk.N.<name> (or an alternative spelling).
func (l layerLoader) get(f32 bool, want []int, names ...string) backend.Tensor {
	full := make([]string, len(names))
	for i, n := range names {
		full[i] = fmt.Sprintf("blk.%d.%s", l.layer, n)
	}
	return l.w.load(f32, want, full...)
}

// has reports whether the file holds blk.N.<name>.
func (l layerLoader) has(name string) bool {
	return l.w.has(fmt.Sprintf("blk.%d.%s", l.layer, name))
}
