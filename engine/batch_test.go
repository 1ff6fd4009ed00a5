package engine_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"orcd/engine"
	"orcd/engine/enginetest"
)

// solo runs each request alone on a fresh engine with one sequence at a
// time and no prefix cache: the reference for the batched runs.
func solo(t *testing.T, m func() *enginetest.Model, reqs []engine.Request) []string {
	t.Helper()
	out := make([]string, len(reqs))
	for i, req := range reqs {
		e := newEngine(t, m(), engine.Config{NoPrefixCache: true})
		out[i], _, _ = generate(t, e, context.Background(), req)
	}
	return out
}

// runAll runs the requests concurrently on e and returns their texts.
func runAll(t *testing.T, e *engine.Engine, reqs []engine.Request) []string {
	t.Helper()
	out := make([]string, len(reqs))
	var wg sync.WaitGroup
	for i, req := range reqs {
		j, err := e.Submit(req)
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b strings.Builder
			if _, err := j.Run(context.Background(), func(tok engine.Token) bool { b.WriteString(tok.Text); return false }); err != nil {
				t.Errorf("request %d: %v", i, err)
			}
			out[i] = b.String()
		}()
	}
	wg.Wait()
	return out
}

// mixedRequests are n seeded requests whose prompts share a few prefixes
// and differ in length.
func mixedRequests(n int) []engine.Request {
	r := rand.New(rand.NewPCG(3, 4))
	prefixes := []string{"The quick brown fox jumps over", "Lorem ipsum dolor sit amet, consectetur", "x"}
	reqs := make([]engine.Request, n)
	for i := range reqs {
		p := prefixes[i%len(prefixes)] + strings.Repeat("!", r.IntN(20))
		reqs[i] = request(p, 5+r.IntN(40))
		seed := uint64(i)
		reqs[i].Seed = &seed
	}
	return reqs
}

// TestBatchingMatchesAlone runs 24 requests at once, 8 at a time in steps
// of at most 16 tokens (prompt chunks interleaved with decode tokens), on a
// model whose output depends on the whole history as read back through the
// block tables, with a sliding-window layer too, and expects each request's
// text to equal its text when run alone.
func TestBatchingMatchesAlone(t *testing.T) {
	reqs := mixedRequests(24)
	fake := func() *enginetest.Model { return &enginetest.Model{Windows: []int{0, 6}} }
	want := solo(t, fake, reqs)
	m := fake()
	m.StepSizes = make(chan int, 100000)
	e := newEngine(t, m, engine.Config{MaxActive: 8, MaxQueue: 24, StepTokens: 16, BlockSize: 4})
	got := runAll(t, e, reqs)
	for i := range reqs {
		if got[i] != want[i] {
			t.Errorf("request %d: batched %q, alone %q", i, got[i], want[i])
		}
	}
	close(m.StepSizes)
	steps, tokens, full := 0, 0, 0
	for n := range m.StepSizes {
		steps++
		tokens += n
		if n == 16 {
			full++
		}
	}
	if full == 0 || tokens <= steps {
		t.Errorf("%d steps of %d tokens, %d full: the requests did not share steps", steps, tokens, full)
	}
	if s := e.Stats(); s.KVBlocksUsed != 0 || s.Running != 0 {
		t.Errorf("after the run: %+v", s)
	}
}

// TestPrefixCache runs requests that share prompt prefixes one after the
// other: the later ones reuse cached blocks, and give the same text as
// without the cache.
func TestPrefixCache(t *testing.T) {
	reqs := mixedRequests(9)
	fake := func() *enginetest.Model { return &enginetest.Model{Windows: []int{0, 6}} }
	want := solo(t, fake, reqs)
	e := newEngine(t, fake(), engine.Config{BlockSize: 4})
	for i, req := range reqs {
		if got, _, _ := generate(t, e, context.Background(), req); got != want[i] {
			t.Errorf("request %d: with the prefix cache %q, without %q", i, got, want[i])
		}
	}
	s := e.Stats()
	if s.PrefixHitTokens == 0 || s.PrefixHitTokens >= s.PrefixLookupTokens {
		t.Errorf("prefix cache: %d of %d tokens hit", s.PrefixHitTokens, s.PrefixLookupTokens)
	}
	if s.KVBlocksCached == 0 {
		t.Error("no cached blocks kept after the requests ended")
	}
}

