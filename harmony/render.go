// Package harmony renders chat conversations into the harmony prompt format
// of the gpt-oss models and parses the models' harmony output as it streams.
// The format is specified in openai/harmony docs/format.md.
package harmony

import (
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
	// rendered only for turns that call tools: chain of thought of turns
	// that ended in a final answer is dropped, as the format asks.
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
	// Date is the current date written in the system message.
	Date time.Time
	// Instructions become the developer message (the "system prompt").
	Instructions string
	Tools        []Tool
	Messages     []Message
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
	msg := func(header, content, end string) {
		p = append(p, Piece{Special: TokenStart})
		// A header is the role, then optionally <|channel|> and the channel
		// (with recipient), then optionally <|constrain|> and a type.
		role, rest, _ := strings.Cut(header, TokenChannel)
		p = append(p, Piece{Text: role})
		if rest != "" {
			channel, ctype, hasType := strings.Cut(rest, TokenConstrain)
			p = append(p, Piece{Special: TokenChannel}, Piece{Text: channel})
			if hasType {
				p = append(p, Piece{Special: TokenConstrain}, Piece{Text: ctype})
			}
		}
		p = append(p, Piece{Special: TokenMessage}, Piece{Text: content}, Piece{Special: end})
	}

	system := identity + "\nKnowledge cutoff: " + knowledgeCutoff +
		"\nCurrent date: " + c.Date.Format("2006-01-02") +
		"\n\nReasoning: " + effort +
		"\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message."
	if len(c.Tools) > 0 {
		system += "\nCalls to these tools must go to the commentary channel: 'functions'."
	}
	msg("system", system, TokenEnd)

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
	if len(dev) > 0 {
		msg("developer", strings.Join(dev, "\n\n"), TokenEnd)
	}

	for i, m := range c.Messages {
		switch m.Role {
		case "user":
			msg("user", m.Content, TokenEnd)
		case "assistant":
			if len(m.ToolCalls) > 0 && m.Reasoning != "" {
				msg("assistant"+TokenChannel+"analysis", m.Reasoning, TokenEnd)
			}
			if m.Content != "" || len(m.ToolCalls) == 0 {
				channel := "final"
				if len(m.ToolCalls) > 0 {
					channel = "commentary" // a preamble to the calls
				}
				msg("assistant"+TokenChannel+channel, m.Content, TokenEnd)
			}
			for _, tc := range m.ToolCalls {
				msg("assistant"+TokenChannel+"commentary to=functions."+tc.Name+" "+TokenConstrain+"json", tc.Arguments, TokenCall)
			}
		case "tool":
			if m.ToolName == "" {
				return nil, fmt.Errorf("harmony: message %d: tool message without a function name", i)
			}
			msg("functions."+m.ToolName+" to=assistant"+TokenChannel+"commentary", m.Content, TokenEnd)
		default:
			return nil, fmt.Errorf("harmony: message %d: role %q is not user, assistant or tool", i, m.Role)
		}
	}
	return append(p, Piece{Special: TokenStart}, Piece{Text: "assistant"}), nil
}
