package main

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"orcd/backend"
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

// posModel is a fake model whose logits at position p of a sequence are
// [p, 0, 0, 0], whatever the tokens: a window's NLLs then depend only on
// where its tokens sit in it, which the windowing rule decides. Its Step
// checks what perplexity hands it: at most maxBatch tokens, tables within
// the pool that cover each chunk's positions, and no block in two chunks.
type posModel struct {
	model.Model // the rest, which perplexity does not use
	maxBatch    int
	steps       int
}

var posLayout = model.KVLayout{Windows: []int{0}, Cols: 1}

type posKV struct{ blocks, blockSize int }

func (kv posKV) BlockSize() int          { return kv.blockSize }
func (kv posKV) Blocks() int             { return kv.blocks }
func (kv posKV) Groups() []model.KVGroup { return posLayout.Groups() }
func (kv posKV) Free()                   {}

func (m *posModel) Config() model.Config {
	return model.Config{VocabSize: 4, ContextLength: 8, MaxBatch: m.maxBatch}
}

func (m *posModel) KVLayout() model.KVLayout { return posLayout }

func (m *posModel) NewKV(blocks, blockSize int) (model.KV, error) {
	return posKV{blocks, blockSize}, nil
}

func (m *posModel) Step(kv model.KV, b *model.Batch) (model.Logits, error) {
	var out posLogits
	n := 0
	owner := map[int32]int{}
	for c, ch := range b.Chunks {
		n += len(ch.Tokens)
		t := ch.Tables[0]
		if last := ch.Pos + len(ch.Tokens) - 1; last/kv.BlockSize() >= len(t) {
			return nil, fmt.Errorf("chunk %d: position %d past its table of %d blocks", c, last, len(t))
		}
		for _, blk := range t {
			if prev, ok := owner[blk]; ok && prev != c || blk < 0 || int(blk) >= kv.Blocks() {
				return nil, fmt.Errorf("chunk %d: block %d is another chunk's or outside the pool", c, blk)
			}
			owner[blk] = c
		}
		for i := range ch.Tokens {
			if ch.Logits == model.AllLogits { // perplexity asks for no other logits
				out = append(out, float32(ch.Pos+i), 0, 0, 0)
			}
		}
	}
	if n > m.maxBatch {
		return nil, fmt.Errorf("a step of %d tokens, more than %d", n, m.maxBatch)
	}
	m.steps++
	return out, nil
}

// posLogits are posModel's logits, on the host.
type posLogits []float32

func (l posLogits) Rows() int              { return len(l) / 4 }
func (l posLogits) Tensor() backend.Tensor { return nil }
func (l posLogits) Sample([]backend.SampleParams, []int32) (bool, error) {
	return false, nil
}

func (l posLogits) Read(dst []float32) error {
	if len(dst) != len(l) {
		return fmt.Errorf("read into %d floats, have %d", len(dst), len(l))
	}
	copy(dst, l)
	return nil
}

