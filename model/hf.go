package model

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"orcd/gguf"
	"orcd/safetensors"
	"orcd/tensor"
	"orcd/tokenizer"
)

// Hugging Face checkpoint directories (config.json, *.safetensors, maybe
// sharded with model.safetensors.index.json, and the tokenizer files) are
// read as a GGUF file assembled in memory: the architecture's FromHF sets
// the metadata llama.cpp's converter writes and maps every tensor to its
// GGUF name, type and layout, so loading a directory takes the same path
// as loading a GGUF file, and `orcd convert` writes that file out. Tensors
// that keep their bytes are views into the mapped shards; the others
// (relaid MXFP4 experts, permuted or transposed rows, f32 norms) are built
// when the loader asks for them.

// IsHFDir reports whether path is a directory with a config.json.
func IsHFDir(path string) bool {
	st, err := os.Stat(filepath.Join(path, "config.json"))
	return err == nil && st.Mode().IsRegular()
}

// HFCheckpoint is an HF checkpoint being described as a GGUF file; an
// Arch's FromHF reads its config and maps its tensors.
type HFCheckpoint struct {
	Dir string
	// W receives the GGUF metadata and tensor declarations.
	W       *gguf.Writer
	config  map[string]json.RawMessage
	files   []*safetensors.File
	tensors map[string]hfTensor // HF name → where it lies
	used    map[string]bool
	data    map[string]func() []byte // GGUF name → its bytes
	err     error
}

// hfTensor is a tensor of one shard.
type hfTensor struct {
	f *safetensors.File
	t *safetensors.Tensor
}

// OpenHF reads the checkpoint in dir as a GGUF file. Close the file to
// unmap the shards.
func OpenHF(dir string) (*gguf.File, error) {
	c, err := openCheckpoint(dir)
	if err != nil {
		return nil, err
	}
	f, err := c.assemble()
	if err != nil {
		c.close()
		return nil, err
	}
	return f, nil
}

func openCheckpoint(dir string) (*HFCheckpoint, error) {
	c := &HFCheckpoint{Dir: dir, W: gguf.NewWriter(), tensors: map[string]hfTensor{}, used: map[string]bool{}, data: map[string]func() []byte{}}
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if err := json.Unmarshal(raw, &c.config); err != nil {
		return nil, fmt.Errorf("model: %s: %w", filepath.Join(dir, "config.json"), err)
	}
	shards, err := shardNames(dir)
	if err != nil {
		return nil, err
	}
	for _, name := range shards {
		f, err := safetensors.Open(filepath.Join(dir, name))
		if err != nil {
			c.close()
			return nil, fmt.Errorf("model: %w", err)
		}
		c.files = append(c.files, f)
		for i := range f.Tensors {
			t := &f.Tensors[i]
			if prev, dup := c.tensors[t.Name]; dup {
				c.close()
				return nil, fmt.Errorf("model: %s: tensor %s is in both %s and %s", dir, t.Name, prev.f.Path, f.Path)
			}
			c.tensors[t.Name] = hfTensor{f, t}
		}
	}
	return c, nil
}

// shardNames lists the checkpoint's safetensors files: those the index
// names, else model.safetensors, else every *.safetensors.
func shardNames(dir string) ([]string, error) {
	index := filepath.Join(dir, "model.safetensors.index.json")
	raw, err := os.ReadFile(index)
	switch {
	case err == nil:
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(raw, &idx); err != nil {
			return nil, fmt.Errorf("model: %s: %w", index, err)
		}
		var names []string
		for _, f := range idx.WeightMap {
			if f != filepath.Base(f) || !strings.HasSuffix(f, ".safetensors") {
				return nil, fmt.Errorf("model: %s: shard %q is not a .safetensors file in the directory", index, f)
			}
			if !slices.Contains(names, f) {
				names = append(names, f)
			}
		}
		slices.Sort(names)
		return names, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("model: %w", err)
	}
	if st, err := os.Stat(filepath.Join(dir, "model.safetensors")); err == nil && st.Mode().IsRegular() {
		return []string{"model.safetensors"}, nil // beside it may lie other formats' copies
	}
	names, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil || len(names) == 0 {
		return nil, fmt.Errorf("model: %s: no *.safetensors files", dir)
	}
	for i := range names {
		names[i] = filepath.Base(names[i])
	}
	return names, nil
}

func (c *HFCheckpoint) close() error {
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	c.files = nil
	return errors.Join(errs...)
}

