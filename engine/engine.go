// Package engine turns requests into generated text: it tokenizes the
// prompt, runs prefill and the decode loop on a model.Model, samples each
// token, detokenizes the stream and applies the stop rules. It queues
// requests beyond its concurrency limit in a bounded FIFO queue.
//
// Several sequences can be in flight, each with its own KV cache. Model calls
// are serialized behind a mutex until batched decode lands.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"orcd/model"
)

// Tokenizer is what the engine needs from a tokenizer.
type Tokenizer interface {
	// Encode turns user text into tokens; special-token text stays text.
	Encode(text string) []int32
	// NewStreamDecoder returns a detokenizer for one generated sequence.
	NewStreamDecoder() StreamDecoder
	// IsEOG reports whether id ends generation.
	IsEOG(id int32) bool
}

// StreamDecoder turns a stream of tokens into text, emitting only complete
// UTF-8 characters.
type StreamDecoder interface {
	// Push adds a token and returns the text completed by it (may be empty).
	Push(id int32) string
	// Flush returns what is left once the sequence ends.
	Flush() string
}

// StopReason says why generation ended.
type StopReason string

// The reasons generation ends.
const (
	StopEOG         StopReason = "eog"          // the model produced an end-of-generation token
	StopString      StopReason = "stop"         // a stop string appeared, or the caller asked to stop
	StopMaxTokens   StopReason = "max_tokens"   // the request's token budget is spent
	StopContextFull StopReason = "context_full" // the KV cache is full
	StopCancelled   StopReason = "cancelled"    // Cancel was called or the caller's context ended
	StopTimeout     StopReason = "timeout"      // the engine's per-request timeout passed
	StopShutdown    StopReason = "shutdown"     // Drain's deadline passed while the request ran
)

// Errors returned by Submit and Run. Their callers map them to API errors.
var (
	ErrQueueFull    = errors.New("engine: request queue is full")
	ErrShuttingDown = errors.New("engine: shutting down")
	ErrDuplicateID  = errors.New("engine: a request with this id is already in flight")
	ErrEmptyPrompt  = errors.New("engine: prompt has no tokens")
	ErrPromptLength = errors.New("engine: prompt does not fit the context")
	ErrCacheAlloc   = errors.New("engine: cannot allocate the KV cache")
)

// errTimeout is the cancellation cause of a request that ran out of time.
var errTimeout = errors.New("engine: inference timeout")

// Config configures an Engine.
type Config struct {
	Model     model.Model
	Tokenizer Tokenizer
	// MaxActive is the number of sequences decoding at once (default 1).
	MaxActive int
	// MaxQueue is the number of requests that may wait beyond MaxActive
	// (default 0: reject when all slots are busy).
	MaxQueue int
	// CtxSize is the KV cache length of each sequence (default and
	// maximum: the model's context length).
	CtxSize int
	// Timeout bounds each request from the moment it is run, queueing
	// included (0: none).
	Timeout time.Duration
	// PromptPrefix is put before every text prompt (Request.Prompt), e.g.
	// BOS for models that expect it; token prompts are taken as they are.
	PromptPrefix []int32
	// PrefillChunk is the number of prompt tokens per model call (default
	// 256), so that cancel and other sequences need not wait for a long prompt.
	PrefillChunk int
	Logger       *slog.Logger
}

// Request is one generation request.
type Request struct {
	// ID names the request for Cancel; it must be unique among requests in flight.
	ID string
	// Prompt is encoded with Tokenizer.Encode unless Tokens is set.
	Prompt string
	Tokens []int32
	// MaxTokens is the most tokens to generate (>= 1).
	MaxTokens int
	Sampling  SamplingParams
	// Seed seeds the sampler; nil draws a fresh one, reported in Result.Seed.
	Seed *uint64
	// Stop strings end generation when they appear in the text; they are
	// never emitted.
	Stop []string
}

// Token is one generated token and the text it releases. Text may be empty
// (an incomplete UTF-8 character, or text held back because it could begin
// a stop string) and may include text held back from earlier tokens.
//
// When generation ends, text still held (by the detokenizer or the stop
// matcher) comes in one more Token with the last token's Index and ID -1.
type Token struct {
	Index int   // 0 for the first generated token
	ID    int32 // token id, or -1 for the final flush
	Text  string
}

// Result describes a finished request.
type Result struct {
	Seed         uint64
	PromptTokens int
	TokensOut    int
	StopReason   StopReason
	// StopToken is the end-of-generation token when StopReason is StopEOG.
	StopToken int32
	// QueueTime is the wait for a slot; PrefillTime the prompt's forward
	// passes; DecodeTime the time from the end of prefill to the end.
	QueueTime, PrefillTime, DecodeTime time.Duration
}

