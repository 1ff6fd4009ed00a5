package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"orcd/engine"
)

// POST /v1/responses, the OpenAI Responses API, runs on the chat path: the
// input items become chat messages, rendered as harmony for gpt-oss or by
// the model's chat template, and the chat output parser splits the output
// into reasoning, message and function_call items.

// responsesRequest is the body of POST /v1/responses.
type responsesRequest struct {
	Model             string          `json:"model"`
	Input             json.RawMessage `json:"input"` // a string, or items (checked by items)
	Instructions      *string         `json:"instructions"`
	Tools             []responseTool  `json:"tools"`
	ToolChoice        json.RawMessage `json:"tool_choice"`
	ParallelToolCalls *bool           `json:"parallel_tool_calls"`
	MaxToolCalls      *int            `json:"max_tool_calls"`
	Reasoning         *struct {
		Effort  string          `json:"effort"`
		Summary json.RawMessage `json:"summary"` // no summaries: reasoning comes as text
	} `json:"reasoning"`
	MaxOutputTokens *int `json:"max_output_tokens"`
	// MaxReasoningTokens is as chat's max_reasoning_tokens.
	MaxReasoningTokens *int `json:"max_reasoning_tokens"`
	samplingFields
	Stream             bool    `json:"stream"`
	Store              *bool   `json:"store"`
	PreviousResponseID *string `json:"previous_response_id"`
	Text               *struct {
		Format    json.RawMessage `json:"format"`
		Verbosity string          `json:"verbosity"` // a hint; ignored
	} `json:"text"`
	Metadata      map[string]string `json:"metadata"` // echoed back
	StreamOptions *streamOptions    `json:"stream_options"`
}

func (responsesRequest) tolerant() {}

// responseTool is a tool of a responses request: a function, flat.
type responseTool struct {
	Type        string          `json:"type"`
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

// responseInputItem is one item of input: a message (role and content),
// a function_call, a function_call_output, or a reasoning item.
type responseInputItem struct {
	Type      string          `json:"type"`
	ID        string          `json:"id"`
	Status    string          `json:"status"`
	Role      string          `json:"role"`
	Content   json.RawMessage `json:"content"` // a string or parts
	CallID    string          `json:"call_id"`
	Name      string          `json:"name"`
	Arguments string          `json:"arguments"`
	Output    json.RawMessage `json:"output"` // a string or parts
	Summary   json.RawMessage `json:"summary"`
	// EncryptedContent is never produced here; it is accepted and ignored.
	EncryptedContent *string `json:"encrypted_content"`
}

// items decodes the input items (the input is an array), walking them
// as strictly as the body; unknown fields go to unknown.
func (body *responsesRequest) items(unknown *tolerance) ([]responseInputItem, error) {
	var wrap struct {
		Input []responseInputItem `json:"input"`
	}
	b := append(append([]byte(`{"input":`), body.Input...), '}')
	if err := decodeWith(b, &wrap, unknown); err != nil {
		return nil, err
	}
	return wrap.Input, nil
}

// partsText returns the text of a content or output value: a string, or
// parts of the given text types, concatenated. path names the value.
func partsText(path string, raw json.RawMessage, types ...string) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", invalid(path + ": expected a string or an array of text parts")
	}
	var b strings.Builder
	for i, p := range parts {
		if !slices.Contains(types, p.Type) {
			return "", invalid(fmt.Sprintf("%s[%d].type: %q is not supported; only %s", path, i, clip(p.Type), strings.Join(types, ", ")))
		}
		b.WriteString(p.Text)
	}
	return b.String(), nil
}

// textMessage is a chat message with text content.
func textMessage(role, text string) chatMessage {
	c, _ := json.Marshal(text)
	return chatMessage{Role: role, Content: c}
}

