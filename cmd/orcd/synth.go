package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"orcd/gguf"
	"orcd/tensor"
	"orcd/tokenizer"
)

func init() {
	register(command{
		name:     "synth",
		summary:  "write a random-weight GGUF model of a named preset",
		synopsis: "orcd synth [flags] --preset NAME -o FILE",
		details: `Writes a model with the preset's shape, the real tokenizer of its family
(GPT-2 or o200k_harmony) and uniform random weights scaled to keep
activations finite: the text it generates is gibberish, but it exercises
every code path at the real size. The file depends only on --preset, --seed
and --type. It is streamed to disk and appears under its name only when
complete.`,
		examples: []string{
			"orcd synth --preset tiny-gpt2 -o tiny-gpt2.gguf",
			"orcd synth --preset gpt2-124m --type F16 -o gpt2-124m-f16.gguf",
			"orcd synth --preset gpt-oss-20b --seed 2 -o gpt-oss-20b.gguf",
		},
		setup: setupSynth,
	})
}

// synthPreset is the shape of a synthetic model.
type synthPreset struct {
	arch       string // "gpt2" or "gpt-oss"
	vocab      string // embedded tokenizer vocabulary; its size is the model's vocab
	layers     int
	hidden     int
	heads      int
	kvHeads    int // gpt-oss
	headDim    int
	ff         int // MLP width (gpt2) or expert FFN width (gpt-oss)
	ctx        int
	experts    int // gpt-oss
	expertsUse int // gpt-oss
	window     int // gpt-oss sliding window
	ropeBase   float32
	yarnFactor float32
	yarnOrig   int
}

var synthPresets = map[string]synthPreset{
	"tiny-gpt2": {arch: "gpt2", vocab: tokenizer.VocabGPT2, layers: 2, hidden: 64, heads: 4, headDim: 16, ff: 256, ctx: 1024},
	"gpt2-124m": {arch: "gpt2", vocab: tokenizer.VocabGPT2, layers: 12, hidden: 768, heads: 12, headDim: 64, ff: 3072, ctx: 1024},
	"gpt2-1.5b": {arch: "gpt2", vocab: tokenizer.VocabGPT2, layers: 48, hidden: 1600, heads: 25, headDim: 64, ff: 6400, ctx: 1024},
	"tiny-gpt-oss": {arch: "gpt-oss", vocab: tokenizer.VocabO200kHarmony, layers: 2, hidden: 64, heads: 4, kvHeads: 2,
		headDim: 16, ff: 64, ctx: 131072, experts: 4, expertsUse: 2, window: 128,
		ropeBase: 150000, yarnFactor: 32, yarnOrig: 4096},
	"gpt-oss-20b": {arch: "gpt-oss", vocab: tokenizer.VocabO200kHarmony, layers: 24, hidden: 2880, heads: 64, kvHeads: 8,
		headDim: 64, ff: 2880, ctx: 131072, experts: 32, expertsUse: 4, window: 128,
		ropeBase: 150000, yarnFactor: 32, yarnOrig: 4096},
}

// presetNames lists the presets, sorted.
func presetNames() []string {
	return slices.Sorted(maps.Keys(synthPresets))
}

// synthTensor is one tensor to generate: uniform random values of standard
// deviation std (0 for a constant tensor of value fill).
type synthTensor struct {
	name string
	typ  tensor.Type
	dims []int64 // ggml order
	std  float32
	fill float32
}

func (t synthTensor) elements() int64 {
	n := int64(1)
	for _, d := range t.dims {
		n *= d
	}
	return n
}

// synthTypes are the storage types of a synthetic model: the ggml-org layout
// (Q8_0 matrices, MXFP4 experts, F32 for the rest), or one type for every
// matrix when --type is given.
type synthTypes struct {
	matrix, experts tensor.Type
}

