package engine

import (
	"fmt"
	"runtime/debug"
	"slices"
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
		if j.computed+n == len(j.tokens) {
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
	hit, tables := m.match(j.hashes, len(j.tokens))
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
	tokens, row := 0, 0
	for i, j := range jobs {
		ch := &batch.Chunks[i]
		tokens += len(ch.Tokens)
		j.computed += len(ch.Tokens)
		if !ch.Decode {
			j.prefilled = j.computed
		}
		e.register(j)
		if ch.Logits == model.NoLogits {
			continue
		}
		e.accept(j, ids[row])
		row++
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

// sample draws the next token of every chunk that asked for logits, in
// batch order. Masked rows are drawn on the host from their logits, read
// (the rows up to the last masked one) before the device sampler, which
// may change them; the others on the device when the backend can.
func (e *Engine) sample(logits model.Logits, batch *model.Batch, jobs []*Job) ([]int32, error) {
	rows := logits.Rows()
	e.ids = slices.Grow(e.ids[:0], rows)[:rows]
	e.params = e.params[:0]
	e.masks = e.masks[:0]
	masked := 0 // rows up to the last masked one
	for i, j := range jobs {
		if batch.Chunks[i].Logits == model.NoLogits {
			continue
		}
		p := j.req.Sampling
		sp := backend.SampleParams{
			Temperature: float32(p.Temperature), TopP: float32(p.TopP), MinP: float32(p.MinP),
			RepetitionPenalty: float32(p.RepetitionPenalty), TopK: int32(min(p.TopK, e.vocab)),
			Seed: j.seed, Counter: uint64(len(j.tokens)),
		}
		if p.RepetitionPenalty != 1 {
			sp.Penalized = distinct(j.tokens)
		}
		e.params = append(e.params, sp)
		m := rowMask{forced: -1}
		if j.con != nil {
			m.allowed, m.forced = j.con.Next(min(j.req.MaxTokens-j.generated, e.cfg.CtxSize-len(j.tokens)+1))
			// Only a masked draw needs the logits on the host.
			if m.forced < 0 && m.allowed != nil {
				masked = len(e.masks) + 1
			}
		}
		e.masks = append(e.masks, m)
	}
	if len(e.params) != rows {
		return nil, fmt.Errorf("engine: %d logits rows for %d sequences", rows, len(e.params))
	}
	if need := rows * e.vocab; len(e.logits) < need {
		e.logits = make([]float32, need)
	}
	if masked > 0 {
		if err := logits.Read(e.logits[:masked*e.vocab]); err != nil {
			return nil, err
		}
	}
	done, err := logits.Sample(e.params, e.ids)
	if err != nil {
		return nil, err
	}
	if !done && masked < rows {
		// Host sampling: the rest of the rows (all of them again, from a
		// host backend, where reading is a copy).
		if err := logits.Read(e.logits[:rows*e.vocab]); err != nil {
			return nil, err
		}
	}
	row := 0
	for i, j := range jobs {
		if batch.Chunks[i].Logits == model.NoLogits {
			continue
		}
		l, m := e.logits[row*e.vocab:(row+1)*e.vocab], e.masks[row]
		switch {
		case m.forced >= 0:
			e.ids[row] = m.forced
		case m.allowed != nil:
			e.ids[row] = j.sampler.SampleMasked(l, j.tokens, m.allowed)
		case !done:
			e.ids[row] = j.sampler.Sample(l, j.tokens)
		}
		row++
	}
	return e.ids, nil
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
func (e *Engine) accept(j *Job, id int32) {
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
	j.box.push(id)
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
