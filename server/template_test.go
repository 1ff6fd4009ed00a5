package server

import (
	"slices"
	"testing"

	"orcd/chat"
	"orcd/engine"
	"orcd/engine/enginetest"
)

// byteSpecials is the fake byte tokenizer with EncodeSpecial (bytes too):
// enough to see the rendered prompt reach the engine.
type byteSpecials struct{ enginetest.Tokenizer }

func (b byteSpecials) EncodeSpecial(text string) []int32 { return b.Encode(text) }

// testTemplate is a small template in the Qwen2.5 style: tools, then the
// messages, tool calls between <tool_call> tags.
const testTemplate = `{%- if tools %}[tools:{% for t in tools %}{{ t.function.name }};{% endfor %}]{% endif %}` +
	`{%- for m in messages %}<{{ m.role }}>{{ m.content }}{% for c in m.tool_calls %}<tool_call>{{ c.function.arguments | tojson }}</tool_call>{% endfor %}{% endfor %}` +
	`{%- if add_generation_prompt %}<assistant>{% endif %}`

// TestChatTemplate chats with a template model: the prompt is the
// template's rendering of the messages and tools (worked by hand), the
// output passes as content, and tool calls between <tool_call> tags come
// back as tool_calls when the request has tools.
func TestChatTemplate(t *testing.T) {
	tmpl, err := chat.Compile(testTemplate, "", "")
	if err != nil {
		t.Fatal(err)
	}
	out := "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
	rec := &recorder{next: enginetest.TextScript(out)}
	ts := newTestServer(t, &enginetest.Model{Next: rec.Next, Ctx: 4096}, "qwen2", engine.Config{}, func(c *Config) {
		c.Model.Chat, c.Template, c.Tokenizer = ChatTemplate, tmpl, byteSpecials{}
	})
	tools := []map[string]any{{"type": "function", "function": map[string]any{"name": "get_weather", "parameters": map[string]any{}}}}
	body := chatBody(false, map[string]any{"tools": tools})
	body["messages"] = append(body["messages"].([]map[string]any), map[string]any{"role": "assistant", "content": "",
		"tool_calls": []map[string]any{{"id": "c1", "type": "function", "function": map[string]any{"name": "get_weather", "arguments": `{"city": "Rome"}`}}}})
	var c chatResponse
	decodeBody(t, ts.post(t, "/v1/chat/completions", body), 200, &c)
	want := `[tools:get_weather;]<system>Be nice.<user>Hi <|end|><assistant><tool_call>{"city": "Rome"}</tool_call><assistant>`
	if got := (enginetest.Tokenizer{}).Decode(rec.prompt); got != want {
		t.Errorf("prompt %q\nwant   %q", got, want)
	}
	m := c.Choices[0].Message
	if *c.Choices[0].FinishReason != "tool_calls" || m.Content == nil || *m.Content != "Checking.\n" || len(m.ToolCalls) != 1 ||
		m.ToolCalls[0].Function.Name != "get_weather" || m.ToolCalls[0].Function.Arguments != `{"city":"Paris"}` {
		t.Errorf("message %+v, finish %s", m, *c.Choices[0].FinishReason)
	}

	// Without tools the output is content, tags and all.
	rec.prompt = nil
	var plain chatResponse
	decodeBody(t, ts.post(t, "/v1/chat/completions", chatBody(false, nil)), 200, &plain)
	if m := plain.Choices[0].Message; m.Content == nil || *m.Content != out || len(m.ToolCalls) != 0 {
		t.Errorf("without tools: message %+v", m)
	}
	if !slices.Equal(rec.prompt, (enginetest.Tokenizer{}).Encode("<system>Be nice.<user>Hi <|end|><assistant>")) {
		t.Errorf("prompt without tools %q", (enginetest.Tokenizer{}).Decode(rec.prompt))
	}
}