// TestPreemption runs more sequences than the pool holds at full length:
// the newest are preempted and recomputed, never failed, and every text
// equals the text run alone.
func TestPreemption(t *testing.T) {
	reqs := mixedRequests(12)
	for i := range reqs {
		reqs[i].MaxTokens = 60
	}
	fake := func() *enginetest.Model { return &enginetest.Model{Windows: []int{0, 6}} }
	want := solo(t, fake, reqs)
	for _, prefix := range []bool{false, true} {
		t.Run(fmt.Sprintf("prefix-cache=%v", prefix), func(t *testing.T) {
			// 60 blocks of 4: one sequence of up to ~110 tokens needs ~28
			// blocks in the full group and 4 in the sliding one.
			e := newEngine(t, fake(), engine.Config{MaxActive: 6, MaxQueue: 12, StepTokens: 8, BlockSize: 4, KVBlocks: 60, NoPrefixCache: !prefix})
			got := runAll(t, e, reqs)
			for i := range reqs {
				if got[i] != want[i] {
					t.Errorf("request %d: %q, alone %q", i, got[i], want[i])
				}
			}
			s := e.Stats()
			if s.Preemptions == 0 {
				t.Error("no sequence was preempted")
			}
			if s.KVBlocksUsed != 0 {
				t.Errorf("%d blocks still used", s.KVBlocksUsed)
			}
		})
	}
}

// TestPromptBiggerThanPool fails a request whose prompt can never fit the
// KV pool, and keeps serving others.
func TestPromptBiggerThanPool(t *testing.T) {
	e := newEngine(t, &enginetest.Model{}, engine.Config{BlockSize: 4, KVBlocks: 4, MaxQueue: 1})
	j, err := e.Submit(request(strings.Repeat("a", 40), 5))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Run(context.Background(), func(engine.Token) bool { return false }); err == nil || !strings.Contains(err.Error(), "the pool has 4") {
		t.Errorf("40-token prompt in a 16-token pool: %v", err)
	}
	if _, _, res := generate(t, e, context.Background(), request("ab", 3)); res.StopReason != engine.StopMaxTokens {
		t.Errorf("next request: %q", res.StopReason)
	}
}

// TestCancelFreesBlocks cancels one of several running sequences and
// expects its blocks back at once (the next step), the others unaffected.
func TestCancelFreesBlocks(t *testing.T) {
	e := newEngine(t, &enginetest.Model{Ctx: 1 << 20, Delay: time.Millisecond}, engine.Config{MaxActive: 4, MaxQueue: 4, BlockSize: 4})
	started := make(chan bool, 3)
	results := make(chan engine.Result, 3)
	for i := range 3 {
		req := request("hello there", 100000)
		req.ID = fmt.Sprint("job", i)
		j, err := e.Submit(req)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			res, _ := j.Run(context.Background(), func(tok engine.Token) bool {
				if tok.Index == 40 {
					started <- true
				}
				return false
			})
			results <- res
		}()
	}
	for range 3 {
		<-started
	}
	before := e.Stats().KVBlocksUsed
	e.Cancel("job1")
	if res := <-results; res.StopReason != engine.StopCancelled {
		t.Fatalf("cancelled job: %q", res.StopReason)
	}
	// The others keep growing, so compare with the cancelled job's share:
	// at least 11 tokens + 40 outputs in 4-token blocks were freed.
	waitFor(t, "blocks freed", func() bool { return e.Stats().KVBlocksUsed < before-10 || e.Stats().Running == 2 })
	if s := e.Stats(); s.Running != 2 {
		t.Errorf("%d running after the cancel, want 2", s.Running)
	}
	e.Cancel("job0")
	e.Cancel("job2")
	for range 2 {
		<-results
	}
	waitFor(t, "all blocks freed", func() bool { return e.Stats().KVBlocksUsed == 0 })
}
