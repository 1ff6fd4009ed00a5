package engine

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"orcd/backend"
	"orcd/model"
)

// The states of a job in the loop.
const (
	jobQueued  = iota // submitted, or preempted: in waiting
	jobRunning        // in running, holding blocks
	jobEnded
)

// loop runs steps until Drain: it takes in new jobs, ends those that were
// stopped, schedules a batch, runs it and hands out the tokens.
func (e *Engine) loop() {
	defer close(e.loopDone)
	var batch model.Batch
	var jobs []*Job
	for {
		e.mu.Lock()
		e.waiting = append(e.waiting, e.inbox...)
		e.inbox = nil
		exiting := e.exiting
		e.mu.Unlock()
		e.reap()
		batch.Chunks, jobs = e.schedule(batch.Chunks[:0], jobs[:0])
		e.publish()
		if len(batch.Chunks) == 0 {
			switch {
			case exiting && len(e.running)+len(e.waiting) == 0:
				return
			case len(e.running) == 0 && len(e.waiting) > 0:
				continue // everything was just preempted: admit again
			}
			<-e.wake
			continue
		}
		e.step(&batch, jobs)
		e.compact()
	}
}

// reap ends the jobs whose context ended: cancelled, timed out, stopped by
// their caller, or cut off by Drain.
func (e *Engine) reap() {
	for _, list := range [][]*Job{e.running, e.waiting} {
		for _, j := range list {
			if j.ctx.Err() != nil {
				e.end(j, stopReasonOf(j.ctx), -1, nil)
			}
		}
	}
	e.compact()
}

// compact drops ended jobs from the running and waiting lists.
func (e *Engine) compact() {
	keep := func(list []*Job, state int) []*Job {
		out := list[:0]
		for _, j := range list {
			if j.state == state {
				out = append(out, j)
			}
		}
		clear(list[len(out):])
		return out
	}
	e.running = keep(e.running, jobRunning)
	e.waiting = keep(e.waiting, jobQueued)
}

// schedule builds the next batch: first the one token of every sequence
// that is decoding (preempting the newest sequences when their blocks run
// out), then the rest of the token budget for prompt chunks of running
// sequences, then new sequences from the queue while blocks and slots last.
// It returns the chunks and their jobs, in batch order.
func (e *Engine) schedule(chunks []model.Chunk, jobs []*Job) ([]model.Chunk, []*Job) {
	budget := e.cfg.StepTokens
	add := func(j *Job, n int) {
		mode := model.NoLogits
		switch {
		case j.scoring():
			mode = model.AllLogits
		case j.computed+n == len(j.tokens):
			mode = model.LastLogits
		}
		chunks = append(chunks, model.Chunk{Tokens: j.tokens[j.computed : j.computed+n], Pos: j.computed, Tables: j.tables, Logits: mode, Decode: j.decoding()})
		jobs = append(jobs, j)
		budget -= n
	}
	// unschedule takes a preempted job's chunk out of the batch.
	unschedule := func(v *Job) {
		for i, j := range jobs {
			if j == v {
				budget += len(chunks[i].Tokens)
				chunks = append(chunks[:i], chunks[i+1:]...)
				jobs = append(jobs[:i], jobs[i+1:]...)
				return
			}
		}
	}
	preempted := false
	for {
		running := append([]*Job(nil), e.running...)
		for _, j := range running {
			if j.state != jobRunning || !j.decoding() || budget == 0 {
				continue
			}
			for e.grow(j, 1) == 0 {
				v := e.newestRunning()
				e.preempt(v)
				unschedule(v)
				preempted = true
				if v == j {
					break
				}
			}
			if j.state == jobRunning {
				add(j, 1)
			}
		}
		for _, j := range running {
			if j.state != jobRunning || j.decoding() || budget == 0 {
				continue
			}
			if n := e.grow(j, min(len(j.tokens)-j.computed, budget)); n > 0 {
				add(j, n)
			}
		}
		// No admissions in a step that preempted: the blocks just freed
		// would go to a new sequence instead of the ones running.
		for !preempted && len(e.waiting) > 0 && len(e.running) < e.cfg.MaxActive && budget > 0 {
			j := e.waiting[0]
			if j.state == jobQueued && !e.admit(j) {
				break
			}
			e.waiting = e.waiting[1:]
			if j.state != jobRunning {
				continue // ended: its prompt can never fit
			}
			if n := e.grow(j, min(len(j.tokens)-j.computed, budget)); n > 0 {
				add(j, n)
			}
		}
		if len(chunks) > 0 || len(e.running) == 0 {
			return chunks, jobs
		}
		// Every running sequence is stuck on blocks the others hold.
		e.preempt(e.newestRunning())
		preempted = true
	}
}

