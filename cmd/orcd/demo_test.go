package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"orcd/demo"
	"orcd/internal/testutil"
	"orcd/tokenizer"
)

// The built-in model's tests compare it with what tools/train_demo.py
// computed in PyTorch (float32, the weights as the GGUF stores them); see
// demo/README.md.

// demoReference is demo/testdata/reference.json.gz.
type demoReference struct {
	Model struct {
		SHA256 string `json:"sha256"`
		Ctx    int    `json:"ctx"`
	} `json:"model"`
	Prompts []struct {
		Text       string    `json:"text"`
		File       string    `json:"file"`
		IDs        []int32   `json:"ids"`
		LastLogits []float32 `json:"last_logits"`
	} `json:"prompts"`
	Greedy struct {
		Text    string    `json:"text"`
		IDs     []int32   `json:"ids"`
		Tokens  []int32   `json:"tokens"`
		Margins []float64 `json:"margins"`
	} `json:"greedy"`
	Perplexity []demoPerplexity `json:"perplexity"`
}

// demoPerplexity is PyTorch's perplexity of the held-out text, with the
// windows of `orcd perplexity`.
type demoPerplexity struct {
	File    string  `json:"file"`
	Ctx     int     `json:"ctx"`
	Stride  int     `json:"stride"`
	Limit   int     `json:"limit"` // 0: the whole file
	Tokens  int     `json:"tokens"`
	Windows int     `json:"windows"`
	Scored  int     `json:"scored"`
	NLLMean float64 `json:"nll_mean"`
	PPL     float64 `json:"ppl"`
}

// demoDir is the demo package's directory from this one.
var demoDir = filepath.Join("..", "..", "demo")

func readDemoReference(t *testing.T) *demoReference {
	t.Helper()
	var ref demoReference
	testutil.ReadGzipJSON(t, filepath.Join(demoDir, "testdata", "reference.json.gz"), &ref)
	return &ref
}

// idList joins ids as the --ids flag takes them.
func idList(ids []int32) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(int(id))
	}
	return strings.Join(s, ",")
}

// TestDemoModelFile checks that the built-in model is the file the
// reference was computed from, and that it carries the embedded vocabulary
// demo.Vocab names (GPT-2's), as orcd's synthetic models do.
func TestDemoModelFile(t *testing.T) {
	ref := readDemoReference(t)
	data, err := os.ReadFile(filepath.Join(demoDir, "model", demo.Name+".gguf"))
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != ref.Model.SHA256 {
		t.Errorf("demo model SHA-256 %x, the reference's %s", sum, ref.Model.SHA256)
	}
	f, err := demo.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Size != int64(len(data)) {
		t.Errorf("the built-in model has %d bytes, the file %d", f.Size, len(data))
	}
	got, err := tokenizer.ReadGGUFVocab(f)
	if err != nil {
		t.Fatal(err)
	}
	want, err := tokenizer.VocabGGUF(demo.Vocab)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the built-in model's tokenizer metadata differ from the embedded %s vocabulary", demo.Vocab)
	}
}

// TestDemoLogits runs `orcd logits` on the built-in model (no --model) for
// each reference prompt and compares the last position's logits with
// PyTorch's, after checking that orcd's tokenizer gives the reference's ids.
func TestDemoLogits(t *testing.T) {
	ref := readDemoReference(t)
	tok, err := tokenizer.Embedded(tokenizer.VocabGPT2)
	if err != nil {
		t.Fatal(err)
	}
	if len(ref.Prompts) == 0 {
		t.Fatal("no prompts in the reference")
	}
	for i, p := range ref.Prompts {
		var ids []int32
		if p.File != "" {
			text, err := os.ReadFile(filepath.Join("..", "..", p.File))
			if err != nil {
				t.Fatal(err)
			}
			ids = tok.Encode(string(text))[:len(p.IDs)]
		} else {
			ids = tok.Encode(p.Text)
		}
		if !reflect.DeepEqual(ids, p.IDs) {
			t.Errorf("prompt %d: orcd's tokenizer gives %v, the reference %v", i, ids, p.IDs)
			continue
		}
		code, stdout, stderr := runCmd("logits", "--device", "cpu", "--ids", idList(ids), "--json")
		if code != 0 {
			t.Fatalf("prompt %d: exit %d: %s", i, code, stderr)
		}
		var out logitsOutput
		if err := json.Unmarshal([]byte(stdout), &out); err != nil {
			t.Fatal(err)
		}
		if len(out.Logits) != 1 || len(out.Logits[0]) != len(p.LastLogits) {
			t.Fatalf("prompt %d: %d rows of %d logits; want 1 of %d", i, len(out.Logits), len(out.Logits[0]), len(p.LastLogits))
		}
		var maxErr, maxRef float64
		for j, want := range p.LastLogits {
			maxErr = max(maxErr, math.Abs(float64(out.Logits[0][j]-want)))
			maxRef = max(maxRef, math.Abs(float64(want)))
		}
		if maxErr/maxRef > 1e-4 {
			t.Errorf("prompt %d (%d tokens): largest logit error %.3g of %.3g, relative %.3g > 1e-4", i, len(ids), maxErr, maxRef, maxErr/maxRef)
		}
	}
}

