package main

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"orcd/backend/cpu"
	"orcd/gguf"
	"orcd/internal/testutil"
	"orcd/model"
	"orcd/tokenizer"
)

// TestPerplexityWindows checks hand-worked plans, then the rule's
// properties over many sizes: every token but the first scored once, each
// window at most ctx tokens, and ctx-stride tokens of context before the
// first scored token of every window after the first.
func TestPerplexityWindows(t *testing.T) {
	cases := []struct {
		n, ctx, stride int
		want           []pplWindow
	}{
		{2, 4, 2, []pplWindow{{0, 1, 2}}},
		{4, 4, 3, []pplWindow{{0, 1, 4}}},
		{10, 4, 2, []pplWindow{{0, 1, 4}, {2, 4, 6}, {4, 6, 8}, {6, 8, 10}}},
		{9, 4, 3, []pplWindow{{0, 1, 4}, {3, 4, 7}, {6, 7, 9}}},
		{7, 4, 1, []pplWindow{{0, 1, 4}, {1, 4, 5}, {2, 5, 6}, {3, 6, 7}}},
		{11, 5, 4, []pplWindow{{0, 1, 5}, {4, 5, 9}, {8, 9, 11}}},
	}
	for _, c := range cases {
		if got := perplexityWindows(c.n, c.ctx, c.stride); !reflect.DeepEqual(got, c.want) {
			t.Errorf("n %d ctx %d stride %d: %v, want %v", c.n, c.ctx, c.stride, got, c.want)
		}
	}
	for n := 2; n <= 40; n++ {
		for ctx := 2; ctx <= 12; ctx++ {
			for stride := 1; stride < ctx; stride++ {
				scored := make([]int, n)
				for k, w := range perplexityWindows(n, ctx, stride) {
					if w.end-w.begin > ctx || w.begin >= w.score || w.score >= w.end || w.end > n {
						t.Fatalf("n %d ctx %d stride %d: bad window %v", n, ctx, stride, w)
					}
					if k > 0 && w.score-w.begin < ctx-stride {
						t.Fatalf("n %d ctx %d stride %d: window %v has %d tokens of context", n, ctx, stride, w, w.score-w.begin)
					}
					for i := w.score; i < w.end; i++ {
						scored[i]++
					}
				}
				for i, c := range scored {
					if want := min(i, 1); c != want {
						t.Fatalf("n %d ctx %d stride %d: token %d scored %d times", n, ctx, stride, i, c)
					}
				}
			}
		}
	}
}

// posModel is a fake model whose logits at cache position p are
// [p, 0, 0, 0], whatever the tokens: a window's NLLs then depend only on
// where its tokens sit in it, which the windowing rule decides.
type posModel struct {
	model.Model // the rest, which perplexity does not use
}

type posCache struct{ n, cap int }

func (c *posCache) Len() int { return c.n }
func (c *posCache) Cap() int { return c.cap }
func (c *posCache) Reset()   { c.n = 0 }
func (c *posCache) Free()    {}

func (posModel) Config() model.Config { return model.Config{VocabSize: 4, ContextLength: 8} }
func (posModel) NewCache(ctx int) (model.Cache, error) {
	return &posCache{cap: ctx}, nil
}
func (posModel) Close() error { return nil }
func (posModel) Forward(c model.Cache, tokens []int32, all bool) ([]float32, error) {
	pc := c.(*posCache)
	if pc.n+len(tokens) > pc.cap {
		return nil, errors.New("cache full")
	}
	var out []float32
	for i := range tokens {
		if all || i == len(tokens)-1 {
			out = append(out, float32(pc.n+i), 0, 0, 0)
		}
	}
	pc.n += len(tokens)
	return out, nil
}