// Engine runs requests against one model.
type Engine struct {
	cfg Config
	log *slog.Logger

	modelMu sync.Mutex // serializes model calls

	mu      sync.Mutex
	closed  bool
	active  int             // requests holding a slot
	waiting []chan struct{} // FIFO of requests waiting for a slot
	jobs    map[*Job]bool   // submitted and not yet finished
	byID    map[string]*Job // the jobs that have an id
	caches  []model.Cache   // free caches, reused between requests
	idle    chan struct{}   // closed when jobs becomes empty while draining
}

// New returns an engine for cfg.
func New(cfg Config) (*Engine, error) {
	if cfg.Model == nil || cfg.Tokenizer == nil {
		return nil, errors.New("engine: config needs a model and a tokenizer")
	}
	mctx := cfg.Model.Config().ContextLength
	switch {
	case cfg.CtxSize < 0:
		return nil, fmt.Errorf("engine: ctx size %d is negative", cfg.CtxSize)
	case cfg.CtxSize == 0:
		cfg.CtxSize = mctx
	case mctx > 0 && cfg.CtxSize > mctx:
		return nil, fmt.Errorf("engine: ctx size %d exceeds the model's context length %d", cfg.CtxSize, mctx)
	}
	if cfg.CtxSize <= 0 {
		return nil, errors.New("engine: model has no context length; set CtxSize")
	}
	if cfg.MaxActive <= 0 {
		cfg.MaxActive = 1
	}
	if cfg.MaxQueue < 0 {
		return nil, fmt.Errorf("engine: queue size %d is negative", cfg.MaxQueue)
	}
	if cfg.PrefillChunk <= 0 {
		cfg.PrefillChunk = 256
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Engine{cfg: cfg, log: log, jobs: map[*Job]bool{}, byID: map[string]*Job{}}, nil
}

// CtxSize is the context length of each sequence.
func (e *Engine) CtxSize() int { return e.cfg.CtxSize }

// QueueDepth is the number of requests waiting for a slot.
func (e *Engine) QueueDepth() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.waiting)
}

// Active is the number of requests holding a slot.
func (e *Engine) Active() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.active
}

// Job is a submitted request. Run must be called exactly once.
type Job struct {
	e      *Engine
	req    Request
	prompt []int32
	ctx    context.Context // cancelled by Engine.Cancel
	cancel context.CancelCauseFunc
	slot   chan struct{} // closed when the job may run; nil if it got a slot at once
	seed   uint64
}

// Submit validates and tokenizes req and enters it in the queue. It fails at
// once with ErrQueueFull, ErrShuttingDown, ErrDuplicateID, ErrEmptyPrompt or
// ErrPromptLength, so that callers can answer before streaming.
func (e *Engine) Submit(req Request) (*Job, error) {
	if req.MaxTokens < 1 {
		return nil, fmt.Errorf("engine: max tokens %d is below 1", req.MaxTokens)
	}
	if err := req.Sampling.Validate(); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	for i, s := range req.Stop {
		if s == "" {
			return nil, fmt.Errorf("engine: stop string %d is empty", i)
		}
	}
	prompt := req.Tokens
	if prompt == nil {
		prompt = e.EncodePrompt(req.Prompt)
	}
	if len(prompt) == 0 {
		return nil, ErrEmptyPrompt
	}
	if len(prompt) > e.cfg.CtxSize {
		return nil, fmt.Errorf("%w: prompt is %d tokens, the context holds %d", ErrPromptLength, len(prompt), e.cfg.CtxSize)
	}
	// Drawn seeds stay below 2^53 so that JSON clients (JavaScript
	// numbers) can send them back exactly.
	j := &Job{e: e, req: req, prompt: prompt, seed: rand.Uint64N(1 << 53)}
	if req.Seed != nil {
		j.seed = *req.Seed
	}
	j.ctx, j.cancel = context.WithCancelCause(context.Background())

	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.closed:
		return nil, ErrShuttingDown
	case req.ID != "" && e.byID[req.ID] != nil:
		return nil, ErrDuplicateID
	case e.active < e.cfg.MaxActive && len(e.waiting) == 0:
		e.active++
	case len(e.waiting) >= e.cfg.MaxQueue:
		return nil, ErrQueueFull
	default:
		j.slot = make(chan struct{})
		e.waiting = append(e.waiting, j.slot)
	}
	e.jobs[j] = true
	if req.ID != "" {
		e.byID[req.ID] = j
	}
	return j, nil
}

// PromptTokens is the number of prompt tokens.
func (j *Job) PromptTokens() int { return len(j.prompt) }

