package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"runtime"
	"sync"
	"time"

	"orcd/model"
)

func init() {
	register(command{
		name:     "perplexity",
		summary:  "score a text file: perplexity over sliding windows, like llama-perplexity",
		synopsis: "orcd perplexity [flags] --file TEXT",
		details: `Measures how well the model predicts a text: the perplexity exp(mean NLL),
where NLL is the negative log-likelihood (natural log) the model gives each
token after the first, knowing the tokens before it.

TEXT is tokenized as plain text (special-token text stays text; a BOS token
is put first only if the tokenizer asks for one), then read through windows
of --ctx tokens, each starting --stride tokens after the one before. Each
window is one sequence, run from an empty cache. The first window scores
every token after its first; each later one scores only the tokens past the
end of the window before it. So every token but the first is scored exactly
once, and with at least ctx-stride tokens of context except in the first
window. This is the rule of HF's "perplexity of fixed-length models";
llama-perplexity instead runs non-overlapping windows and scores only the
second half of each, so its numbers differ from these.

--batch windows run at once, each with its own KV cache in one pool; every
forward step takes up to --max-batch of their tokens. The windows do not
see each other, so --batch and --max-batch change the speed, not the
result, beyond float32 rounding (a row's arithmetic may depend on its place
in a step).

The result is printed with its standard error by the delta method,
SE = PPL * sd(NLL) / sqrt(N) over the N scored tokens (0 when N is 1). A
progress bar is drawn on a terminal.`,
		examples: []string{
			"orcd perplexity --file demo/testdata/kjv-test.txt",
			"orcd perplexity --file demo/testdata/kjv-test.txt --limit 1024 --json",
			"orcd perplexity --model gpt2.gguf --file wiki.test.raw --ctx 1024 --stride 512 --device cuda",
		},
		setup: setupPerplexity,
	})
}

// perplexityResult is what perplexity prints (--json) and what the tests
// compare with the references.
type perplexityResult struct {
	Model   string  `json:"model"`
	File    string  `json:"file"`
	Device  string  `json:"device"`
	Ctx     int     `json:"ctx"`
	Stride  int     `json:"stride"`
	Batch   int     `json:"batch"`  // windows run at once
	Tokens  int     `json:"tokens"` // tokens of the file used (after --limit)
	Windows int     `json:"windows"`
	Scored  int     `json:"scored"`
	NLLMean float64 `json:"nll_mean"`
	NLLSD   float64 `json:"nll_sd"`
	PPL     float64 `json:"ppl"`
	PPLSE   float64 `json:"ppl_se"`
	Seconds float64 `json:"seconds"`
	// TokensPerSecond counts the tokens run through the model, context
	// included (windows overlap), per second.
	TokensPerSecond float64 `json:"tokens_per_second"`
}

// defaultPerplexityCtx caps the default window, as llama-perplexity's
// default context of 512 does.
const defaultPerplexityCtx = 512

// pplOptions are perplexity's window settings; 0 asks for the default.
type pplOptions struct {
	ctx, stride, limit, batch int
}

func setupPerplexity(fs *flag.FlagSet) func(*env) int {
	mf := addModelFlags(fs, "exact")
	lf := addLogFlags(fs, "text")
	file := fs.String("file", "", "the text `FILE` to score")
	var o pplOptions
	numVar(fs, &o.ctx, "ctx", 0, 0, noMax, fmt.Sprintf("tokens per window, at least 2 (0: the model's context length, at most %d)", defaultPerplexityCtx))
	numVar(fs, &o.stride, "stride", 0, 0, noMax, "tokens from one window's start to the next's, 1 to ctx-1 (0: ctx/2)")
	numVar(fs, &o.limit, "limit", 0, 0, noMax, "score only the first N tokens of the file (0: all)")
	numVar(fs, &o.batch, "batch", 0, 0, noMax, "windows run at once (0: enough to fill a --max-batch step)")
	jsonOut := fs.Bool("json", false, "print the result as one JSON object")
	return func(e *env) int {
		ctxSizeSet := false
		fs.Visit(func(f *flag.Flag) { ctxSizeSet = ctxSizeSet || f.Name == "ctx-size" })
		switch {
		case *file == "":
			return e.usageError("need --file TEXT")
		case ctxSizeSet:
			return e.usageError("--ctx sets the window (and the cache) here, not --ctx-size")
		case o.ctx == 1:
			return e.usageError("--ctx 1: a window needs at least 2 tokens")
		}
		text, err := os.ReadFile(*file)
		if err != nil {
			return e.fail(err)
		}
		if len(text) == 0 {
			return e.fail(fmt.Errorf("%s is empty", *file))
		}

		// The VRAM check sizes the cache for one window; 0 lets it assume
		// the model's whole context when --ctx is not given.
		mf.ctxSize = o.ctx
		lm, err := loadModel(mf, true, lf.logger(e.stderr), e.stderr)
		if err != nil {
			return e.fail(err)
		}
		defer lm.Close()
		res, err := perplexityOfText(lm, string(text), o, progressCounter(e.stderr, "perplexity", windowProgress))
		if err != nil {
			return e.fail(fmt.Errorf("%s: %w", *file, err))
		}
		res.File = *file
		if *jsonOut {
			err = json.NewEncoder(e.stdout).Encode(res)
		} else {
			_, err = fmt.Fprintf(e.stdout, "%s on %s, %s: %d tokens scored in %d windows of %d (stride %d), %.1f s\nPPL = %.4f +/- %.4f\n",
				res.Model, res.Device, res.File, res.Scored, res.Windows, res.Ctx, res.Stride, res.Seconds, res.PPL, res.PPLSE)
		}
		if err != nil {
			return e.fail(err)
		}
		return 0
	}
}

