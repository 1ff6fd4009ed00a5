package model

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"orcd/backend/cpu"
	"orcd/gguf"
	"orcd/internal/testgguf"
)

// edit describes a change to a fixture: metadata keys to set (nil value
// deletes) and tensors to rename (empty new name deletes).
type edit struct {
	keys    map[string]*gguf.Value
	tensors map[string]string
}

// rewrite copies fixture name with the edit applied into a temporary file
// and opens it.
func rewrite(t *testing.T, name string, e edit) *gguf.File {
	t.Helper()
	src, err := gguf.Open(filepath.Join("testdata", name+".gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	w := gguf.NewWriter()
	for _, kv := range src.KV {
		v, changed := e.keys[kv.Key]
		switch {
		case !changed:
			w.Set(kv.Key, kv.Value)
		case v != nil:
			w.Set(kv.Key, *v)
		}
	}
	for k, v := range e.keys {
		if v != nil && !src.Has(k) {
			w.Set(k, *v)
		}
	}
	data := map[string][]byte{}
	for i := range src.Tensors {
		ti := &src.Tensors[i]
		newName, renamed := e.tensors[ti.Name]
		if !renamed {
			newName = ti.Name
		}
		if newName == "" {
			continue
		}
		if err := w.AddTensor(newName, ti.Type, ti.Dims); err != nil {
			t.Fatal(err)
		}
		data[newName] = slices.Clone(src.TensorData(ti))
	}
	return testgguf.Open(t, w, data)
}

func str(s string) *gguf.Value  { v := gguf.StringValue(s); return &v }
func u32(n uint32) *gguf.Value  { v := gguf.Uint32Value(n); return &v }
func f32(x float32) *gguf.Value { v := gguf.Float32Value(x); return &v }

// TestLoadErrors checks that bad files fail at load time with an error
// naming what is wrong.
func TestLoadErrors(t *testing.T) {
	cases := []struct {
		name    string
		fixture string
		edit    edit
		want    []string // substrings of the error
	}{
		{"unknown architecture", "gpt2_tied_q8",
			edit{keys: map[string]*gguf.Value{"general.architecture": str("falcon")}},
			[]string{`unsupported architecture "falcon"`, "gpt-oss, gpt2, gptoss, llama, qwen2"}},
		{"missing key", "gptoss_mxfp4_q8",
			edit{keys: map[string]*gguf.Value{"gpt-oss.attention.key_length": nil}},
			[]string{"gpt-oss.attention.key_length", "not found"}},
		{"zero count", "gpt2_tied_q8",
			edit{keys: map[string]*gguf.Value{"gpt2.block_count": u32(0)}},
			[]string{"gpt2.block_count", "out of range"}},
		{"key of the wrong type", "gpt2_tied_q8",
			edit{keys: map[string]*gguf.Value{"gpt2.attention.head_count": str("four")}},
			[]string{"gpt2.attention.head_count"}},
		{"negative epsilon", "gpt2_untied_mixed",
			edit{keys: map[string]*gguf.Value{"gpt2.attention.layer_norm_epsilon": f32(-1)}},
			[]string{"gpt2.attention.layer_norm_epsilon", "positive"}},
		{"heads not dividing hidden", "gpt2_tied_q8",
			edit{keys: map[string]*gguf.Value{"gpt2.attention.head_count": u32(3)}},
			[]string{"3 heads"}},
		{"kv heads not dividing heads", "gptoss_mxfp4_q8",
			edit{keys: map[string]*gguf.Value{"gpt-oss.attention.head_count_kv": u32(3)}},
			[]string{"head_count 4 is not a multiple of attention.head_count_kv 3"}},
		{"tensor shape disagrees with metadata", "gptoss_mxfp4_q8",
			edit{keys: map[string]*gguf.Value{"gpt-oss.attention.head_count_kv": u32(4)}},
			[]string{"blk.0.attn_k.weight", "dims [64 32], want [64 64]"}},
		{"missing tensor", "gptoss_f16_bf16",
			edit{tensors: map[string]string{"blk.2.attn_sinks.weight": ""}},
			[]string{"blk.2.attn_sinks.weight", "missing"}},
		{"missing output on gpt-oss", "gptoss_f16_bf16",
			edit{tensors: map[string]string{"output.weight": ""}},
			[]string{"output.weight", "missing"}},
		{"unsupported rope scaling", "gptoss_mxfp4_q8",
			edit{keys: map[string]*gguf.Value{"gpt-oss.rope.scaling.type": str("linear")}},
			[]string{"unsupported rope scaling", "linear"}},
		{"more experts used than exist", "gptoss_mxfp4_q8",
			edit{keys: map[string]*gguf.Value{"gpt-oss.expert_used_count": u32(5)}},
			[]string{"expert_used_count 5 > expert_count 4"}},
		{"position table shorter than the context", "gpt2_tied_q8",
			edit{keys: map[string]*gguf.Value{"gpt2.context_length": u32(128)}},
			[]string{"position_embd.weight", "want [64 128]"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := rewrite(t, c.fixture, c.edit)
			be := cpu.New()
			m, err := Load(f, be, LoadOptions{})
			if err == nil {
				m.Close()
				t.Fatal("Load succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if n := be.Allocated(); n != 0 {
				t.Errorf("a failed load left %d bytes allocated", n)
			}
		})
	}
}

// TestOllamaNames loads a fixture renamed the way ollama writes gpt-oss
// (arch gptoss, attn_out, attn_sinks without .weight, ffn_norm for
// post_attention_norm) and expects the same logits.
func TestOllamaNames(t *testing.T) {
	const name = "gptoss_mxfp4_q8"
	keys := map[string]*gguf.Value{"general.architecture": str("gptoss")}
	tensors := map[string]string{}
	orig, err := gguf.Open(filepath.Join("testdata", name+".gguf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range orig.KV {
		if rest, ok := strings.CutPrefix(kv.Key, "gpt-oss."); ok {
			keys[kv.Key] = nil
			v := kv.Value
			keys["gptoss."+rest] = &v
		}
	}
	for _, ti := range orig.Tensors {
		n := ti.Name
		n = strings.Replace(n, "attn_output.", "attn_out.", 1)
		n = strings.Replace(n, "attn_sinks.weight", "attn_sinks", 1)
		n = strings.Replace(n, "post_attention_norm.", "ffn_norm.", 1)
		if n != ti.Name {
			tensors[ti.Name] = n
		}
	}
	orig.Close()
	renamed := rewrite(t, name, edit{keys: keys, tensors: tensors})

	fx := readFixture(t, name)
	m, err := Load(renamed, cpu.New(), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c, err := m.NewCache(64)
	if err != nil {
		t.Fatal(err)
	}
	logits, err := m.Forward(c, fx.Prompt, false)
	if err != nil {
		t.Fatal(err)
	}
	if e := relErr(logits, fx.PromptLogits[len(fx.Prompt)-1]); e > conformanceTolerance {
		t.Errorf("relative error %.3g", e)
	}
}

// TestForwardErrors checks the errors of Forward and NewCache, and that a
// rejected call leaves the cache as it was.
func TestForwardErrors(t *testing.T) {
	m := loadFixtureModel(t, "gpt2_tied_q8", 0)
	other := loadFixtureModel(t, "gpt2_untied_mixed", 0)
	if _, err := m.NewCache(65); err == nil || !strings.Contains(err.Error(), "out of range [1, 64]") {
		t.Errorf("NewCache(65): %v", err)
	}
	if _, err := m.NewCache(0); err == nil {
		t.Error("NewCache(0) succeeded")
	}
	c, err := m.NewCache(8)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Forward(c, []int32{1, 2, 3, 4, 5}, false); err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one mentioning %q", what, err, want)
		}
		if c.Len() != 5 {
			t.Errorf("%s: cache length %d after a rejected call, want 5", what, c.Len())
		}
	}
	_, err = m.Forward(c, []int32{1, 2, 3, 4}, false)
	check("overflow", err, "context overflow: 5 tokens in the cache + 4 new > capacity 8")
	_, err = m.Forward(c, []int32{1, 512}, false)
	check("token out of range", err, "token 512 (index 1) is outside the vocabulary [0, 512)")
	_, err = m.Forward(c, []int32{-1}, false)
	check("negative token", err, "token -1")
	_, err = m.Forward(c, nil, false)
	check("no tokens", err, "no tokens")
	_, err = other.Forward(c, []int32{1}, false)
	check("foreign cache", err, "not made by this model")

	// The cache still works, and Reset starts over.
	if _, err := m.Forward(c, []int32{1, 2, 3}, false); err != nil || c.Len() != 8 {
		t.Fatalf("filling the cache: len %d, %v", c.Len(), err)
	}
	c.Reset()
	if c.Len() != 0 || c.Cap() != 8 {
		t.Errorf("after Reset: len %d cap %d", c.Len(), c.Cap())
	}
	c.Free()
	if _, err := m.Forward(c, []int32{1}, false); err == nil || !strings.Contains(err.Error(), "freed") {
		t.Errorf("Forward on a freed cache: %v", err)
	}
}

// TestSeqCacheSize checks that Forward's cache gives sliding-window layers
// only the window and one step's blocks: for gpt-oss-shaped windows, a long
// context costs KV memory only in the full-attention layers. It then walks a
// sequence to the end of the context, one step at a time, and checks that
// the pool never runs out and that a sliding group never holds more blocks
// than the window and the step reach.
func TestSeqCacheSize(t *testing.T) {
	var mu sync.Mutex
	layout := KVLayout{Windows: []int{128, 0, 128, 0}, Cols: 8}
	const ctx, maxBatch, bs = 131072, 512, seqCacheBlockSize
	c, err := newSeqCache(cpu.New(), nil, &mu, 1, layout, ctx, maxBatch)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Free()
	// Full group: ctx/16 blocks; sliding: (127+512)/16 rounded up, plus one.
	if want := ctx/bs + 41; c.kv.Blocks() != want {
		t.Errorf("%d blocks, want %d", c.kv.Blocks(), want)
	}
	if got, want := layout.BlockBytes(bs, 4), int64(2*2*bs*8*4); got != want {
		t.Errorf("BlockBytes %d, want %d (2 layers a group, K and V)", got, want)
	}
	steps := []int{maxBatch, 1, 37, maxBatch, 5}
	for i := 0; c.n < ctx; i++ {
		n := min(steps[i%len(steps)], ctx-c.n)
		c.grow(c.n, c.n+n)
		held := 0
		for _, b := range c.tables[1] {
			if b >= 0 {
				held++
			}
		}
		if held > 41 {
			t.Fatalf("at position %d the sliding group holds %d blocks", c.n, held)
		}
		c.n += n
	}
	if len(c.tables[0]) != ctx/bs {
		t.Errorf("full group: %d blocks for %d tokens", len(c.tables[0]), ctx)
	}
}

// TestConcurrentSequences runs several sequences on one model from
// different goroutines (caches made, used and freed concurrently) and
// expects each to get the logits it gets alone.
func TestConcurrentSequences(t *testing.T) {
	m := loadFixtureModel(t, "gptoss_f16_bf16", 5)
	prompts := [][]int32{{1, 2, 3, 4, 5, 6, 7}, {9, 8, 7}, {100, 200, 300, 400, 500, 6, 7, 8, 9, 10, 11}, {42}}
	run := func(p []int32) ([]float32, error) {
		c, err := m.NewCache(32)
		if err != nil {
			return nil, err
		}
		defer c.Free()
		var logits []float32
		for i := range p { // one token at a time: many interleaved calls
			if logits, err = m.Forward(c, p[i:i+1], false); err != nil {
				return nil, err
			}
		}
		return logits, nil
	}
	want := make([][]float32, len(prompts))
	for i, p := range prompts {
		var err error
		if want[i], err = run(p); err != nil {
			t.Fatal(err)
		}
	}
	errs := make(chan error, len(prompts))
	for i, p := range prompts {
		go func() {
			got, err := run(p)
			if err == nil && !slices.Equal(got, want[i]) {
				err = fmt.Errorf("prompt %d: logits differ when run concurrently", i)
			}
			errs <- err
		}()
	}
	for range prompts {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