// synthTensors lists a preset's tensors in file order, with weight scales
// that keep activations finite through every layer: GPT-2's own
// initialization (std 0.02, residual projections scaled by 1/sqrt(2·layers)),
// and 1/sqrt(fan-in) for gpt-oss, whose RMSNorms rescale each block's input.
func synthTensors(p synthPreset, vocab int, ty synthTypes) []synthTensor {
	h, L := int64(p.hidden), p.layers
	var ts []synthTensor
	add := func(name string, typ tensor.Type, std, fill float32, dims ...int64) {
		ts = append(ts, synthTensor{name: name, typ: typ, dims: dims, std: std, fill: fill})
	}
	inv := func(n int64) float32 { return float32(1 / math.Sqrt(float64(n))) }
	switch p.arch {
	case "gpt2":
		ff := int64(p.ff)
		resid := float32(0.02 / math.Sqrt(2*float64(L)))
		add("token_embd.weight", ty.matrix, 0.02, 0, h, int64(vocab))
		add("position_embd.weight", tensor.F32, 0.01, 0, h, int64(p.ctx))
		for l := range L {
			b := fmt.Sprintf("blk.%d.", l)
			add(b+"attn_norm.weight", tensor.F32, 0, 1, h)
			add(b+"attn_norm.bias", tensor.F32, 0, 0, h)
			add(b+"attn_qkv.weight", ty.matrix, 0.02, 0, h, 3*h)
			add(b+"attn_qkv.bias", tensor.F32, 0, 0, 3*h)
			add(b+"attn_output.weight", ty.matrix, resid, 0, h, h)
			add(b+"attn_output.bias", tensor.F32, 0, 0, h)
			add(b+"ffn_norm.weight", tensor.F32, 0, 1, h)
			add(b+"ffn_norm.bias", tensor.F32, 0, 0, h)
			add(b+"ffn_up.weight", ty.matrix, 0.02, 0, h, ff)
			add(b+"ffn_up.bias", tensor.F32, 0, 0, ff)
			add(b+"ffn_down.weight", ty.matrix, resid, 0, ff, h)
			add(b+"ffn_down.bias", tensor.F32, 0, 0, h)
		}
		add("output_norm.weight", tensor.F32, 0, 1, h)
		add("output_norm.bias", tensor.F32, 0, 0, h)
	case "gpt-oss":
		q, kv := int64(p.heads*p.headDim), int64(p.kvHeads*p.headDim)
		ff, e := int64(p.ff), int64(p.experts)
		add("token_embd.weight", ty.matrix, 1, 0, h, int64(vocab))
		for l := range L {
			b := fmt.Sprintf("blk.%d.", l)
			add(b+"attn_norm.weight", tensor.F32, 0, 1, h)
			add(b+"attn_q.weight", ty.matrix, inv(h), 0, h, q)
			add(b+"attn_q.bias", tensor.F32, 0.02, 0, q)
			add(b+"attn_k.weight", ty.matrix, inv(h), 0, h, kv)
			add(b+"attn_k.bias", tensor.F32, 0.02, 0, kv)
			add(b+"attn_v.weight", ty.matrix, inv(h), 0, h, kv)
			add(b+"attn_v.bias", tensor.F32, 0.02, 0, kv)
			add(b+"attn_output.weight", ty.matrix, inv(q), 0, q, h)
			add(b+"attn_output.bias", tensor.F32, 0.02, 0, h)
			add(b+"attn_sinks.weight", tensor.F32, 1, 0, int64(p.heads))
			add(b+"post_attention_norm.weight", tensor.F32, 0, 1, h)
			add(b+"ffn_gate_inp.weight", tensor.F32, inv(h), 0, h, e)
			add(b+"ffn_gate_inp.bias", tensor.F32, 0.02, 0, e)
			add(b+"ffn_gate_exps.weight", ty.experts, inv(h), 0, h, ff, e)
			add(b+"ffn_gate_exps.bias", tensor.F32, 0.02, 0, ff, e)
			add(b+"ffn_up_exps.weight", ty.experts, inv(h), 0, h, ff, e)
			add(b+"ffn_up_exps.bias", tensor.F32, 0.02, 0, ff, e)
			add(b+"ffn_down_exps.weight", ty.experts, inv(ff), 0, ff, h, e)
			add(b+"ffn_down_exps.bias", tensor.F32, 0.02, 0, h, e)
		}
		add("output_norm.weight", tensor.F32, 0, 1, h)
		add("output.weight", ty.matrix, inv(h), 0, h, int64(vocab))
	}
	return ts
}

