package server

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"orcd/engine"
)

// Log probabilities on /v1/chat/completions (logprobs, top_logprobs) and
// /v1/completions (logprobs, echo). The engine computes them (see
// engine.Logprobs for the distribution); this file checks the request
// fields and writes the OpenAI shapes.

// tokenTexter is the optional TokenText of a Tokenizer: one token's text,
// which need not be valid UTF-8 (a token may hold part of a character).
type tokenTexter interface {
	TokenText(id int32) string
}

// tokenText returns a token's text as the API shows it (valid UTF-8, with
// U+FFFD for the bytes of a partial character) and its bytes.
func (s *Server) tokenText(id int32) (string, []int) {
	var raw string
	if t, ok := s.cfg.Tokenizer.(tokenTexter); ok {
		raw = t.TokenText(id)
	}
	b := make([]int, len(raw))
	for i := range len(raw) {
		b[i] = int(raw[i])
	}
	return strings.ToValidUTF8(raw, "\uFFFD"), b
}

// checkTopLogprobs checks a number of alternatives; param names its field.
func checkTopLogprobs(param string, k int) error {
	if k < 0 || k > engine.MaxTopLogprobs {
		return invalid(fmt.Sprintf("%s: %d is outside [0, %d]", param, k, engine.MaxTopLogprobs))
	}
	return nil
}

// chatLogprobsRequest checks a chat request's logprobs and top_logprobs
// and asks req for them. top_logprobs above 0 needs logprobs true, as in
// the OpenAI API.
func chatLogprobsRequest(body *chatRequest, req *engine.Request) error {
	on := body.Logprobs != nil && *body.Logprobs
	if k := body.TopLogprobs; k != nil {
		if err := checkTopLogprobs("top_logprobs", *k); err != nil {
			return err
		}
		if *k > 0 && !on {
			return invalid("top_logprobs: needs logprobs set to true")
		}
		req.TopLogprobs = *k
	}
	req.Logprobs = on
	return nil
}

// completionLogprobsRequest checks a completion request's logprobs (the
// number of alternatives: 0 to 5 in OpenAI's legacy API, to
// engine.MaxTopLogprobs here) and asks req for them, for the prompt too
// when it is echoed.
func completionLogprobsRequest(body *completionRequest, req *engine.Request) error {
	if body.Logprobs == nil {
		return nil
	}
	if err := checkTopLogprobs("logprobs", *body.Logprobs); err != nil {
		return err
	}
	req.Logprobs, req.TopLogprobs, req.PromptLogprobs = true, *body.Logprobs, body.Echo
	return nil
}

// The chat shapes: choices[i].logprobs.
type (
	chatLogprobs struct {
		Content []chatTokenLogprob `json:"content"`
		Refusal []chatTokenLogprob `json:"refusal"` // always null: orcd does not refuse
	}
	chatTokenLogprob struct {
		chatTopLogprob
		TopLogprobs []chatTopLogprob `json:"top_logprobs"`
	}
	chatTopLogprob struct {
		Token   string  `json:"token"`
		Logprob float64 `json:"logprob"`
		Bytes   []int   `json:"bytes"`
	}
)

// chatLogprobsOf writes the log probabilities of content tokens.
func (s *Server) chatLogprobsOf(lps []engine.Logprobs) *chatLogprobs {
	out := &chatLogprobs{Content: make([]chatTokenLogprob, 0, len(lps))}
	top := func(t engine.TokenLogprob) chatTopLogprob {
		text, b := s.tokenText(t.ID)
		return chatTopLogprob{Token: text, Logprob: t.Logprob, Bytes: b}
	}
	for _, lp := range lps {
		e := chatTokenLogprob{chatTopLogprob: top(lp.TokenLogprob), TopLogprobs: make([]chatTopLogprob, 0, len(lp.Top))}
		for _, alt := range lp.Top {
			e.TopLogprobs = append(e.TopLogprobs, top(alt))
		}
		out.Content = append(out.Content, e)
	}
	return out
}

