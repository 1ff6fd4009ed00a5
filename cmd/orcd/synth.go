package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"orcd/gguf"
	"orcd/model"
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

// presetNames lists the presets of every registered architecture.
func presetNames() []string { return model.Presets() }

// synthElements is the number of elements of a synthetic tensor.
func synthElements(t model.SynthTensor) int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
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
	p, arch, ok := model.LookupPreset(o.preset)
	if !ok {
		return fmt.Errorf("unknown preset %q (have %s)", o.preset, strings.Join(presetNames(), ", "))
	}
	ty := model.SynthTypes{Matrix: tensor.Q8_0, Experts: tensor.MXFP4}
	if o.typ != "" {
		t, err := tensor.ParseType(o.typ)
		if err != nil {
			return err
		}
		if !tensor.CanQuantize(t) {
			return fmt.Errorf("--type %s: cannot write that type (supported: F32, F16, BF16, Q8_0, MXFP4)", t)
		}
		ty = model.SynthTypes{Matrix: t, Experts: t}
	}
	vocab, err := tokenizer.VocabGGUF(p.Vocab)
	if err != nil {
		return err
	}
	w := gguf.NewWriter()
	w.SetString("general.architecture", arch.Name)
	w.SetString("general.name", "orcd synthetic "+o.preset)
	tensors := p.Synth(w, len(vocab.Tokens), ty)
	vocab.SetOn(w)
	var total int64
	for _, t := range tensors {
		if err := w.AddTensor(t.Name, t.Type, t.Dims); err != nil {
			return err
		}
		size, err := t.Type.RowSize(synthElements(t))
		if err != nil {
			return fmt.Errorf("tensor %s: %w", t.Name, err)
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
func writeSynthData(ctx context.Context, tw *gguf.TensorWriter, tensors []model.SynthTensor, o synthOptions, total int64) error {
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
			n := synthElements(t)
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
			return fmt.Errorf("tensor %s: %w", tensors[j.tensor].Name, r.err)
		}
		if err := tw.WriteTensor(tensors[j.tensor].Name, r.data); err != nil {
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
func generateChunk(t model.SynthTensor, seed uint64, j synthJob, buf []float32) synthResult {
	r := rand.New(rand.NewPCG(seed, uint64(j.tensor)<<40|uint64(j.chunk)))
	if t.Type == tensor.MXFP4 && t.Std != 0 {
		return synthResult{data: randomMXFP4(r, j.n, t.Std)}
	}
	vals := buf[:j.n]
	if t.Std == 0 {
		for i := range vals {
			vals[i] = t.Fill
		}
	} else {
		// A uniform on [-a, a] has standard deviation a/sqrt(3).
		a := t.Std * float32(math.Sqrt(3))
		for i := range vals {
			vals[i] = (2*r.Float32() - 1) * a
		}
	}
	data, err := tensor.Quantize(t.Type, vals)
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