// TestPerplexityHandWorked scores 6 tokens with windows of 4 and stride 2,
// windows (0,1,4) and (2,4,6): tokens 1-3 are predicted at positions 0-2 of
// the first window, tokens 4 and 5 at positions 1 and 2 of the second. At
// position p, token 0 has NLL log(e^p+3) - p and any other log(e^p+3). The
// windows run one at a time, together, and together in steps too small for
// a whole piece, with the same result.
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
	mean := (nll[0] + nll[1] + nll[2] + nll[3] + nll[4]) / 5
	var ss float64
	for _, v := range nll {
		ss += (v - mean) * (v - mean)
	}
	sd := math.Sqrt(ss / 4)
	ppl := math.Exp(mean)
	for _, c := range []struct {
		maxBatch, batch      int
		wantBatch, wantSteps int
	}{
		// One at a time: window 1's 3 inputs in one step, then window 2's
		// context (1 token) and its 2 scored inputs.
		{8, 1, 1, 3},
		// Together: window 1 whole and window 2's context, then the rest.
		{8, 2, 2, 2},
		{8, 0, 2, 2}, // the default: 8 / max(stride 2, ctx-stride-1 1) = 4 windows, 2 of them
		// Steps of 2 tokens: window 1's 3 inputs take two steps, the
		// second shared with window 2's context; then its 2 scored.
		{2, 2, 2, 3},
	} {
		m := &posModel{maxBatch: c.maxBatch}
		var calls [][2]int64
		res, err := perplexity(m, tokens, 4, 2, c.batch, func(done, total int64) { calls = append(calls, [2]int64{done, total}) })
		if err != nil {
			t.Fatalf("max batch %d, batch %d: %v", c.maxBatch, c.batch, err)
		}
		if res.Windows != 2 || res.Scored != 5 || res.Tokens != 6 || res.Batch != c.wantBatch || m.steps != c.wantSteps {
			t.Errorf("max batch %d, batch %d: windows %d, scored %d, tokens %d, batch %d, steps %d; want 2, 5, 6, %d, %d",
				c.maxBatch, c.batch, res.Windows, res.Scored, res.Tokens, res.Batch, m.steps, c.wantBatch, c.wantSteps)
		}
		for _, v := range []struct {
			name      string
			got, want float64
		}{{"nll_mean", res.NLLMean, mean}, {"nll_sd", res.NLLSD, sd}, {"ppl", res.PPL, ppl}, {"ppl_se", res.PPLSE, ppl * sd / math.Sqrt(5)}} {
			if math.Abs(v.got-v.want) > 1e-12*max(1, math.Abs(v.want)) {
				t.Errorf("max batch %d, batch %d: %s %.15g, want %.15g", c.maxBatch, c.batch, v.name, v.got, v.want)
			}
		}
		if !reflect.DeepEqual(calls, [][2]int64{{1, 2}, {2, 2}}) {
			t.Errorf("max batch %d, batch %d: progress calls %v", c.maxBatch, c.batch, calls)
		}
	}
	// Logits for one token a step: window 1's three scored inputs take
	// three steps, the first shared with window 2's context; window 2's
	// two scored inputs wait for room, then take two more.
	m := &posModel{maxBatch: 8}
	got := make([]float64, len(tokens))
	var calls [][2]int64
	if err := scoreWindows(m, tokens, perplexityWindows(6, 4, 2), pplSteps{ctx: 4, batch: 2, maxRows: 1}, got,
		func(done, total int64) { calls = append(calls, [2]int64{done, total}) }); err != nil {
		t.Fatal(err)
	}
	for i, want := range nll {
		if math.Abs(got[i+1]-want) > 1e-12 {
			t.Errorf("one row a step: token %d NLL %.15g, want %.15g", i+1, got[i+1], want)
		}
	}
	if m.steps != 5 || !reflect.DeepEqual(calls, [][2]int64{{1, 2}, {2, 2}}) {
		t.Errorf("one row a step: %d steps, progress calls %v; want 5 steps", m.steps, calls)
	}
	if _, err := perplexity(&posModel{maxBatch: 8}, []int32{1, 4}, 4, 2, 0, nil); err == nil || !strings.Contains(err.Error(), "token 1 is 4") {
		t.Errorf("token outside the vocabulary: %v", err)
	}
}

// hfTestdata is model/testdata, where the HF conformance fixtures are
// (model/testdata/README.md).
var hfTestdata = filepath.Join("..", "..", "model", "testdata")

// readHFPrompt returns an HF conformance fixture's prompt and HF's logits
// at each of its positions.
func readHFPrompt(t *testing.T, name string) ([]int32, [][]float64) {
	t.Helper()
	var fx struct {
		Prompt       []int32     `json:"prompt"`
		PromptLogits [][]float64 `json:"prompt_logits"`
	}
	testutil.ReadGzipJSON(t, filepath.Join(hfTestdata, name+".json.gz"), &fx)
	return fx.Prompt, fx.PromptLogits
}

