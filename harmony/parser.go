package harmony

import "strings"

// EventKind says what part of the answer an Event carries.
type EventKind int

// The kinds of parser events.
const (
	// Reasoning is text of the analysis channel (chain of thought), or of
	// a channel the format does not define.
	Reasoning EventKind = iota
	// Content is text meant for the user: the final channel, or a
	// commentary message without a recipient (a preamble).
	Content
	// ToolCallStart opens a tool call: ToolName is set.
	ToolCallStart
	// ToolCallArgs is a piece of the open tool call's arguments.
	ToolCallArgs
)

// Event is one piece of parsed output.
type Event struct {
	Kind EventKind
	Text string
	// ToolName is the called function (without "functions.") and ToolIndex
	// counts the calls from 0; both are set on ToolCallStart and ToolCallArgs.
	ToolName  string
	ToolIndex int
}

type parserState int

const (
	inHeader  parserState = iota // between <|start|> and <|message|>
	inContent                    // between <|message|> and <|end|>, <|call|> or <|return|>
	between                      // after <|end|>, waiting for <|start|>
	finished                     // after <|call|> or <|return|>
)

// maxHeader bounds the header text kept, so that output that never reaches
// <|message|> cannot grow memory without bound.
const maxHeader = 1024

// Parser splits streamed assistant output into reasoning, content and tool
// calls. Feed it special tokens with Special and the text between them
// with Text, in order; text may arrive in pieces of any size. Special tokens
// never appear in the events.
type Parser struct {
	state     parserState
	header    strings.Builder // header text, with <|channel|> and <|constrain|> kept as markers
	kind      EventKind       // where content text goes
	toolName  string
	toolCalls int
	stop      string // the special token that finished the output
}

// NewParser returns a parser for output that follows a prompt ending in
// <|start|>assistant, so the first message's role is already known.
func NewParser() *Parser {
	p := &Parser{}
	p.header.WriteString("assistant")
	return p
}

// Special feeds one special token (e.g. "<|channel|>").
func (p *Parser) Special(tok string) []Event {
	switch p.state {
	case inHeader:
		switch tok {
		case TokenChannel, TokenConstrain:
			p.writeHeader(tok)
		case TokenMessage:
			return p.openMessage()
		case TokenStart: // a restarted header: forget the partial one
			p.header.Reset()
		case TokenReturn, TokenCall:
			p.finish(tok)
		}
	case inContent:
		switch tok {
		case TokenEnd:
			p.state = between
		case TokenReturn, TokenCall:
			p.finish(tok)
		}
	case between:
		switch tok {
		case TokenStart:
			p.state = inHeader
			p.header.Reset()
		case TokenChannel:
			// A header whose <|start|>assistant the model left out.
			p.state = inHeader
			p.header.Reset()
			p.header.WriteString("assistant")
			p.writeHeader(tok)
		case TokenReturn, TokenCall:
			p.finish(tok)
		}
	}
	return nil
}

// Text feeds ordinary text.
func (p *Parser) Text(s string) []Event {
	switch p.state {
	case inHeader:
		p.writeHeader(s)
	case inContent:
		if s != "" {
			ev := Event{Kind: p.kind, Text: s}
			if p.kind == ToolCallArgs {
				ev.ToolName, ev.ToolIndex = p.toolName, p.toolCalls-1
			}
			return []Event{ev}
		}
	}
	// Text between messages or after the end is not part of any message.
	return nil
}

// Stop returns the special token that ended the output (<|return|> or
// <|call|>), or "" if the output has not ended.
func (p *Parser) Stop() string { return p.stop }

// InContent reports whether text fed now would be Content: the parser is
// in the body of a message for the user.
func (p *Parser) InContent() bool { return p.state == inContent && p.kind == Content }

// ToolCalls is the number of tool calls seen.
func (p *Parser) ToolCalls() int { return p.toolCalls }

func (p *Parser) finish(tok string) {
	p.state = finished
	p.stop = tok
}

func (p *Parser) writeHeader(s string) {
	if p.header.Len()+len(s) <= maxHeader {
		p.header.WriteString(s)
	}
}

// openMessage parses the header and starts the message body. The
// recipient (to=...) may be in the role part or the channel part.
func (p *Parser) openMessage() []Event {
	h := p.header.String()
	p.header.Reset()
	p.state = inContent
	rolePart, rest, _ := strings.Cut(h, TokenChannel)
	// The channel part ends at <|constrain|>, or at a stray second
	// <|channel|>.
	channelPart, _, _ := strings.Cut(rest, TokenConstrain)
	channelPart, _, _ = strings.Cut(channelPart, TokenChannel)
	var channel, recipient string
	for _, f := range strings.Fields(rolePart) {
		if r, ok := strings.CutPrefix(f, "to="); ok {
			recipient = r
		}
	}
	for _, f := range strings.Fields(channelPart) {
		if r, ok := strings.CutPrefix(f, "to="); ok {
			recipient = r
		} else if channel == "" {
			channel = f
		}
	}
	switch {
	case recipient != "" && recipient != "assistant":
		p.kind = ToolCallArgs
		p.toolName = strings.TrimPrefix(recipient, "functions.")
		p.toolCalls++
		return []Event{{Kind: ToolCallStart, ToolName: p.toolName, ToolIndex: p.toolCalls - 1}}
	case channel == "" || channel == "final" || channel == "commentary":
		p.kind = Content
	default:
		// The analysis channel, or one the format does not define: not
		// for the user.
		p.kind = Reasoning
	}
	return nil
}