// windowProgress describes perplexity's progress, counted in windows.
func windowProgress(done, total int64, secs float64) string {
	return fmt.Sprintf("%d/%d windows, %.1f s", done, total, secs)
}

// perplexityOfText tokenizes text with the model's tokenizer and scores it
// (see the command's details) with the settings of o.
func perplexityOfText(lm *loadedModel, text string, o pplOptions, progress func(done, total int64)) (*perplexityResult, error) {
	ctx, stride := o.ctx, o.stride
	modelCtx := lm.Model.Config().ContextLength
	switch {
	case ctx == 0:
		ctx = min(modelCtx, defaultPerplexityCtx)
	case ctx > modelCtx:
		return nil, fmt.Errorf("--ctx %d exceeds the model's context length %d", ctx, modelCtx)
	}
	if stride == 0 {
		stride = ctx / 2
	}
	if stride < 1 || stride >= ctx {
		return nil, fmt.Errorf("--stride %d is outside [1, %d] for --ctx %d (a window after the first needs a token of context)", stride, ctx-1, ctx)
	}
	var tokens []int32
	if tok := lm.Tokenizer; tok.AddBOS() && tok.BOS() >= 0 {
		tokens = append(tokens, tok.BOS())
	}
	tokens = append(tokens, lm.Tokenizer.Encode(text)...)
	if o.limit > 0 && len(tokens) > o.limit {
		tokens = tokens[:o.limit]
	}
	if len(tokens) < 2 {
		return nil, fmt.Errorf("%d token(s); perplexity needs at least 2", len(tokens))
	}
	res, err := perplexity(lm.Model, tokens, ctx, stride, o.batch, progress)
	if err != nil {
		return nil, err
	}
	res.Model, res.Device = lm.Name, lm.Backend.Name()
	return res, nil
}

// pplWindow is one window: tokens [begin, end) are one sequence, and the
// predictions of tokens [score, end) are scored.
type pplWindow struct{ begin, score, end int }

// perplexityWindows plans the windows over n ≥ 2 tokens for 1 ≤ stride <
// ctx (see the command's details for the rule).
func perplexityWindows(n, ctx, stride int) []pplWindow {
	var ws []pplWindow
	for begin, prevEnd := 0, 0; ; begin += stride {
		end := min(begin+ctx, n)
		ws = append(ws, pplWindow{begin: begin, score: max(prevEnd, begin+1), end: end})
		if end == n {
			return ws
		}
		prevEnd = end
	}
}

// defaultPerplexityBatch is the number of windows to run at once when
// --batch is 0: enough that a step of maxBatch tokens is full, since each
// window brings one piece per step, its context (ctx-stride-1 tokens) or
// its scored tokens (stride).
func defaultPerplexityBatch(maxBatch, ctx, stride int) int {
	return max(1, maxBatch/max(stride, ctx-stride-1))
}

