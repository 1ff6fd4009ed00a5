package harmony

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"orcd/internal/jsonorder"
)

// ParametersError is a tool whose parameters schema cannot be rendered.
type ParametersError struct {
	Tool int    // the tool's index in Conversation.Tools
	Name string // its name
	Err  error
}

func (e *ParametersError) Error() string {
	return fmt.Sprintf("harmony: tool %s: parameters: %v", e.Name, e.Err)
}

func (e *ParametersError) Unwrap() error { return e.Err }

// renderTools renders function tools as the TypeScript-like `functions`
// namespace of the developer message.
func renderTools(tools []Tool) (string, error) {
	var b strings.Builder
	b.WriteString("namespace functions {\n\n")
	for i, t := range tools {
		if err := CheckName(t.Name); err != nil {
			return "", fmt.Errorf("harmony: tool name %q: %w", t.Name, err)
		}
		writeComment(&b, "", t.Description)
		var schema *jsonNode
		if len(bytes.TrimSpace(t.Parameters)) > 0 {
			var err error
			if schema, err = parseJSON(t.Parameters); err != nil {
				return "", &ParametersError{Tool: i, Name: t.Name, Err: err}
			}
		}
		if props := schema.get("properties"); props == nil || len(props.keys) == 0 {
			fmt.Fprintf(&b, "type %s = () => any;\n\n", t.Name)
		} else {
			fmt.Fprintf(&b, "type %s = (_: %s) => any;\n\n", t.Name, objectType(schema, ""))
		}
	}
	b.WriteString("} // namespace functions")
	return b.String(), nil
}

// writeComment writes text as // lines, one per line of text, each
// after indent.
func writeComment(b *strings.Builder, indent, text string) {
	if text == "" {
		return
	}
	for line := range strings.SplitSeq(text, "\n") {
		b.WriteString(indent + "// " + line + "\n")
	}
}

// The rendering of schemas follows openai/harmony's renderer (its
// test_render_functions_with_parameters is a test here): an object's
// description above its brace, a property's title, description and
// examples as comments above it, its default as a comment after it
// (strings quoted unless the property is an enum), nullable as "| null",
// oneOf as one alternative per line, nested properties indented by four
// spaces and alternatives by three. Where that renderer has no rule (anyOf,
// null, an object without properties) or writes invalid TypeScript (an
// array of a union), these are rendered as TypeScript would have them.

// objectType renders an object schema with properties as a type literal,
// its lines after indent.
func objectType(schema *jsonNode, indent string) string {
	required := map[string]bool{}
	if r := schema.get("required"); r != nil {
		for _, item := range r.items {
			required[item.str] = true
		}
	}
	var b strings.Builder
	if d := schema.get("description"); d != nil && d.kind == 's' {
		writeComment(&b, indent, d.str)
	}
	b.WriteString("{\n")
	props := schema.get("properties")
	for i, name := range props.keys {
		prop := props.vals[i]
		opt := "?"
		if required[name] {
			opt = ""
		}
		if t := prop.get("title"); t != nil && t.kind == 's' {
			writeComment(&b, indent, t.str)
			b.WriteString(indent + "//\n")
		}
		desc := ""
		if d := prop.get("description"); d != nil && d.kind == 's' {
			desc = d.str
		}
		oneOf := prop.get("oneOf")
		if oneOf == nil || oneOf.kind != 'a' {
			writeComment(&b, indent, desc)
		}
		if ex := prop.get("examples"); ex != nil && len(ex.items) > 0 {
			b.WriteString(indent + "// Examples:\n")
			for _, e := range ex.items {
				if e.kind == 's' {
					b.WriteString(indent + "// - \"" + e.str + "\"\n")
				}
			}
		}
		if oneOf != nil && oneOf.kind == 'a' {
			// The property's description goes above it unless the first
			// alternative repeats it.
			above := desc != "" && (len(oneOf.items) == 0 || oneOf.items[0].description() != desc)
			if above {
				writeComment(&b, indent, desc)
			}
			if c := defaultComment(prop); c != "" {
				b.WriteString(indent + "// " + c + "\n")
			}
			b.WriteString(indent + name + opt + ":\n")
			for j, v := range oneOf.items {
				b.WriteString(indent + " | " + nullable(v, tsType(v, indent+"   ")))
				var notes []string
				if d := v.description(); d != "" && d != desc && !(j == 0 && above) {
					notes = append(notes, d)
				}
				if c := defaultComment(v); c != "" {
					notes = append(notes, c)
				}
				if len(notes) > 0 {
					b.WriteString(" // " + strings.Join(notes, " "))
				}
				b.WriteString("\n")
			}
			b.WriteString(indent + ",\n")
			continue
		}
		b.WriteString(indent + name + opt + ": " + nullable(prop, tsType(prop, indent+"    ")) + ",")
		if c := defaultComment(prop); c != "" {
			b.WriteString(" // " + c)
		}
		b.WriteString("\n")
	}
	b.WriteString(indent + "}")
	return b.String()
}

