// Package harmony renders chat conversations into the harmony prompt format
// of the gpt-oss models and parses the models' harmony output as it streams.
// The format is specified in openai/harmony docs/format.md.
package harmony

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// The special tokens of the format.
const (
	TokenStart     = "<|start|>"
	TokenEnd       = "<|end|>"
	TokenMessage   = "<|message|>"
	TokenChannel   = "<|channel|>"
	TokenConstrain = "<|constrain|>"
	TokenReturn    = "<|return|>"
	TokenCall      = "<|call|>"
)

// SpecialTokens lists every special token the renderer and parser use.
var SpecialTokens = []string{TokenStart, TokenEnd, TokenMessage, TokenChannel, TokenConstrain, TokenReturn, TokenCall}

// Piece is one part of a rendered prompt: either one special token
// (Special set) or text to be tokenized as ordinary text.
type Piece struct {
	Special string
	Text    string
}

// Prompt is a rendered conversation. Keeping special tokens apart from text
// means that user text that looks like a special token stays text.
type Prompt []Piece

// String renders the prompt with special tokens written as their text, the
// way the harmony docs show prompts.
func (p Prompt) String() string {
	var b strings.Builder
	for _, piece := range p {
		b.WriteString(piece.Special)
		b.WriteString(piece.Text)
	}
	return b.String()
}

// Encoder turns prompt pieces into token ids.
type Encoder interface {
	// Encode tokenizes ordinary text (special-token text stays text).
	Encode(text string) []int32
	// TokenID returns the id of a special token.
	TokenID(name string) (int32, bool)
}