// TestPerplexityHandWorked scores 6 tokens with windows of 4 and stride 2,
// windows (0,1,4) and (2,4,6): tokens 1-3 are predicted at positions 0-2 of
// the first window, tokens 4 and 5 at positions 1 and 2 of the second. At
// position p, token 0 has NLL log(e^p+3) - p and any other log(e^p+3).
func TestPerplexityHandWorked(t *testing.T) {
	tokens := []int32{1, 0, 1, 1, 0, 1}
	e := math.E
	nll := []float64{
		math.Log(4),       // token 1 (0) at position 0
		math.Log(e + 3),   // token 2 (1) at position 1
		math.Log(e*e + 3), // token 3 (1) at position 2
		math.Log(e+3) - 1, // token 4 (0) at position 1 of window 2
		math.Log(e*e + 3), // token 5 (1) at position 2 of window 2
	}
	var calls [][2]int64
	res, err := perplexity(posModel{}, tokens, 4, 2, func(done, total int64) { calls = append(calls, [2]int64{done, total}) })
	if err != nil {
		t.Fatal(err)
	}
	mean := (nll[0] + nll[1] + nll[2] + nll[3] + nll[4]) / 5
	var ss float64
	for _, v := range nll {
		ss += (v - mean) * (v - mean)
	}
	sd := math.Sqrt(ss / 4)
	ppl := math.Exp(mean)
	if res.Windows != 2 || res.Scored != 5 || res.Tokens != 6 {
		t.Errorf("windows %d, scored %d, tokens %d; want 2, 5, 6", res.Windows, res.Scored, res.Tokens)
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"nll_mean", res.NLLMean, mean}, {"nll_sd", res.NLLSD, sd}, {"ppl", res.PPL, ppl}, {"ppl_se", res.PPLSE, ppl * sd / math.Sqrt(5)}} {
		if math.Abs(c.got-c.want) > 1e-12*max(1, math.Abs(c.want)) {
			t.Errorf("%s %.15g, want %.15g", c.name, c.got, c.want)
		}
	}
	if !reflect.DeepEqual(calls, [][2]int64{{1, 2}, {2, 2}}) {
		t.Errorf("progress calls %v", calls)
	}
	if _, err := perplexity(posModel{}, []int32{1, 4}, 4, 2, nil); err == nil || !strings.Contains(err.Error(), "token 1 is 4") {
		t.Errorf("token outside the vocabulary: %v", err)
	}
}