// perplexity scores tokens with m over the windows of ctx and stride (which
// the caller has checked), batch windows at a time (0: the default),
// reporting each finished window to progress.
func perplexity(m model.Model, tokens []int32, ctx, stride, batch int, progress func(done, total int64)) (*perplexityResult, error) {
	vocab := m.Config().VocabSize
	for i, t := range tokens {
		if t < 0 || int(t) >= vocab {
			return nil, fmt.Errorf("token %d is %d, outside the model's vocabulary of %d", i, t, vocab)
		}
	}
	ws := perplexityWindows(len(tokens), ctx, stride)
	if batch == 0 {
		batch = defaultPerplexityBatch(m.Config().MaxBatch, ctx, stride)
	}
	batch = min(batch, len(ws))
	nll := make([]float64, len(tokens)) // nll[i]: of token i; nll[0] is not scored
	start := time.Now()
	steps := pplSteps{ctx: ctx, batch: batch, maxRows: max(1, pplLogitsBytes/(4*vocab))}
	if err := scoreWindows(m, tokens, ws, steps, nll, progress); err != nil {
		return nil, err
	}
	secs := time.Since(start).Seconds()
	run := 0
	for _, w := range ws {
		run += w.end - 1 - w.begin
	}
	mean, sd := meanSD(nll[1:])
	ppl := math.Exp(mean)
	return &perplexityResult{
		Ctx: ctx, Stride: stride, Batch: batch, Tokens: len(tokens), Windows: len(ws), Scored: len(tokens) - 1,
		NLLMean: mean, NLLSD: sd, PPL: ppl, PPLSE: ppl * sd / math.Sqrt(float64(len(tokens)-1)),
		Seconds: secs, TokensPerSecond: float64(run) / max(secs, 1e-9),
	}, nil
}

// pplBlockSize is the KV block size of perplexity's pool, serve's default.
const pplBlockSize = 16

// pplRun is a window being run: its block tables (one per KV group) and
// how many of its inputs have run. Its inputs are tokens [begin, end-1),
// the last token being only a target, at positions 0, 1, … of its own
// sequence.
type pplRun struct {
	index  int // the window's number
	w      pplWindow
	tables [][]int32
	done   int
}

// next returns the run's next piece from input done on, at most room
// tokens and, if they get logits, rowRoom of them: first, without logits,
// the context before its first scored prediction, then the rest with the
// logits of every token (the output projection, the largest matrix of a
// small model, runs only where needed). The piece is empty when its tokens
// need logits and rowRoom is 0.
func (r *pplRun) next(tokens []int32, room, rowRoom int) model.Chunk {
	lo, hi, mode := r.w.begin+r.done, min(r.w.end-1, r.w.begin+r.done+rowRoom), model.AllLogits
	if first := r.w.score - 1; lo < first {
		hi, mode = first, model.NoLogits
	}
	hi = min(hi, lo+room)
	return model.Chunk{Tokens: tokens[lo:hi], Pos: r.done, Tables: r.tables, Logits: mode}
}

// pplSteps says how scoreWindows runs the windows: each of at most ctx
// tokens, batch of them at once, with logits for at most maxRows tokens a
// step.
type pplSteps struct{ ctx, batch, maxRows int }

// pplLogitsBytes bounds the logits of one step (on the device, and again on
// the host): 333 rows of gpt-oss's vocabulary, 1,335 of GPT-2's. Without
// it a batched step could ask for --max-batch rows: 1.6 GB of gpt-oss
// logits for a 2048-token step, and twice the memory of one window at a
// time on the cpu, for no speed.
const pplLogitsBytes = 256 << 20