// Tokens tokenizes the prompt, inserting special tokens by id.
func (p Prompt) Tokens(enc Encoder) ([]int32, error) {
	var ids []int32
	for _, piece := range p {
		if piece.Special == "" {
			ids = append(ids, enc.Encode(piece.Text)...)
			continue
		}
		id, ok := enc.TokenID(piece.Special)
		if !ok {
			return nil, fmt.Errorf("harmony: the tokenizer has no %s token", piece.Special)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// Tool is a function the model may call.
type Tool struct {
	Name        string
	Description string
	// Parameters is the JSON Schema of the single argument object (may be empty).
	Parameters json.RawMessage
}

// ToolCall is a call the assistant made.
type ToolCall struct {
	Name      string
	Arguments string // JSON text
}

// Message is one turn of the conversation.
type Message struct {
	// Role is "user", "assistant" or "tool".
	Role    string
	Content string
	// Reasoning is the assistant's analysis before its tool calls. It is
	// rendered only for the tool calls of the turn under way (after the
	// last final answer): chain of thought of turns that ended in a final
	// answer is dropped, as the format asks.
	Reasoning string
	// ToolCalls are the assistant's calls, rendered after its content.
	ToolCalls []ToolCall
	// ToolName is the function whose output a tool message carries.
	ToolName string
}

// Conversation is what Render needs.
type Conversation struct {
	// ReasoningEffort is "low", "medium" or "high" (empty: medium).
	ReasoningEffort string
	// Date is the current date written in the system message (zero:
	// no date line, as harmony's renderer leaves it out without one).
	Date time.Time
	// Instructions become the developer message (the "system prompt").
	Instructions string
	Tools        []Tool
	// Format, when set, is the structured output asked for, described at
	// the end of the developer message (the model is told; constrained
	// decoding enforces it).
	Format   *Format
	Messages []Message
}

// Format is a response format: a named JSON schema.
type Format struct {
	Name, Description string
	Schema            json.RawMessage
}

// Model identity and knowledge cutoff of the system message, as the format
// prescribes for gpt-oss.
const (
	identity        = "You are ChatGPT, a large language model trained by OpenAI."
	knowledgeCutoff = "2024-06"
)

// Render renders c for completion: the prompt ends with <|start|>assistant.
func Render(c Conversation) (Prompt, error) {
	effort := c.ReasoningEffort
	switch effort {
	case "":
		effort = "medium"
	case "low", "medium", "high":
	default:
		return nil, fmt.Errorf("harmony: reasoning effort %q is not low, medium or high", effort)
	}
	var p Prompt
	var err error
	msg := func(h header, content, end string) {
		if err == nil {
			if p, err = h.render(p); err == nil {
				p = append(p, Piece{Special: TokenMessage}, Piece{Text: content}, Piece{Special: end})
			}
		}
	}

	system := identity + "\nKnowledge cutoff: " + knowledgeCutoff
	if !c.Date.IsZero() {
		system += "\nCurrent date: " + c.Date.Format("2006-01-02")
	}
	system += "\n\nReasoning: " + effort +
		"\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message."
	if len(c.Tools) > 0 {
		system += "\nCalls to these tools must go to the commentary channel: 'functions'."
	}
	msg(header{role: "system"}, system, TokenEnd)

	var dev []string
	if c.Instructions != "" {
		dev = append(dev, "# Instructions\n\n"+c.Instructions)
	}
	if len(c.Tools) > 0 {
		ns, err := renderTools(c.Tools)
		if err != nil {
			return nil, err
		}
		dev = append(dev, "# Tools\n\n## functions\n\n"+ns)
	}
	if f := c.Format; f != nil {
		var schema bytes.Buffer
		if err := json.Compact(&schema, f.Schema); err != nil {
			return nil, fmt.Errorf("harmony: response format schema: %w", err)
		}
		section := "# Response Formats\n\n## " + f.Name + "\n\n"
		if f.Description != "" {
			section += "// " + strings.ReplaceAll(f.Description, "\n", " ") + "\n"
		}
		dev = append(dev, section+schema.String())
	}
	if len(dev) > 0 {
		msg(header{role: "developer"}, strings.Join(dev, "\n\n"), TokenEnd)
	}

	// A turn that ended in a final answer drops its chain of thought, the
	// analysis before its tool calls included: only the analysis of tool
	// calls after the last final answer (the turn under way) is sent back.
	lastFinal := -1
	for i, m := range c.Messages {
		if m.Role == "assistant" && len(m.ToolCalls) == 0 {
			lastFinal = i
		}
	}
	for i, m := range c.Messages {
		switch m.Role {
		case "user":
			msg(header{role: "user"}, m.Content, TokenEnd)
		case "assistant":
			if len(m.ToolCalls) > 0 && m.Reasoning != "" && i > lastFinal {
				msg(header{role: "assistant", channel: "analysis"}, m.Reasoning, TokenEnd)
			}
			if m.Content != "" || len(m.ToolCalls) == 0 {
				channel := "final"
				if len(m.ToolCalls) > 0 {
					channel = "commentary" // a preamble to the calls
				}
				msg(header{role: "assistant", channel: channel}, m.Content, TokenEnd)
			}
			for _, tc := range m.ToolCalls {
				msg(header{role: "assistant", channel: "commentary", recipient: "functions." + tc.Name, contentType: "json"}, tc.Arguments, TokenCall)
			}
		case "tool":
			if m.ToolName == "" {
				return nil, fmt.Errorf("harmony: message %d: tool message without a function name", i)
			}
			msg(header{role: "functions." + m.ToolName, recipientInRole: true, recipient: "assistant", channel: "commentary"}, m.Content, TokenEnd)
		default:
			return nil, fmt.Errorf("harmony: message %d: role %q is not user, assistant or tool", i, m.Role)
		}
		if err != nil {
			return nil, fmt.Errorf("harmony: message %d: %w", i, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("harmony: %w", err)
	}
	return append(p, Piece{Special: TokenStart}, Piece{Text: "assistant"}), nil
}

// header is the part of a message between <|start|> and <|message|>: the
// role, then optionally <|channel|> and the channel, the recipient
// (" to=..." after the channel, or after the role in a tool's answer), and
// <|constrain|> and the content type.
type header struct {
	role, channel, recipient, contentType string
	recipientInRole                       bool
}

// render appends the header's pieces to p. Each field must be a dotted
// name (see CheckName): names from a request cannot end the header early,
// add a special token or another " to=" to it.
func (h header) render(p Prompt) (Prompt, error) {
	for _, f := range []struct{ what, value string }{
		{"role", h.role}, {"channel", h.channel}, {"recipient", h.recipient}, {"content type", h.contentType},
	} {
		if f.value == "" && f.what != "role" {
			continue
		}
		for part := range strings.SplitSeq(f.value, ".") {
			if err := CheckName(part); err != nil {
				return nil, fmt.Errorf("%s %q: %w", f.what, f.value, err)
			}
		}
	}
	role := h.role
	if h.recipient != "" && h.recipientInRole {
		role += " to=" + h.recipient
	}
	p = append(p, Piece{Special: TokenStart}, Piece{Text: role})
	if h.channel == "" {
		return p, nil
	}
	channel := h.channel
	if h.recipient != "" && !h.recipientInRole {
		channel += " to=" + h.recipient
	}
	if h.contentType == "" {
		return append(p, Piece{Special: TokenChannel}, Piece{Text: channel}), nil
	}
	return append(p, Piece{Special: TokenChannel}, Piece{Text: channel + " "}, Piece{Special: TokenConstrain}, Piece{Text: h.contentType}), nil
}

// maxName is the longest name CheckName accepts, OpenAI's limit for
// function names.
const maxName = 64

// CheckName checks a name that goes into a message header or the tools
// namespace: a function name, a namespace, a channel, a content type. It
// must be 1 to 64 ASCII letters, digits, '_' or '-', so that it can hold no
// special token, space, '=' or '.' that would change the header's structure.
// Every such string of a request passes this one check.
func CheckName(name string) error {
	for _, sp := range SpecialTokens {
		if strings.Contains(name, sp) {
			return fmt.Errorf("contains the harmony control token %s; a name must be 1-%d letters, digits, '_' or '-'", sp, maxName)
		}
	}
	if name == "" || len(name) > maxName || strings.ContainsFunc(name, func(r rune) bool {
		return !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	}) {
		return fmt.Errorf("a name must be 1-%d letters, digits, '_' or '-'", maxName)
	}
	return nil
}
