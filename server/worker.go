package server

import (
	"fmt"
	"math"
	"net/http"
	"time"

	"orcd/engine"
)

// executeRequest is the body of POST /execute. Pointers tell absent fields
// from zero values.
type executeRequest struct {
	JobID     string  `json:"job_id"`
	Prompt    *string `json:"prompt"`
	MaxTokens *int    `json:"max_tokens"`
	samplingFields
	Stop []string `json:"stop"`
	Seed *uint64  `json:"seed"`
}

// Limits of the worker API.
const (
	maxTokensLimit = 2048
	maxStops       = 4
	maxStopBytes   = 256
	maxJobIDBytes  = 256
	// maxCancelBodyBytes bounds a /cancel body (a job id of at most
	// maxJobIDBytes, escaped).
	maxCancelBodyBytes = 4 << 10
)

// samplingFields are the sampling fields of every endpoint's request body.
type samplingFields struct {
	Temperature       *float64 `json:"temperature"`
	TopP              *float64 `json:"top_p"`
	TopK              *int     `json:"top_k"`
	MinP              *float64 `json:"min_p"`
	RepetitionPenalty *float64 `json:"repetition_penalty"`
}

// params validates the fields and fills in defaults; errors name the
// field. vocab bounds top_k (0: no bound).
func (f samplingFields) params(vocab int) (engine.SamplingParams, error) {
	p := engine.DefaultSampling
	check := func(name string, v *float64, lo, hi float64, loOpen bool, dst *float64) error {
		if v == nil {
			return nil
		}
		if math.IsNaN(*v) || *v > hi || *v < lo || loOpen && *v == lo {
			lb := "["
			if loOpen {
				lb = "("
			}
			return invalid(fmt.Sprintf("%s: %v is outside %s%v, %v]", name, *v, lb, lo, hi))
		}
		*dst = *v
		return nil
	}
	for _, err := range []error{
		check("temperature", f.Temperature, 0, 2, false, &p.Temperature),
		check("top_p", f.TopP, 0, 1, false, &p.TopP),
		check("min_p", f.MinP, 0, 1, false, &p.MinP),
		check("repetition_penalty", f.RepetitionPenalty, 0, 2, true, &p.RepetitionPenalty),
	} {
		if err != nil {
			return p, err
		}
	}
	if f.TopK != nil {
		switch {
		case *f.TopK < 0:
			return p, invalid(fmt.Sprintf("top_k: %d is negative", *f.TopK))
		case vocab > 0 && *f.TopK > vocab:
			return p, invalid(fmt.Sprintf("top_k: %d is above the vocabulary's %d tokens", *f.TopK, vocab))
		}
		p.TopK = *f.TopK
	}
	return p, nil
}

// generation checks the fields every endpoint has (max_tokens, the
// sampling fields, stop) and returns the engine request they describe.
func (s *Server) generation(maxTokens *int, f samplingFields, stops []string) (engine.Request, error) {
	req := engine.Request{MaxTokens: s.cfg.DefaultMaxTokens, Stop: stops}
	if maxTokens != nil {
		limit := min(maxTokensLimit, s.cfg.MaxTokensOut)
		if *maxTokens < 1 || *maxTokens > limit {
			return req, invalid(fmt.Sprintf("max_tokens: %d is outside [1, %d]", *maxTokens, limit))
		}
		req.MaxTokens = *maxTokens
	}
	var err error
	if req.Sampling, err = f.params(s.cfg.Model.VocabSize); err != nil {
		return req, err
	}
	if len(stops) > maxStops {
		return req, invalid(fmt.Sprintf("stop: %d strings, at most %d allowed", len(stops), maxStops))
	}
	for i, s := range stops {
		if s == "" || len(s) > maxStopBytes {
			return req, invalid(fmt.Sprintf("stop[%d]: must be 1 to %d bytes", i, maxStopBytes))
		}
	}
	return req, nil
}

// engineRequest checks an /execute body and returns its engine request.
func (s *Server) engineRequest(body executeRequest) (engine.Request, error) {
	switch {
	case body.JobID == "":
		return engine.Request{}, invalid("job_id: required")
	case len(body.JobID) > maxJobIDBytes:
		return engine.Request{}, invalid(fmt.Sprintf("job_id: longer than %d bytes", maxJobIDBytes))
	case body.Prompt == nil:
		return engine.Request{}, invalid("prompt: required")
	case *body.Prompt == "":
		return engine.Request{}, invalid("prompt: empty")
	}
	req, err := s.generation(body.MaxTokens, body.samplingFields, body.Stop)
	req.ID, req.Prompt, req.Seed = body.JobID, *body.Prompt, body.Seed
	return req, err
}

// Payloads of the /execute events.
type (
	startedEvent struct {
		JobID        string `json:"job_id"`
		Model        string `json:"model"`
		StartedAt    string `json:"started_at"`
		Seed         uint64 `json:"seed"`
		PromptTokens int    `json:"prompt_tokens"`
	}
	tokenEvent struct {
		T string `json:"t"`
		I int    `json:"i"`
	}
	metricsEvent struct {
		PromptTokens    int     `json:"prompt_tokens"`
		TokensOut       int     `json:"tokens_out"`
		QueueMS         float64 `json:"queue_ms"`
		PrefillMS       float64 `json:"prefill_ms"`
		DecodeMS        float64 `json:"decode_ms"`
		TTFTMS          float64 `json:"ttft_ms"`
		TokensPerSecond float64 `json:"tokens_per_second"`
	}
	endEvent struct {
		TokensOut    int     `json:"tokens_out"`
		DecodeTimeMS float64 `json:"decode_time_ms"`
		StopReason   string  `json:"stop_reason"`
		Seed         uint64  `json:"seed"`
	}
)

