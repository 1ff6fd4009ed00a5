package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"orcd/backend"
	"orcd/model"
)

func init() {
	register(command{
		name:     "bench",
		summary:  "measure load time, prefill and decode speed, time to first token and VRAM (like llama-bench)",
		synopsis: "orcd bench [flags]",
		details: `Each test runs once untimed, then --reps times: ppN prefills N random
tokens into an empty cache (its mean time is also the time to first token),
tgN decodes N tokens one step at a time; tgNxB (with -b) decodes N tokens
of B sequences at once, each after a prompt of --bp tokens, one step a token
of every sequence (continuous batching's decode steps; the tokens are drawn
on the device when the backend can), and reports the tokens of all the
sequences per second. The table shows mean ± standard deviation of tokens
per second.`,
		examples: []string{
			"orcd bench --model gpt2-124m.gguf --device cpu",
			"orcd bench --model gpt-oss-20b.gguf -p 512 -n 128 --reps 5 --json",
			`orcd bench --model gpt2.gguf -p "" -n 64 # decode only`,
			`orcd bench --model gpt-oss-20b.gguf -p "" -n 64 -b 1,8,64,256 # batched decode`,
		},
		setup: setupBench,
	})
}

// benchResult is one row of the bench table.
type benchResult struct {
	Model       string  `json:"model"`
	Backend     string  `json:"backend"`
	Device      string  `json:"device"`
	Test        string  `json:"test"` // "pp512" (prefill of 512 tokens) or "tg128" (128 decode steps)
	Tokens      int     `json:"tokens"`
	Reps        int     `json:"reps"`
	TokPerSec   float64 `json:"tok_per_s"`
	TokPerSecSD float64 `json:"tok_per_s_sd"`
	TTFTms      float64 `json:"ttft_ms,omitempty"` // prefill rows: time from the prompt to the first logits
	LoadSeconds float64 `json:"load_s"`
	CtxSize     int     `json:"ctx_size"`
	MaxBatch    int     `json:"max_batch"`
	VRAMBytes   int64   `json:"vram_bytes"` // most device memory held (tensors and workspace); 0 on cpu
}

// kernelProfiler is implemented by the cuda backend; its report is empty
// unless ORCD_CUDA_PROFILE is set.
type kernelProfiler interface {
	ProfileReport() string
}

// deviceMemory is implemented by backends that hold device memory (cuda).
type deviceMemory interface {
	PeakDeviceBytes() int64
	DeviceName() string
}

func setupBench(fs *flag.FlagSet) func(*env) int {
	mf := addModelFlags(fs, "fast")
	lf := addLogFlags(fs, "text")
	prompts := fs.String("p", "512,2048", "comma-separated prompt `LENGTHS` to prefill (empty: none)")
	gen := numFlag(fs, "n", 128, 0, noMax, "decode steps to time (0: none)")
	reps := numFlag(fs, "reps", 3, 1, noMax, "timed repetitions of each test, after one untimed warm-up")
	batches := fs.String("b", "", "comma-separated `COUNTS` of sequences that decode -n tokens together (empty: none)")
	batchPrompt := numFlag(fs, "bp", 512, 1, noMax, "prompt tokens of each sequence before the batched decode")
	asJSON := fs.Bool("json", false, "print JSON instead of a markdown table")
	seed := fs.Uint64("seed", 1, "seed of the random prompt tokens")
	return func(e *env) int {
		lengths, err := parseLengths("-p", *prompts)
		if err != nil {
			return e.usageError("%v", err)
		}
		counts, err := parseLengths("-b", *batches)
		if err != nil {
			return e.usageError("%v", err)
		}
		if len(lengths) == 0 && *gen == 0 {
			return e.usageError("nothing to measure: -p is empty and -n is 0")
		}
		if len(counts) > 0 && *gen == 0 {
			return e.usageError("-b needs decode steps: -n is 0")
		}
		return runBench(e, mf, lf, benchSpec{lengths, *gen, *reps, *seed, *asJSON, counts, *batchPrompt})
	}
}

// parseLengths parses bench's -p or -b: comma-separated positive counts.
func parseLengths(flag, s string) ([]int, error) {
	var lengths []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.Atoi(f)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%s %q: %q is not a positive number", flag, s, f)
		}
		lengths = append(lengths, v)
	}
	return lengths, nil
}

// benchSpec is what bench measures, from its flags.
type benchSpec struct {
	lengths   []int // prompt lengths to prefill
	gen, reps int   // decode steps; timed repetitions of each test
	seed      uint64
	asJSON    bool
	batches   []int // sequences of the batched decode tests
	prompt    int   // their prompt length
}

