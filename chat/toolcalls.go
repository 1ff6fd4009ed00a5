package chat

import (
	"bytes"
	"encoding/json"
	"strings"
)

// Tool calls in model output. Templates that lay an assistant's tool calls
// out between <tool_call> and </tool_call> tags, a JSON object of "name"
// and "arguments" inside (Qwen2.5's and the Hermes format), teach the model
// to write them so; ToolCallParser turns such output back into calls.

const (
	toolCallOpen  = "<tool_call>"
	toolCallClose = "</tool_call>"
)

// TaggedToolCalls reports whether the template writes tool calls between
// <tool_call> tags, so that the model's output is to be parsed for them.
func (t *Template) TaggedToolCalls() bool { return t.tagged }

// Output is one piece of parsed model output: content text, or a call.
type Output struct {
	Content string
	Call    *Call
}

// Call is one tool call the model wrote.
type Call struct {
	Name string
	// Arguments is the call's arguments as JSON text.
	Arguments string
}

// ToolCallParser splits streamed model output into content and tool
// calls. Text that might start a tag is held back until it is known; a tag
// whose inside is not a call's JSON passes through as content, so no
// output is lost. Whitespace between calls, and after the last, is
// dropped, as other servers do.
type ToolCallParser struct {
	pending string // held-back text: a possible tag start, or whitespace after a call
	inCall  bool
	call    strings.Builder
	// str and esc follow the call's JSON: inside a string, and after a
	// backslash in one. A closing tag inside a string is the string's text
	// (a model may well write "</tool_call>" in an argument), not the end.
	str, esc bool
	// afterCall: nothing but whitespace has come since the last call.
	afterCall bool
}

// Push parses the next piece of output.
func (p *ToolCallParser) Push(text string) []Output {
	var out []Output
	s := p.pending + text
	p.pending = ""
	for s != "" {
		if p.inCall {
			i := p.callEnd(s)
			if i < 0 {
				keep := partialSuffix(s, toolCallClose)
				p.write(s[:len(s)-keep])
				p.pending = s[len(s)-keep:]
				return out
			}
			p.write(s[:i])
			out = append(out, p.finishCall(true))
			p.inCall = false
			s = s[i+len(toolCallClose):]
			continue
		}
		i := strings.Index(s, toolCallOpen)
		if i < 0 {
			keep := partialSuffix(s, toolCallOpen)
			out = p.content(out, s[:len(s)-keep])
			p.pending += s[len(s)-keep:]
			return out
		}
		out = p.content(out, s[:i])
		p.pending = "" // whitespace before a call is dropped
		p.inCall = true
		s = s[i+len(toolCallOpen):]
	}
	return out
}

// callEnd is the index in s of the first closing tag outside the call's
// JSON strings, or -1.
func (p *ToolCallParser) callEnd(s string) int {
	str, esc := p.str, p.esc
	for k := 0; k < len(s); k++ {
		if !str && strings.HasPrefix(s[k:], toolCallClose) {
			return k
		}
		str, esc = jsonStringStep(str, esc, s[k])
	}
	return -1
}

// write appends text to the call, following its JSON strings.
func (p *ToolCallParser) write(text string) {
	p.call.WriteString(text)
	for k := 0; k < len(text); k++ {
		p.str, p.esc = jsonStringStep(p.str, p.esc, text[k])
	}
}

// jsonStringStep is the (inside a string, after a backslash) state of JSON
// text after byte c.
func jsonStringStep(str, esc bool, c byte) (bool, bool) {
	switch {
	case esc:
		return true, false
	case str && c == '\\':
		return true, true
	case c == '"':
		return !str, false
	}
	return str, false
}

// content appends text as content, except whitespace after a call, which
// waits in pending for what follows.
func (p *ToolCallParser) content(out []Output, text string) []Output {
	if text == "" {
		return out
	}
	if p.afterCall && strings.TrimSpace(p.pending+text) == "" {
		p.pending += text
		return out
	}
	text, p.pending, p.afterCall = p.pending+text, "", false
	return append(out, Output{Content: text})
}

// finishCall parses the text between the tags: a call, or, when it is not
// one, the tagged text as content.
func (p *ToolCallParser) finishCall(closed bool) Output {
	body := p.call.String()
	p.call.Reset()
	p.str, p.esc = false, false
	var c struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	}
	if json.Unmarshal([]byte(body), &c) != nil || c.Name == "" {
		text := toolCallOpen + body
		if closed {
			text += toolCallClose
		}
		return Output{Content: text}
	}
	args := string(bytes.TrimSpace(c.Arguments))
	if args == "" || args == "null" {
		args = "{}"
	}
	var compact bytes.Buffer
	if json.Compact(&compact, []byte(args)) == nil {
		args = compact.String()
	}
	p.afterCall = true
	return Output{Call: &Call{Name: c.Name, Arguments: args}}
}

// Flush returns what is held back when the output ends: a tag start that
// never completed, or an unclosed call, as content (a call whose closing
// tag the end of generation cut off still parses as a call).
func (p *ToolCallParser) Flush() []Output {
	var out []Output
	if p.inCall {
		p.call.WriteString(p.pending)
		p.pending, p.inCall = "", false
		out = append(out, p.finishCall(false))
	}
	if p.pending != "" && strings.TrimSpace(p.pending) != "" {
		out = append(out, Output{Content: p.pending})
	}
	p.pending = ""
	return out
}

// partialSuffix is the length of the longest suffix of s that is a proper
// prefix of tag.
func partialSuffix(s, tag string) int {
	for n := min(len(s), len(tag)-1); n > 0; n-- {
		if strings.HasSuffix(s, tag[:n]) {
			return n
		}
	}
	return 0
}