// messages converts the input to chat messages, after history (the
// messages of previous_response_id).
func (body *responsesRequest) messages(history []chatMessage, unknown *tolerance) ([]chatMessage, error) {
	msgs := append([]chatMessage(nil), history...)
	in := bytes.TrimSpace(body.Input)
	var text string
	if json.Unmarshal(in, &text) == nil {
		if text == "" {
			return nil, invalid("input: empty")
		}
		return append(msgs, textMessage("user", text)), nil
	}
	if len(in) == 0 || in[0] != '[' {
		return nil, invalid("input: expected a string or an array of items")
	}
	items, err := body.items(unknown)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return nil, invalid("input: at least one item is required")
	}
	calls := map[string]bool{} // call ids of the function calls so far
	for _, m := range history {
		for _, tc := range m.ToolCalls {
			calls[tc.ID] = true
		}
	}
	reasoning := "" // of a reasoning item, for the assistant turn after it
	// lastAssistant is the index of the assistant message that function
	// calls join (the calls of one turn), or -1.
	lastAssistant := -1
	for i, it := range items {
		at := fmt.Sprintf("input[%d]", i)
		typ := it.Type
		if typ == "" && it.Role != "" {
			typ = "message"
		}
		switch typ {
		case "message":
			var types []string
			switch it.Role {
			case "user", "system", "developer":
				types = []string{"input_text"}
			case "assistant":
				types = []string{"output_text", "refusal"}
			default:
				return nil, invalid(fmt.Sprintf("%s.role: %q is not user, system, developer or assistant", at, clip(it.Role)))
			}
			text, err := partsText(at+".content", it.Content, types...)
			if err != nil {
				return nil, err
			}
			m := textMessage(it.Role, text)
			lastAssistant = -1
			if it.Role == "assistant" {
				m.ReasoningContent, reasoning = reasoning, ""
				lastAssistant = len(msgs)
			}
			msgs = append(msgs, m)
		case "function_call":
			if err := checkName(at+".name", it.Name); err != nil {
				return nil, err
			}
			if it.CallID == "" {
				return nil, invalid(at + ".call_id: required")
			}
			if lastAssistant < 0 {
				m := chatMessage{Role: "assistant", ReasoningContent: reasoning}
				reasoning = ""
				lastAssistant = len(msgs)
				msgs = append(msgs, m)
			}
			calls[it.CallID] = true
			msgs[lastAssistant].ToolCalls = append(msgs[lastAssistant].ToolCalls,
				chatToolCall{ID: it.CallID, Type: "function", Function: chatFunction{Name: it.Name, Arguments: it.Arguments}})
		case "function_call_output":
			if !calls[it.CallID] {
				return nil, invalid(fmt.Sprintf("%s.call_id: %q matches no earlier function_call", at, clip(it.CallID)))
			}
			out, err := partsText(at+".output", it.Output, "input_text")
			if err != nil {
				return nil, err
			}
			m := textMessage("tool", out)
			m.ToolCallID = it.CallID
			msgs = append(msgs, m)
		case "reasoning":
			var parts []struct {
				Text string `json:"text"`
			}
			json.Unmarshal(it.Content, &parts) // reasoning_text parts; anything else carries no text
			for _, p := range parts {
				reasoning += p.Text
			}
		default:
			return nil, invalid(fmt.Sprintf("%s.type: %q is not message, function_call, function_call_output or reasoning", at, clip(typ)))
		}
	}
	return msgs, nil
}

// chatBody builds the chat request the response runs as: the instructions
// as a system message, then the conversation.
func (body *responsesRequest) chatBody(msgs []chatMessage) (*chatRequest, error) {
	c := &chatRequest{
		commonFields:       commonFields{Model: body.Model, MaxTokens: body.MaxOutputTokens, samplingFields: body.samplingFields},
		ToolChoice:         body.ToolChoice,
		ParallelToolCalls:  body.ParallelToolCalls,
		MaxReasoningTokens: body.MaxReasoningTokens,
	}
	if body.Text != nil {
		f, err := formatAsChat(body.Text.Format)
		if err != nil {
			return nil, err
		}
		c.ResponseFormat = f
	}
	if body.Instructions != nil && *body.Instructions != "" {
		c.Messages = append(c.Messages, textMessage("system", *body.Instructions))
	}
	c.Messages = append(c.Messages, msgs...)
	if body.Reasoning != nil {
		if err := checkEffort("reasoning.effort", body.Reasoning.Effort); err != nil {
			return nil, err
		}
		c.ReasoningEffort = body.Reasoning.Effort
	}
	for i, t := range body.Tools {
		if t.Type != "function" {
			return nil, invalid(fmt.Sprintf("tools[%d].type: %q is not supported; only function", i, clip(t.Type)))
		}
		if err := checkName(fmt.Sprintf("tools[%d].name", i), t.Name); err != nil {
			return nil, err
		}
		// Templates print the tool as chat clients send it, keys in the
		// order of OpenAI's and HF's examples.
		type function struct {
			Name        string          `json:"name"`
			Description string          `json:"description,omitempty"`
			Parameters  json.RawMessage `json:"parameters,omitempty"`
		}
		var ct chatTool
		ct.raw, _ = json.Marshal(struct {
			Type     string   `json:"type"`
			Function function `json:"function"`
		}{"function", function{t.Name, t.Description, t.Parameters}})
		ct.Type = "function"
		ct.Function.Name, ct.Function.Description, ct.Function.Parameters = t.Name, t.Description, t.Parameters
		ct.Function.Strict = t.Strict
		c.Tools = append(c.Tools, ct)
	}
	return c, nil
}