// runBench loads the model and runs the tests of spec.
func runBench(e *env, mf *modelFlags, lf *logFlags, spec benchSpec) int {
	stdout, stderr := e.stdout, e.stderr
	lengths, gen, reps, seed, asJSON := spec.lengths, spec.gen, spec.reps, spec.seed, spec.asJSON
	fail := func(format string, a ...any) int { return e.fail(fmt.Errorf(format, a...)) }
	log := lf.logger(stderr)
	start := time.Now()
	lm, err := loadModel(mf, false, log, stderr)
	if err != nil {
		return fail("%v", err)
	}
	defer lm.Close()
	loadSeconds := time.Since(start).Seconds()
	printProfile(lm, "load", stderr)
	cfg := lm.Model.Config()
	longest := gen
	for _, p := range lengths {
		longest = max(longest, p)
	}
	if len(spec.batches) > 0 {
		longest = max(longest, spec.prompt+gen)
	}
	if longest > lm.CtxSize {
		return fail("a test needs %d tokens but --ctx-size is %d", longest, lm.CtxSize)
	}

	cache, err := lm.Model.NewCache(lm.CtxSize)
	if err != nil {
		return fail("%v", err)
	}
	defer cache.Free()
	rng := rand.New(rand.NewPCG(seed, 0))
	tokens := make([]int32, longest)
	for i := range tokens {
		tokens[i] = int32(rng.IntN(cfg.VocabSize))
	}

	row := func(test string, n int, secs []float64) benchResult {
		rates := make([]float64, len(secs))
		for i, s := range secs {
			rates[i] = float64(n) / s
		}
		mean, sd := meanSD(rates)
		r := benchResult{Model: cfg.Name, Backend: lm.Backend.Name(), Device: lm.Backend.Name(), Test: test, Tokens: n,
			Reps: len(secs), TokPerSec: mean, TokPerSecSD: sd, LoadSeconds: loadSeconds, CtxSize: lm.CtxSize, MaxBatch: mf.maxBatch}
		if r.Model == "" {
			r.Model = cfg.Arch
		}
		if dm, ok := lm.Backend.(deviceMemory); ok {
			r.Device = dm.DeviceName()
		}
		return r
	}
	var results []benchResult
	for _, p := range lengths {
		var secs []float64
		for rep := 0; rep <= reps; rep++ {
			cache.Reset()
			t0 := time.Now()
			if _, err := lm.Model.Forward(cache, tokens[:p], false); err != nil {
				return fail("prefill of %d tokens: %v", p, err)
			}
			if rep > 0 {
				secs = append(secs, time.Since(t0).Seconds())
			}
		}
		r := row(fmt.Sprintf("pp%d", p), p, secs)
		mean, _ := meanSD(secs)
		r.TTFTms = mean * 1000
		results = append(results, r)
		log.Info("bench", "test", r.Test, "tok_per_s", r.TokPerSec)
		printProfile(lm, r.Test, stderr)
	}
	if gen > 0 {
		var secs []float64
		for rep := 0; rep <= reps; rep++ {
			cache.Reset()
			t0 := time.Now()
			for i := 0; i < gen; i++ {
				if _, err := lm.Model.Forward(cache, tokens[i:i+1], false); err != nil {
					return fail("decode step %d: %v", i, err)
				}
			}
			if rep > 0 {
				secs = append(secs, time.Since(t0).Seconds())
			}
		}
		r := row(fmt.Sprintf("tg%d", gen), gen, secs)
		results = append(results, r)
		log.Info("bench", "test", r.Test, "tok_per_s", r.TokPerSec)
		printProfile(lm, r.Test, stderr)
	}
	for _, b := range spec.batches {
		secs, err := batchedDecode(lm.Model, b, spec.prompt, gen, reps, rng)
		if err != nil {
			return fail("batched decode of %d sequences: %v", b, err)
		}
		r := row(fmt.Sprintf("tg%dx%d", gen, b), gen*b, secs)
		results = append(results, r)
		log.Info("bench", "test", r.Test, "tok_per_s", r.TokPerSec)
		printProfile(lm, r.Test, stderr)
	}
	var vram int64
	if dm, ok := lm.Backend.(deviceMemory); ok {
		vram = dm.PeakDeviceBytes()
	}
	for i := range results {
		results[i].VRAMBytes = vram
	}

	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(results); err != nil {
			return fail("%v", err)
		}
		return 0
	}
	fmt.Fprintln(stdout, "| model | backend | device | test | t/s | TTFT ms | load s | ctx | VRAM GiB |")
	fmt.Fprintln(stdout, "|---|---|---|---|---:|---:|---:|---:|---:|")
	for _, r := range results {
		ttft := "-"
		if r.TTFTms > 0 {
			ttft = fmt.Sprintf("%.1f", r.TTFTms)
		}
		fmt.Fprintf(stdout, "| %s | %s | %s | %s | %.1f ± %.1f | %s | %.2f | %d | %.2f |\n", r.Model, r.Backend, r.Device,
			r.Test, r.TokPerSec, r.TokPerSecSD, ttft, r.LoadSeconds, r.CtxSize, float64(r.VRAMBytes)/(1<<30))
	}
	return 0
}

