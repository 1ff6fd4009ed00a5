package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"orcd/backend/cpu"
	"orcd/gguf"
	"orcd/model"
	"orcd/tensor"
	"orcd/tokenizer"
)

// synthTemp writes a preset into a temporary directory.
func synthTemp(t testing.TB, preset string, workers int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), preset+".gguf")
	if err := synthesize(context.Background(), path, synthOptions{preset: preset, seed: 7, workers: workers}); err != nil {
		t.Fatal(err)
	}
	return path
}

// loadCPU loads a model file and its tokenizer on an exact cpu backend,
// freed when the test ends.
func loadCPU(t *testing.T, path string) (model.Model, *tokenizer.Tokenizer) {
	t.Helper()
	f, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tok, err := tokenizer.FromGGUF(f)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(f, cpu.New(), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, tok
}

// TestSynthTinyPresets loads each tiny preset and runs a prompt through it:
// the logits must be finite and vary, and the vocabulary must be the real
// tokenizer's.
func TestSynthTinyPresets(t *testing.T) {
	for _, preset := range []string{"tiny-gpt2", "tiny-gpt-oss"} {
		t.Run(preset, func(t *testing.T) {
			m, tok := loadCPU(t, synthTemp(t, preset, 0))
			if m.Config().VocabSize != tok.VocabSize() {
				t.Errorf("model vocab %d, tokenizer %d", m.Config().VocabSize, tok.VocabSize())
			}
			c, err := m.NewCache(256)
			if err != nil {
				t.Fatal(err)
			}
			ids := tok.Encode(strings.Repeat("The quick brown fox jumps over the lazy dog. ", 16))
			logits, err := m.Forward(c, ids, false)
			if err != nil {
				t.Fatal(err)
			}
			lo, hi := math.Inf(1), math.Inf(-1)
			for _, v := range logits {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					t.Fatalf("non-finite logit %v", v)
				}
				lo, hi = min(lo, float64(v)), max(hi, float64(v))
			}
			if hi-lo < 1e-3 {
				t.Errorf("logits are flat: [%g, %g]", lo, hi)
			}
		})
	}
}

// TestSynthDeterministic checks that the file depends on the seed only, not
// on the number of generator threads.
func TestSynthDeterministic(t *testing.T) {
	a, err := os.ReadFile(synthTemp(t, "tiny-gpt2", 1))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(synthTemp(t, "tiny-gpt2", 3))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("1 and 3 threads wrote different files")
	}
}

func TestSynthErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"synth", "-o", filepath.Join(dir, "x.gguf")}, 2, "need --preset"},
		{[]string{"synth", "--preset", "gpt5", "-o", filepath.Join(dir, "x.gguf")}, 2, `invalid value "gpt5" for --preset: want gpt-oss-20b, gpt2-1.5b, gpt2-124m, `}, // then the other presets
		{[]string{"synth", "--preset", "tiny-gpt2", "--type", "Q4_K", "-o", filepath.Join(dir, "x.gguf")}, 2, `invalid value "Q4_K" for --type: want F32, F16, Q8_0, BF16 or MXFP4`},
		{[]string{"synth", "--preset", "tiny-gpt2", "--threads", "-1", "-o", filepath.Join(dir, "x.gguf")}, 2, `invalid value "-1" for --threads: must be at least 0`},
		{[]string{"synth", "--preset", "tiny-gpt2", "-o", filepath.Join(dir, "missing", "x.gguf")}, 1, "no such file"},
	}
	for _, c := range cases {
		code, _, stderr := runCmd(c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", c.args, code, stderr, c.code, c.want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("failed runs left files: %v", entries)
	}
}

// TestRunJSON generates greedily from a prompt and checks the JSON output
// against the tokenizer.
func TestRunJSON(t *testing.T) {
	path := synthTemp(t, "tiny-gpt2", 0)
	code, stdout, stderr := runCmd("run", "--model", path, "--device", "cpu", "--prompt", "Hello, world",
		"--max-tokens", "12", "--temperature", "0", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var out runOutput
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("%v in %q", err, stdout)
	}
	// The logged rates are rounded to three significant digits.
	rates := regexp.MustCompile(`(?:prefill|decode)_tokens_per_s=(\S+)`).FindAllStringSubmatch(stderr, -1)
	if len(rates) != 2 {
		t.Errorf("no rates logged: %s", stderr)
	}
	for _, r := range rates {
		digits := strings.TrimLeft(strings.ReplaceAll(strings.Split(r[1], "e")[0], ".", ""), "0")
		if len(strings.TrimRight(digits, "0")) > 3 {
			t.Errorf("%s has more than three significant digits", r[0])
		}
	}
	if out.StopReason != "max_tokens" && out.StopReason != "eog" {
		t.Errorf("stop reason %q", out.StopReason)
	}
	if out.StopReason == "max_tokens" && len(out.TokenIDs) != 12 {
		t.Errorf("%d tokens, want 12", len(out.TokenIDs))
	}
	tok, err := tokenizer.Embedded(tokenizer.VocabGPT2)
	if err != nil {
		t.Fatal(err)
	}
	if want := tok.Decode(out.TokenIDs); out.Text != want {
		t.Errorf("text %q, want the decoded ids %q", out.Text, want)
	}

	// Streaming text mode prints the same text; greedy is deterministic.
	code, stdout, stderr = runCmd("run", "--model", path, "--device", "cpu", "--prompt", "Hello, world",
		"--max-tokens", "12", "--temperature", "0")
	if code != 0 || stdout != out.Text+"\n" {
		t.Errorf("text mode: exit %d, stdout %q, want %q (stderr %s)", code, stdout, out.Text+"\n", stderr)
	}
}