// synthMetadata sets the architecture keys llama.cpp reads for the preset.
func synthMetadata(w *gguf.Writer, name string, p synthPreset) {
	w.SetString("general.architecture", p.arch)
	w.SetString("general.name", "orcd synthetic "+name)
	a := p.arch + "."
	w.SetUint32(a+"block_count", uint32(p.layers))
	w.SetUint32(a+"context_length", uint32(p.ctx))
	w.SetUint32(a+"embedding_length", uint32(p.hidden))
	w.SetUint32(a+"feed_forward_length", uint32(p.ff))
	w.SetUint32(a+"attention.head_count", uint32(p.heads))
	switch p.arch {
	case "gpt2":
		w.SetFloat32(a+"attention.layer_norm_epsilon", 1e-5)
	case "gpt-oss":
		w.SetUint32(a+"attention.head_count_kv", uint32(p.kvHeads))
		w.SetUint32(a+"attention.key_length", uint32(p.headDim))
		w.SetUint32(a+"attention.value_length", uint32(p.headDim))
		w.SetUint32(a+"attention.sliding_window", uint32(p.window))
		w.SetFloat32(a+"attention.layer_norm_rms_epsilon", 1e-5)
		w.SetFloat32(a+"rope.freq_base", p.ropeBase)
		w.SetString(a+"rope.scaling.type", "yarn")
		w.SetFloat32(a+"rope.scaling.factor", p.yarnFactor)
		w.SetUint32(a+"rope.scaling.original_context_length", uint32(p.yarnOrig))
		w.SetUint32(a+"expert_count", uint32(p.experts))
		w.SetUint32(a+"expert_used_count", uint32(p.expertsUse))
		w.SetUint32(a+"expert_feed_forward_length", uint32(p.ff))
	}
}

// synthOptions configure synthesize.
type synthOptions struct {
	preset   string
	seed     uint64
	typ      string // "" for the ggml-org layout, else the type of every matrix
	workers  int    // 0 means runtime.NumCPU()
	progress func(done, total int64)
}

// synthesize writes the preset's GGUF to path, streaming: tensors are
// generated in chunks by parallel workers and written in order, so memory
// stays a few chunks per worker whatever the model size. The file appears
// under its name only when complete.
func synthesize(ctx context.Context, path string, o synthOptions) error {
	p, ok := synthPresets[o.preset]
	if !ok {
		return fmt.Errorf("unknown preset %q (have %s)", o.preset, strings.Join(presetNames(), ", "))
	}
	ty := synthTypes{matrix: tensor.Q8_0, experts: tensor.MXFP4}
	if o.typ != "" {
		t, err := tensor.ParseType(o.typ)
		if err != nil {
			return err
		}
		if !tensor.CanQuantize(t) {
			return fmt.Errorf("--type %s: cannot write that type (supported: F32, F16, BF16, Q8_0, MXFP4)", t)
		}
		ty = synthTypes{matrix: t, experts: t}
	}
	vocab, err := tokenizer.VocabGGUF(p.vocab)
	if err != nil {
		return err
	}
	w := gguf.NewWriter()
	synthMetadata(w, o.preset, p)
	vocab.SetOn(w)
	tensors := synthTensors(p, len(vocab.Tokens), ty)
	var total int64
	for _, t := range tensors {
		if err := w.AddTensor(t.name, t.typ, t.dims); err != nil {
			return err
		}
		size, err := t.typ.RowSize(t.elements())
		if err != nil {
			return fmt.Errorf("tensor %s: %w", t.name, err)
		}
		total += size
	}

	// A unique temporary name: two processes synthesizing the same path
	// must not write into one file.
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 8<<20)
	tw, err := w.Begin(bw)
	if err != nil {
		return err
	}
	if err := writeSynthData(ctx, tw, tensors, o, total); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	f = nil
	return os.Rename(tmp, path)
}

// synthChunk is the number of elements one worker generates at a time (a
// whole number of blocks of every type).
const synthChunk = 1 << 20

// synthJob is one chunk of one tensor; its result arrives on out.
type synthJob struct {
	tensor int
	chunk  int64
	n      int64
	out    chan synthResult
}

type synthResult struct {
	data []byte
	err  error
}