func ms(d time.Duration) float64 { return math.Round(float64(d.Microseconds())) / 1000 }

// handleExecute runs one job and streams it as server-sent events: started,
// token..., optionally metrics, then exactly one end or error.
func (s *Server) handleExecute(w http.ResponseWriter, r *http.Request) {
	arrival := time.Now()
	var body executeRequest
	var req engine.Request
	job := s.submit(w, r, "execute", s.reject, &body, func() (engine.Request, error) {
		var err error
		req, err = s.engineRequest(body)
		return req, err
	})
	if job == nil {
		return
	}
	log := s.log.With("job_id", req.ID, "correlation_id", correlationID(r.Context()))
	log.Info("job accepted", "prompt_tokens", job.PromptTokens(), "max_tokens", req.MaxTokens, "seed", job.Seed())

	sse := startSSE(w)
	sse.event("started", startedEvent{req.ID, s.cfg.Model.ID, arrival.UTC().Format(time.RFC3339Nano), job.Seed(), job.PromptTokens()})
	clock := s.metrics.clock(arrival)
	n := 0
	res, err := s.runJob(r, job, clock, plainOutput{}, func(d delta) bool {
		sse.event("token", tokenEvent{d.text, n})
		n++
		return false
	})
	outcome := string(res.StopReason)
	err = s.jobError(res, err)
	if err != nil {
		e := classify(err)
		outcome = e.code
		sse.event("error", errorDetail{e.code, e.message, e.retriable})
		log.Warn("job failed", "code", e.code, "error", e.message, "tokens_out", res.TokensOut)
	} else {
		tps := 0.0
		if res.DecodeTime > 0 {
			tps = float64(res.TokensOut) / res.DecodeTime.Seconds()
		}
		sse.event("metrics", metricsEvent{res.PromptTokens, res.TokensOut, ms(res.QueueTime), ms(res.PrefillTime),
			ms(res.DecodeTime), ms(clock.ttft()), math.Round(tps*100) / 100})
		sse.event("end", endEvent{res.TokensOut, ms(res.PrefillTime + res.DecodeTime), outcome, res.Seed})
		log.Info("job done", "stop_reason", outcome, "tokens_out", res.TokensOut,
			"prefill_ms", ms(res.PrefillTime), "decode_ms", ms(res.DecodeTime))
	}
	s.metrics.requests.WithLabelValues("execute", outcome).Inc()
}

// submit starts a job for one request: unless the server is draining, it
// reads the body and, in an admission slot, decodes it into body, builds
// the engine request with build (which reads body and may tokenize), and
// tokenizes a text prompt (see tokenize); then it submits the request. If
// any step fails it answers with reject and returns nil. A body of the
// OpenAI API (tolerant) may carry unknown fields, which are reported (see
// tolerance); other bodies are decoded strictly.
func (s *Server) submit(w http.ResponseWriter, r *http.Request, endpoint string,
	reject func(http.ResponseWriter, string, apiError), body any, build func() (engine.Request, error)) *engine.Job {
	var unknown *tolerance
	if _, ok := body.(tolerant); ok {
		unknown = &tolerance{}
	}
	job, err := s.prepare(r, body, unknown, build)
	if unknown != nil {
		s.report(w, unknown)
	}
	if err != nil {
		reject(w, endpoint, classify(err))
		return nil
	}
	s.metrics.promptTokens.Add(float64(job.PromptTokens()))
	return job
}

// prepare is submit's work up to the engine's queue. Unknown fields of the
// body go to unknown when it is set (the OpenAI endpoints).
func (s *Server) prepare(r *http.Request, body any, unknown *tolerance, build func() (engine.Request, error)) (*engine.Job, error) {
	if s.Draining() {
		return nil, engine.ErrShuttingDown
	}
	data, err := readBody(r)
	if err != nil {
		return nil, err
	}
	release, err := s.admissionSlot(r.Context())
	if err != nil {
		return nil, err
	}
	defer release()
	if err := decodeWith(data, body, unknown); err != nil {
		return nil, err
	}
	req, err := build()
	if err == nil && req.Tokens == nil {
		req.Tokens, err = s.tokenize("prompt", len(req.Prompt), func() ([]int32, error) {
			return s.cfg.Engine.EncodePrompt(req.Prompt), nil
		})
		if err == nil && len(req.Tokens) == 0 {
			err = engine.ErrEmptyPrompt
		}
	}
	if err != nil {
		return nil, err
	}
	return s.cfg.Engine.Submit(req)
}

// reject answers a request that never started and counts it.
func (s *Server) reject(w http.ResponseWriter, endpoint string, e apiError) {
	s.metrics.requests.WithLabelValues(endpoint, e.code).Inc()
	writeError(w, e)
}

type cancelRequest struct {
	JobID string `json:"job_id"`
}

// handleCancel cancels a job; it is idempotent and answers 202 whether or
// not the job was (still) running.
func (s *Server) handleCancel(w http.ResponseWriter, r *http.Request) {
	// A cancel carries one short id; it needs no admission slot, so its
	// body is kept small instead.
	r.Body = http.MaxBytesReader(w, r.Body, maxCancelBodyBytes)
	var body cancelRequest
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, classify(err))
		return
	}
	if body.JobID == "" {
		writeError(w, invalid("job_id: required"))
		return
	}
	found := s.cfg.Engine.Cancel(body.JobID)
	s.log.Info("cancel", "job_id", body.JobID, "found", found, "correlation_id", correlationID(r.Context()))
	writeJSON(w, http.StatusAccepted, map[string]any{"job_id": body.JobID, "found": found})
}
