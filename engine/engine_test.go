package engine_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"orcd/engine"
	"orcd/engine/enginetest"
)

func newEngine(t *testing.T, m *enginetest.Model, cfg engine.Config) *engine.Engine {
	t.Helper()
	cfg.Model = m
	cfg.Tokenizer = enginetest.Tokenizer{}
	e, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.Drain(ctx)
		if n := m.LivePools(); n != 0 {
			t.Errorf("%d KV pools still allocated after Drain", n)
		}
	})
	return e
}

// waitFor polls cond until it holds, failing the test after 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func request(prompt string, maxTokens int) engine.Request {
	seed := uint64(1)
	return engine.Request{Prompt: prompt, MaxTokens: maxTokens, Sampling: engine.DefaultSampling, Seed: &seed}
}

// generate runs req to the end and returns the concatenated text and tokens.
func generate(t *testing.T, e *engine.Engine, ctx context.Context, req engine.Request) (string, []engine.Token, engine.Result) {
	t.Helper()
	j, err := e.Submit(req)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	var toks []engine.Token
	var text strings.Builder
	res, err := j.Run(ctx, func(tok engine.Token) bool {
		toks = append(toks, tok)
		text.WriteString(tok.Text)
		return false
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return text.String(), toks, res
}

func TestGenerateUntilEOG(t *testing.T) {
	const want = "héllo wörld, 日本語 🎉!"
	e := newEngine(t, &enginetest.Model{Next: enginetest.TextScript(want)}, engine.Config{})
	text, toks, res := generate(t, e, context.Background(), request("Say:", 100))
	if text != want {
		t.Errorf("text %q, want %q", text, want)
	}
	if res.StopReason != engine.StopEOG || res.StopToken != enginetest.MustID("<|endoftext|>") {
		t.Errorf("stop %q token %d, want eog", res.StopReason, res.StopToken)
	}
	if res.TokensOut != len(want) || res.PromptTokens != 4 {
		t.Errorf("tokens out %d prompt %d, want %d and 4", res.TokensOut, res.PromptTokens, len(want))
	}
	for _, tok := range toks {
		if !utf8.ValidString(tok.Text) {
			t.Errorf("token %d carries invalid UTF-8 %q", tok.Index, tok.Text)
		}
	}
}

func TestStopReasons(t *testing.T) {
	script := enginetest.TextScript("one two STOP three four five six seven")
	t.Run("max_tokens", func(t *testing.T) {
		e := newEngine(t, &enginetest.Model{Next: script}, engine.Config{})
		text, _, res := generate(t, e, context.Background(), request("x", 7))
		if text != "one two" || res.StopReason != engine.StopMaxTokens || res.TokensOut != 7 {
			t.Errorf("got %q %q %d", text, res.StopReason, res.TokensOut)
		}
	})
	t.Run("stop string across tokens", func(t *testing.T) {
		e := newEngine(t, &enginetest.Model{Next: script}, engine.Config{})
		req := request("x", 100)
		req.Stop = []string{"zzz", " STOP"}
		text, _, res := generate(t, e, context.Background(), req)
		if text != "one two" || res.StopReason != engine.StopString {
			t.Errorf("got %q %q", text, res.StopReason)
		}
	})
	t.Run("emit asks to stop", func(t *testing.T) {
		e := newEngine(t, &enginetest.Model{Next: script}, engine.Config{})
		j, _ := e.Submit(request("x", 100))
		n := 0
		res, err := j.Run(context.Background(), func(engine.Token) bool { n++; return n == 3 })
		if err != nil || res.StopReason != engine.StopString || res.TokensOut != 3 {
			t.Errorf("got %q after %d tokens, err %v", res.StopReason, res.TokensOut, err)
		}
	})
	t.Run("context full", func(t *testing.T) {
		e := newEngine(t, &enginetest.Model{Next: script, Ctx: 16}, engine.Config{})
		text, _, res := generate(t, e, context.Background(), request("0123456789", 100))
		// 16 cache slots, 10 for the prompt: 6 more tokens are forwarded and
		// a 7th sampled from the last logits.
		if res.StopReason != engine.StopContextFull || res.TokensOut != 7 || text != "one two" {
			t.Errorf("got %q %q %d", text, res.StopReason, res.TokensOut)
		}
	})
	t.Run("prompt too long", func(t *testing.T) {
		e := newEngine(t, &enginetest.Model{Next: script, Ctx: 8}, engine.Config{})
		if _, err := e.Submit(request("0123456789", 10)); !errors.Is(err, engine.ErrPromptLength) {
			t.Errorf("err %v, want ErrPromptLength", err)
		}
		if _, err := e.Submit(request("", 10)); !errors.Is(err, engine.ErrEmptyPrompt) {
			t.Errorf("err %v, want ErrEmptyPrompt", err)
		}
	})
}

func TestCancelAndTimeout(t *testing.T) {
	m := &enginetest.Model{Delay: 2 * time.Millisecond}
	e := newEngine(t, m, engine.Config{MaxActive: 2})
	req := request("x", 100000)
	req.ID = "job-1"
	j, err := e.Submit(req)
	if err != nil {
		t.Fatal(err)
	}
	var cancelledAt time.Time
	res, err := j.Run(context.Background(), func(tok engine.Token) bool {
		if tok.Index == 5 {
			cancelledAt = time.Now()
			// Cancel is idempotent: a second call still finds the job.
			first, second := e.Cancel("job-1"), e.Cancel("job-1")
			if !first || !second {
				t.Error("Cancel did not find the job")
			}
		}
		return false
	})
	if err != nil || res.StopReason != engine.StopCancelled {
		t.Fatalf("got %q, err %v", res.StopReason, err)
	}
	if d := time.Since(cancelledAt); d > 100*time.Millisecond {
		t.Errorf("stopped %v after cancel", d)
	}
	if e.Cancel("job-1") {
		t.Error("Cancel found a finished job")
	}

	e2 := newEngine(t, &enginetest.Model{Delay: 2 * time.Millisecond}, engine.Config{Timeout: 50 * time.Millisecond})
	_, _, res = generate(t, e2, context.Background(), request("x", 100000))
	if res.StopReason != engine.StopTimeout {
		t.Errorf("got %q, want timeout", res.StopReason)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, _, res = generate(t, e2, ctx, request("x", 100000))
	if res.StopReason != engine.StopCancelled {
		t.Errorf("caller context end: got %q, want cancelled", res.StopReason)
	}
}

func TestQueue(t *testing.T) {
	m := &enginetest.Model{Delay: time.Millisecond, Next: enginetest.TextScript("abcdefghij")}
	e := newEngine(t, m, engine.Config{MaxActive: 1, MaxQueue: 2})
	var jobs []*engine.Job
	for i := range 3 {
		j, err := e.Submit(request("x", 5))
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		jobs = append(jobs, j)
	}
	if _, err := e.Submit(request("x", 5)); !errors.Is(err, engine.ErrQueueFull) {
		t.Fatalf("4th submit: %v, want ErrQueueFull", err)
	}
	// The loop takes the first job in at its next step.
	waitFor(t, "queue depth 2", func() bool { return e.QueueDepth() == 2 && e.Active() == 1 })
	// Start the waiters first: they must still be served in FIFO order,
	// one at a time, so each waited longer than the one before.
	var wg sync.WaitGroup
	waited := make([]time.Duration, 3)
	for i := 2; i >= 0; i-- {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := jobs[i].Run(context.Background(), func(engine.Token) bool { return false })
			if err != nil {
				t.Error(err)
			}
			waited[i] = res.QueueTime
		}()
		time.Sleep(5 * time.Millisecond)
	}
	wg.Wait()
	if !(waited[0] < waited[1] && waited[1] < waited[2]) {
		t.Errorf("queue times %v, want FIFO service", waited)
	}
	blocker := request("x", 5)
	blocker.ID = "a"
	jb, err := e.Submit(blocker)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Submit(blocker); !errors.Is(err, engine.ErrDuplicateID) {
		t.Errorf("duplicate id: %v", err)
	}
	// A cancelled waiter leaves the queue.
	waiter := request("x", 5)
	waiter.ID = "w"
	jw, err := e.Submit(waiter)
	if err != nil {
		t.Fatal(err)
	}
	e.Cancel("w")
	res, _ := jw.Run(context.Background(), func(engine.Token) bool { return false })
	if res.StopReason != engine.StopCancelled {
		t.Errorf("cancelled waiter: %q", res.StopReason)
	}
	waitFor(t, "an empty queue", func() bool { return e.QueueDepth() == 0 })
	if res, _ := jb.Run(context.Background(), func(engine.Token) bool { return false }); res.StopReason != engine.StopMaxTokens || e.Active() != 0 {
		t.Errorf("blocker: %q, active %d", res.StopReason, e.Active())
	}
}

func TestConcurrentSequencesSerializeModelCalls(t *testing.T) {
	m := &enginetest.Model{}
	e := newEngine(t, m, engine.Config{MaxActive: 8, MaxQueue: 32})
	want, _, _ := generate(t, e, context.Background(), request("seed me", 40))
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			j, err := e.Submit(request("seed me", 40))
			if err != nil {
				t.Error(err)
				return
			}
			var b strings.Builder
			if _, err := j.Run(context.Background(), func(tok engine.Token) bool { b.WriteString(tok.Text); return false }); err != nil {
				t.Error(err)
			}
			if b.String() != want {
				t.Errorf("concurrent run gave %q, want %q", b.String(), want)
			}
		}()
	}
	wg.Wait()
	if n := m.MaxRunning.Load(); n != 1 {
		t.Errorf("%d model calls ran at once", n)
	}
}