// writeSynthData generates every tensor's data with parallel workers and
// writes the chunks in file order. Each chunk has its own random stream
// (seed, tensor, chunk), so the file does not depend on the worker count.
func writeSynthData(ctx context.Context, tw *gguf.TensorWriter, tensors []synthTensor, o synthOptions, total int64) error {
	workers := o.workers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan synthJob)
	order := make(chan synthJob, 2*workers) // bounds the chunks in flight
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]float32, synthChunk)
			for j := range work {
				j.out <- generateChunk(tensors[j.tensor], o.seed, j, buf)
			}
		}()
	}
	go func() {
		defer close(order)
		defer close(work)
		for i, t := range tensors {
			n := t.elements()
			for c := int64(0); c*synthChunk < n; c++ {
				j := synthJob{tensor: i, chunk: c, n: min(synthChunk, n-c*synthChunk), out: make(chan synthResult, 1)}
				select {
				case order <- j:
				case <-ctx.Done():
					return
				}
				select {
				case work <- j:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	defer wg.Wait()
	var done int64
	for j := range order {
		var r synthResult
		select {
		case r = <-j.out:
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.err != nil {
			return fmt.Errorf("tensor %s: %w", tensors[j.tensor].name, r.err)
		}
		if err := tw.WriteTensor(tensors[j.tensor].name, r.data); err != nil {
			return err
		}
		done += int64(len(r.data))
		if o.progress != nil {
			o.progress(done, total)
		}
	}
	return ctx.Err()
}

// generateChunk fills one chunk with uniform values of the tensor's standard
// deviation (or its constant) and encodes it in the tensor's type.
func generateChunk(t synthTensor, seed uint64, j synthJob, buf []float32) synthResult {
	r := rand.New(rand.NewPCG(seed, uint64(j.tensor)<<40|uint64(j.chunk)))
	if t.typ == tensor.MXFP4 && t.std != 0 {
		return synthResult{data: randomMXFP4(r, j.n, t.std)}
	}
	vals := buf[:j.n]
	if t.std == 0 {
		for i := range vals {
			vals[i] = t.fill
		}
	} else {
		// A uniform on [-a, a] has standard deviation a/sqrt(3).
		a := t.std * float32(math.Sqrt(3))
		for i := range vals {
			vals[i] = (2*r.Float32() - 1) * a
		}
	}
	data, err := tensor.Quantize(t.typ, vals)
	return synthResult{data: data, err: err}
}

// randomMXFP4 returns n values in MXFP4 blocks drawn directly in the format:
// uniformly random 4-bit codes under one shared exponent chosen so that the
// values' standard deviation is within a factor √2 of std. Quantizing
// floats instead costs most of the time of writing gpt-oss-20b, whose
// experts are 95% of its weights.
func randomMXFP4(r *rand.Rand, n int64, std float32) []byte {
	codes := tensor.MXFP4DoubledValues()
	var meanSquare float64
	for _, c := range codes {
		meanSquare += float64(c) * float64(c) / 4 / float64(len(codes))
	}
	// Values are code × 2^(e-127); pick e so that rms(code) × 2^(e-127) ≈ std.
	e := 127 + math.Round(math.Log2(float64(std)/math.Sqrt(meanSquare)))
	exp := byte(min(max(e, 1), 254))
	const blockBytes = 17
	out := make([]byte, n/32*blockBytes)
	for b := 0; b < len(out); b += blockBytes {
		out[b] = exp
		binary.LittleEndian.PutUint64(out[b+1:], r.Uint64())
		binary.LittleEndian.PutUint64(out[b+9:], r.Uint64())
	}
	return out
}

// synthTypeNames are the types --type accepts: those tensor can quantize to.
func synthTypeNames() []string {
	var names []string
	for _, t := range tensor.Types() {
		if tensor.CanQuantize(t) {
			names = append(names, t.String())
		}
	}
	return names
}

func setupSynth(fs *flag.FlagSet) func(*env) int {
	preset := choiceFlag(fs, "preset", "", presetNames(), "model preset")
	out := fs.String("o", "", "output GGUF `FILE`")
	seed := fs.Uint64("seed", 1, "random seed (the same seed gives the same file)")
	typ := choiceFlag(fs, "type", "", synthTypeNames(), "store every weight matrix as this type (default: Q8_0 matrices and MXFP4 experts)")
	workers := numFlag(fs, "threads", 0, 0, noMax, "generator threads (0: one per CPU)")
	return func(e *env) int {
		if *preset == "" || *out == "" {
			return e.usageError("need --preset and -o")
		}
		start := time.Now()
		err := synthesize(context.Background(), *out, synthOptions{
			preset: *preset, seed: *seed, typ: *typ, workers: *workers,
			progress: progressLine(e.stderr, "synth "+*preset),
		})
		if err != nil {
			return e.fail(err)
		}
		st, err := os.Stat(*out)
		if err != nil {
			return e.fail(err)
		}
		fmt.Fprintf(e.stdout, "wrote %s: preset %s, seed %d, %s in %.1f s\n", *out, *preset, *seed, humanBytes(st.Size()), time.Since(start).Seconds())
		return 0
	}
}