// scoreWindows runs the windows ws over tokens as s says and writes the
// NLL of each scored token into nll.
//
// Each of batch slots of one KV pool holds a window's blocks; a finished
// window's slot goes to the next window, which overwrites its blocks from
// position 0 on. Every step takes the next piece (pplRun.next) of each
// window in its slot, oldest first, until Config().MaxBatch tokens and
// s.maxRows rows of logits: a step stays full while windows remain.
func scoreWindows(m model.Model, tokens []int32, ws []pplWindow, s pplSteps, nll []float64, progress func(done, total int64)) error {
	cfg := m.Config()
	groups := len(m.KVLayout().Groups())
	perTable := (s.ctx + pplBlockSize - 1) / pplBlockSize
	kv, err := m.NewKV(s.batch*groups*perTable, pplBlockSize)
	if err != nil {
		return fmt.Errorf("the KV cache of %d windows of %d tokens: %w (--batch sets how many)", s.batch, s.ctx, err)
	}
	defer kv.Free()
	// Slot i, group g: blocks [(i·groups+g)·perTable, +perTable).
	slots := make([][][]int32, s.batch)
	for i := range slots {
		slots[i] = make([][]int32, groups)
		for g := range slots[i] {
			t := make([]int32, perTable)
			for j := range t {
				t[j] = int32((i*groups+g)*perTable + j)
			}
			slots[i][g] = t
		}
	}
	var (
		active, stepRuns []*pplRun // stepRuns[k] is the run of chunk k
		b                model.Batch
		rows             []float32
		finished         int
	)
	for next := 0; next < len(ws) || len(active) > 0; {
		for ; len(slots) > 0 && next < len(ws); next++ {
			active = append(active, &pplRun{index: next, w: ws[next], tables: slots[len(slots)-1]})
			slots = slots[:len(slots)-1]
		}
		b.Chunks, stepRuns = b.Chunks[:0], stepRuns[:0]
		room, nRows := cfg.MaxBatch, 0
		for _, r := range active {
			if room == 0 {
				break
			}
			ch := r.next(tokens, room, s.maxRows-nRows)
			if len(ch.Tokens) == 0 {
				continue
			}
			b.Chunks, stepRuns = append(b.Chunks, ch), append(stepRuns, r)
			room -= len(ch.Tokens)
			if ch.Logits == model.AllLogits {
				nRows += len(ch.Tokens)
			}
		}
		rows = growRows(rows, nRows, cfg.VocabSize, s.maxRows)
		logits, err := m.Step(kv, &b)
		if err == nil {
			err = logits.Read(rows)
		}
		if err != nil {
			return fmt.Errorf("windows %d to %d: %w", stepRuns[0].index, stepRuns[len(stepRuns)-1].index, err)
		}
		if err := scoreChunks(b.Chunks, stepRuns, rows, cfg.VocabSize, tokens, nll); err != nil {
			return err
		}
		kept := active[:0]
		for _, r := range active {
			if r.w.begin+r.done < r.w.end-1 {
				kept = append(kept, r)
				continue
			}
			slots = append(slots, r.tables)
			finished++
			if progress != nil {
				progress(int64(finished), int64(len(ws)))
			}
		}
		clear(active[len(kept):])
		active = kept
	}
	return nil
}

// growRows returns buf resized to n rows of vocab values, reallocated only
// when it is too small, then to at least twice its rows (at most maxRows): a
// step's rows grow by a few at a time, and each row of a large vocabulary
// is most of a megabyte.
func growRows(buf []float32, n, vocab, maxRows int) []float32 {
	if cap(buf) < n*vocab {
		buf = make([]float32, max(n, min(2*cap(buf)/vocab, maxRows))*vocab)
	}
	return buf[:n*vocab]
}

// scoreChunks advances the runs by the chunks of a step (chunk k is
// runs[k]'s) and writes the NLLs of the rows of logits, one per token of
// the chunks that asked for them.
func scoreChunks(chunks []model.Chunk, runs []*pplRun, logits []float32, vocab int, tokens []int32, nll []float64) error {
	row := 0
	for k, ch := range chunks {
		r := runs[k]
		n := len(ch.Tokens)
		if ch.Logits == model.AllLogits {
			// The input at token lo predicts token lo+1.
			lo := r.w.begin + r.done + 1
			out := nll[lo : lo+n]
			rowsNLL(logits[row*vocab:(row+n)*vocab], vocab, tokens[lo:lo+n], out)
			for j, v := range out {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					return fmt.Errorf("window %d: the logits predicting token %d are not finite", r.index, lo+j)
				}
			}
			row += n
		}
		r.done += n
	}
	return nil
}

// rowsNLL sets out[j] = log Σ exp(row_j) − row_j[targets[j]] in float64 for
// each vocab-wide row j of logits, spread over the CPUs (a row of GPT-2's
// vocabulary is 50,257 exponentials).
func rowsNLL(logits []float32, vocab int, targets []int32, out []float64) {
	workers := min(runtime.GOMAXPROCS(0), len(targets))
	var wg sync.WaitGroup
	for k := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := k; j < len(targets); j += workers {
				row := logits[j*vocab : (j+1)*vocab]
				out[j] = logSumExp(row) - float64(row[targets[j]])
			}
		}()
	}
	wg.Wait()
}

// logSumExp is log Σ exp(x), computed in float64 around the maximum.
func logSumExp(x []float32) float64 {
	hi := math.Inf(-1)
	for _, v := range x {
		hi = max(hi, float64(v))
	}
	var sum float64
	for _, v := range x {
		sum += math.Exp(float64(v) - hi)
	}
	return hi + math.Log(sum)
}
