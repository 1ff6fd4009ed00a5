package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"orcd/chat"
	"orcd/engine"
	"orcd/harmony"
)

// chatRequest is the body of POST /v1/chat/completions.
type chatRequest struct {
	commonFields
	Messages            []chatMessage   `json:"messages"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Tools               []chatTool      `json:"tools"`
	ToolChoice          json.RawMessage `json:"tool_choice"`
	ParallelToolCalls   *bool           `json:"parallel_tool_calls"`
	ReasoningEffort     string          `json:"reasoning_effort"`
	Logprobs            *bool           `json:"logprobs"`
	TopLogprobs         *int            `json:"top_logprobs"`
	ResponseFormat      json.RawMessage `json:"response_format"`
	// MaxReasoningTokens bounds the reasoning before a structured answer
	// or a forced call (default by reasoning effort).
	MaxReasoningTokens *int `json:"max_reasoning_tokens"`
}

type chatMessage struct {
	Role             string          `json:"role"`
	Content          json.RawMessage `json:"content"`
	Name             string          `json:"name"`
	ToolCalls        []chatToolCall  `json:"tool_calls"`
	ToolCallID       string          `json:"tool_call_id"`
	ReasoningContent string          `json:"reasoning_content"`
}

type chatToolCall struct {
	Index    *int         `json:"index,omitempty"`
	ID       string       `json:"id,omitempty"`
	Type     string       `json:"type,omitempty"`
	Function chatFunction `json:"function"`
}

type chatFunction struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

type chatTool struct {
	raw      json.RawMessage // as sent: templates print tools in the client's key order
	Type     string          `json:"type"`
	Function struct {
		Name        string          `json:"name"`
		Description string          `json:"description"`
		Parameters  json.RawMessage `json:"parameters"`
		Strict      *bool           `json:"strict"`
	} `json:"function"`
}

// UnmarshalJSON keeps the tool's JSON beside its fields.
func (t *chatTool) UnmarshalJSON(b []byte) error {
	type fields chatTool
	if err := json.Unmarshal(b, (*fields)(t)); err != nil {
		return err
	}
	t.raw = append(json.RawMessage(nil), b...)
	return nil
}

// text returns the message content: a string, null, or an array of text parts.
func (m chatMessage) text(i int) (string, error) {
	return partsText(fmt.Sprintf("messages[%d].content", i), m.Content, "text")
}

// conversation checks the messages and collects them for rendering.
func (body *chatRequest) conversation(now time.Time) (harmony.Conversation, error) {
	conv := harmony.Conversation{ReasoningEffort: body.ReasoningEffort, Date: now, Format: promptFormat(body.ResponseFormat)}
	if len(body.Messages) == 0 {
		return conv, invalid("messages: at least one message is required")
	}
	var instructions []string
	toolNames := map[string]string{} // tool_call_id → function name
	for i, m := range body.Messages {
		text, err := m.text(i)
		if err != nil {
			return conv, err
		}
		switch m.Role {
		case "system", "developer":
			instructions = append(instructions, text)
		case "user":
			conv.Messages = append(conv.Messages, harmony.Message{Role: "user", Content: text})
		case "assistant":
			hm := harmony.Message{Role: "assistant", Content: text, Reasoning: m.ReasoningContent}
			for j, tc := range m.ToolCalls {
				if err := checkName(fmt.Sprintf("messages[%d].tool_calls[%d].function.name", i, j), tc.Function.Name); err != nil {
					return conv, err
				}
				if tc.Index != nil && *tc.Index < 0 {
					return conv, invalid(fmt.Sprintf("messages[%d].tool_calls[%d].index: %d is negative", i, j, *tc.Index))
				}
				hm.ToolCalls = append(hm.ToolCalls, harmony.ToolCall{Name: tc.Function.Name, Arguments: tc.Function.Arguments})
				toolNames[tc.ID] = tc.Function.Name
			}
			conv.Messages = append(conv.Messages, hm)
		case "tool":
			name := toolNames[m.ToolCallID]
			if name == "" && m.Name != "" {
				if err := checkName(fmt.Sprintf("messages[%d].name", i), m.Name); err != nil {
					return conv, err
				}
				name = m.Name
			}
			if name == "" {
				return conv, invalid(fmt.Sprintf("messages[%d].tool_call_id: %q matches no earlier tool call", i, clip(m.ToolCallID)))
			}
			conv.Messages = append(conv.Messages, harmony.Message{Role: "tool", Content: text, ToolName: name})
		default:
			return conv, invalid(fmt.Sprintf("messages[%d].role: %q is not system, developer, user, assistant or tool", i, m.Role))
		}
	}
	conv.Instructions = strings.Join(instructions, "\n\n")
	if string(bytes.TrimSpace(body.ToolChoice)) != `"none"` {
		for i, t := range body.Tools {
			if t.Type != "function" {
				return conv, invalid(fmt.Sprintf("tools[%d].type: %q is not supported; only function", i, clip(t.Type)))
			}
			if err := checkName(fmt.Sprintf("tools[%d].function.name", i), t.Function.Name); err != nil {
				return conv, err
			}
			conv.Tools = append(conv.Tools, harmony.Tool{Name: t.Function.Name, Description: t.Function.Description, Parameters: t.Function.Parameters})
		}
	}
	return conv, nil
}

// checkName checks a name that goes into the prompt's structure (see
// harmony.CheckName); field is its API path.
func checkName(field, name string) error {
	if err := harmony.CheckName(name); err != nil {
		return invalid(fmt.Sprintf("%s: %q: %v", field, clip(name), err))
	}
	return nil
}

// plainChatPrompt renders a conversation as plain text for models without
// a chat format (gpt2): instructions, then "User:"/"Assistant:" turns,
// ending with "Assistant:". The engine stops at the next "\nUser:".
func plainChatPrompt(conv harmony.Conversation) string {
	var b strings.Builder
	if conv.Instructions != "" {
		b.WriteString(conv.Instructions + "\n\n")
	}
	for _, m := range conv.Messages {
		switch m.Role {
		case "user":
			b.WriteString("User: " + m.Content + "\n")
		case "assistant":
			b.WriteString("Assistant: " + m.Content + "\n")
		case "tool":
			b.WriteString("Tool (" + m.ToolName + "): " + m.Content + "\n")
		}
	}
	b.WriteString("Assistant:")
	return b.String()
}

// plainChatStop ends a plain-text chat turn when the model starts the next one.
const plainChatStop = "\nUser:"

// harmonyOutput parses gpt-oss output into reasoning, content and tool
// calls, applying the request's stop strings to the content.
type harmonyOutput struct {
	parser   *harmony.Parser
	specials map[int32]string
	other    specialChecker // nil if the tokenizer cannot tell
	stops    *engine.StopMatcher
}

func (h *harmonyOutput) token(tok engine.Token) ([]delta, bool) {
	var evs []harmony.Event
	if name, ok := h.specials[tok.ID]; ok {
		evs = h.parser.Special(name)
	} else if h.other != nil && tok.ID >= 0 && h.other.IsSpecial(tok.ID) {
		return nil, false // a control token outside harmony: never shown
	} else {
		evs = h.parser.Text(tok.Text)
	}
	var out []delta
	for _, ev := range evs {
		switch ev.Kind {
		case harmony.Reasoning:
			out = append(out, delta{kind: deltaReasoning, text: ev.Text})
		case harmony.Content:
			text, hit := h.stops.Push(ev.Text)
			if text != "" {
				out = append(out, delta{kind: deltaContent, text: text})
			}
			if hit {
				return out, true
			}
		case harmony.ToolCallStart:
			out = append(out, delta{kind: deltaToolStart, toolIndex: ev.ToolIndex, toolName: ev.ToolName})
		case harmony.ToolCallArgs:
			out = append(out, delta{kind: deltaToolArgs, text: ev.Text, toolIndex: ev.ToolIndex})
		}
	}
	return out, false
}

func (h *harmonyOutput) finish() []delta {
	if text := h.stops.Flush(); text != "" {
		return []delta{{kind: deltaContent, text: text}}
	}
	return nil
}

func (h *harmonyOutput) toolCalls() int { return h.parser.ToolCalls() }

// Chat response shapes.
type (
	chatChoice struct {
		Index        int         `json:"index"`
		Message      *chatOutMsg `json:"message,omitempty"`
		Delta        *chatOutMsg `json:"delta,omitempty"`
		Logprobs     any         `json:"logprobs"`
		FinishReason *string     `json:"finish_reason"`
	}
	chatOutMsg struct {
		Role             string         `json:"role,omitempty"`
		Content          *string        `json:"content,omitempty"`
		ReasoningContent *string        `json:"reasoning_content,omitempty"`
		ToolCalls        []chatToolCall `json:"tool_calls,omitempty"`
	}
	chatResponse = openAIResponse[chatChoice]
)

// handleChat serves POST /v1/chat/completions: one choice, streamed as
// chunks or answered as one object, with reasoning and tool calls parsed out
// of harmony output for gpt-oss.
func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) {
	const endpoint = "chat"
	arrival := time.Now()
	id := newID("chatcmpl-")
	var body chatRequest
	var req engine.Request
	job := s.submit(w, r, endpoint, s.rejectOpenAI, &body, func() (engine.Request, error) {
		var err error
		req, err = s.chatRequest(&body)
		req.ID = id
		return req, err
	})
	if job == nil {
		return
	}
	n := body.choices()
	outs := make([]outputParser, n)
	for i := range outs {
		outs[i] = s.chatOutput(&body)
	}
	chunk := func(choices ...chatChoice) chatResponse {
		obj := "chat.completion"
		if body.Stream {
			obj = "chat.completion.chunk"
		}
		return chatResponse{ID: id, Object: obj, Created: arrival.Unix(), Model: s.cfg.Model.ID, Choices: choices}
	}

	var sse *sseWriter
	type choiceOutput struct {
		content, reasoning strings.Builder
		calls              []chatToolCall
		logprobs           []engine.Logprobs
	}
	got := make([]choiceOutput, n)
	if body.Stream {
		sse = startSSE(w)
		for i := range n {
			empty := ""
			sse.event("", chunk(chatChoice{Index: i, Delta: &chatOutMsg{Role: "assistant", Content: &empty}}))
		}
	}
	results, err := s.runChoices(r, job, req, s.metrics.clock(arrival), outs, func(i int, d delta) bool {
		var m chatOutMsg
		c := &got[i]
		switch d.kind {
		case deltaContent:
			m.Content = &d.text
			c.content.WriteString(d.text)
		case deltaReasoning:
			m.ReasoningContent = &d.text
			c.reasoning.WriteString(d.text)
		case deltaToolStart:
			idx := d.toolIndex
			tc := chatToolCall{Index: &idx, ID: newID("call_"), Type: "function", Function: chatFunction{Name: d.toolName}}
			c.calls = append(c.calls, tc)
			m.ToolCalls = []chatToolCall{tc}
		case deltaToolArgs:
			idx := d.toolIndex
			c.calls[idx].Function.Arguments += d.text
			m.ToolCalls = []chatToolCall{{Index: &idx, Function: chatFunction{Arguments: d.text}}}
		}
		c.logprobs = append(c.logprobs, d.logprobs...)
		if sse != nil {
			ch := chatChoice{Index: i, Delta: &m}
			if d.logprobs != nil {
				ch.Logprobs = s.chatLogprobsOf(d.logprobs)
			}
			sse.event("", chunk(ch))
		}
		return false
	})
	res := sumResults(results)
	s.finishOpenAI(w, r, endpoint, sse, job, res, err, func() any {
		choices := make([]chatChoice, n)
		for i := range choices {
			finish := finishReason(results[i], outs[i].toolCalls())
			if sse != nil {
				choices[i] = chatChoice{Index: i, Delta: &chatOutMsg{}, FinishReason: &finish}
				continue
			}
			c := &got[i]
			msg := &chatOutMsg{Role: "assistant"}
			if text := c.content.String(); text != "" || len(c.calls) == 0 {
				msg.Content = &text
			}
			if rc := c.reasoning.String(); rc != "" {
				msg.ReasoningContent = &rc
			}
			for j := range c.calls {
				c.calls[j].Index = nil
			}
			msg.ToolCalls = c.calls
			choices[i] = chatChoice{Index: i, Message: msg, FinishReason: &finish}
			if req.Logprobs {
				choices[i].Logprobs = s.chatLogprobsOf(c.logprobs)
			}
		}
		c := chunk(choices...)
		if sse == nil {
			c.Usage = usageOf(job, res)
		}
		return c
	}, func() any {
		c := chunk()
		c.Choices = []chatChoice{}
		c.Usage = usageOf(job, res)
		return c
	}, body.StreamOptions)
}

// chatOutput returns the parser of a chat request's output: harmony for
// gpt-oss, tagged tool calls for templates that write them, plain text
// otherwise; with parallel_tool_calls false it keeps the first call only,
// with tool_choice "none" none.
func (s *Server) chatOutput(body *chatRequest) outputParser {
	var out outputParser = plainOutput{}
	switch {
	case s.specials != nil:
		other, _ := s.cfg.Tokenizer.(specialChecker)
		out = &harmonyOutput{parser: harmony.NewParser(), specials: s.specials, other: other, stops: engine.NewStopMatcher(body.Stop)}
	case s.taggedToolCalls(body):
		out = &taggedOutput{stops: engine.NewStopMatcher(body.Stop)}
	}
	switch {
	case string(bytes.TrimSpace(body.ToolChoice)) == `"none"`:
		out = &callLimit{outputParser: out, max: 0}
	case body.ParallelToolCalls != nil && !*body.ParallelToolCalls:
		out = &callLimit{outputParser: out, max: 1}
	}
	return out
}

// chatRequest checks a /v1/chat/completions body and returns its engine
// request (without an id), the conversation rendered and tokenized.
func (s *Server) chatRequest(body *chatRequest) (engine.Request, error) {
	maxTokens := body.MaxTokens
	if body.MaxCompletionTokens != nil {
		maxTokens = body.MaxCompletionTokens
	}
	req, err := s.request(body.commonFields, maxTokens)
	if err == nil {
		err = checkChoices(body)
	}
	if err == nil {
		err = chatLogprobsRequest(body, &req)
	}
	if err == nil {
		req.NewConstraint, err = s.constraint(body, req.MaxTokens)
	}
	if err == nil {
		err = s.chatPrompt(body, &req)
	}
	return req, err
}

// chatPrompt renders the conversation into req: harmony tokens, the model's
// chat template, or plain text, as the model chats.
func (s *Server) chatPrompt(body *chatRequest, req *engine.Request) error {
	conv, err := body.conversation(s.cfg.Now())
	if err != nil {
		return err
	}
	if s.cfg.Model.Chat == ChatTemplate {
		return s.templatePrompt(body, req)
	}
	if s.specials == nil {
		if len(conv.Tools) > 0 {
			return invalid("tools: this model has no tool-calling format")
		}
		text := plainChatPrompt(conv)
		req.Tokens, err = s.tokenize("messages", len(text), func() ([]int32, error) {
			return s.cfg.Engine.EncodePrompt(text), nil
		})
		req.Stop = append(req.Stop[:len(req.Stop):len(req.Stop)], plainChatStop)
		return err
	}
	p, err := harmony.Render(conv)
	var params *harmony.ParametersError
	switch {
	case errors.As(err, &params):
		return invalid(fmt.Sprintf("tools[%d].function.parameters: %v", params.Tool, params.Err))
	case err != nil:
		return invalid("messages: " + strings.TrimPrefix(err.Error(), "harmony: "))
	}
	n := 0
	for _, piece := range p {
		n += len(piece.Text)
	}
	req.Tokens, err = s.tokenize("messages", n, func() ([]int32, error) { return p.Tokens(s.cfg.Tokenizer) })
	// Stop strings apply to the content, in harmonyOutput.
	req.Stop = nil
	return err
}

// templatePrompt renders the messages (already checked by conversation)
// with the model's chat template and tokenizes the text, special-token
// texts included, as HF's apply_chat_template followed by encoding does.
func (s *Server) templatePrompt(body *chatRequest, req *engine.Request) error {
	r := chat.Request{AddGenerationPrompt: true, Now: s.cfg.Now()}
	for i, m := range body.Messages {
		text, err := m.text(i)
		if err != nil {
			return err
		}
		msg := chat.Message{Role: m.Role, Content: text, ToolCallID: m.ToolCallID, Name: m.Name}
		for _, tc := range m.ToolCalls {
			msg.ToolCalls = append(msg.ToolCalls, chat.ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: tc.Function.Arguments})
		}
		r.Messages = append(r.Messages, msg)
	}
	if string(bytes.TrimSpace(body.ToolChoice)) != `"none"` {
		for _, t := range body.Tools {
			r.Tools = append(r.Tools, t.raw)
		}
	}
	text, err := s.cfg.Template.Render(r)
	if err != nil {
		// A tool the template cannot take names itself ("chat: tools[1]:
		// ..."); anything else is the conversation's.
		if msg, ok := strings.CutPrefix(err.Error(), "chat: "); ok {
			return invalid(msg)
		}
		return invalid("messages: " + err.Error())
	}
	req.Tokens, err = s.tokenize("messages", len(text), func() ([]int32, error) {
		return s.cfg.Tokenizer.(specialEncoder).EncodeSpecial(text), nil
	})
	if err != nil {
		return err
	}
	if s.taggedToolCalls(body) {
		req.Stop = nil // stop strings apply to the content, in taggedOutput
	}
	return nil
}

// taggedToolCalls reports whether the request's output is parsed for tool
// calls between <tool_call> tags: the request has tools and the model's
// template writes calls so.
func (s *Server) taggedToolCalls(body *chatRequest) bool {
	return s.cfg.Model.Chat == ChatTemplate && s.cfg.Template.TaggedToolCalls() && len(body.Tools) > 0 &&
		string(bytes.TrimSpace(body.ToolChoice)) != `"none"`
}

// taggedOutput parses a template model's output into content and the tool
// calls it writes between <tool_call> tags, applying the request's stop
// strings to the content.
type taggedOutput struct {
	parser chat.ToolCallParser
	stops  *engine.StopMatcher
	calls  int
}

func (o *taggedOutput) token(tok engine.Token) ([]delta, bool) {
	return o.deltas(o.parser.Push(tok.Text))
}

func (o *taggedOutput) finish() []delta {
	out, _ := o.deltas(o.parser.Flush())
	if text := o.stops.Flush(); text != "" {
		out = append(out, delta{kind: deltaContent, text: text})
	}
	return out
}

func (o *taggedOutput) deltas(parsed []chat.Output) ([]delta, bool) {
	var out []delta
	for _, p := range parsed {
		if p.Call != nil {
			out = append(out, delta{kind: deltaToolStart, toolIndex: o.calls, toolName: p.Call.Name},
				delta{kind: deltaToolArgs, toolIndex: o.calls, text: p.Call.Arguments})
			o.calls++
			continue
		}
		text, hit := o.stops.Push(p.Content)
		if text != "" {
			out = append(out, delta{kind: deltaContent, text: text})
		}
		if hit {
			return out, true
		}
	}
	return out, false
}

func (o *taggedOutput) toolCalls() int { return o.calls }