// TestPerplexityHF scores the 40 prompt tokens of an HF conformance fixture
// in one window and compares with the NLLs of HF's logits.
func TestPerplexityHF(t *testing.T) {
	const name = "gpt2_tied_q8"
	var fx struct {
		Prompt       []int32     `json:"prompt"`
		PromptLogits [][]float64 `json:"prompt_logits"`
	}
	dir := filepath.Join("..", "..", "model", "testdata")
	testutil.ReadGzipJSON(t, filepath.Join(dir, name+".json.gz"), &fx)
	f, err := gguf.Open(filepath.Join(dir, name+".gguf"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(f, cpu.New(), model.LoadOptions{})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// HF's NLL of token i: log-sum-exp of the logits at i-1 minus the
	// target's logit.
	var want float64
	for i := 1; i < len(fx.Prompt); i++ {
		row := fx.PromptLogits[i-1]
		hi := math.Inf(-1)
		for _, v := range row {
			hi = max(hi, v)
		}
		var sum float64
		for _, v := range row {
			sum += math.Exp(v - hi)
		}
		want += hi + math.Log(sum) - row[fx.Prompt[i]]
	}
	want /= float64(len(fx.Prompt) - 1)
	res, err := perplexity(m, fx.Prompt, len(fx.Prompt), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Windows != 1 || math.Abs(res.NLLMean-want) > 1e-4 {
		t.Errorf("%d windows, mean NLL %.7g; want 1 and HF's %.7g", res.Windows, res.NLLMean, want)
	}
}

// writeText writes text to a file in a temporary directory.
func writeText(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestPerplexityCommand runs the command on a synthetic GPT-2 and checks
// that its output agrees with the tokenizer and the windowing rule.
func TestPerplexityCommand(t *testing.T) {
	model := synthTemp(t, "tiny-gpt2", 0)
	text := strings.Repeat("In the beginning God created the heaven and the earth. ", 20)
	file := writeText(t, "text.txt", text)
	tok, err := tokenizer.Embedded(tokenizer.VocabGPT2)
	if err != nil {
		t.Fatal(err)
	}
	n := len(tok.Encode(text))
	for _, c := range []struct {
		args           []string
		tokens, ctx, s int
	}{
		{[]string{"--ctx", "64", "--stride", "16"}, n, 64, 16},
		{[]string{"--ctx", "64", "--limit", "100"}, 100, 64, 32},
		{nil, n, 512, 256}, // the default window: the model's 1024, capped
	} {
		args := append([]string{"perplexity", "--model", model, "--device", "cpu", "--file", file, "--json"}, c.args...)
		code, stdout, stderr := runCmd(args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", c.args, code, stderr)
		}
		var res perplexityResult
		if err := json.Unmarshal([]byte(stdout), &res); err != nil {
			t.Fatalf("%v: %v in %q", c.args, err, stdout)
		}
		windows := len(perplexityWindows(c.tokens, c.ctx, c.s))
		if res.Tokens != c.tokens || res.Scored != c.tokens-1 || res.Ctx != c.ctx || res.Stride != c.s || res.Windows != windows {
			t.Errorf("%v: tokens %d, scored %d, ctx %d, stride %d, windows %d; want %d, %d, %d, %d, %d", c.args,
				res.Tokens, res.Scored, res.Ctx, res.Stride, res.Windows, c.tokens, c.tokens-1, c.ctx, c.s, windows)
		}
		if res.Model != "tiny-gpt2" || res.Device != "cpu" || res.File != file {
			t.Errorf("%v: model %q, device %q, file %q", c.args, res.Model, res.Device, res.File)
		}
		if math.Abs(res.PPL-math.Exp(res.NLLMean)) > 1e-9*res.PPL ||
			math.Abs(res.PPLSE-res.PPL*res.NLLSD/math.Sqrt(float64(res.Scored))) > 1e-9*res.PPL {
			t.Errorf("%v: ppl %g ± %g do not follow from the NLL mean %g and sd %g", c.args, res.PPL, res.PPLSE, res.NLLMean, res.NLLSD)
		}
	}
	code, stdout, stderr := runCmd("perplexity", "--model", model, "--device", "cpu", "--file", file, "--ctx", "64")
	if code != 0 || !strings.Contains(stdout, "PPL = ") || !strings.Contains(stdout, strconv.Itoa(n-1)+" tokens scored") {
		t.Errorf("text output: exit %d, stdout %q, stderr %s", code, stdout, stderr)
	}
	code, stdout, _ = runCmd("perplexity", "--help")
	if code != 0 || !strings.Contains(stdout, "orcd perplexity [flags] --file TEXT") || !strings.Contains(stdout, "--stride N") {
		t.Errorf("--help: exit %d, stdout %q", code, stdout)
	}
}

func TestPerplexityErrors(t *testing.T) {
	model := synthTemp(t, "tiny-gpt2", 0)
	text := writeText(t, "text.txt", strings.Repeat("And God said, Let there be light: and there was light. ", 4))
	empty := writeText(t, "empty.txt", "")
	one := writeText(t, "one.txt", "light")
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{}, 2, "need --file"},
		{[]string{"--file", text, "extra"}, 2, `unexpected argument "extra": perplexity takes only flags`},
		{[]string{"--file", text, "--ctx-size", "64"}, 2, "--ctx sets the window"},
		{[]string{"--file", text, "--ctx", "1"}, 2, "--ctx 1: a window needs at least 2 tokens"},
		{[]string{"--file", text, "--ctx", "-3"}, 2, `invalid value "-3" for --ctx: must be at least 0`},
		{[]string{"--file", text, "--stride", "-1"}, 2, `invalid value "-1" for --stride: must be at least 0`},
		{[]string{"--file", text, "--limit", "-5"}, 2, `invalid value "-5" for --limit: must be at least 0`},
		{[]string{"--file", text, "--bogus"}, 2, `unknown flag "--bogus"`},
		{[]string{"--file", filepath.Join(t.TempDir(), "none.txt")}, 1, "no such file"},
		{[]string{"--file", empty}, 1, empty + " is empty"},
		{[]string{"--file", one}, 1, "1 token(s); perplexity needs at least 2"},
		{[]string{"--file", text, "--limit", "1"}, 1, "1 token(s)"},
		{[]string{"--file", text, "--ctx", "2048"}, 1, "--ctx 2048 exceeds the model's context length 1024"},
		{[]string{"--file", text, "--ctx", "64", "--stride", "64"}, 1, "--stride 64 is outside [1, 63] for --ctx 64"},
	}
	for _, c := range cases {
		args := append([]string{"perplexity", "--model", model, "--device", "cpu"}, c.args...)
		code, _, stderr := runCmd(args...)
		if code != c.code || !strings.Contains(stderr, c.want) || code == 2 && !strings.HasPrefix(stderr, "orcd perplexity: "+c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", c.args, code, stderr, c.code, c.want)
		}
	}
	// The smallest window works: ctx 2 with stride 1 scores every token
	// with one token of context.
	code, stdout, stderr := runCmd("perplexity", "--model", model, "--device", "cpu", "--file", text, "--ctx", "2", "--json")
	var res perplexityResult
	if code != 0 || json.Unmarshal([]byte(stdout), &res) != nil || res.Stride != 1 || res.Windows != res.Tokens-1 {
		t.Errorf("--ctx 2: exit %d, stdout %q, stderr %s", code, stdout, stderr)
	}
}