// TestDemoGreedy runs `orcd run` greedily on the built-in model and
// requires PyTorch's greedy tokens, up to the first step whose top two
// logits are too close for two float32 implementations to agree on.
func TestDemoGreedy(t *testing.T) {
	ref := readDemoReference(t)
	code, stdout, stderr := runCmd("run", "--device", "cpu", "--prompt", ref.Greedy.Text, "--temperature", "0",
		"--max-tokens", strconv.Itoa(len(ref.Greedy.Tokens)), "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var out runOutput
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatal(err)
	}
	for i, want := range ref.Greedy.Tokens {
		if ref.Greedy.Margins[i] < 1e-3 {
			t.Logf("step %d: margin %.3g; not compared further", i, ref.Greedy.Margins[i])
			break
		}
		if i >= len(out.TokenIDs) || out.TokenIDs[i] != want {
			t.Fatalf("greedy tokens %v, PyTorch's %v (first difference at step %d)", out.TokenIDs, ref.Greedy.Tokens, i)
		}
	}
	t.Logf("%q%s", ref.Greedy.Text, out.Text)
}

// demoPPLMargin is the relative distance from PyTorch's perplexity beyond
// which TestDemoPerplexity fails: the bound for the fast paths.
const demoPPLMargin = 0.005

// TestDemoPerplexity is the quality gate: the perplexity of the built-in
// model on the first tokens of the held-out text (`orcd perplexity
// --limit`) must be within demoPPLMargin of PyTorch's, on the same tokens
// and windows, on every CPU path; on the exact one its mean NLL must also
// be within 1e-4 of PyTorch's.
func TestDemoPerplexity(t *testing.T) {
	ref := readDemoReference(t)
	i := slices.IndexFunc(ref.Perplexity, func(p demoPerplexity) bool { return p.Limit > 0 })
	if i < 0 {
		t.Fatal("no short perplexity in the reference")
	}
	want := ref.Perplexity[i]
	paths := []struct {
		name  string
		args  []string // selecting the path
		exact bool
	}{
		{"cpu", nil, true},
		{"cpu-fast", []string{"--cpu-precision", "fast"}, false},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			args := append([]string{"perplexity", "--device", "cpu", "--file", filepath.Join("..", "..", want.File),
				"--ctx", strconv.Itoa(want.Ctx), "--stride", strconv.Itoa(want.Stride), "--limit", strconv.Itoa(want.Limit), "--json"}, p.args...)
			code, stdout, stderr := runCmd(args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var got perplexityResult
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatal(err)
			}
			if got.Tokens != want.Tokens || got.Windows != want.Windows || got.Scored != want.Scored {
				t.Fatalf("tokens %d, windows %d, scored %d; PyTorch's %d, %d, %d", got.Tokens, got.Windows, got.Scored, want.Tokens, want.Windows, want.Scored)
			}
			if r := got.PPL/want.PPL - 1; math.Abs(r) > demoPPLMargin {
				t.Errorf("perplexity %.4f, PyTorch's %.4f: %+.2f%%, past the ±%.1f%% bound", got.PPL, want.PPL, 100*r, 100*demoPPLMargin)
			}
			if d := got.NLLMean - want.NLLMean; p.exact && math.Abs(d) > 1e-4 {
				t.Errorf("mean NLL %.6f, PyTorch's %.6f (difference %.3g > 1e-4)", got.NLLMean, want.NLLMean, d)
			}
			t.Logf("perplexity %.4f (PyTorch %.4f) on %d tokens, %.1f s", got.PPL, want.PPL, got.Tokens, got.Seconds)
		})
	}
}

// TestServeBuiltinModel serves without --model: the built-in model, named
// kjv-demo in the API and builtin:kjv-demo in the ready callback.
func TestServeBuiltinModel(t *testing.T) {
	w := startServe(t, "--ctx-size", "256")
	if w.callback.ModelRef != "builtin:"+demo.Name {
		t.Errorf("ready callback model_ref %q", w.callback.ModelRef)
	}
	if _, h := getJSON(t, "GET", w.uri+"/health"); h["model"] != demo.Name || h["quant_kind"] != "Q8_0+F32" || h["vocab_size"] != 50257.0 {
		t.Errorf("health %v", h)
	}
}
