package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"orcd/engine"
)

// openAIError is OpenAI's error shape.
type openAIError struct {
	Error openAIErrorDetail `json:"error"`
}

type openAIErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// openAIErrorOf converts a worker API error to OpenAI's shape.
func openAIErrorOf(e apiError) openAIErrorDetail {
	typ := "server_error"
	switch e.status {
	case http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusRequestTimeout,
		http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType:
		typ = "invalid_request_error"
	case http.StatusUnauthorized:
		typ = "authentication_error"
	case http.StatusForbidden:
		typ = "permission_error"
	case http.StatusGatewayTimeout:
		typ = "timeout"
	}
	code := strings.ToLower(e.code)
	if e.code == codeUnauthorized {
		code = "invalid_api_key" // OpenAI's code for a missing or wrong key
	}
	return openAIErrorDetail{Message: e.message, Type: typ, Param: paramOf(e.message), Code: &code}
}

func (s *Server) rejectOpenAI(w http.ResponseWriter, endpoint string, e apiError) {
	s.metrics.requests.WithLabelValues(endpoint, e.code).Inc()
	writeJSON(w, e.status, openAIError{openAIErrorOf(e)})
}

type modelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list",
		"data":   []modelObject{s.modelObject()},
	})
}

func (s *Server) modelObject() modelObject {
	return modelObject{s.cfg.Model.ID, "model", s.started.Unix(), "orcd"}
}

// handleModel serves GET /v1/models/{id}: the served model, or 404.
func (s *Server) handleModel(w http.ResponseWriter, r *http.Request) {
	if id := r.PathValue("id"); id != s.cfg.Model.ID {
		writeJSON(w, http.StatusNotFound, openAIError{openAIErrorOf(apiError{http.StatusNotFound, codeNotFound,
			fmt.Sprintf("model: %q is not served here; this worker serves %q", clip(id), s.cfg.Model.ID), false})})
		return
	}
	writeJSON(w, http.StatusOK, s.modelObject())
}

// stringList is a JSON string or array of strings (the OpenAI "stop" and
// "prompt" fields).
type stringList []string