// nullable adds "| null" to the type of a schema marked nullable.
func nullable(s *jsonNode, t string) string {
	if n := s.get("nullable"); n != nil && n.kind == 'b' && n.str == "true" && !strings.Contains(t, "null") {
		return t + " | null"
	}
	return t
}

// defaultComment is the comment of a schema's default ("default: ..."),
// or "". A string is quoted unless the schema is an enum.
func defaultComment(s *jsonNode) string {
	d := s.get("default")
	if d == nil {
		return ""
	}
	if d.kind == 's' {
		if e := s.get("enum"); e != nil && len(e.items) > 0 {
			return "default: " + d.str
		}
		return `default: "` + d.str + `"`
	}
	return "default: " + d.compact()
}

// description is a schema's description, or "".
func (n *jsonNode) description() string {
	if d := n.get("description"); d != nil && d.kind == 's' {
		return d.str
	}
	return ""
}

// tsType renders a JSON Schema as a TypeScript type; nested lines come
// after indent.
func tsType(s *jsonNode, indent string) string {
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
	if u := s.get("oneOf"); u != nil && len(u.items) > 0 {
		var b strings.Builder
		for _, v := range u.items {
			b.WriteString("\n" + indent + " | " + nullable(v, tsType(v, indent+"   ")))
			var notes []string
			if d := v.description(); d != "" {
				notes = append(notes, d)
			}
			if c := defaultComment(v); c != "" {
				notes = append(notes, c)
			}
			if len(notes) > 0 {
				b.WriteString(" // " + strings.Join(notes, " "))
			}
		}
		return b.String()
	}
	if u := s.get("anyOf"); u != nil && len(u.items) > 0 {
		var alts []string
		for _, v := range u.items {
			alts = append(alts, tsType(v, indent))
		}
		return strings.Join(alts, " | ")
	}
	t := s.get("type")
	if t == nil {
		return "any"
	}
	if t.kind == 'a' {
		var alts []string
		for _, v := range t.items {
			alts = append(alts, namedType(s, v.str, indent))
		}
		return strings.Join(alts, " | ")
	}
	return namedType(s, t.str, indent)
}

// namedType renders schema s as its JSON Schema type name.
func namedType(s *jsonNode, name, indent string) string {
	switch name {
	case "string", "boolean", "null":
		return name
	case "number", "integer":
		return "number"
	case "array":
		items := s.get("items")
		if items == nil {
			return "Array<any>"
		}
		item := tsType(items, indent)
		if strings.Contains(item, " | ") {
			item = "(" + item + ")"
		}
		return item + "[]"
	case "object":
		if p := s.get("properties"); p != nil && len(p.keys) > 0 {
			return objectType(s, indent)
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

// compact renders a value as compact JSON, keys in their order.
func (n *jsonNode) compact() string {
	switch n.kind {
	case 'o':
		parts := make([]string, len(n.keys))
		for i, k := range n.keys {
			q, _ := json.Marshal(k)
			parts[i] = string(q) + ":" + n.vals[i].compact()
		}
		return "{" + strings.Join(parts, ",") + "}"
	case 'a':
		parts := make([]string, len(n.items))
		for i, v := range n.items {
			parts[i] = v.compact()
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	return n.literal()
}

// parseJSON parses one JSON value into a tree that keeps the order of
// object keys.
func parseJSON(data []byte) (*jsonNode, error) {
	v, err := jsonorder.Parse(data, maxDepth)
	if err != nil {
		return nil, err
	}
	return nodeOf(v), nil
}

// maxDepth bounds nesting so hostile input cannot exhaust the stack.
const maxDepth = 64

// nodeOf converts a value of jsonorder.Parse.
func nodeOf(v any) *jsonNode {
	switch v := v.(type) {
	case *jsonorder.Object:
		n := &jsonNode{kind: 'o', keys: v.Keys}
		for _, x := range v.Vals {
			n.vals = append(n.vals, nodeOf(x))
		}
		return n
	case []any:
		n := &jsonNode{kind: 'a'}
		for _, x := range v {
			n.items = append(n.items, nodeOf(x))
		}
		return n
	case string:
		return &jsonNode{kind: 's', str: v}
	case json.Number:
		return &jsonNode{kind: 'n', str: v.String()}
	case bool:
		return &jsonNode{kind: 'b', str: fmt.Sprint(v)}
	}
	return &jsonNode{kind: 'z'}
}
