package server

import (
	"strings"
	"testing"

	"orcd/engine"
	"orcd/engine/enginetest"
)

// Harmony output off the happy path, through the chat endpoint, streamed
// and not: nothing of an analysis message reaches the content, and a call
// cut short by max_tokens comes back with finish_reason "length".
func TestChatHarmonyRobustness(t *testing.T) {
	cases := []struct {
		name, output       string
		maxTokens          int
		content, reasoning string
		callName, callArgs string
		finish             string
	}{
		{"several commentary messages before the final",
			"<|channel|>analysis<|message|>secret 1<|end|><|start|>assistant<|channel|>commentary<|message|>Step 1. <|end|>" +
				"<|start|>assistant<|channel|>analysis<|message|>secret 2<|end|><|start|>assistant<|channel|>final<|message|>Done.<|return|>",
			0, "Step 1. Done.", "secret 1secret 2", "", "", "stop"},
		{"unexpected tokens in headers",
			"<|channel|>analysis<|channel|>final<|message|>secret<|end|><|channel|>final<|message|>ok<|return|>",
			0, "ok", "secret", "", "", "stop"},
		{"a call cut by max_tokens",
			`<|channel|>analysis<|message|>secret<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"location":"San Francisco"}<|call|>`,
			len(harmonyTokens(`<|channel|>analysis<|message|>secret<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"loc`)),
			"", "secret", "get_weather", `{"loc`, "length"},
	}
	for _, c := range cases {
		ts := newTestServer(t, &enginetest.Model{Next: enginetest.Script(harmonyTokens(c.output)), Ctx: 4096}, "gpt-oss", engine.Config{}, nil)
		extra := map[string]any{"tools": []map[string]any{{"type": "function", "function": map[string]any{"name": "get_weather"}}}}
		if c.maxTokens > 0 {
			extra["max_tokens"] = c.maxTokens
		}
		var r chatResponse
		decodeBody(t, ts.post(t, "/v1/chat/completions", chatBody(false, extra)), 200, &r)
		m := r.Choices[0].Message
		content, reasoning, name, args := "", "", "", ""
		if m.Content != nil {
			content = *m.Content
		}
		if m.ReasoningContent != nil {
			reasoning = *m.ReasoningContent
		}
		for _, tc := range m.ToolCalls {
			name, args = name+tc.Function.Name, args+tc.Function.Arguments
		}
		if content != c.content || reasoning != c.reasoning || name != c.callName || args != c.callArgs || *r.Choices[0].FinishReason != c.finish {
			t.Errorf("%s: content %q reasoning %q call %s(%s) finish %s", c.name, content, reasoning, name, args, *r.Choices[0].FinishReason)
		}

		content, reasoning, args = "", "", ""
		finish := ""
		for _, ch := range openAIStream[chatResponse](t, ts.post(t, "/v1/chat/completions", chatBody(true, extra))) {
			d := ch.Choices[0].Delta
			if d.Content != nil {
				content += *d.Content
			}
			if d.ReasoningContent != nil {
				reasoning += *d.ReasoningContent
			}
			for _, tc := range d.ToolCalls {
				args += tc.Function.Arguments
			}
			if f := ch.Choices[0].FinishReason; f != nil {
				finish = *f
			}
		}
		if content != c.content || reasoning != c.reasoning || args != c.callArgs || finish != c.finish {
			t.Errorf("%s streamed: content %q reasoning %q args %s finish %s", c.name, content, reasoning, args, finish)
		}
		if strings.Contains(content, "secret") {
			t.Errorf("%s: analysis reached the content", c.name)
		}

		// The Responses API: the cut call is an incomplete response whose
		// function_call item has the arguments so far.
		body := map[string]any{"input": "Hi", "tools": []map[string]any{{"type": "function", "name": "get_weather"}}}
		if c.maxTokens > 0 {
			body["max_output_tokens"] = c.maxTokens
		}
		var rr respObject
		decodeBody(t, ts.post(t, "/v1/responses", body), 200, &rr)
		for _, it := range rr.Output {
			for _, p := range it.Content {
				if it.Type == "message" && strings.Contains(p.Text, "secret") {
					t.Errorf("%s: analysis reached a message item", c.name)
				}
			}
		}
		if c.finish == "length" {
			if got := rr.summary(); rr.Status != "incomplete" || len(got) != 2 || got[1] != "function_call:get_weather:"+c.callArgs {
				t.Errorf("%s: responses %s %q", c.name, rr.Status, got)
			}
		}
	}
}
