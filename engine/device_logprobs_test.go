package engine_test

import (
	"context"
	"math"
	"path/filepath"
	"reflect"
	"testing"

	"orcd/backend/cuda"
	"orcd/engine"
	"orcd/engine/enginetest"
	"orcd/gguf"
	"orcd/internal/testutil"
	"orcd/model"
)

// TestDeviceLogprobs runs where a CUDA device is: a tiny GPT-2 fixture on
// the cuda backend, batch-invariant, whose tokens are drawn on the device.
// Rows read alone (model.RowReader, the path of rows with log
// probabilities) must equal the same rows of Read; a request without
// logprobs must draw the same tokens alone and beside one with logprobs
// and prompt logprobs (read back and drawn on the host), which must give
// the same tokens and numbers alone and together; and those numbers must
// match a log-softmax of model.Forward's logits on the same device.
func TestDeviceLogprobs(t *testing.T) {
	if !cuda.Available() {
		t.Skip("no CUDA driver or device: cuda tests run on the GPU machine")
	}
	be, err := cuda.New(cuda.Options{BatchInvariant: true})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	f, err := gguf.Open(filepath.Join("..", "model", "testdata", "gpt2_tied_q8.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(f, be, model.LoadOptions{MaxBatch: 64})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	vocab := m.Config().VocabSize

	// ReadRows against Read.
	kv, err := m.NewKV(8, 16)
	if err != nil {
		t.Fatal(err)
	}
	logits, err := m.Step(kv, &model.Batch{Chunks: []model.Chunk{
		{Tokens: []int32{5, 6, 7, 8, 9}, Tables: [][]int32{{0}}, Logits: model.AllLogits},
		{Tokens: []int32{10, 11, 12}, Tables: [][]int32{{1}}, Logits: model.LastLogits},
	}})
	if err != nil {
		t.Fatal(err)
	}
	rows := []int32{5, 0, 3}
	picked := make([]float32, len(rows)*vocab)
	if err := logits.(model.RowReader).ReadRows(rows, picked); err != nil {
		t.Fatal(err)
	}
	all := make([]float32, logits.Rows()*vocab)
	if err := logits.Read(all); err != nil {
		t.Fatal(err)
	}
	for i, r := range rows {
		if !reflect.DeepEqual(picked[i*vocab:(i+1)*vocab], all[int(r)*vocab:(int(r)+1)*vocab]) {
			t.Errorf("row %d read alone differs from Read", r)
		}
	}
	kv.Free()

	// The engine, over token prompts (the fixture's vocabulary is a
	// placeholder; the fake tokenizer only decodes).
	newEngine := func() *engine.Engine {
		e, err := engine.New(engine.Config{Model: m, Tokenizer: enginetest.Tokenizer{}, MaxActive: 4, MaxQueue: 4,
			CtxSize: 64, BatchInvariant: true, NoPrefixCache: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Drain(context.Background()) })
		return e
	}
	seed := func(s uint64) *uint64 { return &s }
	plain := engine.Request{Tokens: []int32{1, 2, 3, 4, 5, 6, 7}, MaxTokens: 12, Sampling: engine.DefaultSampling, Seed: seed(1)}
	scoredReq := engine.Request{Tokens: []int32{9, 8, 7, 6, 5, 4, 3, 2, 1}, MaxTokens: 12, Sampling: engine.DefaultSampling, Seed: seed(2),
		Logprobs: true, TopLogprobs: 5, PromptLogprobs: true}
	scoredReq.Sampling.Temperature = 0.8
	e := newEngine()
	wantPlain, wantScored := runScored(t, e, plain), runScored(t, e, scoredReq)
	got := runTogether(t, e, plain, scoredReq)
	if !reflect.DeepEqual(got[0].ids, wantPlain.ids) {
		t.Errorf("without logprobs: %v beside a logprobs request, %v alone", got[0].ids, wantPlain.ids)
	}
	// The tokens must be the same; the numbers, to rounding (a decode step
	// of two rows may sum in another order than one of one row).
	if !sameScored(got[1], wantScored, 1e-5) {
		t.Errorf("with logprobs: beside another request\n%+v\nalone\n%+v", got[1], wantScored)
	}

	// The numbers against Forward's logits (prompt and output at once).
	c, err := m.NewCache(64)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Free()
	seq := append(append([]int32(nil), scoredReq.Tokens...), wantScored.ids...)
	ref, err := m.Forward(c, seq, true)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, pos int, lp engine.Logprobs) {
		row := ref[(pos-1)*vocab : pos*vocab]
		if want := testutil.LogSoftmax(row, seq[pos], 0.8); lp.ID != seq[pos] || math.Abs(lp.Logprob-want) > 1e-3 {
			t.Errorf("%s at %d: %+v, want token %d at %v", what, pos, lp.TokenLogprob, seq[pos], want)
		}
	}
	for i, lp := range wantScored.prompt {
		check("prompt", i+1, lp)
	}
	for i, lp := range wantScored.lps {
		check("output", len(scoredReq.Tokens)+i, lp)
	}
}

// sameScored reports whether two runs drew the same tokens and alternatives
// with log probabilities within tol.
func sameScored(a, b scored, tol float64) bool {
	if !reflect.DeepEqual(a.ids, b.ids) || len(a.lps) != len(b.lps) || len(a.prompt) != len(b.prompt) {
		return false
	}
	same := func(x, y engine.Logprobs) bool {
		if x.ID != y.ID || math.Abs(x.Logprob-y.Logprob) > tol || len(x.Top) != len(y.Top) {
			return false
		}
		for i := range x.Top {
			if x.Top[i].ID != y.Top[i].ID || math.Abs(x.Top[i].Logprob-y.Top[i].Logprob) > tol {
				return false
			}
		}
		return true
	}
	for i := range a.lps {
		if !same(a.lps[i], b.lps[i]) {
			return false
		}
	}
	for i := range a.prompt {
		if !same(a.prompt[i], b.prompt[i]) {
			return false
		}
	}
	return true
}