// Seed is the sampler's seed: the request's, or one drawn for it.
func (j *Job) Seed() uint64 { return j.seed }

// Cancel stops the request with the given id, queued or running. It reports
// whether such a request was in flight; cancelling twice is harmless.
func (e *Engine) Cancel(id string) bool {
	e.mu.Lock()
	j := e.byID[id]
	e.mu.Unlock()
	if j == nil {
		return false
	}
	j.cancel(context.Canceled)
	return true
}

// releaseSlot hands the slot to the first waiter, or frees it.
func (e *Engine) releaseSlot() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.waiting) > 0 {
		close(e.waiting[0])
		e.waiting = e.waiting[1:]
		return
	}
	e.active--
}

// finish forgets j and wakes Drain when nothing is left.
func (e *Engine) finish(j *Job) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.jobs, j)
	if j.req.ID != "" && e.byID[j.req.ID] == j {
		delete(e.byID, j.req.ID)
	}
	if e.closed && len(e.jobs) == 0 && e.active == 0 && e.idle != nil {
		close(e.idle)
		e.idle = nil
	}
}

// wait blocks until j holds a slot or ctx ends.
func (j *Job) wait(ctx context.Context) error {
	if j.slot == nil {
		return nil
	}
	select {
	case <-j.slot:
		return nil
	case <-ctx.Done():
	}
	e := j.e
	e.mu.Lock()
	for i, w := range e.waiting {
		if w == j.slot {
			e.waiting = append(e.waiting[:i], e.waiting[i+1:]...)
			e.mu.Unlock()
			return ctx.Err()
		}
	}
	e.mu.Unlock()
	// The slot was handed over as ctx ended: pass it on.
	e.releaseSlot()
	return ctx.Err()
}

// Run waits for a slot and generates, calling emit for every generated
// token (end-of-generation tokens excluded) from the calling goroutine.
// emit returns true to stop generation, which then ends with StopString.
// Cancellation (Engine.Cancel or ctx), the engine's timeout and Drain's
// deadline end the request with StopCancelled, StopTimeout or StopShutdown
// and a nil error; the error is for failures (cache allocation, model
// errors).
func (j *Job) Run(ctx context.Context, emit func(Token) bool) (Result, error) {
	e := j.e
	defer e.finish(j)
	defer j.cancel(nil)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopAfter := context.AfterFunc(j.ctx, func() { cancel(context.Cause(j.ctx)) })
	defer stopAfter()
	if e.cfg.Timeout > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, e.cfg.Timeout, errTimeout)
		defer stop()
	}

	res := Result{PromptTokens: len(j.prompt), Seed: j.seed}
	start := time.Now()
	if err := j.wait(ctx); err != nil {
		res.QueueTime = time.Since(start)
		res.StopReason = stopReasonOf(ctx)
		return res, nil
	}
	defer e.releaseSlot()
	res.QueueTime = time.Since(start)

	cache, err := e.getCache()
	if err != nil {
		return res, err
	}
	defer e.putCache(cache)
	err = j.generate(ctx, cache, &res, emit)
	return res, err
}

// stopReasonOf tells a timeout and a shutdown from a cancellation.
func stopReasonOf(ctx context.Context) StopReason {
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errTimeout):
		return StopTimeout
	case errors.Is(cause, ErrShuttingDown):
		return StopShutdown
	}
	return StopCancelled
}

// forward runs one model call under the model mutex.
func (e *Engine) forward(c model.Cache, tokens []int32) ([]float32, error) {
	e.modelMu.Lock()
	defer e.modelMu.Unlock()
	return e.cfg.Model.Forward(c, tokens, false)
}