// scoring reports whether j still needs logits rows of its prompt, for
// the prompt's log probabilities.
func (j *Job) scoring() bool {
	return j.req.PromptLogprobs && len(j.promptLP) < len(j.prompt)-1
}

// decoding reports whether j's one token left to compute is its last
// generated one: a decode step, as opposed to (the rest of) a prompt.
func (j *Job) decoding() bool {
	return len(j.tokens)-j.computed == 1 && j.computed >= len(j.prompt)
}

// grow gives j blocks for up to n more tokens and returns how many it got
// (its tables then cover them), handing back sliding-window blocks first.
func (e *Engine) grow(j *Job, n int) int {
	bs := e.cfg.BlockSize
	if model.GrowTables(j.tables, e.mgr.groups, bs, j.computed, j.computed+n, e.mgr.alloc, e.mgr.release) {
		return n
	}
	covered := j.computed + n
	for _, t := range j.tables {
		covered = min(covered, len(t)*bs)
	}
	return max(0, covered-j.computed)
}

// newestRunning is the running sequence admitted last: the first to
// preempt, as in vLLM.
func (e *Engine) newestRunning() *Job {
	var v *Job
	for _, j := range e.running {
		if j.state == jobRunning && (v == nil || j.order > v.order) {
			v = j
		}
	}
	return v
}

// preempt gives back all of j's blocks and puts it at the front of the
// queue, to be recomputed from its tokens (prompt and output so far) when
// blocks free up; its blocks' cached contents often make that quick.
func (e *Engine) preempt(j *Job) {
	e.releaseBlocks(j)
	j.state, j.computed, j.prefilled = jobQueued, 0, 0
	e.waiting = append([]*Job{j}, e.waiting...)
	e.compact()
	e.mu.Lock()
	e.stats.Preemptions++
	e.mu.Unlock()
	e.log.Debug("sequence preempted", "id", j.req.ID, "tokens", len(j.tokens))
}

// admit moves j into the running set if its prompt's blocks are available
// (after reusing its cached prefix), keeping a small reserve for decoding
// sequences. A prompt that could never fit the pool ends j with an error.
func (e *Engine) admit(j *Job) bool {
	m, bs := e.mgr, e.cfg.BlockSize
	j.hashes = j.hashes.extend(j.tokens, bs)
	hit, tables := 0, [][]int32(nil)
	if !j.scoring() { // cached blocks would skip the rows it needs
		hit, tables = m.match(j.hashes, len(j.tokens))
	}
	need, total := 0, 0
	for g := range m.groups {
		want := m.blocksFor(g, len(j.tokens), min(len(j.tokens), e.cfg.StepTokens))
		total += want
		need += want
		if tables != nil {
			for _, b := range tables[g] {
				if b >= 0 {
					need--
				}
			}
		}
	}
	if total > e.cfg.KVBlocks {
		e.end(j, "", -1, fmt.Errorf("%w: %d tokens need %d blocks of %d tokens, the pool has %d",
			ErrCacheAlloc, len(j.tokens), total, bs, e.cfg.KVBlocks))
		return true
	}
	// A reserve of free blocks lets running sequences decode a while
	// before one must be preempted; an idle engine admits without it.
	reserve := max(1, e.cfg.KVBlocks/100)
	if len(e.running) == 0 {
		reserve = 0
	}
	if need > m.available()-reserve {
		return false
	}
	j.tables = make([][]int32, len(m.groups))
	for g := range m.groups {
		if tables != nil {
			j.tables[g] = tables[g]
			for _, b := range tables[g] {
				if b >= 0 {
					m.take(b)
				}
			}
		}
	}
	j.computed, j.registered, j.prefilled = hit, hit/bs, hit
	j.state, j.order = jobRunning, e.admitted
	e.admitted++
	if !j.ran {
		j.ran, j.admittedAt = true, time.Now()
	}
	e.running = append(e.running, j)
	e.mu.Lock()
	e.stats.PrefixLookupTokens += int64(len(j.tokens))
	e.stats.PrefixHitTokens += int64(hit)
	e.mu.Unlock()
	return true
}

// releaseBlocks drops j's references to its blocks.
func (e *Engine) releaseBlocks(j *Job) {
	for _, t := range j.tables {
		for _, b := range t {
			if b >= 0 {
				e.mgr.release(b)
			}
		}
	}
	j.tables = nil
}

