package engine_test

import (
	"context"
	"math"
	"reflect"
	"sync"
	"testing"

	"orcd/engine"
	"orcd/engine/enginetest"
	"orcd/internal/testutil"
)

// scored is one run's tokens with their log probabilities, and its prompt's.
type scored struct {
	ids    []int32
	lps    []engine.Logprobs
	prompt []engine.Logprobs
}

// runScored runs req to the end on e.
func runScored(t *testing.T, e *engine.Engine, req engine.Request) scored {
	t.Helper()
	j, err := e.Submit(req)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return runSubmitted(t, j, req)
}

// runSubmitted runs j, submitted with req, to the end.
func runSubmitted(t *testing.T, j *engine.Job, req engine.Request) scored {
	t.Helper()
	var out scored
	if _, err := j.Run(context.Background(), func(tok engine.Token) bool {
		if tok.ID < 0 {
			return false
		}
		out.ids = append(out.ids, tok.ID)
		if (tok.Logprobs != nil) != req.Logprobs {
			t.Errorf("token %d: logprobs %v, asked %v", tok.Index, tok.Logprobs, req.Logprobs)
		}
		if tok.Logprobs != nil {
			out.lps = append(out.lps, *tok.Logprobs)
		}
		if tok.Index == 0 && req.PromptLogprobs && j.PromptLogprobs() == nil {
			t.Error("prompt logprobs not known at the first token")
		}
		return false
	}); err != nil {
		t.Fatalf("run: %v", err)
	}
	out.prompt = j.PromptLogprobs()
	return out
}