// generate is the prefill and decode loop of one sequence.
func (j *Job) generate(ctx context.Context, cache model.Cache, res *Result, emit func(Token) bool) error {
	e := j.e
	t0 := time.Now()
	var logits []float32
	for i := 0; i < len(j.prompt); i += e.cfg.PrefillChunk {
		if ctx.Err() != nil {
			res.PrefillTime = time.Since(t0)
			res.StopReason = stopReasonOf(ctx)
			return nil
		}
		var err error
		if logits, err = e.forward(cache, j.prompt[i:min(i+e.cfg.PrefillChunk, len(j.prompt))]); err != nil {
			return fmt.Errorf("engine: prefill: %w", err)
		}
	}
	t1 := time.Now()
	res.PrefillTime = t1.Sub(t0)
	defer func() { res.DecodeTime = time.Since(t1) }()

	sampler := NewSampler(j.req.Sampling, res.Seed)
	dec := e.cfg.Tokenizer.NewStreamDecoder()
	stops := NewStopMatcher(j.req.Stop)
	history := append(make([]int32, 0, len(j.prompt)+j.req.MaxTokens), j.prompt...)
	step := make([]int32, 1) // the decode step's input, reused
	// release passes text through the stop matcher to emit and reports
	// whether generation must stop.
	release := func(tok Token, text string) bool {
		out, hit := stops.Push(text)
		tok.Text = out
		if emit(tok) || hit {
			res.StopReason = StopString
			return true
		}
		return false
	}
	for {
		if ctx.Err() != nil {
			res.StopReason = stopReasonOf(ctx)
			return nil
		}
		id := sampler.Sample(logits, history)
		if e.cfg.Tokenizer.IsEOG(id) {
			res.StopReason, res.StopToken = StopEOG, id
			j.flush(dec, stops, emit, res)
			return nil
		}
		history = append(history, id)
		tok := Token{Index: res.TokensOut, ID: id}
		res.TokensOut++
		if release(tok, dec.Push(id)) {
			return nil
		}
		if res.TokensOut >= j.req.MaxTokens {
			res.StopReason = StopMaxTokens
			j.flush(dec, stops, emit, res)
			return nil
		}
		if cache.Len() >= cache.Cap() {
			res.StopReason = StopContextFull
			j.flush(dec, stops, emit, res)
			return nil
		}
		var err error
		step[0] = id
		if logits, err = e.forward(cache, step); err != nil {
			return fmt.Errorf("engine: decode step %d: %w", res.TokensOut, err)
		}
	}
}

// flush emits the text still held by the decoder and the stop matcher when
// generation ends for a reason other than a stop string. It is attached to
// the last generated token.
func (j *Job) flush(dec StreamDecoder, stops *StopMatcher, emit func(Token) bool, res *Result) {
	text, hit := stops.Push(dec.Flush())
	if !hit {
		text += stops.Flush()
	} else {
		res.StopReason = StopString
	}
	if text == "" || res.TokensOut == 0 {
		return
	}
	// The flushed text belongs to the last token; report it under that index.
	emit(Token{Index: res.TokensOut - 1, ID: -1, Text: text})
}

// getCache returns a free cache or allocates one.
func (e *Engine) getCache() (model.Cache, error) {
	e.mu.Lock()
	if n := len(e.caches); n > 0 {
		c := e.caches[n-1]
		e.caches = e.caches[:n-1]
		e.mu.Unlock()
		return c, nil
	}
	e.mu.Unlock()
	e.modelMu.Lock()
	c, err := e.cfg.Model.NewCache(e.cfg.CtxSize)
	e.modelMu.Unlock()
	if err != nil {
		e.log.Error("KV cache allocation failed", "tokens", e.cfg.CtxSize, "error", err)
		return nil, fmt.Errorf("%w of %d tokens: %v", ErrCacheAlloc, e.cfg.CtxSize, err)
	}
	e.log.Info("KV cache allocated", "tokens", e.cfg.CtxSize)
	return c, nil
}

// putCache keeps c for the next request, or frees it once the engine is
// closed. Cache calls take the model mutex: another sequence may be in a
// model call on the same backend.
func (e *Engine) putCache(c model.Cache) {
	e.modelMu.Lock()
	c.Reset()
	e.modelMu.Unlock()
	e.mu.Lock()
	closed := e.closed
	if !closed {
		e.caches = append(e.caches, c)
	}
	e.mu.Unlock()
	if closed {
		e.modelMu.Lock()
		c.Free()
		e.modelMu.Unlock()
	}
}

// Drain stops accepting requests (Submit returns ErrShuttingDown) and waits
// for those in flight to finish. When ctx ends first, it cancels them and
// waits for them to stop (they end with StopShutdown). Drain then frees the
// cached KV memory.
func (e *Engine) Drain(ctx context.Context) {
	e.mu.Lock()
	e.closed = true
	var idle chan struct{}
	if len(e.jobs) > 0 || e.active > 0 {
		if e.idle == nil {
			e.idle = make(chan struct{})
		}
		idle = e.idle
	}
	e.mu.Unlock()
	if idle != nil {
		select {
		case <-idle:
		case <-ctx.Done():
			e.mu.Lock()
			e.log.Warn("drain deadline passed; stopping the jobs in flight", "jobs", len(e.jobs))
			for j := range e.jobs {
				j.cancel(ErrShuttingDown)
			}
			e.mu.Unlock()
			<-idle
		}
	}
	e.mu.Lock()
	free := e.caches
	e.caches = nil
	e.mu.Unlock()
	e.modelMu.Lock()
	defer e.modelMu.Unlock()
	for _, c := range free {
		c.Free()
	}
}