// checkResponse checks the fields the chat path does not: the token limit
// (named as this API names it), tool_choice and text.format.
func (s *Server) checkResponse(body *responsesRequest) error {
	if m := body.MaxToolCalls; m != nil && *m < 0 {
		return invalid(fmt.Sprintf("max_tool_calls: %d is negative", *m))
	}
	if m := body.MaxOutputTokens; m != nil {
		if limit := min(maxTokensLimit, s.cfg.MaxTokensOut); *m < 1 || *m > limit {
			return invalid(fmt.Sprintf("max_output_tokens: %d is outside [1, %d]", *m, limit))
		}
	}
	_, err := parseToolChoice("tool_choice", body.ToolChoice)
	return err
}

// responseRequest checks a /v1/responses body and returns its engine
// request (without an id), the chat request it runs as, and its
// conversation (history and input); the input items' unknown fields go to
// unknown.
func (s *Server) responseRequest(body *responsesRequest, unknown *tolerance) (engine.Request, *chatRequest, []chatMessage, error) {
	if err := s.checkResponse(body); err != nil {
		return engine.Request{}, nil, nil, err
	}
	var history []chatMessage
	if p := body.PreviousResponseID; p != nil {
		prev, ok := s.responses.get(*p)
		if !ok {
			return engine.Request{}, nil, nil, apiError{http.StatusNotFound, codeNotFound,
				fmt.Sprintf("previous_response_id: %q is not stored here (unknown, expired, or stored with store false)", clip(*p)), false}
		}
		history = prev.messages
	}
	input, err := body.messages(history, unknown)
	if err != nil {
		return engine.Request{}, nil, nil, err
	}
	chat, err := body.chatBody(input)
	if err != nil {
		return engine.Request{}, nil, nil, err
	}
	req, err := s.chatRequest(chat)
	var e apiError
	if errors.As(err, &e) {
		err = responsesPath(e)
	}
	return req, chat, input, err
}

// responsesPath renames the chat field an error of the chat path names to
// this API's: the conversation is the input, and tools are flat.
func responsesPath(e apiError) apiError {
	field, rest, ok := strings.Cut(e.message, ": ")
	switch {
	case !ok:
	case field == "messages" || strings.HasPrefix(field, "messages["):
		e.message = "input: " + rest
	case strings.HasPrefix(field, "tools["), strings.HasPrefix(field, "tool_choice."):
		e.message = strings.Replace(field, ".function.", ".", 1) + ": " + rest
	case strings.HasPrefix(field, "response_format"):
		e.message = formatPath(field) + ": " + rest
	}
	return e
}