// batchedDecode prefills b sequences of prompt random tokens and times
// reps+1 runs (the first untimed) of gen decode steps of all b at once,
// each step one token of every sequence, drawn greedily on the device when
// the backend samples there, else read back. Every run restarts at the
// prompt's end, over the same blocks.
func batchedDecode(m model.Model, b, prompt, gen, reps int, rng *rand.Rand) ([]float64, error) {
	cfg := m.Config()
	const bs = 16
	perSeq := (prompt + gen + bs - 1) / bs
	groups := len(m.KVLayout().Groups())
	kv, err := m.NewKV(b*perSeq*groups, bs)
	if err != nil {
		return nil, err
	}
	defer kv.Free()
	tables := make([][][]int32, b)
	tokens := make([][]int32, b)
	for s := range b {
		tables[s] = make([][]int32, groups)
		for g := range groups {
			for i := range perSeq {
				tables[s][g] = append(tables[s][g], int32((s*groups+g)*perSeq+i))
			}
		}
		tokens[s] = make([]int32, prompt+gen)
		for i := range tokens[s] {
			tokens[s][i] = int32(rng.IntN(cfg.VocabSize))
		}
	}
	// Prefill, several prompts a step.
	var batch model.Batch
	flush := func() error {
		if len(batch.Chunks) == 0 {
			return nil
		}
		l, err := m.Step(kv, &batch)
		if err == nil {
			err = l.Read(nil)
		}
		batch.Chunks = batch.Chunks[:0]
		return err
	}
	used := 0
	for s := range b {
		for lo := 0; lo < prompt; {
			n := min(prompt-lo, cfg.MaxBatch-used)
			batch.Chunks = append(batch.Chunks, model.Chunk{Tokens: tokens[s][lo : lo+n], Pos: lo, Tables: tables[s]})
			lo, used = lo+n, used+n
			if used == cfg.MaxBatch {
				if err := flush(); err != nil {
					return nil, err
				}
				used = 0
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	ids := make([]int32, b)
	params := make([]backend.SampleParams, b)
	var logits []float32
	var secs []float64
	for rep := 0; rep <= reps; rep++ {
		t0 := time.Now()
		for i := range gen {
			batch.Chunks = batch.Chunks[:0]
			for s := range b {
				p := prompt + i
				batch.Chunks = append(batch.Chunks, model.Chunk{Tokens: tokens[s][p : p+1], Pos: p, Tables: tables[s], Logits: model.LastLogits, Decode: true})
			}
			l, err := m.Step(kv, &batch)
			if err != nil {
				return nil, err
			}
			sampled, err := l.Sample(params, ids)
			if err == nil && !sampled {
				if logits == nil {
					logits = make([]float32, b*cfg.VocabSize)
				}
				err = l.Read(logits)
			}
			if err != nil {
				return nil, err
			}
		}
		if rep > 0 {
			secs = append(secs, time.Since(t0).Seconds())
		}
	}
	return secs, nil
}

// printProfile writes the backend's per-kernel times of the last test, if
// it keeps any (cuda with ORCD_CUDA_PROFILE set), to w.
func printProfile(lm *loadedModel, test string, w io.Writer) {
	if kp, ok := lm.Backend.(kernelProfiler); ok {
		if rep := kp.ProfileReport(); rep != "" {
			fmt.Fprintf(w, "kernel profile of %s (all reps, warm-up included):\n%s", test, rep)
		}
	}
}

// meanSD returns the mean and sample standard deviation of v.
func meanSD(v []float64) (mean, sd float64) {
	if len(v) == 0 {
		return 0, 0
	}
	for _, x := range v {
		mean += x
	}
	mean /= float64(len(v))
	if len(v) < 2 {
		return mean, 0
	}
	for _, x := range v {
		sd += (x - mean) * (x - mean)
	}
	return mean, math.Sqrt(sd / float64(len(v)-1))
}