// step runs one batch and hands out the sampled tokens: drawn on the
// device when the backend can, else from the logits read back.
func (e *Engine) step(batch *model.Batch, jobs []*Job) {
	start := time.Now()
	ids, err := e.forward(batch, jobs)
	if err != nil {
		e.log.Error("step failed", "sequences", len(jobs), "error", err)
		for _, j := range jobs {
			e.end(j, "", -1, fmt.Errorf("engine: step: %w", err))
		}
		return
	}
	tokens := 0
	for i, j := range jobs {
		ch := &batch.Chunks[i]
		tokens += len(ch.Tokens)
		j.computed += len(ch.Tokens)
		if !ch.Decode {
			j.prefilled = j.computed
		}
		e.register(j)
		if ids[i] >= 0 {
			e.accept(j, ids[i], e.lps[i])
		}
	}
	e.mu.Lock()
	observe := e.observe
	e.mu.Unlock()
	if observe != nil {
		observe(StepInfo{Tokens: tokens, Sequences: len(jobs), Duration: time.Since(start)})
	}
}

// forward runs the model on the batch and samples, turning a panic into
// ErrPanic (its stack logged) so that one bad step ends its own jobs, not
// the process.
func (e *Engine) forward(batch *model.Batch, jobs []*Job) (ids []int32, err error) {
	defer func() {
		if v := recover(); v != nil {
			e.log.Error("model step panicked", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			ids, err = nil, fmt.Errorf("%w: %v", ErrPanic, v)
		}
	}()
	logits, err := e.cfg.Model.Step(e.kv, batch)
	if err != nil {
		return nil, err
	}
	return e.sample(logits, batch, jobs)
}

// sample draws the next token of every chunk that ends its sequence's
// tokens and returns them per chunk (-1 for the others), their log
// probabilities in e.lps when asked, and records the prompt log
// probabilities of the rows that score a prompt.
//
// The draws are made on the device when the backend can, except for the
// rows whose log probabilities are wanted: those rows alone are read back
// first (the device's sampler may change the logits) and drawn on the host.
// Otherwise all rows are read back and drawn on the host. A constrained
// row is forced (no draw) or, when masked, drawn on the host like a row
// with log probabilities.
func (e *Engine) sample(logits model.Logits, batch *model.Batch, jobs []*Job) ([]int32, error) {
	n := len(jobs)
	e.ids = slices.Grow(e.ids[:0], n)[:n]
	e.lps = slices.Grow(e.lps[:0], n)[:n]
	e.params, e.host = e.params[:0], e.host[:0]
	e.masks = slices.Grow(e.masks[:0], n)[:n]
	rows := 0
	for i, j := range jobs {
		ch := &batch.Chunks[i]
		e.ids[i], e.lps[i] = -1, nil
		k := rowsOf(ch)
		for r := range k {
			if r == k-1 && draws(j, ch) {
				e.params = append(e.params, e.sampleParams(j))
				m := rowMask{forced: -1}
				if j.con != nil {
					m.allowed, m.forced = j.con.Next(min(j.req.MaxTokens-j.generated, e.cfg.CtxSize-len(j.tokens)+1))
				}
				e.masks[i] = m
				// Only a masked draw, or log probabilities, need the row on the host.
				if j.req.Logprobs || m.forced < 0 && m.allowed != nil {
					e.host = append(e.host, int32(rows+r))
				}
				continue
			}
			// A row that only scores the prompt: the device draws greedily
			// for nothing.
			e.params = append(e.params, backend.SampleParams{RepetitionPenalty: 1, TopP: 1})
			if scores(j, ch.Pos+r) {
				e.host = append(e.host, int32(rows+r))
			}
		}
		rows += k
	}
	if logits.Rows() != rows {
		return nil, fmt.Errorf("engine: %d logits rows for %d wanted", logits.Rows(), rows)
	}
	all, err := e.readBack(logits)
	if err != nil {
		return nil, err
	}
	row, next := 0, 0 // next: the index in e.host of the next row read back
	for i, j := range jobs {
		ch := &batch.Chunks[i]
		k := rowsOf(ch)
		for r := range k {
			var data []float32
			switch {
			case all:
				data = e.logits[(row+r)*e.vocab : (row+r+1)*e.vocab]
			case next < len(e.host) && int(e.host[next]) == row+r:
				data = e.picked[next*e.vocab : (next+1)*e.vocab]
				next++
			}
			switch {
			case r == k-1 && draws(j, ch):
				m := e.masks[i]
				var id int32
				switch {
				case m.forced >= 0:
					id = m.forced
				case data == nil:
					id = e.drawn[row+r]
				case m.allowed != nil:
					id = j.sampler.SampleMasked(data, j.tokens, m.allowed)
				default:
					id = j.sampler.Sample(data, j.tokens)
				}
				e.ids[i] = id
				if data == nil {
					continue
				}
				if j.req.Logprobs {
					lp := j.sampler.Logprobs(data, j.tokens, id, j.req.TopLogprobs)
					e.lps[i] = &lp
				}
			case data != nil && scores(j, ch.Pos+r) && ch.Pos+r == len(j.promptLP):
				e.tasks = append(e.tasks, scoreTask{j, len(j.promptLP), data})
				j.promptLP = append(j.promptLP, Logprobs{})
			}
		}
		row += k
	}
	scorePrompt(e.tasks)
	for _, t := range e.tasks {
		if t.pos == len(t.j.promptLP)-1 && !t.j.scoring() {
			t.j.box.setPrompt(t.j.promptLP)
		}
	}
	clear(e.tasks)
	e.tasks = e.tasks[:0]
	return e.ids, nil
}

// scoreTask is one prompt row to score: the logits of position pos of j,
// for j.promptLP[pos], the log probabilities of the token after it.
type scoreTask struct {
	j    *Job
	pos  int
	data []float32
}

// scorePrompt runs the tasks on up to GOMAXPROCS goroutines, each with its
// own sampler (only the parameters matter), so that a long prompt's rows
// (a pass of exp over the vocabulary each) do not hold up the step for
// long. A panic in one comes back on the caller's goroutine.
func scorePrompt(tasks []scoreTask) {
	run := func(s *Sampler, t scoreTask) *Sampler {
		if s == nil || s.params != t.j.req.Sampling {
			s = NewSampler(t.j.req.Sampling, 0)
		}
		j := t.j
		j.promptLP[t.pos] = s.Logprobs(t.data, j.tokens[:t.pos+1], j.tokens[t.pos+1], j.req.TopLogprobs)
		return s
	}
	workers := min(runtime.GOMAXPROCS(0), len(tasks))
	if workers <= 1 {
		var s *Sampler
		for _, t := range tasks {
			s = run(s, t)
		}
		return
	}
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			defer func() {
				if v := recover(); v != nil {
					failed.CompareAndSwap(nil, fmt.Sprint(v))
				}
			}()
			var s *Sampler
			for n := int(next.Add(1)) - 1; n < len(tasks); n = int(next.Add(1)) - 1 {
				s = run(s, tasks[n])
			}
		})
	}
	wg.Wait()
	if v := failed.Load(); v != nil {
		panic(v)
	}
}