// assemble runs the architecture's FromHF, adds the tokenizer and returns
// the virtual file.
func (c *HFCheckpoint) assemble() (*gguf.File, error) {
	var modelType string
	if err := c.get("model_type", &modelType); err != nil {
		return nil, err
	}
	a, ok := hfTypes[modelType]
	if !ok {
		return nil, fmt.Errorf("model: %s: unsupported model_type %q (supported: %s)",
			c.Dir, modelType, strings.Join(slices.Sorted(maps.Keys(hfTypes)), ", "))
	}
	c.W.SetString("general.architecture", a.Name)
	c.W.SetString("general.name", filepath.Base(filepath.Clean(c.Dir)))
	if err := a.FromHF(c); err != nil {
		return nil, err
	}
	if c.err != nil {
		return nil, c.err
	}
	for name := range c.tensors {
		if !c.used[name] && !hfIgnored(name) {
			return nil, fmt.Errorf("model: %s: %s: tensor %s is not one the architecture uses", c.Dir, a.Name, name)
		}
	}
	if err := c.tokenizer(); err != nil {
		return nil, err
	}
	return c.W.Virtual(c.Dir, func(name string) []byte { return c.data[name]() }, c.close)
}

// hfIgnored names tensors that checkpoints carry but models recompute
// (GPT-2's causal mask buffers, rotary frequency buffers).
func hfIgnored(name string) bool {
	return strings.HasSuffix(name, ".attn.bias") || strings.HasSuffix(name, ".attn.masked_bias") ||
		strings.HasSuffix(name, "rotary_emb.inv_freq")
}

// tokenizer adds the tokenizer.ggml.* metadata and the chat template from
// the tokenizer files, as llama.cpp's converter does.
func (c *HFCheckpoint) tokenizer() error {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(c.Dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return b, err
	}
	tj, err := read("tokenizer.json")
	if err != nil {
		return fmt.Errorf("model: %w", err)
	}
	if tj == nil {
		return nil // a tokenizer can still be given with --tokenizer
	}
	tc, err := read("tokenizer_config.json")
	if err != nil {
		return fmt.Errorf("model: %w", err)
	}
	gc, err := read("generation_config.json")
	if err != nil {
		return fmt.Errorf("model: %w", err)
	}
	v, tmpl, err := tokenizer.HFVocab(tj, tc, gc)
	if err != nil {
		return fmt.Errorf("model: %s: %w", c.Dir, err)
	}
	// llama.cpp takes its vocabulary size from the token list and wants one
	// embedding row per token, so its converter pads the list to config.json's
	// vocab_size with unused "[PAD<id>]" tokens; so do we.
	if n := c.Int("vocab_size", len(v.Tokens)); n > len(v.Tokens) {
		for id := len(v.Tokens); id < n; id++ {
			v.Tokens = append(v.Tokens, fmt.Sprintf("[PAD%d]", id))
			v.TokenTypes = append(v.TokenTypes, tokenizer.TypeUnused)
		}
	}
	v.SetOn(c.W)
	if tmpl == "" {
		// Newer checkpoints keep the template in a file of its own.
		b, err := read("chat_template.jinja")
		if err != nil {
			return fmt.Errorf("model: %w", err)
		}
		tmpl = string(b)
	}
	if tmpl != "" {
		c.W.SetString(tokenizer.KeyChatTemplate, tmpl)
	}
	return nil
}

// get decodes config key into dst; a missing key is an error.
func (c *HFCheckpoint) get(key string, dst any) error {
	raw, ok := c.config[key]
	if !ok || string(raw) == "null" {
		return fmt.Errorf("model: %s: config.json has no %q", c.Dir, key)
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return fmt.Errorf("model: %s: config.json %q: %v", c.Dir, key, err)
	}
	return nil
}

// Has reports whether config.json sets key (to anything but null).
func (c *HFCheckpoint) Has(key string) bool {
	raw, ok := c.config[key]
	return ok && string(raw) != "null"
}

// Int reads a positive integer of config.json, at most 1<<30; with def ≥ 0
// a missing key gives def. The first error is kept (see Err).
func (c *HFCheckpoint) Int(key string, def int) int {
	if def >= 0 && !c.Has(key) {
		return def
	}
	var v float64 // JSON numbers; some writers put 4096.0
	if err := c.get(key, &v); err != nil {
		c.fail(err)
		return 0
	}
	if v != math.Trunc(v) || v < 1 || v > 1<<30 {
		c.fail(fmt.Errorf("model: %s: config.json %q = %v is not a positive integer", c.Dir, key, v))
		return 0
	}
	return int(v)
}

