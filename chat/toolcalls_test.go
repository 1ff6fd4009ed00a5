package chat

import (
	"reflect"
	"testing"
)

// parseAll feeds pieces to a parser and returns its outputs, adjacent
// content joined.
func parseAll(pieces ...string) []Output {
	var p ToolCallParser
	var all []Output
	for _, s := range pieces {
		all = append(all, p.Push(s)...)
	}
	all = append(all, p.Flush()...)
	var out []Output
	for _, o := range all {
		if n := len(out); n > 0 && o.Call == nil && out[n-1].Call == nil {
			out[n-1].Content += o.Content
			continue
		}
		out = append(out, o)
	}
	return out
}

func call(name, args string) Output { return Output{Call: &Call{Name: name, Arguments: args}} }

// TestToolCallParser checks the parser on outputs worked by hand: content
// alone, a call split across pieces anywhere (inside either tag too), two
// calls with whitespace between them and after, content before a call,
// a tag whose inside is not a call, a closing tag inside an argument's
// string (with an escaped quote before the second), a string never closed
// (all of it comes back as content), an unfinished tag start, and a call
// cut off before its closing tag.
func TestToolCallParser(t *testing.T) {
	weather := call("get_weather", `{"city":"Paris"}`)
	cases := []struct {
		name   string
		pieces []string
		want   []Output
	}{
		{"content", []string{"Hello", " there <b>"}, []Output{{Content: "Hello there <b>"}}},
		{"one call", []string{"<tool_call>", "\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n", "</tool_call>"}, []Output{weather}},
		{"split tags", []string{"<tool", "_call>\n{\"name\": \"get_weather\", \"argu", "ments\": {\"city\": \"Paris\"}}\n</tool_", "call>"}, []Output{weather}},
		{"two calls", []string{"<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n", "<tool_call>{\"name\": \"b\", \"arguments\": {\"x\": [1, 2]}}</tool_call>\n\n"},
			[]Output{call("a", "{}"), call("b", `{"x":[1,2]}`)}},
		{"content first", []string{"Let me check.\n<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>"},
			[]Output{{Content: "Let me check.\n"}, weather}},
		{"not a call", []string{"<tool_call>oops</tool_call> after"}, []Output{{Content: "<tool_call>oops</tool_call> after"}}},
		{"unfinished tag", []string{"a <tool_c"}, []Output{{Content: "a <tool_c"}}},
		{"tag in a string", []string{"<tool_call>{\"name\": \"say\", \"arguments\": {\"text\": \"a </tool_", "call> \\\" </tool_call>\"}}</tool_call>"},
			[]Output{call("say", `{"text":"a </tool_call> \" </tool_call>"}`)}},
		{"unclosed string", []string{"<tool_call>{\"name\": \"x</tool_call> after"}, []Output{{Content: "<tool_call>{\"name\": \"x</tool_call> after"}}},
		{"cut off", []string{"<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"}, []Output{weather}},
	}
	for _, c := range cases {
		if got := parseAll(c.pieces...); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
			for _, o := range got {
				if o.Call != nil {
					t.Logf("  call %+v", *o.Call)
				}
			}
		}
	}
}

// FuzzToolCallParser feeds any output whole and cut into three pieces
// anywhere: the parser must not panic, and streaming must not change what
// it finds.
func FuzzToolCallParser(f *testing.F) {
	f.Add(`<tool_call>{"name": "a", "arguments": {"t": "</tool_call> \""}}</tool_call> x`, 5, 40)
	f.Add("a <tool_c", 1, 2)
	f.Add("<tool_call>{\"name\": \"x</tool_call>\n\n<tool_call>", 0, 12)
	f.Fuzz(func(t *testing.T, s string, i, j int) {
		cut := func(k int) int {
			if k < 0 {
				k = -k
			}
			return k % (len(s) + 1)
		}
		i, j = cut(i), cut(j)
		if i > j {
			i, j = j, i
		}
		whole := parseAll(s)
		if got := parseAll(s[:i], s[i:j], s[j:]); !reflect.DeepEqual(got, whole) {
			t.Errorf("%q cut at %d and %d: %+v, whole %+v", s, i, j, got, whole)
		}
	})
}