func TestSeed(t *testing.T) {
	e := newEngine(t, &enginetest.Model{}, engine.Config{})
	a, _, _ := generate(t, e, context.Background(), request("hello", 30))
	b, _, _ := generate(t, e, context.Background(), request("hello", 30))
	if a != b {
		t.Errorf("same seed gave %q and %q", a, b)
	}
	req := request("hello", 30)
	req.Seed = nil
	c, _, res := generate(t, e, context.Background(), req)
	seed := res.Seed
	req.Seed = &seed
	d, _, _ := generate(t, e, context.Background(), req)
	if c != d {
		t.Errorf("reported seed %d did not reproduce %q (got %q)", seed, c, d)
	}
}

func TestPromptPrefix(t *testing.T) {
	bos := enginetest.MustID("<|endoftext|>")
	e := newEngine(t, &enginetest.Model{}, engine.Config{PromptPrefix: []int32{bos}})
	j, err := e.Submit(request("ab", 1))
	if err != nil || j.PromptTokens() != 3 {
		t.Errorf("text prompt with prefix: %v, %d tokens, want 3", err, j.PromptTokens())
	}
	j.Run(context.Background(), func(engine.Token) bool { return false })
	req := request("", 1)
	req.Tokens = []int32{'a'}
	if j, err = e.Submit(req); err != nil || j.PromptTokens() != 1 {
		t.Errorf("token prompt: %v, %d tokens, want 1", err, j.PromptTokens())
	}
	j.Run(context.Background(), func(engine.Token) bool { return false })
	if _, err := e.Submit(request("", 1)); !errors.Is(err, engine.ErrEmptyPrompt) {
		t.Errorf("empty text prompt: %v", err)
	}
}