// Float reads a finite number of config.json; a missing key gives def
// unless def is NaN.
func (c *HFCheckpoint) Float(key string, def float64) float64 {
	if !math.IsNaN(def) && !c.Has(key) {
		return def
	}
	var v float64
	if err := c.get(key, &v); err != nil {
		c.fail(err)
		return 0
	}
	return v
}

// Bool reads a boolean of config.json, def when missing.
func (c *HFCheckpoint) Bool(key string, def bool) bool {
	if !c.Has(key) {
		return def
	}
	var v bool
	if err := c.get(key, &v); err != nil {
		c.fail(err)
	}
	return v
}

// RopeParameters returns the rope settings of config.json: transformers 5's
// rope_parameters (which holds rope_theta), else rope_scaling (or nothing)
// with the top-level rope_theta. Missing numbers read as NaN; "type" is
// renamed "rope_type".
func (c *HFCheckpoint) RopeParameters() (theta float64, kind string, nums map[string]float64) {
	var raw map[string]any
	if c.Has("rope_parameters") {
		c.fail(c.get("rope_parameters", &raw))
	} else if c.Has("rope_scaling") {
		c.fail(c.get("rope_scaling", &raw))
	}
	nums = map[string]float64{}
	for k, v := range raw {
		switch x := v.(type) {
		case float64:
			nums[k] = x
		case string:
			if k == "rope_type" || k == "type" {
				kind = x
			}
		}
	}
	theta, ok := nums["rope_theta"]
	if !ok {
		theta = c.Float("rope_theta", 10000)
	}
	return theta, kind, nums
}

func (c *HFCheckpoint) fail(err error) {
	if c.err == nil && err != nil {
		c.err = err
	}
}

// Err is the first error of the config readers and tensor mappings.
func (c *HFCheckpoint) Err() error { return c.err }

// HasTensor reports whether the checkpoint has an HF tensor.
func (c *HFCheckpoint) HasTensor(hf string) bool {
	_, ok := c.tensors[hf]
	return ok
}

// source returns an HF tensor of the given rank and marks it used.
func (c *HFCheckpoint) source(hf string, rank int) (hfTensor, bool) {
	if c.err != nil {
		return hfTensor{}, false
	}
	s, ok := c.tensors[hf]
	switch {
	case !ok:
		c.fail(fmt.Errorf("model: %s: tensor %s is missing", c.Dir, hf))
	case len(s.t.Shape) != rank:
		c.fail(fmt.Errorf("model: %s: tensor %s has shape %v, want %d dims", c.Dir, hf, s.t.Shape, rank))
		ok = false
	}
	c.used[hf] = true
	return s, ok
}

// floatType maps a float dtype to its GGUF type.
func (c *HFCheckpoint) floatType(s hfTensor) (tensor.Type, bool) {
	switch s.t.DType {
	case safetensors.F32:
		return tensor.F32, true
	case safetensors.F16:
		return tensor.F16, true
	case safetensors.BF16:
		return tensor.BF16, true
	}
	c.fail(fmt.Errorf("model: %s: tensor %s is %s, want F32, F16 or BF16", c.Dir, s.t.Name, s.t.DType))
	return 0, false
}

// floatSource is source for a tensor of a float dtype, and its GGUF type.
func (c *HFCheckpoint) floatSource(hf string, rank int) (hfTensor, tensor.Type, bool) {
	s, ok := c.source(hf, rank)
	if !ok {
		return s, 0, false
	}
	typ, ok := c.floatType(s)
	return s, typ, ok
}

// declare adds a GGUF tensor and its producer.
func (c *HFCheckpoint) declare(name string, typ tensor.Type, dims []int64, data func() []byte) {
	if c.err != nil {
		return
	}
	if err := c.W.AddTensor(name, typ, dims); err != nil {
		c.fail(fmt.Errorf("model: %s: %w", c.Dir, err))
		return
	}
	c.data[name] = data
}

// ggmlDims reverses a row-major shape into ggml order.
func ggmlDims(shape []int64) []int64 {
	d := slices.Clone(shape)
	slices.Reverse(d)
	return d
}

// Tensor maps HF tensor hf to GGUF tensor name with the same bytes (an
// HF Linear weight [out, in] is ggml [in, out]). Vectors (norms, biases,
// sinks) are stored as F32, as llama.cpp's converter stores them.
func (c *HFCheckpoint) Tensor(name, hf string) {
	s, ok := c.tensors[hf]
	if !ok {
		c.source(hf, 0) // records the error
		return
	}
	s, typ, ok := c.floatSource(hf, len(s.t.Shape))
	if !ok {
		return
	}
	if len(s.t.Shape) == 1 && typ != tensor.F32 {
		c.declare(name, tensor.F32, ggmlDims(s.t.Shape), func() []byte { return toF32(typ, s.f.Data(s.t)) })
		return
	}
	c.declare(name, typ, ggmlDims(s.t.Shape), func() []byte { return s.f.Data(s.t) })
}