// readBack draws on the device what it can (into e.drawn) after reading
// the rows in e.host into e.picked, and reports false; or, when the device
// cannot draw or the rows cannot be read alone, reads every row into
// e.logits and reports true.
func (e *Engine) readBack(logits model.Logits) (all bool, err error) {
	rows := logits.Rows()
	rr, byRow := logits.(model.RowReader)
	if !e.hostDraws && (len(e.host) == 0 || byRow) {
		if len(e.host) > 0 {
			e.picked = grow(e.picked, len(e.host)*e.vocab)
			if err := rr.ReadRows(e.host, e.picked); err != nil {
				return false, err
			}
		}
		e.drawn = slices.Grow(e.drawn[:0], rows)[:rows]
		done, err := logits.Sample(e.params, e.drawn)
		if done || err != nil {
			return false, err
		}
		e.hostDraws = true // the model's logits never draw on the device
	}
	e.logits = grow(e.logits, rows*e.vocab)
	return true, logits.Read(e.logits[:rows*e.vocab])
}

// grow returns buf with room for n values, reallocated when too short.
func grow(buf []float32, n int) []float32 {
	if len(buf) < n {
		return make([]float32, n)
	}
	return buf[:n]
}

// rowsOf is the number of logits rows a chunk gets.
func rowsOf(ch *model.Chunk) int {
	switch ch.Logits {
	case model.LastLogits:
		return 1
	case model.AllLogits:
		return len(ch.Tokens)
	}
	return 0
}

// draws reports whether the chunk's last row draws j's next token: the
// chunk ends j's tokens and asks for logits.
func draws(j *Job, ch *model.Chunk) bool {
	return ch.Logits != model.NoLogits && ch.Pos+len(ch.Tokens) == len(j.tokens)
}

// scores reports whether the logits row of position p scores a prompt
// token of j (the one after p) whose log probability is not known yet.
// Positions come in order, so such a row is the next one to score.
func scores(j *Job, p int) bool {
	return j.req.PromptLogprobs && p >= len(j.promptLP) && p+1 < len(j.prompt)
}

