package harmony

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// renderTools renders function tools as the TypeScript-like `functions`
// namespace of the developer message.
func renderTools(tools []Tool) (string, error) {
	var b strings.Builder
	b.WriteString("namespace functions {\n\n")
	for _, t := range tools {
		if err := CheckName(t.Name); err != nil {
			return "", fmt.Errorf("harmony: tool name %q: %w", t.Name, err)
		}
		writeComment(&b, t.Description)
		var schema *jsonNode
		if len(bytes.TrimSpace(t.Parameters)) > 0 {
			var err error
			if schema, err = parseJSON(t.Parameters); err != nil {
				return "", fmt.Errorf("harmony: tool %s: parameters: %w", t.Name, err)
			}
		}
		if props := schema.get("properties"); props == nil || len(props.keys) == 0 {
			fmt.Fprintf(&b, "type %s = () => any;\n\n", t.Name)
		} else {
			fmt.Fprintf(&b, "type %s = (_: %s) => any;\n\n", t.Name, objectType(schema))
		}
	}
	b.WriteString("} // namespace functions")
	return b.String(), nil
}

// writeComment writes text as // lines, one per line of text.
func writeComment(b *strings.Builder, text string) {
	if text == "" {
		return
	}
	for line := range strings.SplitSeq(text, "\n") {
		b.WriteString("// " + line + "\n")
	}
}

// objectType renders an object schema with properties as a type literal:
// one line per property, its description as a comment above it, `?` when
// it is not required, and its default as a trailing comment.
func objectType(schema *jsonNode) string {
	required := map[string]bool{}
	if r := schema.get("required"); r != nil {
		for _, item := range r.items {
			required[item.str] = true
		}
	}
	var b strings.Builder
	b.WriteString("{\n")
	props := schema.get("properties")
	for i, name := range props.keys {
		prop := props.vals[i]
		if d := prop.get("description"); d != nil && d.kind == 's' {
			writeComment(&b, d.str)
		}
		b.WriteString(name)
		if !required[name] {
			b.WriteString("?")
		}
		b.WriteString(": " + tsType(prop) + ",")
		if d := prop.get("default"); d != nil {
			b.WriteString(" // default: " + d.plain())
		}
		b.WriteString("\n")
	}
	b.WriteString("}")
	return b.String()
}

// tsType renders a JSON Schema as a TypeScript type.
func tsType(s *jsonNode) string {
	if s == nil || s.kind != 'o' {
		return "any"
	}
	if e := s.get("enum"); e != nil && len(e.items) > 0 {
		var alts []string
		for _, v := range e.items {
			alts = append(alts, v.literal())
		}
		return strings.Join(alts, " | ")
	}
	for _, key := range []string{"oneOf", "anyOf"} {
		if u := s.get(key); u != nil && len(u.items) > 0 {
			var alts []string
			for _, v := range u.items {
				alts = append(alts, tsType(v))
			}
			return strings.Join(alts, " | ")
		}
	}
	t := s.get("type")
	if t == nil {
		return "any"
	}
	if t.kind == 'a' {
		var alts []string
		for _, v := range t.items {
			alts = append(alts, namedType(s, v.str))
		}
		return strings.Join(alts, " | ")
	}
	return namedType(s, t.str)
}

// namedType renders schema s as its JSON Schema type name.
func namedType(s *jsonNode, name string) string {
	switch name {
	case "string", "boolean", "null":
		return name
	case "number", "integer":
		return "number"
	case "array":
		item := tsType(s.get("items"))
		if strings.Contains(item, " | ") {
			item = "(" + item + ")"
		}
		return item + "[]"
	case "object":
		if p := s.get("properties"); p != nil && len(p.keys) > 0 {
			return objectType(s)
		}
		return "object"
	}
	return "any"
}

// jsonNode is a parsed JSON value that keeps the order of object keys,
// which the rendered tool definitions must follow.
type jsonNode struct {
	kind  byte // 'o' object, 'a' array, 's' string, 'n' number, 'b' boolean, 'z' null
	keys  []string
	vals  []*jsonNode
	items []*jsonNode
	str   string // string value, or the literal of a number or boolean
}

// get returns the value of key in an object, or nil.
func (n *jsonNode) get(key string) *jsonNode {
	if n == nil || n.kind != 'o' {
		return nil
	}
	for i, k := range n.keys {
		if k == key {
			return n.vals[i]
		}
	}
	return nil
}

// literal renders a scalar as a TypeScript literal type.
func (n *jsonNode) literal() string {
	switch n.kind {
	case 's':
		q, _ := json.Marshal(n.str)
		return string(q)
	case 'z':
		return "null"
	case 'n', 'b':
		return n.str
	}
	return "any"
}

// plain renders a value for a comment: strings without quotes.
func (n *jsonNode) plain() string {
	if n.kind == 's' {
		return n.str
	}
	if n.kind == 'n' || n.kind == 'b' || n.kind == 'z' {
		return n.literal()
	}
	return "..."
}

// parseJSON parses one JSON value.
func parseJSON(data []byte) (*jsonNode, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	n, err := parseValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON value")
	}
	return n, nil
}

// maxDepth bounds nesting so hostile input cannot exhaust the stack.
const maxDepth = 64

func parseValue(dec *json.Decoder, depth int) (*jsonNode, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nesting deeper than %d", maxDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch v := tok.(type) {
	case json.Delim:
		switch v {
		case '{':
			n := &jsonNode{kind: 'o'}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				val, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				n.keys = append(n.keys, kt.(string))
				n.vals = append(n.vals, val)
			}
			_, err := dec.Token() // '}'
			return n, err
		case '[':
			n := &jsonNode{kind: 'a'}
			for dec.More() {
				val, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				n.items = append(n.items, val)
			}
			_, err := dec.Token() // ']'
			return n, err
		}
		return nil, fmt.Errorf("unexpected %v", v)
	case string:
		return &jsonNode{kind: 's', str: v}, nil
	case json.Number:
		return &jsonNode{kind: 'n', str: v.String()}, nil
	case bool:
		return &jsonNode{kind: 'b', str: fmt.Sprint(v)}, nil
	case nil:
		return &jsonNode{kind: 'z'}, nil
	}
	return nil, fmt.Errorf("unexpected token %v", tok)
}