// Transposed maps a 2-D HF tensor stored [in, out] (GPT-2's Conv1D) to a
// GGUF tensor [in, out] in ggml order, transposing its elements.
func (c *HFCheckpoint) Transposed(name, hf string) {
	s, typ, ok := c.floatSource(hf, 2)
	if !ok {
		return
	}
	in, out := s.t.Shape[0], s.t.Shape[1]
	c.declare(name, typ, []int64{in, out}, func() []byte {
		src := s.f.Data(s.t)
		es := int(s.t.DType.Size())
		dst := make([]byte, len(src))
		for i := range int(in) {
			for o := range int(out) {
				copy(dst[(o*int(in)+i)*es:][:es], src[(i*int(out)+o)*es:][:es])
			}
		}
		return dst
	})
}

// Rows maps the rows pick(r) (r counting the GGUF tensor's rows) of a 1-D
// or 2-D HF tensor of rows rows to GGUF tensor name, which has len(rows)
// rows: splitting fused projections and permuting heads.
func (c *HFCheckpoint) Rows(name, hf string, rows []int) {
	s, ok := c.tensors[hf]
	if !ok {
		c.source(hf, 0)
		return
	}
	rank := len(s.t.Shape)
	if s, ok = c.source(hf, rank); !ok {
		return
	}
	typ, ok := c.floatType(s)
	if !ok || rank > 2 {
		c.fail(fmt.Errorf("model: %s: tensor %s: shape %v, want 1 or 2 dims", c.Dir, hf, s.t.Shape))
		return
	}
	rowLen := int64(1)
	if rank == 2 {
		rowLen = s.t.Shape[1]
	}
	if !c.within(hf, "row", rows, s.t.Shape[0]) {
		return
	}
	dims := []int64{rowLen, int64(len(rows))}
	outType := typ
	if rank == 1 {
		dims, outType = []int64{int64(len(rows))}, tensor.F32
	}
	c.declare(name, outType, dims, func() []byte {
		src := s.f.Data(s.t)
		rb := int(rowLen * s.t.DType.Size())
		dst := make([]byte, 0, len(rows)*rb)
		for _, r := range rows {
			dst = append(dst, src[r*rb:(r+1)*rb]...)
		}
		if rank == 1 {
			return toF32(typ, dst)
		}
		return dst
	})
}

// within checks that the indices pick of tensor hf are below n.
func (c *HFCheckpoint) within(hf, what string, pick []int, n int64) bool {
	for _, r := range pick {
		if r < 0 || int64(r) >= n {
			c.fail(fmt.Errorf("model: %s: tensor %s: %s %d of %d", c.Dir, hf, what, r, n))
			return false
		}
	}
	return true
}

// Vector declares a GGUF F32 vector computed by the converter (Llama 3's
// rope_freqs.weight).
func (c *HFCheckpoint) Vector(name string, v []float32) {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	c.declare(name, tensor.F32, []int64{int64(len(v))}, func() []byte { return b })
}

// toF32 converts F16 or BF16 bytes to F32 bytes (F32 bytes are returned
// as they are).
func toF32(typ tensor.Type, src []byte) []byte {
	if typ == tensor.F32 {
		return src
	}
	n := len(src) / 2
	vals := make([]float32, n)
	if err := tensor.Dequantize(typ, src, vals); err != nil {
		panic(err) // the sizes were checked when the tensor was declared
	}
	out, _ := tensor.Quantize(tensor.F32, vals)
	return out
}