// runTogether submits the requests to e, all before any runs, and then
// runs them at once.
func runTogether(t *testing.T, e *engine.Engine, reqs ...engine.Request) []scored {
	t.Helper()
	jobs := make([]*engine.Job, len(reqs))
	for i, req := range reqs {
		var err error
		if jobs[i], err = e.Submit(req); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	got := make([]scored, len(reqs))
	var wg sync.WaitGroup
	for i, req := range reqs {
		wg.Go(func() { got[i] = runSubmitted(t, jobs[i], req) })
	}
	wg.Wait()
	return got
}

// TestLogprobsMatchModel checks the reported log probabilities of generated
// and prompt tokens against a log-softmax of the fake model's logits,
// penalized and tempered here; with greedy decoding the drawn token is the
// most likely and its log probability the largest.
func TestLogprobsMatchModel(t *testing.T) {
	m := &enginetest.Model{}
	e := newEngine(t, m, engine.Config{BlockSize: 4})
	for _, c := range []struct{ temp, penalty float64 }{{0, 1}, {0.7, 1}, {0.7, 1.3}} {
		temp := c.temp
		// The repetition penalty by its rule (CTRL): a positive logit of a
		// token seen before is divided by it, another multiplied.
		pen := func(logits []float32, history []int32) []float32 {
			for _, id := range history {
				if l := m.Logits(history)[id]; l > 0 {
					logits[id] = float32(float64(l) / c.penalty)
				} else {
					logits[id] = float32(float64(l) * c.penalty)
				}
			}
			return logits
		}
		req := request("Hello, world", 12)
		req.Sampling.Temperature, req.Sampling.RepetitionPenalty = temp, c.penalty
		req.Logprobs, req.TopLogprobs, req.PromptLogprobs = true, 5, true
		got := runScored(t, e, req)
		prompt := enginetest.Tokenizer{}.Encode("Hello, world")
		if len(got.prompt) != len(prompt)-1 {
			t.Fatalf("T=%v: %d prompt logprobs for %d tokens", temp, len(got.prompt), len(prompt))
		}
		scale := temp
		if scale == 0 {
			scale = 1
		}
		for i, lp := range got.prompt {
			logits := pen(m.Logits(prompt[:i+1]), prompt[:i+1])
			if lp.ID != prompt[i+1] || math.Abs(lp.Logprob-testutil.LogSoftmax(logits, prompt[i+1], scale)) > 1e-9 {
				t.Errorf("T=%v: prompt token %d: %+v, want %d at %v", temp, i+1, lp.TokenLogprob, prompt[i+1], testutil.LogSoftmax(logits, prompt[i+1], scale))
			}
		}
		seq := append([]int32(nil), prompt...)
		for i, lp := range got.lps {
			logits := pen(m.Logits(seq), seq)
			id := got.ids[i]
			if lp.ID != id || math.Abs(lp.Logprob-testutil.LogSoftmax(logits, id, scale)) > 1e-9 {
				t.Errorf("T=%v: token %d: %+v, want %d at %v", temp, i, lp.TokenLogprob, id, testutil.LogSoftmax(logits, id, scale))
			}
			if len(lp.Top) != 5 {
				t.Fatalf("token %d: %d alternatives, want 5", i, len(lp.Top))
			}
			sum := 0.0
			for _, alt := range lp.Top {
				sum += math.Exp(alt.Logprob)
				if math.Abs(alt.Logprob-testutil.LogSoftmax(logits, alt.ID, scale)) > 1e-9 {
					t.Errorf("token %d: alternative %+v", i, alt)
				}
			}
			if sum > 1+1e-12 {
				t.Errorf("token %d: the alternatives hold %v", i, sum)
			}
			if temp == 0 {
				best := int32(0)
				for j, l := range logits {
					if l > logits[best] {
						best = int32(j)
					}
				}
				if id != best || lp.Top[0].ID != id || lp.Top[0].Logprob != lp.Logprob {
					t.Errorf("greedy token %d: drew %d, argmax %d, top %+v", i, id, best, lp.Top[0])
				}
			}
			seq = append(seq, id)
		}
	}
}

// TestLogprobsBatchInvariant runs requests with and without log
// probabilities (prompt ones too) together, in small steps with the prefix
// cache and preemption, and expects each request's tokens and log
// probabilities to equal those it gets alone. The prompt log probabilities
// must be complete even when the prompt is in the prefix cache.
func TestLogprobsBatchInvariant(t *testing.T) {
	reqs := mixedRequests(12)
	for i := range reqs {
		reqs[i].MaxTokens = 30
		switch i % 3 {
		case 0:
			reqs[i].Logprobs, reqs[i].TopLogprobs = true, 3
		case 1:
			reqs[i].Logprobs, reqs[i].PromptLogprobs = true, true
		}
	}
	fake := func() *enginetest.Model { return &enginetest.Model{Windows: []int{0, 6}} }
	want := make([]scored, len(reqs))
	for i, req := range reqs {
		want[i] = runScored(t, newEngine(t, fake(), engine.Config{NoPrefixCache: true}), req)
	}
	for _, cfg := range []engine.Config{
		{MaxActive: 8, MaxQueue: 12, StepTokens: 16, BlockSize: 4},
		{MaxActive: 6, MaxQueue: 12, StepTokens: 8, BlockSize: 4, KVBlocks: 40}, // preempts
	} {
		e := newEngine(t, fake(), cfg)
		// Warm the prefix cache with every prompt first.
		for _, req := range reqs[:3] {
			plain := req
			plain.Logprobs, plain.PromptLogprobs = false, false
			runScored(t, e, plain)
		}
		got := runTogether(t, e, reqs...)
		for i := range reqs {
			if !reflect.DeepEqual(got[i], want[i]) {
				t.Errorf("%+v: request %d differs from its run alone:\n got %+v\nwant %+v", cfg, i, got[i], want[i])
			}
		}
		if s := e.Stats(); s.PrefixHitTokens == 0 || cfg.KVBlocks > 0 && s.Preemptions == 0 {
			t.Errorf("%+v: %d prefix hits, %d preemptions", cfg, s.PrefixHitTokens, s.Preemptions)
		}
	}
}

// TestLogprobsDeviceSampling: on a backend that draws on the device, rows
// without log probabilities keep the device's draws and rows with them are
// read back before the device changes them and drawn on the host, as they
// are without device sampling; prompt rows are read back too.
func TestLogprobsDeviceSampling(t *testing.T) {
	plain := request("The quick brown fox", 20)
	greedy := plain
	greedy.Sampling.Temperature = 0
	scoredReq := plain
	scoredReq.Logprobs, scoredReq.TopLogprobs, scoredReq.PromptLogprobs = true, 2, true

	host := newEngine(t, &enginetest.Model{}, engine.Config{NoPrefixCache: true})
	wantGreedy := runScored(t, host, greedy) // the fake device draws greedily
	wantScored := runScored(t, host, scoredReq)

	dev := newEngine(t, &enginetest.Model{DeviceSampling: true}, engine.Config{MaxActive: 4, MaxQueue: 4, StepTokens: 8})
	got := runTogether(t, dev, plain, scoredReq)
	if !reflect.DeepEqual(got[0].ids, wantGreedy.ids) {
		t.Errorf("without logprobs: %v, want the device's draws %v", got[0].ids, wantGreedy.ids)
	}
	if !reflect.DeepEqual(got[1], wantScored) {
		t.Errorf("with logprobs:\n got %+v\nwant %+v", got[1], wantScored)
	}
}

// TestTopLogprobsRange refuses alternatives outside [0, MaxTopLogprobs].
func TestTopLogprobsRange(t *testing.T) {
	e := newEngine(t, &enginetest.Model{}, engine.Config{})
	for _, k := range []int{-1, engine.MaxTopLogprobs + 1} {
		req := request("hi", 2)
		req.Logprobs, req.TopLogprobs = true, k
		if _, err := e.Submit(req); err == nil {
			t.Errorf("top logprobs %d accepted", k)
		}
	}
	// A one-token prompt has no prompt log probabilities, known at once.
	req := request("h", 2)
	req.PromptLogprobs = true
	if got := runScored(t, e, req); got.prompt == nil || len(got.prompt) != 0 {
		t.Errorf("one-token prompt: %v", got.prompt)
	}
}