func TestRunErrors(t *testing.T) {
	path := synthTemp(t, "tiny-gpt2", 0)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"run", "--model", path}, 2, "give one of --prompt or --ids"},
		{[]string{"run", "--model", path, "--prompt", "a", "--ids", "1"}, 2, "give one of --prompt or --ids"},
		{[]string{"run", "--model", path, "--ids", "1,x"}, 2, `item 2 ("x")`},
		{[]string{"run", "--model", path, "--ids", "1", "--temperature", "-1"}, 2, `invalid value "-1" for --temperature: must be between 0 and 2`},
		{[]string{"run", "--model", path, "--ids", "1", "--device", "tpu"}, 2, `invalid value "tpu" for --device: want cpu, cuda or auto`},
		{[]string{"run", "--model", path, "--ids", "1", "--max-tokens", "0"}, 2, `invalid value "0" for --max-tokens: must be at least 1`},
		{[]string{"run", "--model", path, "--ids", "1", "stray"}, 2, `unexpected argument "stray": run takes only flags`},
		{[]string{"run", "--model", path, "--ids", "99999999", "--device", "cpu"}, 1, "outside the vocabulary"},
		{[]string{"run", "--model", path, "--ids", "1,2,3", "--ctx-size", "3", "--device", "cpu"}, 1, "leaves no room"},
		{[]string{"run", "--model", filepath.Join(t.TempDir(), "none.gguf"), "--ids", "1"}, 1, "no such file"},
		{[]string{"logits", "--model", path}, 2, "need --ids"},
	}
	for _, c := range cases {
		code, _, stderr := runCmd(c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", c.args[1:], code, stderr, c.code, c.want)
		}
	}
}

// TestLogitsCommandHF runs `orcd logits --all` on an HF conformance fixture
// and compares with HF's logits (the interface external checks use).
func TestLogitsCommandHF(t *testing.T) {
	const name = "gptoss_mxfp4_q8"
	prompt, hfLogits := readHFPrompt(t, name)
	ids := make([]string, len(prompt))
	for i, id := range prompt {
		ids[i] = strconv.Itoa(int(id))
	}
	code, stdout, stderr := runCmd("logits", "--model", filepath.Join(hfTestdata, name+".gguf"),
		"--device", "cpu", "--ids", strings.Join(ids, ","), "--all", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var out logitsOutput
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatal(err)
	}
	if out.NVocab != 512 || len(out.Logits) != len(prompt) {
		t.Fatalf("n_vocab %d, %d rows; want 512, %d", out.NVocab, len(out.Logits), len(prompt))
	}
	for p, want := range hfLogits {
		var maxErr, maxRef float64
		for i := range want {
			maxErr = max(maxErr, math.Abs(float64(out.Logits[p][i])-want[i]))
			maxRef = max(maxRef, math.Abs(want[i]))
		}
		if maxErr/maxRef > 1e-4 {
			t.Errorf("position %d: relative error %.3g", p, maxErr/maxRef)
		}
	}
}

// BenchmarkDecodeGPT2_124M measures greedy decode on the CPU backend with a
// synthesized gpt2-124m (Q8_0 matrices): one Forward of one token per
// iteration after a 32-token prompt, reported as tokens/s.
func BenchmarkDecodeGPT2_124M(b *testing.B) {
	path := synthTemp(b, "gpt2-124m", 0)
	f, err := gguf.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	m, err := model.Load(f, cpu.New(), model.LoadOptions{})
	f.Close()
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	c, err := m.NewCache(1024)
	if err != nil {
		b.Fatal(err)
	}
	prompt := make([]int32, 32)
	for i := range prompt {
		prompt[i] = int32(1000 + i)
	}
	if _, err := m.Forward(c, prompt, false); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if c.Len() == c.Cap() {
			c.Reset()
		}
		if _, err := m.Forward(c, []int32{int32(i % 50000)}, false); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tokens/s")
}

// TestSynthScales decodes generated tensors of each type and checks that
// their mean is near zero and their standard deviation near the requested
// one (MXFP4 picks a power-of-two scale, so within a factor √2).
func TestSynthScales(t *testing.T) {
	for _, typ := range []tensor.Type{tensor.F32, tensor.F16, tensor.BF16, tensor.Q8_0, tensor.MXFP4} {
		const std, n = 0.02, 1 << 16
		st := model.SynthTensor{Name: "w", Type: typ, Dims: []int64{256, n / 256}, Std: std}
		res := generateChunk(st, 3, synthJob{n: n}, make([]float32, n))
		if res.err != nil {
			t.Fatalf("%s: %v", typ, res.err)
		}
		vals := make([]float32, n)
		if err := tensor.Dequantize(typ, res.data, vals); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		var sum, sumSq float64
		for _, v := range vals {
			sum += float64(v)
			sumSq += float64(v) * float64(v)
		}
		mean := sum / n
		got := math.Sqrt(sumSq/n - mean*mean)
		if math.Abs(mean) > 0.05*std || got < std/math.Sqrt2 || got > std*math.Sqrt2 {
			t.Errorf("%s: mean %.3g, std %.3g; want about 0 and %g", typ, mean, got, std)
		}
	}
}
