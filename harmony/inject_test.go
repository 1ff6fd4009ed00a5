package harmony

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// injections are the ways a request string may carry a special token:
// alone, before, inside and after a name.
func injections(sp string) []string {
	return []string{sp, sp + "x", "get" + sp + "final", "get" + sp}
}

// TestHeaderFieldsRejectSpecialTokens checks every field of a message
// header with every special token of the format.
func TestHeaderFieldsRejectSpecialTokens(t *testing.T) {
	base := header{role: "assistant", channel: "commentary", recipient: "functions.f", contentType: "json"}
	fields := []struct {
		name string
		set  func(*header, string)
	}{
		{"role", func(h *header, v string) { h.role = v }},
		{"channel", func(h *header, v string) { h.channel = v }},
		{"recipient", func(h *header, v string) { h.recipient = "functions." + v }},
		{"content type", func(h *header, v string) { h.contentType = v }},
	}
	if _, err := base.render(nil); err != nil {
		t.Fatalf("valid header: %v", err)
	}
	for _, f := range fields {
		for _, sp := range SpecialTokens {
			for _, v := range injections(sp) {
				h := base
				f.set(&h, v)
				p, err := h.render(nil)
				if err == nil || !strings.Contains(err.Error(), sp) || !strings.Contains(err.Error(), f.name) {
					t.Errorf("%s %q: rendered %q, error %v; want an error naming the field and %s", f.name, v, p.String(), err, sp)
				}
			}
		}
		// Plain text that would change the header's structure without a
		// special token.
		for _, v := range []string{"get to=x", "get ", "a=b", "", strings.Repeat("a", maxName+1), "naïve", "a\nb"} {
			if v == "" && (f.name == "channel" || f.name == "content type") {
				continue // absent: the header has no channel or no content type
			}
			h := base
			f.set(&h, v)
			if _, err := h.render(nil); err == nil {
				t.Errorf("%s %q rendered without error", f.name, v)
			}
		}
	}
}

// TestRenderRejectsSpecialTokensInNames checks each name a request can
// put into a conversation (tool definitions, the assistant's calls, tool
// answers) with each special token.
func TestRenderRejectsSpecialTokensInNames(t *testing.T) {
	fields := []struct {
		name string
		conv func(string) Conversation
	}{
		{"tool name", func(v string) Conversation {
			return Conversation{Tools: []Tool{{Name: v}}}
		}},
		{"tool call name", func(v string) Conversation {
			return Conversation{Messages: []Message{{Role: "assistant", ToolCalls: []ToolCall{{Name: v, Arguments: "{}"}}}}}
		}},
		{"tool message name", func(v string) Conversation {
			return Conversation{Messages: []Message{{Role: "tool", ToolName: v, Content: "1"}}}
		}},
	}
	for _, f := range fields {
		if _, err := Render(f.conv("get_weather")); err != nil {
			t.Fatalf("%s: valid name: %v", f.name, err)
		}
		for _, sp := range SpecialTokens {
			for _, v := range injections(sp) {
				p, err := Render(f.conv(v))
				if err == nil || !strings.Contains(err.Error(), sp) {
					t.Errorf("%s %q: rendered %q, error %v; want an error naming %s", f.name, v, p.String(), err, sp)
				}
			}
		}
	}
}

// TestRenderKeepsSpecialTokensInTextAsText checks each free-text field
// with each special token: it renders, and the prompt's special tokens are
// exactly those of the same conversation with plain text there.
func TestRenderKeepsSpecialTokensInTextAsText(t *testing.T) {
	conv := func(field, v string) Conversation {
		c := Conversation{Date: docsDate, Instructions: "i", Tools: []Tool{{Name: "f", Description: "d"}},
			Messages: []Message{
				{Role: "user", Content: "u"},
				{Role: "assistant", Content: "a", Reasoning: "r", ToolCalls: []ToolCall{{Name: "f", Arguments: "{}"}}},
				{Role: "tool", ToolName: "f", Content: "o"},
			}}
		switch field {
		case "instructions":
			c.Instructions = v
		case "tool description":
			c.Tools[0].Description = v
		case "user content":
			c.Messages[0].Content = v
		case "assistant content":
			c.Messages[1].Content = v
		case "reasoning":
			c.Messages[1].Reasoning = v
		case "tool call arguments":
			c.Messages[1].ToolCalls[0].Arguments = v
		case "tool message content":
			c.Messages[2].Content = v
		default:
			panic(field)
		}
		return c
	}
	specials := func(p Prompt) []string {
		var out []string
		for _, piece := range p {
			if piece.Special != "" {
				out = append(out, piece.Special)
			}
		}
		return out
	}
	for _, field := range []string{"instructions", "tool description", "user content", "assistant content", "reasoning",
		"tool call arguments", "tool message content"} {
		plain, err := Render(conv(field, "plain"))
		if err != nil {
			t.Fatal(err)
		}
		for _, sp := range SpecialTokens {
			for _, v := range injections(sp) {
				p, err := Render(conv(field, v))
				if err != nil {
					t.Errorf("%s %q: %v", field, v, err)
					continue
				}
				if got, want := specials(p), specials(plain); !slices.Equal(got, want) {
					t.Errorf("%s %q: special tokens %v, want %v", field, v, got, want)
				}
				if !strings.Contains(p.String(), v) {
					t.Errorf("%s %q: the text is missing from %q", field, v, p.String())
				}
			}
		}
	}
}

func ExampleCheckName() {
	fmt.Println(CheckName("get_weather"))
	fmt.Println(CheckName("get<|channel|>final"))
	// Output:
	// <nil>
	// contains the harmony control token <|channel|>; a name must be 1-64 letters, digits, '_' or '-'
}
