// Package chat renders conversations with a model's own Jinja chat template
// (tokenizer_config.json's chat_template or GGUF tokenizer.chat_template),
// byte for byte as Hugging Face's apply_chat_template renders them.
//
// The Jinja engine is github.com/ardanlabs/jinja, written for chat
// templates: it applies HF's trim_blocks and lstrip_blocks, keeps dict
// order, and its tojson matches Python's json.dumps. One difference is
// handled here: tojson with indent (Llama 3's tool definitions) goes
// through Go's encoding/json in that version, which sorts keys and escapes
// <, > and &; templates are compiled with such calls routed to this
// package's Python-compatible encoder (see rewriteIndentedJSON).
package chat

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ardanlabs/jinja"
)

// Template is a compiled chat template. It is safe for concurrent use.
type Template struct {
	t        *jinja.Template
	bos, eos string
	tagged   bool // tool calls between <tool_call> tags (TaggedToolCalls)
}

// Compile compiles a chat template; bos and eos are the texts of the
// tokenizer's BOS and EOS tokens, which templates read as bos_token and
// eos_token ("" when the tokenizer has none).
func Compile(src, bos, eos string) (*Template, error) {
	t, err := jinja.Compile(rewriteIndentedJSON(src))
	if err != nil {
		return nil, fmt.Errorf("chat template: %w", err)
	}
	return &Template{t: t, bos: bos, eos: eos, tagged: strings.Contains(src, toolCallOpen)}, nil
}