// MXFP4Experts maps an HF MXFP4 expert stack (prefix+"_blocks" [E, rows,
// in/32, 16] and prefix+"_scales" [E, rows, in/32], both U8) to the GGUF
// MXFP4 tensor name [in, len(rows), E], taking rows pick of each expert.
// HF packs element 2j in the low nibble of byte j and 2j+1 in the high one;
// ggml packs element j (j < 16) in the low nibble and j+16 in the high one.
// Both scales are E8M0 exponents of the same FP4 code values.
func (c *HFCheckpoint) MXFP4Experts(name, prefix string, rows []int) {
	blocks, ok1 := c.source(prefix+"_blocks", 4)
	scales, ok2 := c.source(prefix+"_scales", 3)
	if !ok1 || !ok2 {
		return
	}
	bs, ss := blocks.t.Shape, scales.t.Shape
	if blocks.t.DType != safetensors.U8 || scales.t.DType != safetensors.U8 || bs[3] != 16 ||
		!slices.Equal(bs[:3], ss) {
		c.fail(fmt.Errorf("model: %s: %s_blocks %s %v and _scales %s %v are not an MXFP4 pair",
			c.Dir, prefix, blocks.t.DType, bs, scales.t.DType, ss))
		return
	}
	nExp, nRows, nBlk := bs[0], bs[1], bs[2]
	if !c.within(prefix, "row", rows, nRows) {
		return
	}
	c.declare(name, tensor.MXFP4, []int64{nBlk * 32, int64(len(rows)), nExp}, func() []byte {
		bd, sd := blocks.f.Data(blocks.t), scales.f.Data(scales.t)
		out := make([]byte, 0, nExp*int64(len(rows))*nBlk*17)
		for e := range nExp {
			for _, r := range rows {
				row := e*nRows + int64(r)
				for k := range nBlk {
					blk := bd[(row*nBlk+k)*16:][:16]
					out = append(out, sd[row*nBlk+k])
					for j := range 16 {
						lo := nibble(blk, j)
						hi := nibble(blk, j+16)
						out = append(out, lo|hi<<4)
					}
				}
			}
		}
		return out
	})
}

// Experts maps an HF stack of float expert matrices to the GGUF tensor
// name [in, len(rows), E], taking output rows `rows` of each expert. HF
// stores the stack [E, in, out] (transformers' GptOssExperts, whose gate_up
// columns interleave) or [E, out, in]; in tells them apart.
func (c *HFCheckpoint) Experts(name, hf string, in int, rows []int) {
	s, typ, ok := c.floatSource(hf, 3)
	if !ok {
		return
	}
	nExp, a, b := s.t.Shape[0], s.t.Shape[1], s.t.Shape[2]
	inOut := a == int64(in) && b != int64(in)
	if !inOut && !(b == int64(in) && a != int64(in)) {
		c.fail(fmt.Errorf("model: %s: tensor %s has shape %v; want [E, %d, out] or [E, out, %d], told apart by %d", c.Dir, hf, s.t.Shape, in, in, in))
		return
	}
	outs := a
	if inOut {
		outs = b
	}
	if !c.within(hf, "output", rows, outs) {
		return
	}
	es := s.t.DType.Size()
	c.declare(name, typ, []int64{int64(in), int64(len(rows)), nExp}, func() []byte {
		src := s.f.Data(s.t)
		dst := make([]byte, 0, nExp*int64(len(rows))*int64(in)*es)
		for e := range nExp {
			base := e * a * b
			for _, r := range rows {
				if !inOut { // a row of [E, out, in] is already the GGUF row
					at := (base + int64(r)*b) * es
					dst = append(dst, src[at:at+b*es]...)
					continue
				}
				for i := range int64(in) { // column r of [E, in, out]
					at := (base + i*b + int64(r)) * es
					dst = append(dst, src[at:at+es]...)
				}
			}
		}
		return dst
	})
}

// nibble is element i of an HF MXFP4 block.
func nibble(blk []byte, i int) byte {
	b := blk[i/2]
	if i%2 == 1 {
		return b >> 4
	}
	return b & 15
}

// Span returns lo, lo+step, … up to n values: rows of a fused projection.
func Span(lo, n, step int) []int {
	r := make([]int, n)
	for i := range r {
		r[i] = lo + i*step
	}
	return r
}

// ExpertBias maps an HF expert bias [E, rows] to the GGUF F32 tensor name
// [len(pick), E], taking columns pick of each expert's row.
func (c *HFCheckpoint) ExpertBias(name, hf string, pick []int) {
	s, typ, ok := c.floatSource(hf, 2)
	if !ok {
		return
	}
	nExp, n := s.t.Shape[0], s.t.Shape[1]
	if !c.within(hf, "column", pick, n) {
		return
	}
	c.declare(name, tensor.F32, []int64{int64(len(pick)), nExp}, func() []byte {
		all := toF32(typ, s.f.Data(s.t))
		out := make([]byte, 0, 4*int64(len(pick))*nExp)
		for e := range nExp {
			for _, r := range pick {
				out = append(out, all[(e*n+int64(r))*4:][:4]...)
			}
		}
		return out
	})
}

// Open opens a model: a GGUF file, or a Hugging Face checkpoint directory
// read as one (OpenHF).
func Open(path string) (*gguf.File, error) {
	if IsHFDir(path) {
		return OpenHF(path)
	}
	return gguf.Open(path)
}