// Output shapes of the Responses API.
type (
	responseObject struct {
		ID                 string            `json:"id"`
		Object             string            `json:"object"`
		CreatedAt          int64             `json:"created_at"`
		Status             string            `json:"status"`
		Error              *responseError    `json:"error"`
		IncompleteDetails  *incompleteReason `json:"incomplete_details"`
		Instructions       *string           `json:"instructions"`
		MaxOutputTokens    *int              `json:"max_output_tokens"`
		Model              string            `json:"model"`
		Output             []any             `json:"output"`
		ParallelToolCalls  bool              `json:"parallel_tool_calls"`
		PreviousResponseID *string           `json:"previous_response_id"`
		Reasoning          responseReasoning `json:"reasoning"`
		Store              bool              `json:"store"`
		Temperature        *float64          `json:"temperature"`
		TopP               *float64          `json:"top_p"`
		Text               json.RawMessage   `json:"text"`
		ToolChoice         json.RawMessage   `json:"tool_choice"`
		Tools              []responseTool    `json:"tools"`
		Usage              *responseUsage    `json:"usage"`
		Metadata           map[string]string `json:"metadata"`
	}
	responseError struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	incompleteReason struct {
		Reason string `json:"reason"`
	}
	responseReasoning struct {
		Effort  *string `json:"effort"`
		Summary *string `json:"summary"`
	}
	responseUsage struct {
		InputTokens        int `json:"input_tokens"`
		InputTokensDetails struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"input_tokens_details"`
		OutputTokens        int `json:"output_tokens"`
		OutputTokensDetails struct {
			ReasoningTokens int `json:"reasoning_tokens"`
		} `json:"output_tokens_details"`
		TotalTokens int `json:"total_tokens"`
	}
	reasoningItem struct {
		ID      string `json:"id"`
		Type    string `json:"type"`
		Summary []any  `json:"summary"`
		Content []any  `json:"content"`
		Status  string `json:"status"`
	}
	messageItem struct {
		ID      string `json:"id"`
		Type    string `json:"type"`
		Status  string `json:"status"`
		Role    string `json:"role"`
		Content []any  `json:"content"`
	}
	functionCallItem struct {
		ID        string `json:"id"`
		Type      string `json:"type"`
		Status    string `json:"status"`
		CallID    string `json:"call_id"`
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	}
	outputTextPart struct {
		Type        string `json:"type"` // output_text
		Text        string `json:"text"`
		Annotations []any  `json:"annotations"`
		Logprobs    []any  `json:"logprobs"`
	}
	reasoningTextPart struct {
		Type string `json:"type"` // reasoning_text
		Text string `json:"text"`
	}
)

// responseItem is an output item being built.
type responseItem struct {
	kind         deltaKind // deltaReasoning, deltaContent or deltaToolStart
	id, callID   string
	name         string
	text         strings.Builder // the text, or a call's arguments
	outputIndex  int
	finishedItem any // set once done
}

// value is the item as the API shows it, with status.
func (it *responseItem) value(status string) any {
	switch it.kind {
	case deltaReasoning:
		content := []any{}
		if status != "in_progress" {
			content = []any{it.part(it.text.String())}
		}
		return reasoningItem{ID: it.id, Type: "reasoning", Summary: []any{}, Content: content, Status: status}
	case deltaContent:
		content := []any{}
		if status != "in_progress" {
			content = []any{it.part(it.text.String())}
		}
		return messageItem{ID: it.id, Type: "message", Status: status, Role: "assistant", Content: content}
	}
	args := ""
	if status != "in_progress" {
		args = it.text.String()
	}
	return functionCallItem{ID: it.id, Type: "function_call", Status: status, CallID: it.callID, Name: it.name, Arguments: args}
}

// part is the item's one content part (reasoning and message items).
func (it *responseItem) part(text string) any {
	if it.kind == deltaReasoning {
		return reasoningTextPart{"reasoning_text", text}
	}
	return outputTextPart{"output_text", text, []any{}, []any{}}
}

// responseBuilder turns output deltas into items and, when streaming,
// into the API's events.
type responseBuilder struct {
	sse   *sseWriter // nil: not streaming
	seq   int
	items []*responseItem
	open  *responseItem
}

// event writes one streamed event, numbered.
func (b *responseBuilder) event(typ string, fields map[string]any) {
	if b.sse == nil {
		return
	}
	fields["type"] = typ
	fields["sequence_number"] = b.seq
	b.seq++
	b.sse.event(typ, fields)
}

// add takes one delta.
func (b *responseBuilder) add(d delta) {
	kind := d.kind
	if kind == deltaToolArgs {
		kind = deltaToolStart
	}
	if b.open == nil || b.open.kind != kind || d.kind == deltaToolStart {
		b.close("completed")
		b.start(d)
	}
	it := b.open
	if d.kind == deltaToolStart || d.text == "" {
		return
	}
	it.text.WriteString(d.text)
	ev := map[string]any{"item_id": it.id, "output_index": it.outputIndex, "delta": d.text}
	switch it.kind {
	case deltaReasoning:
		ev["content_index"] = 0
		b.event("response.reasoning_text.delta", ev)
	case deltaContent:
		ev["content_index"], ev["logprobs"] = 0, []any{}
		b.event("response.output_text.delta", ev)
	default:
		b.event("response.function_call_arguments.delta", ev)
	}
}

// start opens an item for d.
func (b *responseBuilder) start(d delta) {
	it := &responseItem{kind: d.kind, outputIndex: len(b.items)}
	switch d.kind {
	case deltaReasoning:
		it.id = newID("rs_")
	case deltaContent:
		it.id = newID("msg_")
	default:
		it.kind, it.id, it.callID, it.name = deltaToolStart, newID("fc_"), newID("call_"), d.toolName
	}
	b.items = append(b.items, it)
	b.open = it
	b.event("response.output_item.added", map[string]any{"output_index": it.outputIndex, "item": it.value("in_progress")})
	if it.kind != deltaToolStart {
		b.event("response.content_part.added", map[string]any{"item_id": it.id, "output_index": it.outputIndex,
			"content_index": 0, "part": it.part("")})
	}
}

// close finishes the open item, if any, with status ("completed", or
// "incomplete" for one cut short).
func (b *responseBuilder) close(status string) {
	it := b.open
	if it == nil {
		return
	}
	b.open = nil
	text := it.text.String()
	base := func() map[string]any { return map[string]any{"item_id": it.id, "output_index": it.outputIndex} }
	switch it.kind {
	case deltaReasoning, deltaContent:
		ev := base()
		ev["content_index"], ev["text"] = 0, text
		name := "response.reasoning_text.done"
		if it.kind == deltaContent {
			name = "response.output_text.done"
			ev["logprobs"] = []any{}
		}
		b.event(name, ev)
		ev = base()
		ev["content_index"], ev["part"] = 0, it.part(text)
		b.event("response.content_part.done", ev)
	default:
		ev := base()
		ev["arguments"], ev["name"] = text, it.name
		b.event("response.function_call_arguments.done", ev)
	}
	it.finishedItem = it.value(status)
	b.event("response.output_item.done", map[string]any{"output_index": it.outputIndex, "item": it.finishedItem})
}

// output returns the finished items, closing the last one with status.
func (b *responseBuilder) output(status string) []any {
	b.close(status)
	out := make([]any, len(b.items))
	for i, it := range b.items {
		out[i] = it.finishedItem
	}
	return out
}

// message is the output as one assistant chat message, for the history
// of a later request.
func (b *responseBuilder) message() chatMessage {
	var content, reasoning strings.Builder
	var calls []chatToolCall
	for _, it := range b.items {
		switch it.kind {
		case deltaReasoning:
			reasoning.WriteString(it.text.String())
		case deltaContent:
			content.WriteString(it.text.String())
		default:
			calls = append(calls, chatToolCall{ID: it.callID, Type: "function", Function: chatFunction{Name: it.name, Arguments: it.text.String()}})
		}
	}
	m := textMessage("assistant", content.String())
	m.ReasoningContent, m.ToolCalls = reasoning.String(), calls
	return m
}

// reasoningCounter counts the generated tokens that are reasoning: those
// whose output is reasoning, with the tokens before them that had no output
// of their own (message headers); tokens left at the end go with the last
// output's kind.
type reasoningCounter struct {
	outputParser
	pending, reasoning int
	last               deltaKind
}

func (c *reasoningCounter) token(tok engine.Token) ([]delta, bool) {
	ds, stop := c.outputParser.token(tok)
	if tok.ID >= 0 {
		c.pending++
	}
	if len(ds) > 0 {
		c.settle(ds[0].kind)
		c.last = ds[len(ds)-1].kind
	}
	return ds, stop
}

func (c *reasoningCounter) settle(kind deltaKind) {
	if kind == deltaReasoning {
		c.reasoning += c.pending
	}
	c.pending = 0
}

// count is the number of reasoning tokens once generation has ended.
func (c *reasoningCounter) count() int {
	c.settle(c.last)
	return c.reasoning
}

// handleResponses serves POST /v1/responses.
func (s *Server) handleResponses(w http.ResponseWriter, r *http.Request) {
	const endpoint = "responses"
	arrival := time.Now()
	id := newID("resp_")
	var body responsesRequest
	var chat *chatRequest
	var input []chatMessage // this request's conversation, stored with the output
	inputUnknown := &tolerance{}
	job := s.submit(w, r, endpoint, s.rejectOpenAI, &body, func() (engine.Request, error) {
		var req engine.Request
		var err error
		req, chat, input, err = s.responseRequest(&body, inputUnknown)
		req.ID = id
		return req, err
	})
	if job == nil {
		return
	}
	s.report(w, inputUnknown)
	store := s.responses != nil && (body.Store == nil || *body.Store)
	resp := responseObject{
		ID: id, Object: "response", CreatedAt: arrival.Unix(), Status: "in_progress", Model: s.cfg.Model.ID,
		Output: []any{}, Instructions: body.Instructions, MaxOutputTokens: body.MaxOutputTokens,
		ParallelToolCalls: body.ParallelToolCalls == nil || *body.ParallelToolCalls, PreviousResponseID: body.PreviousResponseID,
		Store: store, Temperature: body.Temperature, TopP: body.TopP, Text: json.RawMessage(`{"format":{"type":"text"}}`),
		ToolChoice: body.ToolChoice, Tools: body.Tools, Metadata: body.Metadata,
	}
	if resp.Metadata == nil {
		resp.Metadata = map[string]string{}
	}
	if body.Text != nil && len(bytes.TrimSpace(body.Text.Format)) > 0 && string(bytes.TrimSpace(body.Text.Format)) != "null" {
		// Echo the format asked for (checked already).
		resp.Text, _ = json.Marshal(map[string]json.RawMessage{"format": body.Text.Format})
	}
	if len(bytes.TrimSpace(resp.ToolChoice)) == 0 {
		resp.ToolChoice = json.RawMessage(`"auto"`)
	}
	if chat.ReasoningEffort != "" {
		resp.Reasoning.Effort = &chat.ReasoningEffort
	}
	if resp.Tools == nil {
		resp.Tools = []responseTool{}
	}

	b := &responseBuilder{}
	if body.Stream {
		b.sse = startSSE(w)
		b.event("response.created", map[string]any{"response": resp})
		b.event("response.in_progress", map[string]any{"response": resp})
	}
	parser := s.chatOutput(chat)
	if m := body.MaxToolCalls; m != nil {
		parser = &callLimit{outputParser: parser, max: *m}
	}
	out := &reasoningCounter{outputParser: parser}
	res, err := s.runJob(r, job, s.metrics.clock(arrival), out, func(d delta) bool {
		b.add(d)
		return false
	})
	outcome := string(res.StopReason)
	err = s.jobError(res, err)
	s.log.Info("openai request done", "endpoint", endpoint, "outcome", outcome, "prompt_tokens", job.PromptTokens(),
		"tokens_out", res.TokensOut, "error", err, "correlation_id", correlationID(r.Context()))
	if err != nil {
		e := classify(err)
		s.metrics.requests.WithLabelValues(endpoint, e.code).Inc()
		if b.sse == nil {
			writeJSON(w, e.status, openAIError{openAIErrorOf(e)})
			return
		}
		resp.Status, resp.Error = "failed", &responseError{Code: strings.ToLower(e.code), Message: e.message}
		resp.Output = b.output("incomplete")
		b.event("response.failed", map[string]any{"response": resp})
		return
	}
	s.metrics.requests.WithLabelValues(endpoint, outcome).Inc()
	resp.Status = "completed"
	final := "response.completed"
	if res.StopReason == engine.StopMaxTokens || res.StopReason == engine.StopContextFull {
		resp.Status, resp.IncompleteDetails, final = "incomplete", &incompleteReason{"max_output_tokens"}, "response.incomplete"
	}
	resp.Output = b.output(resp.Status)
	u := &responseUsage{InputTokens: job.PromptTokens(), OutputTokens: res.TokensOut, TotalTokens: job.PromptTokens() + res.TokensOut}
	u.OutputTokensDetails.ReasoningTokens = out.count()
	resp.Usage = u
	if store {
		s.responses.put(id, storedResponse{messages: append(input, b.message()), response: resp})
	}
	if b.sse != nil {
		b.event(final, map[string]any{"response": resp})
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// handleGetResponse serves GET /v1/responses/{id}: a stored response.
func (s *Server) handleGetResponse(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	stored, ok := s.responses.get(id)
	if !ok {
		responseNotFound(w, id)
		return
	}
	writeJSON(w, http.StatusOK, stored.response)
}

// handleDeleteResponse serves DELETE /v1/responses/{id}.
func (s *Server) handleDeleteResponse(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !s.responses.remove(id) {
		responseNotFound(w, id)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "object": "response.deleted", "deleted": true})
}

func responseNotFound(w http.ResponseWriter, id string) {
	writeJSON(w, http.StatusNotFound, openAIError{openAIErrorOf(apiError{http.StatusNotFound, codeNotFound,
		fmt.Sprintf("response_id: %q is not stored here", clip(id)), false})})
}