// indentedJSON matches `EXPR | tojson(indent=N)` for a variable or
// attribute path EXPR, the form chat templates use.
var indentedJSON = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_.]*)\s*\|\s*tojson\(\s*indent\s*=\s*(\d+)\s*\)`)

// indentFunc is the name under which Render provides the encoder.
const indentFunc = "__orcd_tojson_indent"

// rewriteIndentedJSON routes tojson(indent=N) filters to indentFunc.
func rewriteIndentedJSON(src string) string {
	return indentedJSON.ReplaceAllString(src, indentFunc+"($1, $2)")
}

// Message is one message of a conversation, in the OpenAI API's shape.
type Message struct {
	Role    string
	Content string
	// ToolCalls are an assistant message's calls.
	ToolCalls []ToolCall
	// ToolCallID and Name identify a tool message's call.
	ToolCallID, Name string
}

// ToolCall is one function call of an assistant message.
type ToolCall struct {
	ID, Name string
	// Arguments is the call's JSON object. Templates read it as a mapping,
	// as HF's do; text that is not a JSON object is passed as a string.
	Arguments string
}

// Request is what a template renders.
type Request struct {
	Messages []Message
	// Tools are the request's tool definitions, each an OpenAI tool object
	// as JSON ({"type": "function", "function": {...}}), key order kept.
	Tools []json.RawMessage
	// AddGenerationPrompt ends the prompt with the assistant's turn header.
	AddGenerationPrompt bool
	// Now is the date some templates print (Llama 3's date_string).
	Now time.Time
}

// Render renders a conversation.
func (t *Template) Render(r Request) (string, error) {
	msgs := make([]jinja.Value, len(r.Messages))
	for i, m := range r.Messages {
		d := jinja.NewDict()
		md := d.AsDict()
		md.Set("role", jinja.NewString(m.Role))
		md.Set("content", jinja.NewString(m.Content))
		if len(m.ToolCalls) > 0 {
			calls := make([]jinja.Value, len(m.ToolCalls))
			for j, c := range m.ToolCalls {
				fn := jinja.NewDict()
				fn.AsDict().Set("name", jinja.NewString(c.Name))
				fn.AsDict().Set("arguments", arguments(c.Arguments))
				call := jinja.NewDict()
				if c.ID != "" {
					call.AsDict().Set("id", jinja.NewString(c.ID))
				}
				call.AsDict().Set("type", jinja.NewString("function"))
				call.AsDict().Set("function", fn)
				calls[j] = call
			}
			md.Set("tool_calls", jinja.NewList(calls))
		}
		if m.ToolCallID != "" {
			md.Set("tool_call_id", jinja.NewString(m.ToolCallID))
		}
		if m.Name != "" {
			md.Set("name", jinja.NewString(m.Name))
		}
		msgs[i] = d
	}
	data := map[string]jinja.Value{
		"messages":              jinja.NewList(msgs),
		"add_generation_prompt": jinja.NewBool(r.AddGenerationPrompt),
		"bos_token":             jinja.NewString(t.bos),
		"eos_token":             jinja.NewString(t.eos),
		indentFunc:              jinja.NewCallable(indentFunc, indentJSON),
	}
	if len(r.Tools) > 0 {
		tools := make([]jinja.Value, len(r.Tools))
		for i, raw := range r.Tools {
			v, err := FromJSON(raw)
			if err != nil {
				return "", fmt.Errorf("chat: tools[%d]: %w", i, err)
			}
			tools[i] = v
		}
		data["tools"] = jinja.NewList(tools)
	}
	if !r.Now.IsZero() {
		data["date_string"] = jinja.NewString(r.Now.Format("02 Jan 2006"))
		now := r.Now
		data["strftime_now"] = jinja.NewCallable("strftime_now", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
			if len(args) != 1 || !args[0].IsString() {
				return jinja.Undefined(), fmt.Errorf("strftime_now takes one format string")
			}
			return jinja.NewString(strftime(now, args[0].AsString())), nil
		})
	}
	out, err := t.t.RenderValues(data)
	if err != nil {
		return "", fmt.Errorf("chat template: %w", err)
	}
	return out, nil
}

// arguments is a tool call's arguments as templates expect them.
func arguments(s string) jinja.Value {
	if v, err := FromJSON(json.RawMessage(s)); err == nil && v.IsDict() {
		return v
	}
	return jinja.NewString(s)
}

// FromJSON converts JSON to a template value, keeping the order of object
// keys (tool schemas are printed in the order the client sent them).
func FromJSON(raw json.RawMessage) (jinja.Value, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := fromJSON(dec)
	if err != nil {
		return jinja.Undefined(), err
	}
	if dec.More() {
		return jinja.Undefined(), fmt.Errorf("data after the JSON value")
	}
	return v, nil
}

func fromJSON(dec *json.Decoder) (jinja.Value, error) {
	tok, err := dec.Token()
	if err != nil {
		return jinja.Undefined(), err
	}
	switch x := tok.(type) {
	case json.Delim:
		switch x {
		case '{':
			d := jinja.NewDict()
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return jinja.Undefined(), err
				}
				v, err := fromJSON(dec)
				if err != nil {
					return jinja.Undefined(), err
				}
				d.AsDict().Set(k.(string), v)
			}
			_, err := dec.Token()
			return d, err
		case '[':
			var items []jinja.Value
			for dec.More() {
				v, err := fromJSON(dec)
				if err != nil {
					return jinja.Undefined(), err
				}
				items = append(items, v)
			}
			_, err := dec.Token()
			return jinja.NewList(items), err
		}
	case string:
		return jinja.NewString(x), nil
	case json.Number:
		return jinja.FromGoValue(x), nil
	case bool:
		return jinja.NewBool(x), nil
	case nil:
		return jinja.None(), nil
	}
	return jinja.Undefined(), fmt.Errorf("unexpected JSON token %v", tok)
}

// indentJSON is tojson(value, indent) as Python's json.dumps(value,
// ensure_ascii=False, indent=indent) writes it.
func indentJSON(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
	if len(args) != 2 || !args[1].IsInt() {
		return jinja.Undefined(), fmt.Errorf("tojson: want a value and an indent")
	}
	var b strings.Builder
	if err := pyJSON(&b, args[0], strings.Repeat(" ", int(args[1].AsInt())), ""); err != nil {
		return jinja.Undefined(), err
	}
	return jinja.NewString(b.String()), nil
}

// pyJSON writes v as Python's json.dumps with an indent writes it: one item
// a line, ", " becoming ",\n", keys in their order, non-ASCII kept.
func pyJSON(b *strings.Builder, v jinja.Value, indent, at string) error {
	inner := at + indent
	switch {
	case v.IsDict():
		d := v.AsDict()
		if d.Len() == 0 {
			b.WriteString("{}")
			return nil
		}
		b.WriteString("{")
		for i, k := range d.OrderedKeys() {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString("\n" + inner)
			pyString(b, k)
			b.WriteString(": ")
			val, _ := d.Get(k)
			if err := pyJSON(b, val, indent, inner); err != nil {
				return err
			}
		}
		b.WriteString("\n" + at + "}")
	case v.IsList():
		l := v.AsList()
		if l.Len() == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteString("[")
		for i, item := range l.Items {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString("\n" + inner)
			if err := pyJSON(b, item, indent, inner); err != nil {
				return err
			}
		}
		b.WriteString("\n" + at + "]")
	case v.IsString():
		pyString(b, v.AsString())
	case v.IsBool():
		b.WriteString(strconv.FormatBool(v.AsBool()))
	case v.IsInt():
		b.WriteString(strconv.FormatInt(v.AsInt(), 10))
	case v.IsFloat():
		f := v.AsFloat()
		if math.IsInf(f, 0) || math.IsNaN(f) {
			return fmt.Errorf("tojson: %v is not JSON", f)
		}
		b.WriteString(pyFloat(f))
	case v.IsNone(), v.IsUndefined():
		b.WriteString("null")
	default:
		return fmt.Errorf("tojson: cannot encode %s", v.String())
	}
	return nil
}

// pyString writes s as a JSON string the way Python's json module does with
// ensure_ascii=False: only ", \ and control characters are escaped.
func pyString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			if r < 0x20 {
				fmt.Fprintf(b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}

// pyFloat formats f as Python's repr does: the shortest digits that read
// back, in scientific form below 1e-4 or from 1e16 on, else with a ".0" when
// whole.
func pyFloat(f float64) string {
	abs := math.Abs(f)
	if abs != 0 && (abs < 1e-4 || abs >= 1e16) {
		s := strconv.FormatFloat(f, 'e', -1, 64) // "1e-05" in Python; Go writes "1e-05" too
		return s
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

// strftime formats t with the C directives chat templates use.
func strftime(t time.Time, format string) string {
	r := strings.NewReplacer("%d", t.Format("02"), "%b", t.Format("Jan"), "%B", t.Format("January"),
		"%Y", t.Format("2006"), "%m", t.Format("01"), "%y", t.Format("06"), "%H", t.Format("15"),
		"%M", t.Format("04"), "%S", t.Format("05"), "%A", t.Format("Monday"), "%a", t.Format("Mon"), "%%", "%")
	return r.Replace(format)
}
