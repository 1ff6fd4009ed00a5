package server

import (
	"fmt"
	"net/http"
	"runtime/debug"
	"sync"

	"orcd/engine"
)

// checkChoices checks the chat fields that choose what the model may do:
// tool_choice (a forced call is constrained, see Server.constraint) and
// reasoning_effort.
func checkChoices(body *chatRequest) error {
	if _, err := parseToolChoice("tool_choice", body.ToolChoice); err != nil {
		return err
	}
	return checkEffort("reasoning_effort", body.ReasoningEffort)
}

// checkEffort checks a reasoning effort; param names its field.
func checkEffort(param, effort string) error {
	switch effort {
	case "", "low", "medium", "high":
		return nil
	}
	return invalid(fmt.Sprintf("%s: %q is not low, medium or high", param, clip(effort)))
}

// callLimit keeps the first max tool calls of the output and ends
// generation when one more begins: one for parallel_tool_calls false,
// none for tool_choice "none" (whose prompt offers no tools, so that a
// call would be the model's invention).
type callLimit struct {
	outputParser
	max  int
	done bool // a call over the limit began: everything after it is dropped
}

func (o *callLimit) token(tok engine.Token) ([]delta, bool) {
	if o.done {
		return nil, true
	}
	out, stop := o.keep(o.outputParser.token(tok))
	return out, stop || o.done
}

func (o *callLimit) finish() []delta {
	if o.done {
		return nil
	}
	out, _ := o.keep(o.outputParser.finish(), false)
	return out
}

func (o *callLimit) toolCalls() int { return min(o.outputParser.toolCalls(), o.max) }

// keep returns the deltas before a call over the limit.
func (o *callLimit) keep(ds []delta, stop bool) ([]delta, bool) {
	for i, d := range ds {
		if d.kind == deltaToolStart && d.toolIndex >= o.max {
			o.done = true
			return ds[:i], true
		}
	}
	return ds, stop
}

// maxChoices is the largest n a request may ask for.
const maxChoices = 8

// choices is the number of choices asked for (n, default 1).
func (c commonFields) choices() int {
	if c.N == nil {
		return 1
	}
	return *c.N
}

// runChoices runs the choices of a request, one per parser in outs, and
// returns their results and the first error. first, already submitted with
// req, is choice 0. The others are submitted with req once first's prompt
// is in the engine's prefix cache (at its first token), so that they share
// its prefill; choice i gets the seed first.Seed()+i and the id req.ID-i.
// emit receives choice i's deltas, one call at a time.
func (s *Server) runChoices(r *http.Request, first *engine.Job, req engine.Request, clock *tokenClock, outs []outputParser,
	emit func(i int, d delta) bool) ([]engine.Result, error) {
	n := len(outs)
	results, errs := make([]engine.Result, n), make([]error, n)
	if n == 1 {
		results[0], errs[0] = s.runJob(r, first, clock, outs[0], func(d delta) bool { return emit(0, d) })
		return results, errs[0]
	}
	var mu sync.Mutex
	locked := func(i int) func(delta) bool {
		return func(d delta) bool {
			mu.Lock()
			defer mu.Unlock()
			return emit(i, d)
		}
	}
	prefilled := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(prefilled) }) }
	var wg sync.WaitGroup
	wg.Add(n)
	// A panic in a choice's goroutine, out of reach of the Handler's
	// recovery, ends that choice with an internal error.
	recoverChoice := func(i int) {
		if v := recover(); v != nil {
			s.log.Error("choice panicked", "choice", i, "panic", fmt.Sprint(v), "stack", string(debug.Stack()),
				"correlation_id", correlationID(r.Context()))
			errs[i] = fmt.Errorf("%w: %v", engine.ErrPanic, v)
		}
	}
	go func() {
		defer wg.Done()
		defer release() // a first choice that fails lets the others try
		defer recoverChoice(0)
		results[0], errs[0] = s.runJob(r, first, clock, &onFirstToken{outputParser: outs[0], f: release}, locked(0))
	}()
	for i := 1; i < n; i++ {
		go func() {
			defer wg.Done()
			defer recoverChoice(i)
			select {
			case <-prefilled:
			case <-r.Context().Done():
			}
			ri := req
			ri.ID = fmt.Sprintf("%s-%d", req.ID, i)
			// The first choice scores the prompt for all; the others
			// share its prefill through the prefix cache.
			ri.PromptLogprobs = false
			seed := first.Seed() + uint64(i)
			ri.Seed = &seed
			job, err := s.cfg.Engine.Submit(ri)
			if err != nil {
				errs[i] = err
				return
			}
			results[i], errs[i] = s.runJob(r, job, clock, outs[i], locked(i))
		}()
	}
	wg.Wait()
	for i := range errs {
		if errs[i] != nil {
			return results, errs[i]
		}
		if err := runError(results[i], nil); err != nil {
			return results, err
		}
	}
	return results, nil
}

// sumResults is the result of a request's choices together: the first's,
// with the tokens of all.
func sumResults(rs []engine.Result) engine.Result {
	res := rs[0]
	for _, r := range rs[1:] {
		res.TokensOut += r.TokensOut
	}
	return res
}

// onFirstToken calls f at the first token its parser sees.
type onFirstToken struct {
	outputParser
	f    func()
	seen bool
}

func (o *onFirstToken) token(tok engine.Token) ([]delta, bool) {
	if !o.seen {
		o.seen = true
		o.f()
	}
	return o.outputParser.token(tok)
}
