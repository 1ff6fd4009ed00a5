// Package engine turns requests into generated text with continuous
// batching: one loop runs the model step by step, each step one forward pass
// over the next token of every running sequence and chunks of the prompts
// being read, up to a token budget. Requests join at the next step and leave
// as soon as they end. KV memory is a paged pool (blocks.go): a sequence
// holds the blocks its tokens fill, prompts that start alike share blocks,
// and when the pool runs out the newest sequence is preempted and later
// recomputed.
//
// Submit tokenizes and queues a request; Run, on the caller's goroutine,
// turns the tokens the loop produces into text (detokenizing, stop strings)
// and hands them to the caller.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"orcd/backend"
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
	StopContextFull StopReason = "context_full" // the sequence reached the context size
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
	// ErrPanic ends the jobs of a step in which the model or the sampler
	// panicked; the loop recovers and goes on with the other jobs.
	ErrPanic = errors.New("engine: internal error (panic) in a model step")
)

// Causes of a job's cancellation besides Engine.Cancel and the caller's
// context.
var (
	errTimeout = errors.New("engine: inference timeout")
	errStopped = errors.New("engine: the caller stopped generation")
)

// Config configures an Engine.
type Config struct {
	Model     model.Model
	Tokenizer Tokenizer
	// MaxActive is the most sequences running at once (default 1).
	MaxActive int
	// MaxQueue is the number of requests that may wait beyond MaxActive
	// (default 0: reject when all slots are busy).
	MaxQueue int
	// CtxSize is the most tokens of one sequence, prompt and output
	// (default and maximum: the model's context length).
	CtxSize int
	// Timeout bounds each request from the moment it is run, queueing
	// included (0: none).
	Timeout time.Duration
	// PromptPrefix is put before every text prompt (Request.Prompt), e.g.
	// BOS for models that expect it; token prompts are taken as they are.
	PromptPrefix []int32
	// StepTokens is the most tokens one step runs, decode tokens and prompt
	// chunks together (default and maximum: the model's MaxBatch).
	StepTokens int
	// BlockSize is the tokens per KV cache block (default 16).
	BlockSize int
	// KVBlocks is the number of KV cache blocks (default: enough for
	// MaxActive sequences of CtxSize tokens).
	KVBlocks int
	// NoPrefixCache turns off the reuse of cached blocks between prompts.
	NoPrefixCache bool
	// BatchInvariant keeps a request's tokens independent of the batch it
	// ran in, with a batch-invariant backend: only blocks computed as
	// prompt chunks enter the prefix cache (a decode step's kernels round
	// differently from a prompt chunk's).
	BatchInvariant bool
	Logger         *slog.Logger
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
	// Logprobs asks for each generated token's log probabilities
	// (Token.Logprobs), with TopLogprobs alternatives (0 to
	// MaxTopLogprobs). See Logprobs for the distribution. On a backend
	// that samples on the device, such a request's rows are read back and
	// drawn on the host (same distribution, other random numbers).
	Logprobs    bool
	TopLogprobs int
	// PromptLogprobs asks for the log probabilities of the prompt's tokens
	// after the first (Job.PromptLogprobs), with TopLogprobs alternatives.
	// The prompt is then computed in full, never taken from the prefix
	// cache, until they are known.
	PromptLogprobs bool
	// NewConstraint, when set, makes the constraint that restricts the
	// request's tokens (structured output); Submit calls it once per job.
	NewConstraint func() Constraint
}

// Constraint restricts the tokens of one sequence, e.g. to those of a
// grammar. The loop calls Next before drawing each token and Accept with
// the token drawn.
type Constraint interface {
	// Next returns the tokens allowed next, one bit per id (bit id%64 of
	// word id/64; nil allows any), or forced >= 0, a token that must come
	// next. remaining is how many tokens the sequence may still produce,
	// this one included, so that the constraint can finish in time.
	Next(remaining int) (allowed []uint64, forced int32)
	// Accept records the token that came; an error ends the request.
	Accept(id int32) error
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
	// Logprobs are the token's log probabilities when the request asked
	// for them (Request.Logprobs); nil for the final flush.
	Logprobs *Logprobs
}

// Result describes a finished request.
type Result struct {
	Seed         uint64
	PromptTokens int
	TokensOut    int
	StopReason   StopReason
	// StopToken is the end-of-generation token when StopReason is StopEOG.
	StopToken int32
	// QueueTime is the wait before the sequence first ran; PrefillTime the
	// time from then to its first token; DecodeTime the time from the first
	// token to the end.
	QueueTime, PrefillTime, DecodeTime time.Duration
}