func TestModelFailure(t *testing.T) {
	e := newEngine(t, &enginetest.Model{FailAfter: 3}, engine.Config{})
	j, _ := e.Submit(request("x", 10))
	if _, err := j.Run(context.Background(), func(engine.Token) bool { return false }); err == nil {
		t.Error("model failure not reported")
	}
}

func TestDrainCancelsAtDeadline(t *testing.T) {
	m := &enginetest.Model{Delay: time.Millisecond}
	e := newEngine(t, m, engine.Config{})
	j, _ := e.Submit(request("x", 100000))
	done := make(chan engine.Result)
	go func() {
		res, _ := j.Run(context.Background(), func(engine.Token) bool { return false })
		done <- res
	}()
	time.Sleep(10 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	e.Drain(ctx)
	if res := <-done; res.StopReason != engine.StopShutdown {
		t.Errorf("got %q", res.StopReason)
	}
	if _, err := e.Submit(request("x", 1)); !errors.Is(err, engine.ErrShuttingDown) {
		t.Errorf("submit after drain: %v", err)
	}
}

// BenchmarkDecodeOverhead measures the engine's host-side work per
// generated token (sampling 201088 logits, history, detokenizing, stop
// matching, emitting) against a model that returns the same logits
// instantly. The likely tokens are letters, so that text flows through the
// decoder and a stop string that never matches.
func BenchmarkDecodeOverhead(b *testing.B) {
	const vocab, tokens = 201088, 256
	logits := engine.LMLogits(vocab, 5)
	for i, c := range "etaoin shrdlu" {
		logits[c] = 22 - float32(i)/2
	}
	for _, name := range []string{"<|endoftext|>", "<|return|>", "<|call|>"} {
		logits[enginetest.MustID(name)] = float32(math.Inf(-1))
	}
	m := &enginetest.FixedModel{Logits: logits}
	e, err := engine.New(engine.Config{Model: m, Tokenizer: enginetest.Tokenizer{}})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		p    engine.SamplingParams
	}{
		{"greedy", engine.SamplingParams{Temperature: 0, TopP: 1, RepetitionPenalty: 1}},
		{"plain", engine.DefaultSampling},
		{"top-k-40", engine.SamplingParams{Temperature: 1, TopK: 40, TopP: 1, RepetitionPenalty: 1}},
		{"top-p-0.9", engine.SamplingParams{Temperature: 1, TopP: 0.9, RepetitionPenalty: 1}},
		{"min-p-0.05", engine.SamplingParams{Temperature: 1, TopP: 1, MinP: 0.05, RepetitionPenalty: 1}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			seed := uint64(1)
			n := 0
			for b.Loop() {
				j, err := e.Submit(engine.Request{Prompt: "Once upon a time", MaxTokens: tokens, Sampling: c.p,
					Seed: &seed, Stop: []string{"\n\nUser:"}})
				if err != nil {
					b.Fatal(err)
				}
				res, err := j.Run(context.Background(), func(engine.Token) bool { return false })
				if err != nil {
					b.Fatal(err)
				}
				n += res.TokensOut
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/token")
		})
	}
}