// loadTestdataModel loads an HF conformance model on the cpu backend, with
// steps of at most maxBatch tokens (0: the default).
func loadTestdataModel(t *testing.T, name string, maxBatch int) model.Model {
	t.Helper()
	f, err := gguf.Open(filepath.Join(hfTestdata, name+".gguf"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(f, cpu.New(), model.LoadOptions{MaxBatch: maxBatch})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestPerplexityHF scores the 40 prompt tokens of an HF conformance fixture
// in one window and compares with the NLLs of HF's logits.
func TestPerplexityHF(t *testing.T) {
	const name = "gpt2_tied_q8"
	prompt, logits := readHFPrompt(t, name)
	m := loadTestdataModel(t, name, 0)
	// HF's NLL of token i: log-sum-exp of the logits at i-1 minus the
	// target's logit.
	var want float64
	for i := 1; i < len(prompt); i++ {
		row := logits[i-1]
		hi := math.Inf(-1)
		for _, v := range row {
			hi = max(hi, v)
		}
		var sum float64
		for _, v := range row {
			sum += math.Exp(v - hi)
		}
		want += hi + math.Log(sum) - row[prompt[i]]
	}
	want /= float64(len(prompt) - 1)
	res, err := perplexity(m, prompt, len(prompt), 1, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Windows != 1 || math.Abs(res.NLLMean-want) > 1e-4 {
		t.Errorf("%d windows, mean NLL %.7g; want 1 and HF's %.7g", res.Windows, res.NLLMean, want)
	}
}

// stepCounter counts a model's steps.
type stepCounter struct {
	model.Model
	steps int
}

func (m *stepCounter) Step(kv model.KV, b *model.Batch) (model.Logits, error) {
	m.steps++
	return m.Model.Step(kv, b)
}

// TestPerplexityBatchedMatchesOneAtATime scores random tokens on real
// models (the cpu backend) one window at a time and with several windows
// per step, in steps small enough to split the windows' pieces, and with
// logits for fewer tokens a step than the step holds. The mean
// NLL must agree within 1e-6 relative, and each token's within 5e-5: the
// cpu backend rounds a row of a step differently with its place in the
// step (4-row kernels, fused ones for steps of 1 or 2 rows), so even one
// window at a time differs by ~1e-5 between step sizes; a window that saw
// another's cache would differ by far more. The gpt-oss model's windows
// are longer than its sliding window (8), so both of its KV groups get
// tables.
func TestPerplexityBatchedMatchesOneAtATime(t *testing.T) {
	for _, name := range []string{"gpt2_tied_q8", "gptoss_mxfp4_q8"} {
		t.Run(name, func(t *testing.T) {
			const maxBatch, ctx, stride, n = 40, 48, 13, 300
			m := &stepCounter{Model: loadTestdataModel(t, name, maxBatch)}
			r := rand.New(rand.NewPCG(3, 5))
			tokens := make([]int32, n)
			for i := range tokens {
				tokens[i] = int32(r.IntN(m.Config().VocabSize))
			}
			ws := perplexityWindows(n, ctx, stride)
			score := func(batch, maxRows int) ([]float64, float64, int) {
				m.steps = 0
				nll := make([]float64, n)
				if err := scoreWindows(m, tokens, ws, pplSteps{ctx, batch, maxRows}, nll, nil); err != nil {
					t.Fatalf("batch %d: %v", batch, err)
				}
				mean, _ := meanSD(nll[1:])
				return nll, mean, m.steps
			}
			one, oneMean, oneSteps := score(1, maxBatch)
			for _, c := range []struct{ batch, maxRows int }{{2, maxBatch}, {5, maxBatch}, {len(ws), maxBatch}, {5, 16}} {
				batch := c.batch
				nll, mean, steps := score(batch, c.maxRows)
				worst := 0.0
				for i := 1; i < n; i++ {
					if math.IsNaN(nll[i]) || one[i] <= 0 {
						t.Fatalf("token %d: NLL %g one at a time, %g with batch %d", i, one[i], nll[i], batch)
					}
					worst = max(worst, math.Abs(nll[i]-one[i]))
				}
				if worst > 5e-5 || math.Abs(mean/oneMean-1) > 1e-6 {
					t.Errorf("batch %d: mean NLL %.9g, one at a time %.9g; tokens' NLLs differ by up to %.3g", batch, mean, oneMean, worst)
				}
				if steps >= oneSteps {
					t.Errorf("batch %d: %d steps, no fewer than one window at a time (%d)", batch, steps, oneSteps)
				}
				t.Logf("%d windows, batch %d, logits for %d tokens a step: %d steps (%d one at a time), mean NLL relative difference %.3g, largest token difference %.3g",
					len(ws), batch, c.maxRows, steps, oneSteps, math.Abs(mean/oneMean-1), worst)
			}
		})
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
// that its output agrees with the tokenizer and the windowing rule, and
// that --batch and --max-batch change how the windows run, not the result.
func TestPerplexityCommand(t *testing.T) {
	model := synthTemp(t, "tiny-gpt2", 0)
	text := strings.Repeat("In the beginning God created the heaven and the earth. ", 20)
	file := writeText(t, "text.txt", text)
	tok, err := tokenizer.Embedded(tokenizer.VocabGPT2)
	if err != nil {
		t.Fatal(err)
	}
	n := len(tok.Encode(text))
	var first perplexityResult
	for i, c := range []struct {
		args                  []string
		tokens, ctx, s, batch int
	}{
		// The default batch: --max-batch 512 on cpu over pieces of up to
		// ctx-stride-1 = 47 tokens, 10 windows.
		{[]string{"--ctx", "64", "--stride", "16"}, n, 64, 16, 10},
		{[]string{"--ctx", "64", "--stride", "16", "--batch", "1"}, n, 64, 16, 1},
		{[]string{"--ctx", "64", "--stride", "16", "--batch", "3", "--max-batch", "50"}, n, 64, 16, 3},
		{[]string{"--ctx", "64", "--limit", "100"}, 100, 64, 32, 3}, // 3 windows, fewer than the default batch
		{nil, n, 512, 256, 1}, // the default window: the model's 1024, capped
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
		if res.Tokens != c.tokens || res.Scored != c.tokens-1 || res.Ctx != c.ctx || res.Stride != c.s || res.Windows != windows || res.Batch != c.batch {
			t.Errorf("%v: tokens %d, scored %d, ctx %d, stride %d, windows %d, batch %d; want %d, %d, %d, %d, %d, %d", c.args,
				res.Tokens, res.Scored, res.Ctx, res.Stride, res.Windows, res.Batch, c.tokens, c.tokens-1, c.ctx, c.s, windows, c.batch)
		}
		if i == 0 {
			first = res
		} else if i < 3 && (math.Abs(res.NLLMean/first.NLLMean-1) > 1e-6 || math.Abs(res.NLLSD/first.NLLSD-1) > 1e-6) {
			t.Errorf("%v: NLL mean %.9g, sd %.9g; with the defaults %.9g, %.9g", c.args, res.NLLMean, res.NLLSD, first.NLLMean, first.NLLSD)
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
		{[]string{"--file", text, "--batch", "-2"}, 2, `invalid value "-2" for --batch: must be at least 0`},
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
