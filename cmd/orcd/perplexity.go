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
	ctx, stride, limit int
}

func setupPerplexity(fs *flag.FlagSet) func(*env) int {
	mf := addModelFlags(fs)
	lf := addLogFlags(fs, "text")
	file := fs.String("file", "", "the text `FILE` to score")
	var o pplOptions
	numVar(fs, &o.ctx, "ctx", 0, 0, noMax, fmt.Sprintf("tokens per window, at least 2 (0: the model's context length, at most %d)", defaultPerplexityCtx))
	numVar(fs, &o.stride, "stride", 0, 0, noMax, "tokens from one window's start to the next's, 1 to ctx-1 (0: ctx/2)")
	numVar(fs, &o.limit, "limit", 0, 0, noMax, "score only the first N tokens of the file (0: all)")
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
	res, err := perplexity(lm.Model, tokens, ctx, stride, progress)
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

// perplexity scores tokens with m over the windows of ctx and stride (which
// the caller has checked), reporting each finished window to progress.
//
// Windows are independent jobs: each runs from an empty cache and writes
// the NLLs of its own tokens. A batched model step could run several at
// once, each with its own cache; this runs them one after another on one.
func perplexity(m model.Model, tokens []int32, ctx, stride int, progress func(done, total int64)) (*perplexityResult, error) {
	vocab := m.Config().VocabSize
	for i, t := range tokens {
		if t < 0 || int(t) >= vocab {
			return nil, fmt.Errorf("token %d is %d, outside the model's vocabulary of %d", i, t, vocab)
		}
	}
	ws := perplexityWindows(len(tokens), ctx, stride)
	cache, err := m.NewCache(ctx)
	if err != nil {
		return nil, err
	}
	defer cache.Free()
	nll := make([]float64, len(tokens)) // nll[i]: of token i; nll[0] is not scored
	start := time.Now()
	run := 0
	for i, w := range ws {
		if err := scoreWindow(m, cache, tokens, w, nll); err != nil {
			return nil, fmt.Errorf("window %d (tokens %d to %d): %w", i, w.begin, w.end, err)
		}
		run += w.end - 1 - w.begin
		if progress != nil {
			progress(int64(i+1), int64(len(ws)))
		}
	}
	secs := time.Since(start).Seconds()
	mean, sd := meanSD(nll[1:])
	ppl := math.Exp(mean)
	return &perplexityResult{
		Ctx: ctx, Stride: stride, Tokens: len(tokens), Windows: len(ws), Scored: len(tokens) - 1,
		NLLMean: mean, NLLSD: sd, PPL: ppl, PPLSE: ppl * sd / math.Sqrt(float64(len(tokens)-1)),
		Seconds: secs, TokensPerSecond: float64(run) / max(secs, 1e-9),
	}, nil
}

// scoreWindow runs one window and writes the NLL of each of its scored
// tokens into nll. The last token is only a target, so the inputs are
// tokens [begin, end-1): first, without logits, those before the first
// scored prediction, then the rest with the logits of every position (the
// output projection, the largest matrix of a small model, runs only where
// needed).
func scoreWindow(m model.Model, cache model.Cache, tokens []int32, w pplWindow, nll []float64) error {
	cache.Reset()
	if w.score-1 > w.begin {
		if _, err := m.Forward(cache, tokens[w.begin:w.score-1], false); err != nil {
			return err
		}
	}
	logits, err := m.Forward(cache, tokens[w.score-1:w.end-1], true)
	if err != nil {
		return err
	}
	rowsNLL(logits, m.Config().VocabSize, tokens[w.score:w.end], nll[w.score:w.end])
	for i := w.score; i < w.end; i++ {
		if math.IsNaN(nll[i]) || math.IsInf(nll[i], 0) {
			return fmt.Errorf("the logits predicting token %d are not finite", i)
		}
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