// Stats are the engine's gauges and counters, for metrics.
type Stats struct {
	Running, Waiting int // sequences in the batch, and queued
	// KVBlocks is the pool's size; KVBlocksUsed those held by sequences;
	// KVBlocksCached those held by nobody that keep a cached prefix.
	KVBlocks, KVBlocksUsed, KVBlocksCached int
	BlockSize                              int
	Preemptions                            int64 // sequences preempted so far
	// PrefixLookupTokens are the prompt tokens looked up in the prefix
	// cache and PrefixHitTokens those found there, so far.
	PrefixLookupTokens, PrefixHitTokens int64
}

// StepInfo describes one step, for Engine.ObserveSteps.
type StepInfo struct {
	Tokens, Sequences int
	Duration          time.Duration
}

// Engine runs requests against one model.
type Engine struct {
	cfg   Config
	log   *slog.Logger
	kv    model.KV
	mgr   *blockManager
	vocab int

	mu      sync.Mutex
	closed  bool
	exiting bool
	inbox   []*Job        // submitted, not yet seen by the loop
	jobs    map[*Job]bool // submitted and not yet finished
	byID    map[string]*Job
	idle    chan struct{} // closed when jobs becomes empty while draining
	stats   Stats
	observe func(StepInfo)

	wake     chan struct{} // tells the loop that something changed
	loopDone chan struct{}

	// The loop's own state.
	running  []*Job // in admission order
	waiting  []*Job // FIFO; preempted sequences go back to the front
	admitted uint64 // admissions so far, to order sequences
	logits   []float32
	picked   []float32 // the rows read back for the host, on the device path
	ids      []int32   // per chunk of the step: the token drawn, or -1
	lps      []*Logprobs
	drawn    []int32 // per logits row: the device's draws
	host     []int32 // the logits rows the host needs, ascending
	tasks    []scoreTask
	params   []backend.SampleParams
	// hostDraws is set once the model's logits have declined to draw on
	// the device, which they then never do: steps read all rows at once.
	hostDraws bool
	masks     []rowMask
}

// New returns an engine for cfg and starts its loop. The KV pool is
// allocated here; Drain frees it.
func New(cfg Config) (*Engine, error) {
	if cfg.Model == nil || cfg.Tokenizer == nil {
		return nil, errors.New("engine: config needs a model and a tokenizer")
	}
	mcfg := cfg.Model.Config()
	switch {
	case cfg.CtxSize < 0:
		return nil, fmt.Errorf("engine: ctx size %d is negative", cfg.CtxSize)
	case cfg.CtxSize == 0:
		cfg.CtxSize = mcfg.ContextLength
	case mcfg.ContextLength > 0 && cfg.CtxSize > mcfg.ContextLength:
		return nil, fmt.Errorf("engine: ctx size %d exceeds the model's context length %d", cfg.CtxSize, mcfg.ContextLength)
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
	if cfg.StepTokens <= 0 || cfg.StepTokens > mcfg.MaxBatch {
		cfg.StepTokens = mcfg.MaxBatch
	}
	if cfg.StepTokens <= 0 {
		return nil, errors.New("engine: model has no batch size; set StepTokens")
	}
	if cfg.BlockSize <= 0 {
		cfg.BlockSize = 16
	}
	groups := cfg.Model.KVLayout().Groups()
	if cfg.KVBlocks <= 0 {
		probe := newBlockManager(0, cfg.BlockSize, groups, false)
		for g := range groups {
			cfg.KVBlocks += cfg.MaxActive * probe.blocksFor(g, cfg.CtxSize, cfg.StepTokens)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	kv, err := cfg.Model.NewKV(cfg.KVBlocks, cfg.BlockSize)
	if err != nil {
		return nil, fmt.Errorf("%w of %d blocks of %d tokens: %v", ErrCacheAlloc, cfg.KVBlocks, cfg.BlockSize, err)
	}
	e := &Engine{
		cfg: cfg, log: log, kv: kv, vocab: mcfg.VocabSize,
		mgr:  newBlockManager(cfg.KVBlocks, cfg.BlockSize, groups, !cfg.NoPrefixCache),
		jobs: map[*Job]bool{}, byID: map[string]*Job{},
		wake: make(chan struct{}, 1), loopDone: make(chan struct{}),
	}
	e.stats.KVBlocks, e.stats.BlockSize = cfg.KVBlocks, cfg.BlockSize
	log.Info("KV cache allocated", "blocks", cfg.KVBlocks, "block_tokens", cfg.BlockSize,
		"tokens", cfg.KVBlocks*cfg.BlockSize, "max_active", cfg.MaxActive, "step_tokens", cfg.StepTokens)
	go e.loop()
	return e, nil
}

// CtxSize is the context length of each sequence.
func (e *Engine) CtxSize() int { return e.cfg.CtxSize }

// QueueDepth is the number of requests waiting to run.
func (e *Engine) QueueDepth() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stats.Waiting + len(e.inbox)
}

// Active is the number of sequences running.
func (e *Engine) Active() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stats.Running
}

// Stats returns the engine's gauges and counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.stats
	s.Waiting += len(e.inbox)
	return s
}