// sampleParams are j's settings for the device's sampler.
func (e *Engine) sampleParams(j *Job) backend.SampleParams {
	p := j.req.Sampling
	sp := backend.SampleParams{
		Temperature: float32(p.Temperature), TopP: float32(p.TopP), MinP: float32(p.MinP),
		RepetitionPenalty: float32(p.RepetitionPenalty), TopK: int32(min(p.TopK, e.vocab)),
		Seed: j.seed, Counter: uint64(len(j.tokens)),
	}
	if p.RepetitionPenalty != 1 {
		sp.Penalized = distinct(j.tokens)
	}
	return sp
}

// rowMask is a row's constraint for one step: a forced token (>= 0), or
// the tokens allowed (nil: any).
type rowMask struct {
	allowed []uint64
	forced  int32
}

// distinct returns the distinct tokens of ids.
func distinct(ids []int32) []int32 {
	seen := make(map[int32]bool, len(ids))
	out := make([]int32, 0, len(ids))
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// register enters j's newly full, computed blocks in the prefix cache (in
// batch-invariant mode, only those computed as prompt chunks).
func (e *Engine) register(j *Job) {
	bs := e.cfg.BlockSize
	full := j.computed / bs
	if e.cfg.BatchInvariant {
		full = j.prefilled / bs
	}
	if full <= j.registered || !e.mgr.prefix {
		return
	}
	j.hashes = j.hashes.extend(j.tokens[:full*bs], bs)
	e.mgr.register(j.tables, j.hashes[:full], j.registered)
	j.registered = full
}

// accept handles j's new token: the end of generation, or one more token
// for Run, after which the budget or the context may be spent.
func (e *Engine) accept(j *Job, id int32, lp *Logprobs) {
	if j.firstAt.IsZero() {
		j.firstAt = time.Now()
	}
	if j.con != nil {
		if err := j.con.Accept(id); err != nil {
			e.end(j, "", -1, fmt.Errorf("engine: constraint: %w", err))
			return
		}
	}
	if e.cfg.Tokenizer.IsEOG(id) {
		e.end(j, StopEOG, id, nil)
		return
	}
	j.tokens = append(j.tokens, id)
	j.generated++
	j.box.push(id, lp)
	switch {
	case j.generated >= j.req.MaxTokens:
		e.end(j, StopMaxTokens, -1, nil)
	case j.computed >= e.cfg.CtxSize:
		e.end(j, StopContextFull, -1, nil)
	}
}

// end finishes j: it gives back its blocks, forgets the job and sends Run
// the result.
func (e *Engine) end(j *Job, reason StopReason, stopToken int32, err error) {
	if j.state == jobEnded {
		return
	}
	e.releaseBlocks(j)
	j.state = jobEnded
	now := time.Now()
	res := Result{Seed: j.seed, PromptTokens: len(j.prompt), StopReason: reason}
	if reason == StopEOG {
		res.StopToken = stopToken
	}
	switch {
	case !j.ran:
		res.QueueTime = now.Sub(j.submitted)
	case j.firstAt.IsZero():
		res.QueueTime, res.PrefillTime = j.admittedAt.Sub(j.submitted), now.Sub(j.admittedAt)
	default:
		res.QueueTime, res.PrefillTime = j.admittedAt.Sub(j.submitted), j.firstAt.Sub(j.admittedAt)
		res.DecodeTime = now.Sub(j.firstAt)
	}
	j.cancel(nil)
	// Forget the job before Run hears of its end, so that a request
	// submitted once Run returns finds its slot free.
	e.mu.Lock()
	delete(e.jobs, j)
	if j.req.ID != "" && e.byID[j.req.ID] == j {
		delete(e.byID, j.req.ID)
	}
	if e.closed && len(e.jobs) == 0 && e.idle != nil {
		close(e.idle)
		e.idle = nil
	}
	e.publishLocked()
	e.mu.Unlock()
	j.box.finish(res, err)
}

// publish updates the gauges that Stats, Active and QueueDepth report.
func (e *Engine) publish() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.publishLocked()
}

func (e *Engine) publishLocked() {
	count := func(list []*Job, state int) int {
		n := 0
		for _, j := range list {
			if j.state == state {
				n++
			}
		}
		return n
	}
	e.stats.Running, e.stats.Waiting = count(e.running, jobRunning), count(e.waiting, jobQueued)
	e.stats.KVBlocksCached = e.mgr.cachedIdle()
	e.stats.KVBlocksUsed = e.cfg.KVBlocks - e.mgr.available()
}