func (l *stringList) UnmarshalJSON(b []byte) error {
	if bytes.HasPrefix(bytes.TrimSpace(b), []byte(`"`)) {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*l = stringList{s}
		return nil
	}
	var ss []string
	if err := json.Unmarshal(b, &ss); err != nil {
		return fmt.Errorf("expected a string or an array of strings")
	}
	*l = ss
	return nil
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// commonFields are the request fields /v1/completions and
// /v1/chat/completions share.
type commonFields struct {
	Model     string `json:"model"`
	MaxTokens *int   `json:"max_tokens"`
	samplingFields
	FrequencyPenalty *float64       `json:"frequency_penalty"`
	PresencePenalty  *float64       `json:"presence_penalty"`
	Stop             stringList     `json:"stop"`
	Seed             *int64         `json:"seed"`
	N                *int           `json:"n"`
	Stream           bool           `json:"stream"`
	StreamOptions    *streamOptions `json:"stream_options"`
	User             string         `json:"user"`
}

// request checks the shared fields and builds the engine request (without
// its prompt).
func (s *Server) request(c commonFields, maxTokens *int) (engine.Request, error) {
	var req engine.Request
	if c.Model != "" && c.Model != s.cfg.Model.ID {
		return req, apiError{http.StatusNotFound, codeNotFound, fmt.Sprintf("model: %q is not served here; this worker serves %q", c.Model, s.cfg.Model.ID), false}
	}
	if c.N != nil && (*c.N < 1 || *c.N > maxChoices) {
		return req, invalid(fmt.Sprintf("n: %d is outside [1, %d]", *c.N, maxChoices))
	}
	for _, f := range []struct {
		name string
		v    *float64
	}{{"frequency_penalty", c.FrequencyPenalty}, {"presence_penalty", c.PresencePenalty}} {
		if f.v != nil && *f.v != 0 {
			return req, invalid(f.name + ": not supported (use repetition_penalty)")
		}
	}
	req, err := s.generation(maxTokens, c.samplingFields, c.Stop)
	if err != nil {
		return req, err
	}
	if c.Seed != nil {
		seed := uint64(*c.Seed)
		req.Seed = &seed
	}
	return req, nil
}

// openAIResponse is a completion or chat completion object, or one chunk of
// its stream, with choices of type C.
type openAIResponse[C any] struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []C    `json:"choices"`
	Usage   *usage `json:"usage,omitempty"`
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// usageOf is the usage of a request whose choices generated res.TokensOut
// tokens in all (see sumResults); the prompt counts once.
func usageOf(job *engine.Job, res engine.Result) *usage {
	return &usage{job.PromptTokens(), res.TokensOut, job.PromptTokens() + res.TokensOut}
}

// finishReason maps a stop reason to OpenAI's finish_reason.
func finishReason(res engine.Result, toolCalls int) string {
	switch {
	case res.StopReason == engine.StopMaxTokens || res.StopReason == engine.StopContextFull:
		return "length" // even inside a tool call: its arguments are cut off
	case toolCalls > 0:
		return "tool_calls"
	}
	return "stop"
}

// completionRequest is the body of POST /v1/completions.
type completionRequest struct {
	commonFields
	Prompt *stringList `json:"prompt"`
	// Logprobs is the number of alternatives per token (null: no log
	// probabilities); Echo puts the prompt before the output.
	Logprobs *int `json:"logprobs"`
	Echo     bool `json:"echo"`
}

type completionChoice struct {
	Text         string  `json:"text"`
	Index        int     `json:"index"`
	Logprobs     any     `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
}

type completionResponse = openAIResponse[completionChoice]

// completionRequest checks a /v1/completions body and returns its engine
// request (without an id; the prompt not yet tokenized).
func (s *Server) completionRequest(body completionRequest) (engine.Request, error) {
	req, err := s.request(body.commonFields, body.MaxTokens)
	if err != nil {
		return req, err
	}
	if body.Prompt == nil || len(*body.Prompt) != 1 || (*body.Prompt)[0] == "" {
		return req, invalid("prompt: must be one non-empty string")
	}
	req.Prompt = (*body.Prompt)[0]
	return req, completionLogprobsRequest(&body, &req)
}

// handleCompletions serves POST /v1/completions: one string prompt, n
// choices, streamed as chunks or answered as one object.
func (s *Server) handleCompletions(w http.ResponseWriter, r *http.Request) {
	const endpoint = "completions"
	arrival := time.Now()
	id := newID("cmpl-")
	var body completionRequest
	var req engine.Request
	job := s.submit(w, r, endpoint, s.rejectOpenAI, &body, func() (engine.Request, error) {
		var err error
		req, err = s.completionRequest(body)
		req.ID = id
		return req, err
	})
	if job == nil {
		return
	}
	chunk := func(choices ...completionChoice) completionResponse {
		return completionResponse{ID: id, Object: "text_completion", Created: arrival.Unix(), Model: s.cfg.Model.ID, Choices: choices}
	}

	n := body.choices()
	outs := make([]outputParser, n)
	for i := range outs {
		outs[i] = plainOutput{}
	}
	var sse *sseWriter
	text := make([]strings.Builder, n)
	lps := make([]*completionLogprobs, n)
	echoed := make([]bool, n)
	// send adds text, and the log probabilities added since the last
	// call, to choice i: a chunk, or the text kept for the answer.
	send := func(i int, t string) {
		if sse == nil {
			text[i].WriteString(t)
			return
		}
		c := completionChoice{Text: t, Index: i}
		if lps[i] != nil {
			c.Logprobs = lps[i].flushPart()
		}
		sse.event("", chunk(c))
	}
	// echo starts choice i with the prompt and, when asked, its tokens'
	// log probabilities, known once the first choice has its first token.
	echo := func(i int) {
		if echoed[i] {
			return
		}
		echoed[i] = true
		if req.Logprobs {
			lps[i] = newCompletionLogprobs()
			if body.Echo {
				lps[i].addPrompt(s, job)
			}
		}
		if body.Echo {
			send(i, req.Prompt)
		}
	}
	if body.Stream {
		sse = startSSE(w)
	}
	results, err := s.runChoices(r, job, req, s.metrics.clock(arrival), outs, func(i int, d delta) bool {
		echo(i)
		if lps[i] != nil {
			lps[i].addGenerated(s, d.logprobs)
		}
		send(i, d.text)
		return false
	})
	if err == nil {
		for i := range n {
			echo(i) // the choices that generated nothing
		}
	}
	res := sumResults(results)
	s.finishOpenAI(w, r, endpoint, sse, job, res, err, func() any {
		choices := make([]completionChoice, n)
		for i := range choices {
			finish := finishReason(results[i], 0)
			choices[i] = completionChoice{Text: text[i].String(), Index: i, FinishReason: &finish}
			if sse == nil && lps[i] != nil {
				choices[i].Logprobs = lps[i]
			}
		}
		c := chunk(choices...)
		if sse == nil {
			c.Usage = usageOf(job, res)
		}
		return c
	}, func() any {
		c := chunk()
		c.Choices = []completionChoice{}
		c.Usage = usageOf(job, res)
		return c
	}, body.StreamOptions)
}

// delta is one piece of parsed output.
type delta struct {
	kind      deltaKind
	text      string
	toolIndex int
	toolName  string
	// logprobs are those of the tokens reported (see logprobsCarrier) since
	// the last delta, when the request asked for them.
	logprobs []engine.Logprobs
}

type deltaKind int

const (
	deltaContent deltaKind = iota
	deltaReasoning
	deltaToolStart
	deltaToolArgs
	deltaLogprobs // log probabilities only: their tokens' text is held or not shown
)

// outputParser turns generated tokens into deltas.
type outputParser interface {
	// token returns the deltas of one generated token and whether
	// generation must stop (a stop string in the content).
	token(tok engine.Token) ([]delta, bool)
	// finish returns what is left when generation ends.
	finish() []delta
	toolCalls() int
}

// plainOutput passes all text through as content (stop strings are
// applied by the engine).
type plainOutput struct{}

func (plainOutput) token(tok engine.Token) ([]delta, bool) {
	if tok.Text == "" {
		return nil, false
	}
	return []delta{{kind: deltaContent, text: tok.Text}}, false
}
func (plainOutput) finish() []delta { return nil }
func (plainOutput) toolCalls() int  { return 0 }

// runJob runs job, passing parsed output to emit (which returns true to
// stop), and records the token timings on clock.
//
// Log probabilities of generated tokens ride on the next delta emitted, or
// on a deltaLogprobs delta at the end.
func (s *Server) runJob(r *http.Request, job *engine.Job, clock *tokenClock, out outputParser, emit func(delta) bool) (engine.Result, error) {
	var lps []engine.Logprobs // not yet on a delta
	res, err := job.Run(r.Context(), func(tok engine.Token) bool {
		if tok.ID >= 0 {
			clock.tick()
		}
		if tok.Logprobs != nil && reports(out, tok) {
			lps = append(lps, *tok.Logprobs)
		}
		deltas, stop := out.token(tok)
		if len(deltas) > 0 && lps != nil {
			deltas[len(deltas)-1].logprobs, lps = lps, nil
		}
		for _, d := range deltas {
			if emit(d) {
				stop = true
			}
		}
		return stop
	})
	rest := out.finish()
	if lps != nil {
		if len(rest) == 0 {
			rest = []delta{{kind: deltaLogprobs}}
		}
		rest[len(rest)-1].logprobs = lps
	}
	for _, d := range rest {
		emit(d)
	}
	return res, err
}

// finishOpenAI ends an OpenAI response: the final object (non-streaming) or
// the final chunk, the usage chunk when asked, and [DONE] (streaming); or an
// error.
func (s *Server) finishOpenAI(w http.ResponseWriter, r *http.Request, endpoint string, sse *sseWriter, job *engine.Job,
	res engine.Result, err error, final, usageChunk func() any, opts *streamOptions) {
	outcome := string(res.StopReason)
	err = s.jobError(res, err)
	s.log.Info("openai request done", "endpoint", endpoint, "outcome", outcome, "prompt_tokens", job.PromptTokens(),
		"tokens_out", res.TokensOut, "error", err, "correlation_id", correlationID(r.Context()))
	switch {
	case err != nil:
		e := classify(err)
		outcome = e.code
		if sse != nil {
			sse.event("", openAIError{openAIErrorOf(e)})
			sse.done()
		} else {
			writeJSON(w, e.status, openAIError{openAIErrorOf(e)})
		}
	case sse != nil:
		sse.event("", final())
		if opts != nil && opts.IncludeUsage {
			sse.event("", usageChunk())
		}
		sse.done()
	default:
		writeJSON(w, http.StatusOK, final())
	}
	s.metrics.requests.WithLabelValues(endpoint, outcome).Inc()
}