// ObserveSteps sets a function the loop calls after every step (for a
// tokens-per-step histogram). It must be quick.
func (e *Engine) ObserveSteps(fn func(StepInfo)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.observe = fn
}

// signal wakes the loop.
func (e *Engine) signal() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Job is a submitted request. Run must be called exactly once.
type Job struct {
	e         *Engine
	req       Request
	prompt    []int32
	seed      uint64
	ctx       context.Context // cancelled by Cancel, Run's context, a stop or Drain
	cancel    context.CancelCauseFunc
	submitted time.Time
	box       mailbox

	// The loop's state of the sequence.
	state      int     // jobQueued, jobRunning or jobEnded
	tokens     []int32 // prompt and generated tokens
	computed   int     // tokens whose keys and values are in the cache
	generated  int
	tables     [][]int32 // per KV group
	hashes     blockHashes
	registered int // full blocks entered in the prefix cache
	prefilled  int // leading tokens computed in prompt chunks, not decode steps
	sampler    *Sampler
	con        Constraint // nil when unconstrained
	order      uint64     // admission order (latest admission)
	admittedAt time.Time
	firstAt    time.Time
	ran        bool       // admitted at least once
	promptLP   []Logprobs // the prompt's log probabilities so far (PromptLogprobs)
	promptOut  []Logprobs // Run's copy of them, for PromptLogprobs
}

// mailbox carries a job's tokens and its end from the loop to Run.
type mailbox struct {
	mu     sync.Mutex
	ids    []generated
	prompt []Logprobs // the prompt's log probabilities, once all are known
	done   bool
	res    Result
	err    error
	wake   chan struct{}
}

// generated is one token for Run, with its log probabilities if asked.
type generated struct {
	id int32
	lp *Logprobs
}

func (b *mailbox) push(id int32, lp *Logprobs) {
	b.mu.Lock()
	b.ids = append(b.ids, generated{id, lp})
	b.mu.Unlock()
	b.signal()
}

// setPrompt hands Run the prompt's log probabilities, before the first
// token.
func (b *mailbox) setPrompt(lps []Logprobs) {
	b.mu.Lock()
	b.prompt = lps
	b.mu.Unlock()
}

func (b *mailbox) finish(res Result, err error) {
	b.mu.Lock()
	b.done, b.res, b.err = true, res, err
	b.mu.Unlock()
	b.signal()
}