// completionLogprobs is choices[i].logprobs of /v1/completions (the legacy
// shape): per token its text, its log probability, a map of the most
// likely tokens' texts (and the token's own) to theirs, and where its text
// begins in the choice's text, in characters. The first token of an
// echoed prompt has null for both (nothing before it to predict it from).
type completionLogprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []*float64           `json:"token_logprobs"`
	TopLogprobs   []map[string]float64 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
	next          int                  // the text offset of the next token
}

func newCompletionLogprobs() *completionLogprobs {
	return &completionLogprobs{Tokens: []string{}, TokenLogprobs: []*float64{}, TopLogprobs: []map[string]float64{}, TextOffset: []int{}}
}

// add appends one token; lp is nil for an echoed prompt's first token.
func (c *completionLogprobs) add(s *Server, id int32, lp *engine.Logprobs) {
	text, _ := s.tokenText(id)
	var v *float64
	var top map[string]float64
	if lp != nil {
		v = &lp.Logprob
		top = make(map[string]float64, len(lp.Top)+1)
		for _, alt := range lp.Top {
			t, _ := s.tokenText(alt.ID)
			top[t] = alt.Logprob
		}
		top[text] = lp.Logprob
	}
	c.Tokens = append(c.Tokens, text)
	c.TokenLogprobs = append(c.TokenLogprobs, v)
	c.TopLogprobs = append(c.TopLogprobs, top)
	c.TextOffset = append(c.TextOffset, c.next)
	c.next += utf8.RuneCountInString(text)
}

// addGenerated appends generated tokens.
func (c *completionLogprobs) addGenerated(s *Server, lps []engine.Logprobs) {
	for i := range lps {
		c.add(s, lps[i].ID, &lps[i])
	}
}

// addPrompt appends the tokens of job's prompt after the engine's prompt
// prefix (BOS, which the echoed text does not show), with the log
// probabilities the engine computed for them.
func (c *completionLogprobs) addPrompt(s *Server, job *engine.Job) {
	prompt, lps := job.Prompt(), job.PromptLogprobs()
	for i := s.cfg.Engine.PrefixTokens(); i < len(prompt); i++ {
		var lp *engine.Logprobs
		if i > 0 && i-1 < len(lps) {
			lp = &lps[i-1]
		}
		c.add(s, prompt[i], lp)
	}
}

// flushPart returns the tokens added since the last call (their offsets
// stay counted), for a stream's chunk.
func (c *completionLogprobs) flushPart() *completionLogprobs {
	part := *c
	c.Tokens, c.TokenLogprobs, c.TopLogprobs, c.TextOffset = []string{}, []*float64{}, []map[string]float64{}, []int{}
	return &part
}

// logprobsCarrier is the optional part of an outputParser that says which
// generated tokens' log probabilities a response reports; without it,
// every token's. It is asked before the token is parsed.
type logprobsCarrier interface {
	reports(tok engine.Token) bool
}

// reports asks out whether tok's log probabilities are reported.
func reports(out outputParser, tok engine.Token) bool {
	if c, ok := out.(logprobsCarrier); ok {
		return c.reports(tok)
	}
	return true
}

// reports keeps the log probabilities of the tokens of messages for the
// user (the final channel, and preambles): not those of reasoning, tool
// calls or the format's control tokens and headers. OpenAI does not expose
// reasoning tokens' either.
func (h *harmonyOutput) reports(tok engine.Token) bool {
	if _, special := h.specials[tok.ID]; special || h.other != nil && h.other.IsSpecial(tok.ID) {
		return false
	}
	return h.parser.InContent()
}

func (o *callLimit) reports(tok engine.Token) bool {
	return !o.done && reports(o.outputParser, tok)
}

func (o *onFirstToken) reports(tok engine.Token) bool { return reports(o.outputParser, tok) }