func (b *mailbox) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// take waits for tokens or the end and returns what has come, handing back
// the buffer it was given for reuse.
func (b *mailbox) take(buf []generated) (ids []generated, prompt []Logprobs, done bool, res Result, err error) {
	for {
		b.mu.Lock()
		ids, prompt, done, res, err = b.ids, b.prompt, b.done, b.res, b.err
		if len(ids) > 0 || done {
			b.ids = buf[:0]
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		<-b.wake
	}
}

// Submit validates and tokenizes req and queues it. It fails at once with
// ErrQueueFull, ErrShuttingDown, ErrDuplicateID, ErrEmptyPrompt or
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
	if req.TopLogprobs < 0 || req.TopLogprobs > MaxTopLogprobs {
		return nil, fmt.Errorf("engine: top logprobs %d is outside [0, %d]", req.TopLogprobs, MaxTopLogprobs)
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
	for i, t := range prompt {
		if t < 0 || int(t) >= e.vocab {
			return nil, fmt.Errorf("engine: prompt token %d (index %d) is outside the vocabulary [0, %d)", t, i, e.vocab)
		}
	}
	// Drawn seeds stay below 2^53 so that JSON clients (JavaScript
	// numbers) can send them back exactly.
	j := &Job{e: e, req: req, prompt: prompt, seed: rand.Uint64N(1 << 53), submitted: time.Now()}
	if req.Seed != nil {
		j.seed = *req.Seed
	}
	j.box.wake = make(chan struct{}, 1)
	if req.PromptLogprobs && len(prompt) == 1 {
		j.box.prompt = []Logprobs{} // nothing to score: known at once
	}
	j.ctx, j.cancel = context.WithCancelCause(context.Background())
	j.tokens = append(make([]int32, 0, len(prompt)+min(req.MaxTokens, e.cfg.CtxSize)), prompt...)
	j.sampler = NewSampler(req.Sampling, j.seed)
	if req.NewConstraint != nil {
		j.con = req.NewConstraint()
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.closed:
		return nil, ErrShuttingDown
	case req.ID != "" && e.byID[req.ID] != nil:
		return nil, ErrDuplicateID
	case len(e.jobs) >= e.cfg.MaxActive+e.cfg.MaxQueue:
		return nil, ErrQueueFull
	}
	e.jobs[j] = true
	if req.ID != "" {
		e.byID[req.ID] = j
	}
	e.inbox = append(e.inbox, j)
	e.signal()
	return j, nil
}

// PromptTokens is the number of prompt tokens.
func (j *Job) PromptTokens() int { return len(j.prompt) }

// Prompt returns the prompt's tokens, which the caller must not change.
func (j *Job) Prompt() []int32 { return j.prompt }

// Seed is the sampler's seed: the request's, or one drawn for it.
func (j *Job) Seed() uint64 { return j.seed }

// PromptLogprobs are the log probabilities of the prompt's tokens after
// the first (entry i is token i+1's) when the request asked for them
// (Request.PromptLogprobs). They are known by Run's first emit and when Run
// returns without an error; call it from Run's goroutine (emit included).
func (j *Job) PromptLogprobs() []Logprobs { return j.promptOut }

// stop ends the job with cause at the loop's next step.
func (j *Job) stop(cause error) {
	j.cancel(cause)
	j.e.signal()
}

// Cancel stops the request with the given id, queued or running. It reports
// whether such a request was in flight; cancelling twice is harmless.
func (e *Engine) Cancel(id string) bool {
	e.mu.Lock()
	j := e.byID[id]
	e.mu.Unlock()
	if j == nil {
		return false
	}
	j.stop(context.Canceled)
	return true
}

// Run turns the job's tokens into text as the loop generates them, calling
// emit for every generated token (end-of-generation tokens excluded) from
// the calling goroutine. emit returns true to stop generation, which then
// ends with StopString. Cancellation (Engine.Cancel or ctx), the engine's
// timeout and Drain's deadline end the request with StopCancelled,
// StopTimeout or StopShutdown and a nil error; the error is for failures
// (model errors, a KV pool too small for the prompt).
func (j *Job) Run(ctx context.Context, emit func(Token) bool) (Result, error) {
	e := j.e
	if e.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, e.cfg.Timeout, errTimeout)
		defer cancel()
	}
	defer context.AfterFunc(ctx, func() { j.stop(context.Cause(ctx)) })()

	dec := e.cfg.Tokenizer.NewStreamDecoder()
	stops := NewStopMatcher(j.req.Stop)
	out, stopped := 0, false
	var buf []generated
	for {
		ids, prompt, done, res, err := j.box.take(buf)
		if prompt != nil && j.promptOut == nil {
			j.promptOut = prompt // once: other goroutines may read it after the first token
		}
		for _, g := range ids {
			if stopped {
				break
			}
			text, hit := stops.Push(dec.Push(g.id))
			if emit(Token{Index: out, ID: g.id, Text: text, Logprobs: g.lp}) || hit {
				stopped = true
				j.stop(errStopped)
			}
			out++
		}
		buf = ids
		if !done {
			continue
		}
		res.TokensOut = out
		switch {
		case stopped:
			res.StopReason = StopString
		case err == nil && (res.StopReason == StopEOG || res.StopReason == StopMaxTokens || res.StopReason == StopContextFull):
			flush(dec, stops, emit, &res)
		}
		return res, err
	}
}

// flush emits the text still held by the decoder and the stop matcher when
// generation ends for a reason other than a stop string. It is attached to
// the last generated token.
func flush(dec StreamDecoder, stops *StopMatcher, emit func(Token) bool, res *Result) {
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

// stopReasonOf names the cause of a job's cancellation.
func stopReasonOf(ctx context.Context) StopReason {
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errTimeout):
		return StopTimeout
	case errors.Is(cause, ErrShuttingDown):
		return StopShutdown
	case errors.Is(cause, errStopped):
		return StopString
	}
	return StopCancelled
}

// Drain stops accepting requests (Submit returns ErrShuttingDown) and waits
// for those in flight to finish. When ctx ends first, it cancels them and
// waits for them to stop (they end with StopShutdown). Drain then stops the
// loop and frees the KV pool.
func (e *Engine) Drain(ctx context.Context) {
	e.mu.Lock()
	e.closed = true
	var idle chan struct{}
	if len(e.jobs) > 0 {
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
				j.stop(ErrShuttingDown)
			}
			e.mu.Unlock()
			<-idle
		}
	}
	e.mu.Lock()
	first := !e.exiting
	e.exiting = true
	e.mu.Unlock()
	e.signal()
	<-e.loopDone
	if first {
		e.kv.Free()
	}
}
